"""Training recipes in the loop: weight EMA (timm's ModelEmaV3), gradient clipping (timm's dispatch_clip_grad)
and gradient accumulation, each checked against what it promises, and every key through a suite file."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bench.train as train
from bench import api, loop
from bench.config import TrainConfig, load_suite
from bench.data.loaders import Preprocess
from bench.errors import UserError
from bench.models.builtins import SmallCNN
from bench.progress import LogProgress
from bench.suite import expand
from bench.techniques.regularise import grad_clipper
from bench.train import fit
from tests.support import CPU, scripted_val_errors

SIZE, CLASSES = 16, 3
COUNTS = [12, 12, 12]


def dataset(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return TensorDataset(x, torch.arange(n) % CLASSES)


def loaders(ds: TensorDataset, batch: int = 8) -> dict[str, DataLoader]:
    # no shuffling: runs that should see the same samples in the same order do
    return {"train": DataLoader(ds, batch_size=batch), "val": DataLoader(ds, batch_size=64),
            "test": DataLoader(ds, batch_size=64)}


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(CLASSES, width=4)


def linear(seed: int = 0) -> nn.Module:
    """No batch-dependent layers: the mean gradient of a batch is the mean of its halves' gradients."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES))


# ----------------------------------------------------------------------------------------- EMA
def test_ema_weights_differ_from_the_raw_ones_and_are_the_hand_computed_average():
    model, raw = cnn(), []
    start = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, ema=True, ema_decay=0.6, ema_select="ema")
    # on_step runs after each optimizer step (and its EMA update): it sees every raw weight the EMA saw
    result = fit(model, loaders(dataset()), cfg, CPU, COUNTS,
                 on_step=lambda: raw.append(copy.deepcopy(model.state_dict())))
    assert len(raw) == 4 and result.info["ema"]["updates"] == 4
    expected = {k: v.clone() for k, v in start.items()}
    for step, weights in enumerate(raw, 1):
        decay = 0.0 if step == 1 else 0.6  # timm's ModelEmaV3: update 1 copies the weights
        for k, v in weights.items():
            expected[k] = decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
    for k, v in result.best_state.items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(result.best_state["head.weight"], raw[-1]["head.weight"])
    assert torch.equal(model.state_dict()["head.weight"], result.best_state["head.weight"])


def test_ema_select_decides_which_weights_are_the_main_metrics():
    def run(select: str):
        cfg = TrainConfig(epochs=1, optimizer="adam", lr=0.01, ema=True, ema_decay=0.5, ema_select=select,
                          tta=["hflip"])
        return fit(cnn(), loaders(dataset()), cfg, CPU, COUNTS)

    on_ema, on_raw = run("ema"), run("raw")
    assert {"val", "test", "val_raw", "test_raw", "val_tta", "val_raw_tta"} <= set(on_ema.metrics)
    assert {"val", "test", "val_ema", "test_ema", "val_tta", "val_ema_tta"} <= set(on_raw.metrics)
    assert set(on_ema.predictions) == set(on_ema.metrics)
    for split, ema_name, raw_name in [("val", "val_ema", "val_raw"), ("test", "test_ema", "test_raw"),
                                      ("val_tta", "val_ema_tta", "val_raw_tta")]:
        assert on_ema.metrics[split] == on_raw.metrics[ema_name]
        assert on_raw.metrics[split] == on_ema.metrics[raw_name]
    assert on_ema.metrics["val"] != on_ema.metrics["val_raw"]
    assert not torch.equal(on_ema.best_state["head.weight"], on_raw.best_state["head.weight"])
    assert {"val_error_ema", "val_loss_ema", "val_top5_error_ema"} <= set(on_raw.history[0])


