"""Tuning overhead: what [tune]'s own machinery costs (Optuna's ask and tell, the journal file, the trials'
reports to their study after every epoch, building trial cells, selection, the records) against the training
it organises, on the quickstart's small CNN and data (32 px, 2,000 images, batch 32) with TPE and the median
pruner, trials in their own processes as `bench run` runs them.

The figure is the contenders' records' own accounting (cost.tuning_overhead_s over cost.train_time_s); the
process start, data loading and model building of each trial are the runner's, paid by any cell, and are
printed apart as what the run spent outside training and tuning. Tuning must cost at most 5% of the training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.cell import RunOptions
from bench.config import load_suite
from bench.progress import LogProgress
from bench.suite import expand
from bench.tune.waves import tune_suite

QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.toml"
EPOCHS, TRIALS = 3, 4
MAX_RATIO = 0.05

TUNE = f"""
[tune]
space = {{"train.lr" = {{low = 3e-4, high = 1e-2, log = true}}, "train.weight_decay" = {{low = 1e-3, high = 0.1, log = true}}}}
trials = {TRIALS}
sampler = "tpe"
startup_trials = 2
pruner = "median"
pruner_startup_trials = 1
"""


def _suite(tmp_path: Path) -> Path:
    text = QUICKSTART.read_text()
    for old, new in (("epochs = 10", f"epochs = {EPOCHS}"), ('["none", "crop_flip"]', '["none"]'),
                     ('"model.arch" = ["bench:mlp", "bench:small_cnn", "timm:regnetx_002"]',
                      '"model.arch" = ["bench:small_cnn"]')):
        assert old in text, f"the quickstart suite no longer has {old}: update this benchmark"
        text = text.replace(old, new)
    path = tmp_path / "quickstart_tuned.toml"
    path.write_text(text + TUNE)
    return path


def test_tune_overhead(benchmark, tmp_path):
    path = _suite(tmp_path)
    spec = load_suite(path)
    cells = expand(spec)
    assert len(cells) == 1

    def run() -> tuple[dict, float]:
        start = time.perf_counter()
        tune_suite(spec, path.read_text(), cells, tmp_path / "results", device="cpu",
                   progress=LogProgress(open(os.devnull, "w")), options=RunOptions(force=True))
        wall = time.perf_counter() - start
        record = json.loads((tmp_path / "results" / spec.suite.name / "tune" / f"{cells[0].id}.json").read_text())
        return record, wall

    record, wall = benchmark.pedantic(run, rounds=1, iterations=1)
    cost = record["cost"]
    assert cost["trials"] == TRIALS and record["chosen"]
    ratio = cost["tuning_overhead_s"] / cost["train_time_s"]
    outside = wall - cost["train_time_s"] - cost["tuning_overhead_s"] - (cost["test_eval_s"] or 0.0)
    benchmark.extra_info.update(ratio=ratio, **cost, wall_s=wall)
    print(f"\ntuning {cost['tuning_overhead_s']:.3f} s for {cost['trials']} trials ({cost['pruned']} pruned), "
          f"training {cost['train_time_s']:.1f} s: ratio {ratio:.4f}; test of the chosen trial "
          f"{cost['test_eval_s'] or 0.0:.2f} s; wall {wall:.1f} s, of which {outside:.1f} s the runner's (processes, "
          "data, models, evaluation)")
    assert ratio <= MAX_RATIO, f"tuning overhead {ratio:.3f} of training time > {MAX_RATIO}"
