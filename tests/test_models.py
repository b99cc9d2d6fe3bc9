"""The architecture registry, head replacement, pretrained weights from a local file, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bench.errors import UserError
from bench.models import create_model, list_archs
from bench.models.builtins import BUILTINS
from bench.models.freeze import apply_freeze, count_params, layers, set_train_mode
from bench.models.heads import Head, build_head, head_name, replace_head
from tests.conftest import write_plugin
from tests.support import offline

MODELS_PAGE = (Path(__file__).parent.parent / "docs" / "models.md").read_text()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_classifies_at_small_sizes(name):
    for size in (32, 48):
        model = create_model(f"bench:{name}", num_classes=7, image_size=size)
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)
        assert isinstance(model.get_submodule(head_name(model)), nn.Linear)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_runs_at_its_minimum_size_and_not_below(name):
    size = BUILTINS[name].min_size
    model = create_model(f"bench:{name}", num_classes=3, image_size=max(size, 1)).eval()
    assert model(torch.zeros(1, 3, size, size)).shape == (1, 3)
    if size > 1:
        with pytest.raises((UserError, RuntimeError)):
            create_model(f"bench:{name}", 3, size - 1).eval()(torch.zeros(1, 3, size - 1, size - 1))


# docs/models.md, "Built-in models": the table's counts (10 classes, 64 px) and the studies' figures it quotes
TABLE_SIZE, TABLE_CLASSES = 64, 10
DOC_PARAMS = [
    ("mlp", 64, 10, 3_136_255),
    ("cifar_cnn", 64, 10, 338_486),
    ("shallow_cnn", 64, 10, 67_114),
    ("deep_cnn", 64, 10, 624_554),
    ("inception_cnn", 64, 10, 135_010),
    ("small_cnn", 64, 10, 94_762),
    ("plain_cnn", 64, 10, 1_143_242),
    ("deeper_cnn", 64, 10, 4_844_010),
    ("mlp", 300, 3, 68_851_023),  # study 004's report
    ("cifar_cnn", 300, 3, 9_966_691),  # study 004's report
    ("plain_cnn", 96, 8, 2_453_704),  # study 002: "almost 2.5 million"
    ("deeper_cnn", 200, 100, 5_898_436),  # study 000: "almost 6 million"
    ("shallow_cnn", 200, 100, 643_108),  # study 000: "over 600 thousand"
    ("deep_cnn", 200, 100, 4_841_988),  # study 000: "almost 5 million"
]


@pytest.mark.parametrize(("name", "size", "classes", "expected"), DOC_PARAMS)
def test_builtins_have_the_parameter_counts_the_docs_state(name, size, classes, expected):
    assert count_params(create_model(f"bench:{name}", classes, size)) == (expected, expected)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_has_its_docs_row_with_its_count_and_minimum_size(name):
    rows = [line for line in MODELS_PAGE.splitlines() if line.startswith(f"| `bench:{name}` |")]
    assert len(rows) == 1, f"docs/models.md's built-in table lacks bench:{name}"
    *_, params, min_px, _ = (cell.strip() for cell in rows[0].split("|"))
    table = {(n, s, c): e for n, s, c, e in DOC_PARAMS}
    assert params == f"{table[name, TABLE_SIZE, TABLE_CLASSES]:,}" and int(min_px) == BUILTINS[name].min_size


def test_study_models_have_the_reported_structure():
    convs = [m for m in create_model("bench:deep_cnn", 10, 64).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    inception = create_model("bench:inception_cnn", 10, 64)
    kernels = {m.kernel_size for m in inception.modules() if isinstance(m, nn.Conv2d)}
    assert {(1, 1), (3, 3), (5, 5)} <= kernels


@pytest.mark.parametrize("arch", ["tv:squeezenet1_1", "tv:alexnet", "tv:shufflenet_v2_x0_5", "timm:resnet10t"])
def test_head_replaced_for_the_class_count(arch):
    model = create_model(arch, num_classes=5, image_size=64).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    replace_head(model, 3)  # what hub weights go through: a 1000-class head swapped for ours
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_arch_listing_spans_all_registries():
    names = list_archs()
    assert "bench:mlp" in names and "tv:resnet50" in names and "timm:resnet18" in names
    assert list_archs("tv:squeezenet*") == ["tv:squeezenet1_0", "tv:squeezenet1_1"]


def test_hub_weights_offline_fail_fast_with_a_clear_error(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
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


# --------------------------------------------------------------------------------------------- heads
HEAD_ARCHS = ["bench:small_cnn", "bench:deep_cnn", "tv:resnet18", "tv:alexnet", "timm:resnet10t"]


@pytest.mark.parametrize("arch", HEAD_ARCHS)
def test_dense_head_replaces_the_classifier_for_every_prefix(arch):
    size = 64 if arch == "tv:alexnet" else 32
    model = create_model(arch, 5, size)
    old_name = head_name(model)
    in_features = model.get_submodule(old_name).in_features
    build_head(model, arch, 5, hidden=(16, 8), activation="gelu", dropout=0.3)
    assert head_name(model) == old_name  # where the classifier was; L1/L2 penalties find it there
    head = model.get_submodule(old_name)
    assert isinstance(head, Head) and head.out_features == 5
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Dropout", "Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == \
        [(in_features, 16), (16, 8), (8, 5)]
    assert all(m.p == 0.3 for m in head if isinstance(m, nn.Dropout))
    assert model.eval()(torch.zeros(2, 3, size, size)).shape == (2, 5)
    apply_freeze(model, "all_but_head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{old_name}.{n}" for n, _ in head.named_parameters()}


@pytest.mark.parametrize("arch,where", [("tv:resnet18", "layer4"), ("timm:resnet10t", "layer4"),
                                        ("bench:small_cnn", "features")])
def test_pool_max_pools_the_last_feature_map_by_its_maximum(arch, where):
    model = create_model(arch, 3, 32).eval()
    build_head(model, arch, 3, pool="max")
    seen = {}
    model.get_submodule(where).register_forward_hook(lambda m, a, out: seen.update(maps=out))
    model.get_submodule(head_name(model)).register_forward_pre_hook(lambda m, a: seen.update(pooled=a[0]))
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["pooled"].flatten(1), seen["maps"].amax((2, 3)))


@pytest.mark.parametrize("arch", ["tv:alexnet", "bench:mlp", "tv:densenet121"])
def test_pool_on_a_model_without_a_global_pool_module_is_a_user_error(arch):
    with pytest.raises(UserError, match="no global pooling module"):
        build_head(create_model(arch, 3, 64), arch, 3, pool="avg")


def test_head_options_need_a_linear_classifier():
    with pytest.raises(UserError, match="not a linear layer"):
        build_head(create_model("tv:squeezenet1_1", 3, 64), "tv:squeezenet1_1", 3, hidden=(8,))


def test_initial_weights_key_follows_the_head_structure_not_the_dropout_rate(tmp_path):
    from bench.config import CellConfig
    from bench.weights import init_key, initial_model

    def cfg(**model):
        return CellConfig.model_validate({"model": model, "data": {"image_size": 16}})

    plain, drop3, drop5 = cfg(), cfg(head_dropout=0.3), cfg(head_dropout=0.5)
    assert init_key(drop3, 4) == init_key(drop5, 4) != init_key(plain, 4)
    assert len({init_key(c, 4) for c in (plain, cfg(head_hidden=[8]), cfg(head_hidden=[16]), cfg(pool="max"),
                                          cfg(head_hidden=[8], head_activation="gelu"))}) == 5
    # ... but cells that differ only in their head start from the same random backbone
    a, _ = initial_model(plain, 4, tmp_path)
    for other in (drop3, cfg(head_hidden=[8]), cfg(pool="max")):
        b, _ = initial_model(other, 4, tmp_path)
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items() if not k.startswith("head"))


def test_donor_weights_load_into_a_model_with_another_head(tmp_path):
    from bench.config import CellConfig
    from bench.weights import initial_model

    donor = create_model("bench:small_cnn", 10, 16)
    path = tmp_path / "donor.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    cfg = CellConfig.model_validate({"model": {"pretrained": str(path), "head_hidden": [8], "pool": "max"},
                                     "data": {"image_size": 16}})
    model, _ = initial_model(cfg, 4, tmp_path / "init")
    assert torch.equal(model.features[0].weight, donor.features[0].weight)
    assert head_name(model) == "head" and model.head.out_features == 4


# --------------------------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("arch", ["bench:small_cnn", "tv:resnet18", "timm:resnet10t"])
def test_first_n_freezes_exactly_the_first_n_layers_with_weights(arch):
    model = create_model(arch, 4, 32)
    units = layers(model)
    apply_freeze(model, "first:5")
    frozen = [n for n, m in units if not any(p.requires_grad for p in m.parameters(recurse=False))]
    assert frozen == [n for n, _ in units[:5]]
    assert sum(not p.requires_grad for p in model.parameters()) == \
        sum(len(list(m.parameters(recurse=False))) for _, m in units[:5])


def test_last_conv_n_trains_from_the_nth_last_convolution_on():
    model = create_model("bench:deep_cnn", 4, 32)
    apply_freeze(model, "last_conv:2")
    trainable = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"features.6", "features.9", "classifier.0", "head"}  # conv 3, conv 4, dense, head
    with pytest.raises(UserError, match="backbone has 4"):
        apply_freeze(create_model("bench:deep_cnn", 4, 32), "last_conv:5")


def test_frozen_batchnorm_is_in_eval_mode_and_trainable_batchnorm_trains():
    model = create_model("timm:resnet10t", 4, 32)
    apply_freeze(model, "first:6")
    set_train_mode(model)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen = {n for n, m in bns.items() if not m.weight.requires_grad}
    assert frozen and len(frozen) < len(bns)
    assert all(not bns[n].training for n in frozen) and all(bns[n].training for n in bns if n not in frozen)


@pytest.mark.parametrize("plugin, ok", [("good.py", True), ("missing.py", False), ("broken.py", False)])
def test_plugins_register_networks_or_fail_on_one_line(tmp_path, plugin, ok):
    import os
    import subprocess
    import sys

    write_plugin(tmp_path / "good.py", "plugged")
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    env = {**os.environ, "BENCH_PLUGINS": str(tmp_path / plugin)}
    proc = subprocess.run([sys.executable, "-m", "bench", "models", "bench:plug*"], env=env, capture_output=True,
                          text=True)
    if ok:
        assert proc.returncode == 0 and proc.stdout.split() == ["bench:plugged"], proc.stderr
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"error: {tmp_path / plugin}: BENCH_PLUGINS:") and proc.stderr.count("\n") == 1