@pytest.mark.parametrize(("select", "best"), [("raw", 2), ("ema", 1)])
def test_the_best_epoch_is_chosen_on_the_selected_weights(monkeypatch, select, best):
    # each epoch validates the raw weights, then the EMA's: script both columns
    scripted = [0.5, 0.2, 0.3, 0.4, 0.4, 0.5]  # (raw, ema) per epoch: raw best at 2, EMA best at 1
    scripted_val_errors(monkeypatch, scripted)
    cfg = TrainConfig(epochs=3, optimizer="adam", lr=0.01, ema=True, ema_decay=0.5, ema_select=select)
    result = fit(cnn(), loaders(dataset()), cfg, CPU, COUNTS)
    assert result.best_epoch == best
    assert [r["val_error"] for r in result.history] == scripted[0::2]
    assert [r["val_error_ema"] for r in result.history] == scripted[1::2]
    assert result.history[-1]["epochs_since_best"] == 3 - best


# ----------------------------------------------------------------------------------------- clipping
def _grad_stats(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return float(norm), max(float(g.abs().max()) for g in grads)


def _fit_seeing_grads(monkeypatch, device: torch.device = CPU, **kw) -> list[tuple[float, float]]:
    """(total norm, largest |value|) of the gradients each optimizer step receives (after unscaling)."""
    seen, real = [], loop.build_optimizer

    def hooked(*args, **kwargs):
        optimizer, scheduler = real(*args, **kwargs)
        optimizer.register_step_pre_hook(lambda opt, a, k: seen.append(_grad_stats(opt)))
        return optimizer, scheduler

    monkeypatch.setattr(loop, "build_optimizer", hooked)
    fit(cnn().to(device), loaders(dataset()), TrainConfig(epochs=2, optimizer="sgd", lr=0.1, **kw), device, COUNTS)
    return seen


@pytest.mark.parametrize(("mode", "threshold", "stat"), [("norm", 0.05, 0), ("value", 1e-3, 1)])
def test_clipped_gradients_never_exceed_the_threshold(monkeypatch, mode, threshold, stat):
    plain = _fit_seeing_grads(monkeypatch)
    assert len(plain) == 8 and max(s[stat] for s in plain) > 2 * threshold  # something for the check to catch
    clipped = _fit_seeing_grads(monkeypatch, clip_grad=threshold, clip_mode=mode)
    assert len(clipped) == 8
    assert threshold * (1 - 1e-3) <= max(s[stat] for s in clipped) <= threshold * (1 + 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 and its GradScaler need CUDA")
def test_fp16_gradients_are_unscaled_before_clipping(monkeypatch):
    # clipped while still scaled (x65536), they would reach the optimizer far below the threshold
    clipped = _fit_seeing_grads(monkeypatch, torch.device("cuda"), precision="fp16", clip_grad=0.05)
    assert clipped and 0.05 * (1 - 1e-2) <= max(s[0] for s in clipped) <= 0.05 * (1 + 1e-3)


def _unitwise(t: torch.Tensor) -> torch.Tensor:
    return t.norm() if t.ndim <= 1 else t.flatten(1).norm(dim=1)


def test_agc_changes_backbone_gradients_to_its_bound_and_leaves_the_head_alone():
    model = cnn()
    x, y = dataset()[:16]
    F.cross_entropy(model(Preprocess(CPU)(x)), y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    clip, tensors = grad_clipper(model, 0.01, "agc")
    assert tensors == len(before) - 2  # the head's weight and bias are not clipped
    clip()
    after = {n: p.grad for n, p in model.named_parameters()}
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed and not any(n.startswith("head.") for n in changed)
    for n, p in model.named_parameters():
        if not n.startswith("head."):
            bound = 0.01 * _unitwise(p.detach()).clamp(min=1e-3)
            assert (_unitwise(after[n]) <= bound * (1 + 1e-4)).all(), n


def test_agc_trains_a_whole_fit():
    result = fit(cnn(), loaders(dataset()), TrainConfig(epochs=1, clip_grad=0.02, clip_mode="agc"), CPU, COUNTS)
    assert result.info["clip_grad"] == {"threshold": 0.02, "mode": "agc", "tensors": 9}


# ----------------------------------------------------------------------------------------- accumulation
def _states(accumulate: int, batch: int, n: int = 36) -> tuple[list[dict], train.FitResult]:
    states = []
    model = linear()
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine", batch_size=batch,
                      accumulate=accumulate)
    result = fit(model, loaders(dataset(n), batch), cfg, CPU, COUNTS,
                 on_epoch=lambda history: states.append(copy.deepcopy(model.state_dict())))
    return states, result


def test_accumulating_k_batches_is_one_batch_k_times_larger_remainder_and_schedule_included():
    # 36 images: 9 batches of 4 make 4 steps of 2 batches and one of 1; batches of 8 are 4 x 8 and one of 4.
    # The cosine schedule only lines up if it counts optimizer steps, the last step only if the remainder
    # group's loss is divided by its own size.
    accumulated, a = _states(accumulate=2, batch=4)
    large, b = _states(accumulate=1, batch=8)
    assert a.info["optimizer_steps_per_epoch"] == b.info["optimizer_steps_per_epoch"] == 5
    assert a.info["effective_batch_size"] == b.info["effective_batch_size"] == 8
    lrs = [r["lr"] for r in a.history]
    assert lrs == [r["lr"] for r in b.history] and lrs[1] == pytest.approx(0.025)  # half-way down the cosine
    for a, b in zip(accumulated, large, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    small, _ = _states(accumulate=1, batch=4)  # the comparison is sensitive: plain small batches differ
    assert not torch.allclose(small[-1]["1.weight"], large[-1]["1.weight"], rtol=1e-5, atol=1e-6)


def test_steps_per_epoch_counts_optimizer_steps():
    assert train.steps_per_epoch(range(9), None, 2) == 5
    assert train.steps_per_epoch(range(9), 4, 3) == 2
    assert train.steps_per_epoch(range(9), None) == 9


# ----------------------------------------------------------------------------------------- suite keys
RECIPES = """
clip_grad = 0.5
clip_mode = "agc"
accumulate = 2
ema = true
ema_decay = 0.9
ema_warmup = true

[grid]
"train.ema_select" = ["raw", "ema"]
"""


def test_every_recipe_key_round_trips_through_a_suite_and_lands_in_result_json(write_suite, tmp_path):
    path = write_suite(RECIPES)
    planned = api.plan(path, check=False)
    cells = planned.cells
    assert sorted(c.config.train.ema_select for c in cells) == ["ema", "raw"]
    summary = api.run(planned, results=tmp_path / "r", device="cpu", progress=LogProgress())
    assert not summary.failed, summary.failed
    for cell in cells:
        t = cell.config.train
        assert (t.clip_grad, t.clip_mode, t.accumulate, t.ema, t.ema_decay, t.ema_warmup) == (
            0.5, "agc", 2, True, 0.9, True)
        folder = summary.suite_dir / cell.id
        config = json.loads((folder / "cell.json").read_text())["config"]["train"]
        assert {k: config[k] for k in ("clip_grad", "clip_mode", "accumulate", "ema", "ema_decay", "ema_warmup",
                                       "ema_select")} == {"clip_grad": 0.5, "clip_mode": "agc", "accumulate": 2,
                                                          "ema": True, "ema_decay": 0.9, "ema_warmup": True,
                                                          "ema_select": t.ema_select}
        result = json.loads((folder / "result.json").read_text())
        rec = result["train"]
        assert rec["ema"]["decay"] == 0.9 and rec["ema"]["warmup"] and rec["ema"]["select"] == t.ema_select
        assert rec["clip_grad"]["threshold"] == 0.5 and rec["clip_grad"]["mode"] == "agc"
        assert rec["accumulate"] == 2 and rec["effective_batch_size"] == 32
        other = "raw" if t.ema_select == "ema" else "ema"
        assert {"val", "test", f"val_{other}", f"test_{other}"} == set(result["metrics"])
        preds = np.load(folder / "predictions.npz")
        err = float((preds[f"test_{other}_logits"].argmax(1) != preds[f"test_{other}_labels"]).mean())
        assert err == pytest.approx(result["metrics"][f"test_{other}"]["top1_error"], abs=1e-6)
        history = pd.read_csv(folder / "history.csv")
        assert {"val_error_ema", "val_loss_ema"} <= set(history.columns)


@pytest.mark.parametrize(("extra", "key", "fragment"), [
    ("clip_grad = 0", "train.clip_grad", "greater than 0"),
    ('clip_mode = "l2"', "train.clip_mode", "'norm', 'value' or 'agc'"),
    ("accumulate = 0", "train.accumulate", "greater than or equal to 1"),
    ("ema_decay = 1.0", "train.ema_decay", "less than 1"),
    ('ema_select = "best"', "train.ema_select", "'raw' or 'ema'"),
    ('ema = "maybe"', "train.ema", "boolean"),
])
def test_bad_recipe_values_are_one_line_errors_naming_the_key(write_suite, extra, key, fragment):
    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(extra)))
    assert e.value.key == key and fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------------------- compile time
class FirstCallCost(nn.Module):
    """Stands in for torch.compile's output: the first call for each (shape, mode) pays `cost` seconds, as
    a compilation would, and is counted as paid during training when `training` says so; the numbers are
    the model's own."""

    def __init__(self, model: nn.Module, cost: float):
        super().__init__()
        self.model, self.cost, self.seen, self.paid_in_training = model, cost, set(), 0
        self.training_now = False

    def forward(self, x):
        import time

        key = (tuple(x.shape), self.model.training)
        if key not in self.seen:
            self.seen.add(key)
            self.paid_in_training += self.training_now
            time.sleep(self.cost)
        return self.model(x)


def test_compile_time_is_measured_apart_and_the_warm_up_changes_no_number(monkeypatch):
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, compile=True, batch_size=8)
    made = []
    monkeypatch.setattr(train.torch, "compile", lambda m, **kw: made.append(FirstCallCost(m, 0.1)) or made[-1])
    real_epoch = train.train_one_epoch

    def epoch(net, *args, **kw):  # the calls made while an epoch trains
        net.training_now = True
        try:
            return real_epoch(net, *args, **kw)
        finally:
            net.training_now = False

    monkeypatch.setattr(train, "train_one_epoch", epoch)
    compiled = fit(cnn(), loaders(dataset()), cfg, CPU, COUNTS)
    monkeypatch.setattr(train.torch, "compile", lambda m, **kw: m)
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    plain = fit(cnn(), loaders(dataset()), cfg, CPU, COUNTS)
    # four graphs (train and eval, at two batch sizes) built and timed before training, none during it
    assert made[0].paid_in_training == 0 and len(made[0].seen) >= 4
    assert compiled.timing["compile_time_s"] >= 4 * 0.1
    for a, b in zip(compiled.best_state.values(), plain.best_state.values(), strict=True):
        assert torch.equal(a, b)  # the warm-up put every state back
    assert compiled.metrics == plain.metrics


@pytest.mark.parametrize("other_rank, sizes", [(32, {8, 7}), (3, {3, 2}), (1, {1}), (0, set())])
def test_the_ranks_warm_up_on_the_batch_sizes_they_agree_on(monkeypatch, other_rank, sizes):
    """A SyncBatchNorm's training passes are collectives: every rank warms up on the batch sizes of the
    smallest rank's first validation batch (here the other rank's), and none when a rank has no batch."""
    from bench import distributed
    from bench.techniques.compile import compile_warm_up

    monkeypatch.setattr(distributed, "gather_objects", lambda mine: [mine, other_rank])
    net = FirstCallCost(cnn(), 0.0)
    compile_warm_up(net, net.model, loaders(dataset()), Preprocess(CPU), None, batch_size=8)
    assert {shape[0] for shape, _ in net.seen} == sizes
