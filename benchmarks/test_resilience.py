"""What surviving a kill costs: epoch checkpoints, and one child process per cell.

Checkpoints: quickstart's cells (the real suite: 1,400 training images at 32 px, 10 epochs) trained with
and without a checkpoint after every epoch, alternately, in this process; the ratio of the medians must stay
at most 1.05. Processes: the same smoke suite run with each cell in a child process and in this process;
the difference per cell (the fork server's start included) must stay under 2 s.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from bench import runner
from bench.config import load_suite
from bench.progress import LogProgress
from bench.smoke import smoke_suite
from bench.suite import expand

QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.toml"
MAX_CHECKPOINT_RATIO = 1.05
MAX_PROCESS_S = 2.0
ROUNDS = 3


def _run(cells, results: Path, **options) -> float:
    start = time.perf_counter()
    summary = runner.run_suite(QUICKSTART.read_text(), "quickstart", cells, results, device="cpu",
                               progress=LogProgress(open("/dev/null", "w")),
                               options=runner.RunOptions(force=True, **options))
    assert len(summary.ran) == len(cells), summary.failed
    return time.perf_counter() - start


@pytest.mark.parametrize("arch", ["bench:mlp", "bench:small_cnn", "timm:regnetx_002"])
def test_checkpoint_cost(benchmark, tmp_path, arch):
    cells = [c for c in expand(load_suite(QUICKSTART)) if c.config.model.arch == arch and
             c.config.train.augment == "none"]
    off: list[float] = []
    _run(cells, tmp_path, checkpoint=False, isolate=False)  # data, initial weights: built outside the timing
    result = benchmark.pedantic(lambda: _run(cells, tmp_path, checkpoint=True, isolate=False),
                                setup=lambda: off.append(_run(cells, tmp_path, checkpoint=False, isolate=False)),
                                rounds=ROUNDS, warmup_rounds=0)
    on = benchmark.stats.stats.data
    ratio = statistics.median(on) / statistics.median(off)
    benchmark.extra_info.update(off_median_s=statistics.median(off), on_median_s=statistics.median(on), ratio=ratio)
    print(f"\n{arch}: checkpointing every epoch {statistics.median(on):.2f} s vs off {statistics.median(off):.2f} s "
          f"per cell: ratio {ratio:.3f}")
    assert result > 0 and ratio <= MAX_CHECKPOINT_RATIO


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
