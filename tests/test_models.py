"""The architecture registry, head replacement, pretrained weights from a local file, freezing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bench import models
from bench.errors import UserError
from bench.models import BUILTINS, apply_freeze, create_model, head_name, layers, set_train_mode


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_classifies_at_small_sizes(name):
    for size in (32, 48):
        model = create_model(f"bench:{name}", num_classes=7, image_size=size)
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)
        assert isinstance(model.get_submodule(head_name(model)), nn.Linear)


@pytest.mark.parametrize("arch", ["tv:squeezenet1_1", "tv:alexnet", "tv:shufflenet_v2_x0_5", "timm:resnet10t"])
def test_head_replaced_for_the_class_count(arch):
    model = create_model(arch, num_classes=5, image_size=64).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    models.replace_head(model, 3)  # what hub weights go through: a 1000-class head swapped for ours
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_arch_listing_spans_all_registries():
    names = models.list_archs()
    assert "bench:mlp" in names and "tv:resnet50" in names and "timm:resnet18" in names
    assert models.list_archs("tv:squeezenet*") == ["tv:squeezenet1_0", "tv:squeezenet1_1"]


def test_hub_weights_offline_fail_fast_with_a_clear_error(monkeypatch, tmp_path):
    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(models.socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache
    for arch in ("tv:alexnet", "timm:resnet10t"):
        with pytest.raises(UserError) as e:
            create_model(arch, 3, 64, pretrained=True)
        assert "cannot fetch pretrained weights" in str(e.value) and "local weights file" in str(e.value)


def test_freeze_first_n_freezes_exactly_n_layers():
    model = create_model("bench:small_cnn", 4, 32)
    units = layers(model)
    assert len(units) == 6  # 3 convs + 3 batch norms; the head is not counted
    apply_freeze(model, "first:2")
    frozen = [n for n, m in units if not any(p.requires_grad for p in m.parameters(recurse=False))]
    assert frozen == [units[0][0], units[1][0]]
    assert all(p.requires_grad for p in model.head.parameters())


def test_freeze_last_n_trains_last_n_and_head():
    model = create_model("bench:small_cnn", 4, 32)
    apply_freeze(model, "last:1")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"features.9.weight", "features.9.bias", "head.weight", "head.bias"}  # the last BN


def test_all_but_head_and_frozen_batchnorm_stays_in_eval():
    model = create_model("bench:small_cnn", 4, 32)
    apply_freeze(model, "all_but_head")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    set_train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.head.training
    before = bns[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, bns[0].running_mean)  # frozen statistics are not updated


def test_freeze_more_layers_than_exist_is_a_user_error():
    with pytest.raises(UserError, match="backbone has 6"):
        apply_freeze(create_model("bench:small_cnn", 4, 32), "first:99")


def test_pretrained_from_local_file_loads_backbone_and_skips_other_head(tmp_path):
    from bench.config import CellConfig
    from bench.weights import initial_model

    torch.manual_seed(1)
    donor = create_model("bench:small_cnn", 10, 16)  # e.g. trained on another task with 10 classes
    path = tmp_path / "donor.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    cfg = CellConfig.model_validate({"model": {"arch": "bench:small_cnn", "pretrained": str(path)},
                                     "data": {"image_size": 16}})
    model, _ = initial_model(cfg, 4, tmp_path / "init")
    for name, tensor in donor.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.head.out_features == 4

    torch.save({"state_dict": donor.state_dict()}, tmp_path / "donor.pt")  # the torch.load path too
    cfg_pt = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": str(tmp_path / "donor.pt")})})
    model_pt, _ = initial_model(cfg_pt, 4, tmp_path / "init")
    assert torch.equal(model_pt.features[0].weight, donor.features[0].weight)


def test_weights_for_another_architecture_are_refused(tmp_path):
    from bench.config import CellConfig
    from bench.weights import initial_model

    path = tmp_path / "mlp.safetensors"
    save_file(create_model("bench:mlp", 4, 16).state_dict(), str(path))
    cfg = CellConfig.model_validate({"model": {"pretrained": str(path)}, "data": {"image_size": 16}})
    with pytest.raises(UserError, match="does not fit this architecture"):
        initial_model(cfg, 4, tmp_path / "init")
