"""One cell as 2 ranks of torch.distributed (gloo, one thread each) against the same cell in one process
(two threads), at the same global batch, on this machine's cores: the epoch time of each and the start-up a
cell of ranks pays (its helper's process, the group's rendezvous).

On a CPU this cannot show what DDP buys on GPUs — two ranks share the cores one process already used — so
the benchmark reports the ratio and asserts only that splitting the batch does not cost more than
MAX_RATIO: the gradients' all-reduce and the sharded evaluation's gather stay small beside the training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.cell import RunOptions
from bench.config import Resources, load_suite
from bench.executors import make_executor
from bench.progress import LogProgress
from bench.runner import run_suite
from bench.suite import expand

QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.toml"
EPOCHS = 3
MAX_RATIO = 2.0


def _cell(tmp_path: Path) -> Path:
    """The quickstart's small CNN with crop_flip, alone, at EPOCHS epochs."""
    text = QUICKSTART.read_text().replace("epochs = 10", f"epochs = {EPOCHS}")
    text = text[:text.index("[grid]")].replace('freeze = "none"', 'freeze = "none"\narch = "bench:small_cnn"')
    text = text.replace('schedule = "cosine"', 'schedule = "cosine"\naugment = "crop_flip"')
    path = tmp_path / "cell.toml"
    path.write_text(text)
    return path


def _timed(path: Path, results: Path, ranks: int) -> dict[str, float]:
    spec = load_suite(path)
    cells = expand(spec)
    resources = Resources(processes=ranks)
    start = time.perf_counter()
    summary = run_suite(path.read_text(), spec.suite.name, cells, results, device="cpu",
                        progress=LogProgress(open(os.devnull, "w")),
                        options=RunOptions(force=True, threads=max(1, len(os.sched_getaffinity(0)) // ranks)),
                        executor=make_executor("local", resources=resources))
    wall = time.perf_counter() - start
    assert summary.ran and not summary.failed, summary.failed
    record = json.loads((results / spec.suite.name / summary.ran[0] / "result.json").read_text())
    assert record["env"]["world_size"] == ranks
    return {"wall_s": wall, "epoch_s": record["cost"]["time_per_epoch_s"],
            "cell_s": record["cost"]["wall_time_s"], "val_error": record["metrics"]["val"]["top1_error"]}


def test_two_ranks_against_one_process(benchmark, tmp_path):
    path = _cell(tmp_path)
    _timed(path, tmp_path / "warm", 1)  # decode, split, initial weights
    one = _timed(path, tmp_path / "one", 1)
    two = benchmark.pedantic(lambda: _timed(path, tmp_path / "two", 2), rounds=1, iterations=1)
    ratio = two["epoch_s"] / one["epoch_s"]
    benchmark.extra_info.update(one=one, two=two, epoch_ratio=ratio)
    print(f"\nsmall CNN, quickstart data, {EPOCHS} epochs: one process at 2 threads {one['epoch_s']:.2f} s an epoch "
          f"(run {one['wall_s']:.1f} s); 2 ranks at 1 thread {two['epoch_s']:.2f} s an epoch = {ratio:.2f}x "
          f"(run {two['wall_s']:.1f} s); val_error {one['val_error']:.4f} vs {two['val_error']:.4f}")
    assert ratio <= MAX_RATIO
