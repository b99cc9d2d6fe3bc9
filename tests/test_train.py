"""The training loop with techniques on: early stopping, head/backbone learning rates, head penalties,
test-time augmentation, offline augmentation, precision, and a whole cell with everything on."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import TrainConfig
from bench.data.loaders import ArrayDataset, Preprocess
from bench.errors import UserError
from bench.evaluate import predict
from bench.models.builtins import MLP, SmallCNN
from bench.techniques import build_augment, build_tta
from bench.techniques.offline import OfflineAugmented, copies
from bench.techniques.optimizers import build_optimizer
from bench.techniques.precision import precision_setup
from bench.techniques.regularise import head_penalty
from bench.train import fit
from tests.conftest import TINY
from tests.support import CPU, packed, run_file, scripted_val_errors, tiny_loaders


@pytest.mark.parametrize(("errors", "kw", "best", "run"), [
    ([0.5, 0.4, 0.45, 0.42, 0.41, 0.3, 0.2], {"patience": 3}, 2, 5),  # study 004: 3 epochs without gain
    ([0.5, 0.4, 0.45, 0.42, 0.41, 0.3, 0.2], {}, 7, 7),  # no patience: all epochs, best kept
    ([0.5, 0.47, 0.44, 0.43, 0.42, 0.41, 0.40], {"patience": 2, "min_delta": 0.05}, 3, 5),
    ([0.5, 0.4, 0.45, 0.2, 0.3, 0.3, 0.3], {"patience": 2, "monitor": "val_accuracy"}, 4, 6),
])
def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best(monkeypatch, errors, kw, best, run):
    scripted_val_errors(monkeypatch, errors)
    torch.manual_seed(0)
    model = SmallCNN(3, width=4)
    states = []
    cfg = TrainConfig(epochs=7, optimizer="adam", lr=0.01, **kw)
    result = fit(model, tiny_loaders(), cfg, CPU, class_counts=[16, 16, 16],
                 on_epoch=lambda history: states.append(copy.deepcopy(model.state_dict())))
    assert result.best_epoch == best and len(result.history) == run
    assert [r["epochs_since_best"] for r in result.history][best - 1] == 0
    assert result.history[-1]["epochs_since_best"] == (kw.get("patience") or run - best)
    assert result.info["early_stopping"]["stopped_at_epoch"] == (run if run < 7 else None)
    final = model.state_dict()
    assert all(torch.equal(final[k], states[best - 1][k]) for k in final)
    assert not all(torch.equal(final[k], states[-1][k]) for k in final) or best == run


def test_backbone_and_head_learning_rates_land_in_their_param_groups():
    model = SmallCNN(5, width=4)
    cfg = TrainConfig(lr=0.1, backbone_lr=0.001, schedule="cosine", epochs=2)
    optimizer, _ = build_optimizer(model, cfg, steps_per_epoch=3)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "head"}
    assert groups["head"]["lr"] == pytest.approx(0.1) and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.head.parameters()}
    assert len(groups["backbone"]["params"]) == len(list(model.parameters())) - 2
    for p in model.features.parameters():  # a frozen backbone leaves the head alone
        p.requires_grad_(False)
    optimizer, _ = build_optimizer(model, cfg, steps_per_epoch=3)
    assert [g["name"] for g in optimizer.param_groups] == ["head"]


def test_head_penalty_is_l1_plus_l2_of_the_head_weights_only():
    model = MLP(3, image_size=4, hidden=6)
    w = model.head.weight
    value = head_penalty(model, 0.01, 0.1)()
    assert value.item() == pytest.approx((0.01 * w.abs().sum() + 0.1 * w.pow(2).sum()).item(), rel=1e-6)
    assert head_penalty(model, 0.0, 0.0) is None
    value.backward()
    assert model.head.bias.grad is None and model.features[1].weight.grad is None and w.grad is not None


def test_tta_averages_softmax_over_views_and_identity_alone_is_plain():
    torch.manual_seed(0)
    model = SmallCNN(3, width=4).eval()
    loaders = tiny_loaders()
    prep = Preprocess(CPU)
    plain, labels, _ = predict(model, loaders["val"], prep)
    same, _, _ = predict(model, loaders["val"], prep, views=build_tta(["identity"]))
    assert torch.allclose(same.softmax(1), plain.softmax(1), atol=1e-6)
    flipped, _, _ = predict(model, loaders["val"], prep, views=build_tta(["hflip"]))
    x = torch.cat([prep(b) for b, _ in loaders["val"]])
    with torch.no_grad():
        by_hand = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert torch.allclose(flipped.softmax(1), by_hand, atol=1e-6)
    assert not torch.allclose(flipped.softmax(1), plain.softmax(1), atol=1e-4)
    assert len(build_tta(["hflip", "rotate:10", "shift:3"])) == 1 + 1 + 2 + 4


def array_dataset(tmp_path, n: int = 6, size: int = 20) -> ArrayDataset:
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(packed(tmp_path / "cache", images), np.arange(n), np.arange(n) % 2, 16, size)


def test_offline_augmentation_is_k_times_the_set_and_fixed(tmp_path):
    base = array_dataset(tmp_path)
    transform = build_augment(["rotate:30", "jitter:0.3"], 16)
    ds = OfflineAugmented(base, copies(3), transform, seed=7)
    assert len(ds) == 18 and ds.labels.tolist() == base.labels.tolist() * 3
    x, _ = ds.__getitems__(list(range(18)))
    assert x.shape == (18, 3, 16, 16)
    assert torch.equal(x[:6], base.__getitems__(list(range(6)))[0])  # copy 0 is the original
    assert not torch.equal(x[6:12], x[:6]) and not torch.equal(x[6:12], x[12:])  # copies differ
    rng = torch.get_rng_state()
    again = OfflineAugmented(base, copies(3), transform, seed=7).__getitems__(list(reversed(range(18))))[0]
    assert torch.equal(again.flip(0), x)  # any order, any epoch: the same images
    assert torch.equal(torch.get_rng_state(), rng)  # and the training RNG untouched
    other = OfflineAugmented(base, copies(3), transform, seed=8).__getitems__(list(range(18)))[0]
    assert not torch.equal(other[6:], x[6:])


def test_precision_fp16_needs_cuda_and_bf16_needs_native_support():
    with pytest.raises(UserError, match="fp16 training needs a CUDA device"):
        precision_setup("fp16", CPU)
    assert precision_setup("fp32", CPU) == (None, None)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        autocast, scaler = precision_setup("bf16", CPU)
        assert scaler is None and autocast().fast_dtype == torch.bfloat16
    else:
        with pytest.raises(UserError, match="no native bf16"):
            precision_setup("bf16", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_gpu_needs_it_natively_not_emulated(monkeypatch, native):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4 (it counts emulation): bench asks for native."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    if native:
        assert precision_setup("bf16", torch.device("cuda"))[0] is not None
    else:
        with pytest.raises(UserError, match="this cuda has no native bf16"):
            precision_setup("bf16", torch.device("cuda"))


def test_channels_last_trains_the_same_model():
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = SmallCNN(3, width=4)
        loaders = tiny_loaders()
        torch.manual_seed(1)
        r = fit(model, loaders, TrainConfig(epochs=1, optimizer="adam", channels_last=channels_last), CPU,
                class_counts=[16, 16, 16])
        results.append(r)
    assert results[1].info["channels_last"] is True
    assert results[0].history[0]["train_loss"] == pytest.approx(results[1].history[0]["train_loss"], rel=1e-4)


EVERYTHING = TINY.replace("epochs = 2\n", """epochs = 2
augment = ["hflip", "jitter:0.2", {op = "erasing", p = 0.5}]
offline = 2
sampler = "balanced"
mix = "cutmix"
mix_prob = 0.5
loss = "focal"
schedule = "cyclical"
min_lr = 0.0003
cycle_epochs = 2
warmup_epochs = 1
backbone_lr = 0.001
head_l2 = 0.001
tta = ["hflip", "shift:2"]
patience = 5
""")


def test_a_cell_with_every_technique_records_it_and_repeats_exactly(write_suite, tmp_path):
    path = write_suite(base=EVERYTHING)
    a, b = run_file(path, tmp_path / "a"), run_file(path, tmp_path / "b")
    assert not a.failed, a.failed
    ra, rb = (json.loads((s.suite_dir / s.ran[0] / "result.json").read_text()) for s in (a, b))
    assert ra["metrics"] == rb["metrics"]  # mixing, sampling, offline copies: all seeded
    assert {"val", "test", "val_tta", "test_tta"} <= set(ra["metrics"])
    assert ra["train"]["train_images_per_epoch"] == 2 * ra["data"]["images"]["train"]
    assert {g["name"]: g["lr"] for g in ra["train"]["param_groups"]} == {"backbone": 0.001, "head": 0.003}
    assert ra["train"]["precision"] == "fp32" and ra["epochs_run"] == 2
    preds = np.load(a.suite_dir / a.ran[0] / "predictions.npz")
    err = float((preds["test_tta_logits"].argmax(1) != preds["test_tta_labels"]).mean())
    assert err == pytest.approx(ra["metrics"]["test_tta"]["top1_error"], abs=1e-6)
    history = pd.read_csv(a.suite_dir / a.ran[0] / "history.csv")
    assert history["lr"].iloc[0] < 0.003  # warmup: the first epoch starts below the peak
