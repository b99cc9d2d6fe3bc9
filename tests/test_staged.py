"""Staged cells (model.init_from): a cell starts from another cell's best weights; parents run first."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bench import execute
from bench.cell import RunOptions
from bench.config import load_suite
from bench.errors import UserError
from bench.suite import expand
from tests.support import run_file

# Study 000's staging: a head trained on cached features, then the last convolution fine-tuned from it,
# then (here) everything. The child is listed first: the order in the file does not matter.
STAGED = """
    [model]
    head_hidden = [16]
    head_dropout = 0.5

    [[cells]]
    label = "finetune"
    "model.init_from" = "extract"
    "model.freeze" = "last_conv:1"

    [[cells]]
    label = "extract"
    "model.freeze" = "features"

    [[cells]]
    label = "all"
    "model.init_from" = "finetune"
"""


def test_cells_are_ordered_parents_first_and_linked_per_seed(write_suite):
    path = write_suite(STAGED)
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    cells = expand(load_suite(path))
    order = [(c.explicit_label, c.seed) for c in cells]
    assert sorted(order) == sorted((label, seed) for label in ("extract", "finetune", "all") for seed in (0, 1))
    for seed in (0, 1):
        assert order.index(("extract", seed)) < order.index(("finetune", seed)) < order.index(("all", seed))
    ids = {(c.explicit_label, c.seed): c.id for c in cells}
    for c in cells:
        expected = {"finetune": ("extract", c.seed), "all": ("finetune", c.seed)}.get(c.explicit_label)
        assert c.parent == (ids[expected] if expected else None)


def test_a_staged_cell_starts_from_its_parents_best_weights(write_suite, tmp_path, monkeypatch):
    started = {}
    real_fit = execute.fit

    def spy(model, *a, **k):
        started[len(started)] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_fit(model, *a, **k)

    monkeypatch.setattr(execute, "fit", spy)
    path = write_suite(STAGED)
    summary = run_file(path, tmp_path / "r", options=RunOptions(isolate=False))
    assert not summary.failed and len(summary.ran) == 3
    extract, finetune, everything = (summary.suite_dir / c for c in summary.ran)
    results = [json.loads((d / "result.json").read_text()) for d in (extract, finetune, everything)]
    assert "parent" not in results[0]
    assert results[1]["parent"]["id"] == extract.name and results[2]["parent"]["id"] == finetune.name
    assert json.loads((finetune / "cell.json").read_text())["parent"] == extract.name

    # the features parent saved its head only: it goes into the child's head, the backbone is the initial one
    head = load_file(str(extract / "best.safetensors"))
    init = load_file(str(next((summary.suite_dir / "init").glob("*.safetensors"))))
    child = started[1]
    assert set(child) == set(init)
    assert all(torch.equal(child[f"head.{k}"], v) for k, v in head.items())
    assert all(torch.equal(child[k], v) for k, v in init.items() if not k.startswith("head."))
    assert not all(torch.equal(child[f"head.{k}"], init[f"head.{k}"]) for k in head)  # the parent did train
    # a full parent: every tensor
    best = load_file(str(finetune / "best.safetensors"))
    assert set(started[2]) == set(best) and all(torch.equal(started[2][k], v) for k, v in best.items())


def test_only_a_child_needs_its_parent_finished(write_suite, tmp_path, cli):
    path = write_suite(STAGED)
    code, _, err = cli("run", path, "--only", "finetune", "--results", tmp_path / "r")
    assert code == 2 and "model.init_from" in err and "has not finished" in err and "--only" in err
    assert cli("run", path, "--only", "extract", "--results", tmp_path / "r")[0] == 0
    code, _, err = cli("run", path, "--only", "finetune", "--results", tmp_path / "r")
    assert code == 0, err


def test_plan_shows_what_each_cell_starts_from(write_suite, cli):
    code, out, _ = cli("plan", write_suite(STAGED))
    assert code == 0 and "starts from" in out
    rows = {line.split("|")[2].strip(): line for line in out.splitlines() if line.startswith("| ")}
    extract_id = rows["extract"].split("|")[1].strip()
    assert f"{extract_id} (extract)" in rows["finetune"]


@pytest.mark.parametrize("cells,key,message", [
    ('[[cells]]\nlabel = "a"\n"model.init_from" = "b"\n[[cells]]\nlabel = "b"\n"model.init_from" = "a"\n',
     "cells[1].model.init_from", "cycle (a -> b -> a)"),
    ('[[cells]]\nlabel = "a"\n"model.init_from" = "a"\n', "cells[0].model.init_from", "cycle (a -> a)"),
    ('[[cells]]\nlabel = "base"\n[[cells]]\nlabel = "ft"\n"model.init_from" = "bsae"\n',
     "cells[1].model.init_from", "'bsae' is not the label"),
    ('[[cells]]\nlabel = "base"\n[[cells]]\nlabel = "ft"\n"model.init_from" = "base"\n"model.arch" = "bench:mlp"\n',
     "cells[1].model.init_from", "cannot start from"),
])
def test_bad_init_from_is_a_load_time_error_naming_the_key(write_suite, cells, key, message):
    with pytest.raises(UserError) as e:
        expand(load_suite(write_suite(cells)))
    assert e.value.key == key and message in str(e.value)
