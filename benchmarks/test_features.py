"""Feature extraction (model.freeze = "features") against the same frozen backbone run in the loop.

Two 10-epoch cells that differ only in the freeze mode: `all_but_head` runs the frozen ResNet-18 forward on
every training and validation batch of every epoch; `features` runs it once per image, caches the result,
and trains the head on it. Whole cells are timed (run_cell, wall clock: data, weights, extraction, training,
evaluation, records). "cold" extracts the features (cache emptied before each round); "warm" finds them
cached, as every further cell with the same backbone, weights and data does.

The loop runs the backbone over (train + val) x 10 epochs + val + test = 0.85 x 10 + 0.3 = 8.8 passes of the
data, extraction over 1. A frozen backbone in the loop already skips its backward, so at equal cost per
image 8.8x is the bound, less the costs every cell pays once (data, weights, head training, evaluation,
records: the warm cell's 0.27-0.55 s). Extraction beats equal cost only by what batching and channels-last
buy on the CPU, 1.05-1.2x per image on a 2-core AMD EPYC (bf16 would buy 2x, but an fp32 cell's features
must be its fp32 backbone's: a bf16 cell extracts in bf16, as its loop runs the backbone). Issue 4's 8x
therefore failed by design: 7.5x and 7.9x on that EPYC (7.3x in batches of 256), 5.4x on an Intel Xeon in
batches of 256, where extraction was slower per image than the loop. The targets are what the design
promises, derived from this machine's own loop: cold, extraction costs no more per image than the loop's
forward passes (the cold ratio then reaches at least loop / (warm + one loop pass), 7.2x on that EPYC);
warm, no backbone pass at all, so at least the pass count.
"""

from __future__ import annotations

import shutil
import statistics
import textwrap
import time

import pytest
import torch

from bench.config import load_suite
from bench.data.cachedir import cache_root
from bench.execute import run_cell
from bench.progress import LogProgress
from bench.suite import expand

ROUNDS = 2
SUITE = """
[suite]
name = "features-bench"

[data]
image_size = 64
crop_pct = 1.0  # the generated 64 px images as they are: no upsampling to 73 px for the evaluation view

[data.synthetic]
classes = 10
images = 600
size = 64

[model]
arch = "tv:resnet18"

[train]
epochs = 10
batch_size = 64
optimizer = "adam"
lr = 0.003

[[cells]]
label = "loop"
"model.freeze" = "all_but_head"

[[cells]]
label = "features"
"model.freeze" = "features"
"""


@pytest.fixture
def cells(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "suite.toml"
    path.write_text(textwrap.dedent(SUITE))
    return {c.explicit_label: c for c in expand(load_suite(path))}, tmp_path / "results"


def timed(cell, suite_dir) -> tuple[float, dict]:
    start = time.perf_counter()
    record = run_cell(cell, suite_dir, torch.device("cpu"), LogProgress())
    return time.perf_counter() - start, record


def test_feature_extraction_vs_frozen_backbone_in_the_loop(benchmark, cells):
    by_label, suite_dir = cells
    features_dir = cache_root() / "features"
    timed(by_label["features"], suite_dir)  # warm-up: generates and decodes the data, saves the initial weights
    loop_times: list[float] = []
    loop_records: list[dict] = []

    # The loop cell runs in `setup` (untimed by pedantic, timed here), so the two sides alternate and
    # background load hits both alike; the feature cache is emptied there too, so every round is cold.
    def run_loop() -> None:
        seconds, record = timed(by_label["loop"], suite_dir)
        loop_times.append(seconds)
        loop_records.append(record)
        shutil.rmtree(features_dir, ignore_errors=True)

    cold_times: list[float] = []

    def run_features() -> dict:
        seconds, record = timed(by_label["features"], suite_dir)
        cold_times.append(seconds)
        return record

    record = benchmark.pedantic(run_features, setup=run_loop, rounds=ROUNDS)
    assert record["features"]["computed"] == ["train", "val", "test"]  # cold indeed
    warm_seconds, warm = timed(by_label["features"], suite_dir)
    assert warm["features"]["computed"] == []
    # same numbers both ways (see tests/test_features.py), so the speed is not bought with accuracy
    assert record["metrics"]["test"]["top1_error"] == loop_records[-1]["metrics"]["test"]["top1_error"]

    loop_s, cold_s = statistics.median(loop_times), statistics.median(cold_times)
    cold_ratio, warm_ratio = loop_s / cold_s, loop_s / warm_seconds
    images, epochs = loop_records[-1]["data"]["images"], loop_records[-1]["epochs_run"]
    passes = (epochs * (images["train"] + images["val"]) + images["val"] + images["test"]) / sum(images.values())
    # the loop's time for one pass of the data, the costs every cell pays once (the warm cell's) taken out
    loop_pass_s = (loop_s - warm_seconds) / passes
    equal_cost = loop_s / (warm_seconds + loop_pass_s)  # the cold ratio if extraction cost what the loop does
    benchmark.extra_info.update(loop_s=loop_s, features_cold_s=cold_s, features_warm_s=warm_seconds,
                                extract_s=record["features"]["extract_s"], cold_ratio=cold_ratio,
                                warm_ratio=warm_ratio, passes=passes, equal_cost_ratio=equal_cost)
    print(f"\n10-epoch cell, tv:resnet18 frozen, 64 px, 600 images: loop {loop_s:.2f} s ({passes:.1f} passes), "
          f"features cold {cold_s:.2f} s ({cold_ratio:.1f}x; {equal_cost:.1f}x at the loop's cost per image; "
          f"extraction {loop_pass_s / (cold_s - warm_seconds):.2f}x the loop's speed), warm {warm_seconds:.2f} s "
          f"({warm_ratio:.1f}x)")
    assert warm_ratio >= passes, f"cached features only {warm_ratio:.2f}x faster than the loop's {passes:.1f} passes"
    assert cold_ratio >= equal_cost, (f"features cold only {cold_ratio:.2f}x faster than the loop: extraction "
                                      f"costs more per image than the loop's forward ({equal_cost:.2f}x)")
