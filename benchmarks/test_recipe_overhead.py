"""Recipe overhead: a training step with weight EMA (timm's ModelEmaV3, one update per step) or gradient
clipping by norm (timm's dispatch_clip_grad) against the plain step, both through
`bench.train.train_one_epoch`.

Quickstart's network (SmallCNN, 32x32 px, batch 64, 12 batches) trains from in-memory uint8 tensors; the two
sides are identical copies with the same optimizer and schedule, so the gap is the recipe's own cost. Each
must cost at most 5% of a step: an EMA or a clip should never be what makes a recipe slow.
"""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

# the same step as the train-step benchmark's: its batches, optimizer and schedule
from test_train_step import BATCH, CLASSES, ROUNDS, STEPS, WARMUP, make_batches, make_training

from bench.config import TrainConfig
from bench.data.loaders import Preprocess
from bench.models.builtins import SmallCNN
from bench.techniques.ema import EmaUpdate
from bench.techniques.regularise import grad_clipper
from bench.train import train_one_epoch

MAX_RATIO = 1.05


def recipe(name: str, model: torch.nn.Module) -> dict:
    """train_one_epoch's keyword arguments for the recipe, built as fit builds them."""
    if name == "ema":
        return {"after_step": EmaUpdate(model, TrainConfig(ema=True))}
    clip, _ = grad_clipper(model, 1.0, "norm")
    return {"clip": clip}


@pytest.mark.parametrize("name", ["ema", "clip_norm"])
def test_recipe_overhead(benchmark, name):
    torch.manual_seed(0)
    reference = SmallCNN(num_classes=CLASSES)
    batches = make_batches()
    prep = Preprocess(torch.device("cpu"))

    r_model, p_model = copy.deepcopy(reference), copy.deepcopy(reference)
    r_opt, r_sched = make_training(r_model)
    p_opt, p_sched = make_training(p_model)
    extra = recipe(name, r_model)
    r_times: list[float] = []
    p_times: list[float] = []

    # pedantic calls `setup` (untimed by it) before every round, warm-up included, so running the
    # plain step there interleaves the two sides one-for-one: background load hits both alike.
    def run_plain() -> None:
        start = time.perf_counter()
        train_one_epoch(p_model, batches, p_opt, p_sched, F.cross_entropy, prep)
        p_times.append(time.perf_counter() - start)

    def run_recipe() -> dict[str, float]:
        start = time.perf_counter()
        out = train_one_epoch(r_model, batches, r_opt, r_sched, F.cross_entropy, prep, **extra)
        r_times.append(time.perf_counter() - start)
        return out

    result = benchmark.pedantic(run_recipe, setup=run_plain, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert result["images"] == BATCH * STEPS
    if name == "ema":  # it did the work it is timed for
        assert extra["after_step"].updates == STEPS * (ROUNDS + WARMUP)

    r_med = statistics.median(r_times[-ROUNDS:])
    p_med = statistics.median(p_times[-ROUNDS:])
    ratio = r_med / p_med
    per_step = (r_med - p_med) / STEPS
    benchmark.extra_info.update(plain_median_s=p_med, recipe_median_s=r_med, ratio=ratio)
    print(f"\n{name}: {r_med * 1e3:.1f} ms, plain {p_med * 1e3:.1f} ms per {STEPS} steps, ratio {ratio:.3f} "
          f"({per_step * 1e3:+.2f} ms a step)")
    assert ratio <= MAX_RATIO, (
        f"{name} epoch {r_med * 1e3:.1f} ms vs plain {p_med * 1e3:.1f} ms: ratio {ratio:.3f} > {MAX_RATIO}")
