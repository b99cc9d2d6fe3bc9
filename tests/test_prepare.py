"""Preparing a run (bench.prepare): `bench prepare` builds every split and set of initial weights a suite's
cells need and estimates their costs; a parallel run does the same first and starts its longest cells first,
parents still before their children; the cells then reuse what was built, bit for bit."""

from __future__ import annotations

import json
import os
import time

import pytest

import bench.executors
from bench.cell import Outcome, RunOptions
from bench.config import load_suite
from bench.executors import make_executor
from bench.prepare import longest_first, prepare_cells
from bench.suite import expand
from tests.support import run_file

# listed small first: the estimates must reverse it (small_cnn's forward costs ~10x the MLP's at 16 px)
CELLS = """
[model]
arch = "bench:mlp"

[[cells]]
label = "small"
"train.epochs" = 1

[[cells]]
label = "medium"
"train.epochs" = 4

[[cells]]
label = "large"
"model.arch" = "bench:small_cnn"
"train.epochs" = 4

[[cells]]
label = "child"
"model.init_from" = "small"
"train.epochs" = 8
"""


@pytest.fixture
def suite(write_suite):
    return write_suite(CELLS)


def _labels(cells) -> list[str]:
    return [c.label.split()[0] for c in cells]


def test_costs_scale_with_epochs_and_the_network_and_order_the_cells_longest_first(suite, tmp_path):
    cells = expand(load_suite(suite))
    prepared = prepare_cells(cells, tmp_path / "tiny")
    cost = {c.label.split()[0]: prepared.costs[c.id] for c in cells}
    assert cost["medium"] == pytest.approx(4 * cost["small"]) and cost["large"] > 5 * cost["medium"]
    assert not prepared.failed and prepared.pid == os.getpid()
    # the child is the dearest (8 epochs) but starts after its parent; among the rest, the dearest first
    assert _labels(longest_first(cells, prepared.costs)) == ["large", "medium", "small", "child"]
    unknown = {k: v for k, v in prepared.costs.items() if k != cells[0].id}  # "small" not estimated: first
    assert _labels(longest_first(cells, unknown))[0] == "small"


def test_bench_prepare_builds_what_the_cells_reuse(cli, suite, tmp_path):
    code, out, err = cli("prepare", suite, "--results", tmp_path)
    assert code == 0, err
    assert "4 of 4 cell(s) prepared" in err and "training (est.)" in out
    suite_dir = tmp_path / "tiny"
    built = {p: p.stat().st_mtime_ns for p in [*(suite_dir / "splits").iterdir(), *(suite_dir / "init").iterdir()]}
    assert len([p for p in built if p.suffix == ".safetensors"]) == 2  # one per architecture: the MLPs share theirs
    assert not (suite_dir / "run.json").exists()  # preparing is not a run
    summary = run_file(suite, tmp_path, options=RunOptions(isolate=False), log=open(os.devnull, "w"))
    assert len(summary.ran) == 4 and not summary.failed
    assert {p: p.stat().st_mtime_ns for p in built} == built  # reused as they were, nothing rebuilt


def test_a_cell_that_cannot_be_prepared_is_left_to_fail_on_its_own(write_suite, tmp_path):
    path = write_suite('[[cells]]\nlabel = "ok"\n\n[[cells]]\nlabel = "bad"\n"model.pretrained" = "nowhere.pt"\n')
    cells = expand(load_suite(path))
    said: list[str] = []
    prepared = prepare_cells(cells, tmp_path / "tiny", said.append)
    assert list(prepared.costs) == [cells[0].id] and list(prepared.failed) == [cells[1].id]
    assert len(said) == 1 and said[0].startswith("[bench] bad") and "nowhere.pt" in said[0]


def test_a_parallel_run_prepares_first_and_starts_the_longest_cell_first(suite, tmp_path, monkeypatch):
    started, events = [], []

    def fake(job, *after):  # each cell's number is its place in the order the pool submits them in
        label = job.cell.label.split()[0]
        started.append((job.index, label))
        events.append(("start", label))
        time.sleep(0.05)
        events.append(("end", label))
        return Outcome(job.cell.id, "ok")

    monkeypatch.setattr(bench.executors, "run_job", fake)
    summary = run_file(suite, tmp_path, executor=make_executor("local", jobs=2), log=open(os.devnull, "w"))
    assert len(summary.ran) == 4
    assert [label for _, label in sorted(started)] == ["large", "medium", "small", "child"]
    assert events.index(("end", "small")) < events.index(("start", "child"))  # the parent finished first
    run = json.loads((tmp_path / "tiny" / "run.json").read_text())
    assert run["prepared"]["pid"] == os.getpid() and len(run["prepared"]["costs"]) == 4


def test_a_larger_image_costs_more_whatever_the_initial_weights_share(write_suite, tmp_path):
    """torchvision's and timm's weights do not depend on the image size, so two sizes share them: the
    estimate must not."""
    cells = expand(load_suite(write_suite('[model]\narch = "tv:resnet18"\n\n[grid]\n"data.image_size" = [16, 32]\n')))
    costs = prepare_cells(cells, tmp_path / "tiny").costs
    small, large = (costs[c.id] for c in sorted(cells, key=lambda c: c.config.data.image_size))
    assert large > 2 * small  # (4x the pixels; at 16 px the last stages already see one pixel)
