"""What surviving a kill costs: epoch checkpoints, and one child process per cell.

Checkpoints: quickstart's cells (the real suite: 1,400 training images at 32 px, 10 epochs) trained with
and without checkpoints, alternately, in this process. Two figures: the time the cell spent writing
checkpoints (every save timed by bench itself, `cost.checkpoint_time_s`) as a share of its training time,
which must stay at most 5%; and the ratio of the median cell wall times on and off, printed beside it (on a
shared VM cell times wander by ±10% between rounds, so the ratio reads noise as well as the cost and is not
asserted). Processes: the same smoke suite run with each cell in a child process and in this process; the
difference per cell (the fork server's start included) must stay under 2 s.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from bench.cell import RunOptions
from bench.config import load_suite
from bench.progress import LogProgress
from bench.runner import run_suite
from bench.smoke import smoke_suite
from bench.suite import expand

QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.toml"
MAX_CHECKPOINT_SHARE = 0.05
MAX_PROCESS_S = 2.0
ROUNDS = 3


def _run(cells, results: Path, **options) -> float:
    start = time.perf_counter()
    summary = run_suite(QUICKSTART.read_text(), "quickstart", cells, results, device="cpu",
                               progress=LogProgress(open("/dev/null", "w")),
                               options=RunOptions(force=True, **options))
    assert len(summary.ran) == len(cells), summary.failed
    return time.perf_counter() - start


@pytest.mark.parametrize("arch", ["bench:mlp", "bench:small_cnn", "timm:regnetx_002"])
def test_checkpoint_cost(benchmark, tmp_path, arch):
    cells = [c for c in expand(load_suite(QUICKSTART)) if c.config.model.arch == arch and
             c.config.train.augment == "none"]
    off: list[float] = []
    shares: list[float] = []

    def on() -> float:
        wall = _run(cells, tmp_path, checkpoint=True, isolate=False)
        cost = json.loads((tmp_path / "quickstart" / cells[0].id / "result.json").read_text())["cost"]
        shares.append(cost["checkpoint_time_s"] / cost["train_time_s"])
        return wall

    _run(cells, tmp_path, checkpoint=False, isolate=False)  # data, initial weights: built outside the timing
    benchmark.pedantic(on, setup=lambda: off.append(_run(cells, tmp_path, checkpoint=False, isolate=False)),
                       rounds=ROUNDS, warmup_rounds=0)
    walls = benchmark.stats.stats.data
    ratio = statistics.median(walls) / statistics.median(off)
    share = statistics.median(shares)
    benchmark.extra_info.update(off_median_s=statistics.median(off), on_median_s=statistics.median(walls),
                                ratio=ratio, checkpoint_share=share)
    print(f"\n{arch}: writing checkpoints took {share:.2%} of training time (median of {ROUNDS}); cell wall "
          f"time with checkpoints {statistics.median(walls):.2f} s vs without {statistics.median(off):.2f} s: "
          f"ratio {ratio:.3f}")
    assert share <= MAX_CHECKPOINT_SHARE


def test_process_per_cell_overhead(benchmark, tmp_path):
    cells = expand(smoke_suite(load_suite(QUICKSTART)))
    inline: list[float] = []
    _run(cells, tmp_path, isolate=False)
    benchmark.pedantic(lambda: _run(cells, tmp_path, isolate=True),
                       setup=lambda: inline.append(_run(cells, tmp_path, isolate=False)), rounds=ROUNDS)
    isolated = benchmark.stats.stats.data
    per_cell = (statistics.median(isolated) - statistics.median(inline)) / len(cells)
    benchmark.extra_info.update(cells=len(cells), per_cell_s=per_cell)
    print(f"\n{len(cells)} smoke cells: {statistics.median(isolated):.2f} s in child processes vs "
          f"{statistics.median(inline):.2f} s in one: {per_cell:+.3f} s per cell")
    assert per_cell <= MAX_PROCESS_S
