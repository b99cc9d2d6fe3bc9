"""What spreading a suite buys on this machine: the quickstart's six cells (at EPOCHS epochs, so the three
runs fit in minutes) run one after another, with `--jobs 2`, and as Ray tasks on a local two-CPU instance,
in one benchmark session, each from a warm cache (data decoded, initial weights saved) so only training and
the executor are timed.

The honest bound on a 2-core machine is neither 2x nor the cell count: two cells at once each get one core,
and the wall time cannot drop below the longest cell at one thread (the critical path). The benchmark
prints the ratio, that bound, and Ray's overhead per cell against `--jobs 2`; it asserts only that two jobs
are not slower than one, and that Ray costs at most MAX_RAY_S more per cell than the local pool.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.cell import RunOptions
from bench.config import Resources, load_suite
from bench.executors import make_executor
from bench.progress import LogProgress
from bench.runner import run_suite
from bench.suite import expand

QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.toml"
EPOCHS = 4
MAX_RAY_S = 5.0


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "quickstart.toml"
    path.write_text(QUICKSTART.read_text().replace("epochs = 10", f"epochs = {EPOCHS}"))
    return path


def _timed(path: Path, results: Path, executor, threads: int | None) -> tuple[float, dict[str, float], float]:
    """(wall time, each cell's own time, seconds from the start until the first cell began training)."""
    spec = load_suite(path)
    cells = expand(spec)
    start, clock = time.perf_counter(), time.time()
    summary = run_suite(path.read_text(), spec.suite.name, cells, results, device="cpu",
                        progress=LogProgress(open(os.devnull, "w")), options=RunOptions(force=True, threads=threads),
                        executor=executor)
    wall = time.perf_counter() - start
    assert len(summary.ran) == len(cells), summary.failed
    cell_s, began = {}, []
    for c in cells:
        result = results / spec.suite.name / c.id / "result.json"
        cell_s[c.label] = json.loads(result.read_text())["cost"]["wall_time_s"]
        began.append(result.stat().st_mtime - cell_s[c.label] - clock)  # the record is written as fit returns
    return wall, cell_s, min(began)


def test_jobs_and_ray_against_sequential(benchmark, tmp_path):
    ray = pytest.importorskip("ray")
    path = _suite(tmp_path)
    cores = len(os.sched_getaffinity(0))
    _timed(path, tmp_path / "warm", make_executor("local", jobs=1), None)  # decode, split, initial weights
    sequential, seq_cells, _ = _timed(path, tmp_path / "seq", make_executor("local", jobs=1), None)
    jobs, job_cells, job_first = benchmark.pedantic(
        lambda: _timed(path, tmp_path / "jobs", make_executor("local", jobs=2), None), rounds=1, iterations=1)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level="warning", log_to_driver=False)
    try:
        on_ray, _, ray_first = _timed(path, tmp_path / "ray", make_executor("ray", jobs=2, resources=Resources(cpus=1)),
                                      None)
    finally:
        ray.shutdown()
    critical = max(job_cells.values())  # the longest cell at the threads each job gets
    ideal = max(critical, sum(job_cells.values()) / 2)
    ray_per_cell = (on_ray - jobs) / len(job_cells)
    after_start = ((on_ray - ray_first) - (jobs - job_first)) / len(job_cells)
    benchmark.extra_info.update(sequential_s=sequential, jobs2_s=jobs, ray_s=on_ray, ratio=jobs / sequential,
                                bound_s=ideal, ray_overhead_per_cell_s=ray_per_cell, cores=cores,
                                first_cell_jobs_s=job_first, first_cell_ray_s=ray_first)
    print(f"\n{len(job_cells)} cells, {EPOCHS} epochs, {cores} cores: sequential {sequential:.1f} s "
          f"(cells {sum(seq_cells.values()):.1f} s at {cores} threads); --jobs 2 {jobs:.1f} s = {jobs / sequential:.2f}x "
          f"(cells {sum(job_cells.values()):.1f} s at 1 thread; bound max(longest cell, half the sum) = {ideal:.1f} s, "
          f"{ideal / sequential:.2f}x); Ray {on_ray:.1f} s = {on_ray / sequential:.2f}x, {ray_per_cell:+.2f} s per "
          f"cell against --jobs 2. First cell training after {job_first:.1f} s (--jobs 2) vs {ray_first:.1f} s (Ray: "
          f"its workers import torch, then their fork servers do); after that Ray costs {after_start:+.2f} s a cell")
    assert jobs <= sequential * 1.05
    assert ray_per_cell <= MAX_RAY_S
