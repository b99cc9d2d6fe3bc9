"""The command line around a suite file: `bench status` reading a results folder offline, KEY=VALUE
overrides (set, validated and recorded as the file's own keys are), and `bench plan --show-config`."""

from __future__ import annotations

import tomllib

import pytest

from bench import api
from bench.config import flatten
from tests.conftest import TINY
from tests.support import offline


@pytest.mark.parametrize("needs", ["hub weights", "data"])
def test_status_needs_no_weights_data_or_network(needs, write_suite, tmp_path, monkeypatch, cli):
    offline(monkeypatch, tmp_path)
    if needs == "hub weights":
        path, refusal = write_suite('[model]\narch = "tv:alexnet"\npretrained = true\n'), "cannot fetch pretrained"
    else:
        path, refusal = write_suite(f'[data]\nsource = "folder"\nroot = "{tmp_path / "nowhere"}"\n',
                                    base='[suite]\nname = "elsewhere"\n'), "does not exist"
    code, _, err = cli("plan", path)
    assert code == 2 and refusal in err  # what a run needs
    code, out, err = cli("status", path, "--results", tmp_path / "r")
    assert code == 0, err
    assert "not started" in out and "1 not started" in err


def test_data_inspect_needs_no_weights_or_network(write_suite, tmp_path, monkeypatch, cli):
    offline(monkeypatch, tmp_path)
    code, out, err = cli("data", "inspect", write_suite('[model]\narch = "tv:alexnet"\npretrained = true\n'))
    assert code == 0, err
    assert "120" in out  # TINY's images


def ids(path, overrides=()) -> list[str]:
    return [c.id for c in api.plan(path, overrides=overrides, check=False).cells]


def test_overrides_set_keys_and_grid_axes_as_the_file_would(write_suite):
    given = ["train.lr=0.1", "model.arch=bench:mlp", 'grid."train.epochs"=[1, 2]', "data.synthetic.classes = 3"]
    edited = write_suite('[grid]\n"train.epochs" = [1, 2]\n[model]\narch = "bench:mlp"\n',
                         base=TINY.replace("lr = 0.003", "lr = 0.1").replace("classes = 4", "classes = 3"),
                         name="edited.toml")
    path = write_suite()
    assert ids(path, given) == ids(edited) != ids(path)
    unquoted = ["grid.train.epochs=[1, 2]" if "grid" in o else o for o in given]  # as the file may write it
    assert ids(path, unquoted) == ids(edited)


TUNED = TINY + '[tune]\ntrials = 2\nspace."train.lr" = {low = 0.001, high = 0.1, log = true}\n'
BAD = [  # an override, and the suite file that makes the same mistake
    ("train.lrr=0.1", TINY + "lrr = 0.1\n"),  # TINY ends in [train]
    ("train.schedule=cosine2", TINY + 'schedule = "cosine2"\n'),
    ("train.epochs=two", TINY.replace("epochs = 2", 'epochs = "two"')),
    ("trian.lr=0.1", TINY + "[trian]\nlr = 0.1\n"),
    ('grid."model.arch"=["tv:resnet500"]', TINY + '[grid]\n"model.arch" = ["tv:resnet500"]\n'),
    ("grid.train.lr=0.1", TINY + '[grid]\n"train.lr" = 0.1\n'),
    ("tune.trials=0", TUNED.replace("trials = 2", "trials = 0")),
    ('tune.space."train.lr".low=abc', TUNED.replace("low = 0.001", 'low = "abc"')),
    ('tune.space."train.lr"={low=1,high=0.1}', TUNED.replace("{low = 0.001, high = 0.1, log = true}",
                                                             "{low = 1, high = 0.1}")),
]


@pytest.mark.parametrize("override, mistaken", BAD, ids=[o for o, _ in BAD])
def test_a_bad_override_is_the_files_own_error_naming_the_override(override, mistaken, write_suite, cli):
    code, _, file_err = cli("plan", write_suite(base=mistaken))
    assert code == 2
    path = write_suite(base=TUNED if override.startswith("tune") else TINY)  # the same file, without the mistake
    code, out, err = cli("plan", path, override)
    assert code == 2 and not out
    assert err.strip() == f"{file_err.strip()} (set on the command line: {override})"


@pytest.mark.parametrize("extra, where", [('[grid]\n"train.lr" = [0.1, 0.01]\n', 'grid."train.lr"'),
                                          ('[[cells]]\nlabel = "fast"\n"train.lr" = 0.1\n', "cells[0]"),
                                          (TUNED.removeprefix(TINY), 'tune.space."train.lr"')])
def test_an_override_the_grid_a_cell_entry_or_the_search_would_undo_is_refused(extra, where, write_suite, cli):
    code, out, err = cli("plan", write_suite(extra), "train.lr=0.5")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert f"{where}: " in err and "train.lr=0.5" in err


def test_an_override_that_is_not_key_value_is_one_line(write_suite, cli):
    for bad in ("train.lr", "=0.1", "train..lr=0.1"):
        code, _, err = cli("plan", write_suite(), bad)
        assert code == 2 and err.startswith(f"error: {bad!r}: not a KEY=VALUE override"), err


def test_a_run_records_its_overrides_and_status_finds_the_cells_they_made(write_suite, tmp_path, cli):
    path, given = write_suite(), ["train.epochs=1", "data.synthetic.images=48"]
    results = tmp_path / "r"
    code, _, err = cli("run", path, *given, "--results", results, "--device", "cpu", "--in-process")
    assert code == 0, err
    copy = results / "tiny" / "suite.toml"
    text = copy.read_text()
    assert text.startswith(f"# {path} with the command-line overrides {' '.join(given)}")
    ran = tomllib.loads(text)
    assert ran["train"]["epochs"] == 1 and ran["data"]["synthetic"]["images"] == 48
    assert ids(copy) == ids(path, given)  # the record reruns what ran
    code, out, _ = cli("status", path, *given, "--results", results)
    assert code == 0 and "| done" in out
    code, out, _ = cli("status", path, "--results", results)  # the file alone names other cells
    assert code == 0 and "| not started" in out
    code, _, err = cli("status", results / "tiny", *given)
    assert code == 2 and "name the suite file" in err


def test_show_config_prints_a_cells_resolved_config_as_toml(write_suite, cli):
    path, given = write_suite(), ['grid."train.lr"=[0.1, 0.01]']
    cell = next(c for c in api.plan(path, overrides=given, check=False).cells if c.label == "lr=0.01")
    code, out, _ = cli("plan", path, *given, "--show-config", "lr=0.01")
    assert code == 0 and out.startswith(f"# cell {cell.id}: lr=0.01\n")
    resolved = flatten(cell.config.model_dump(mode="json"))
    assert flatten(tomllib.loads(out)) == {k: v for k, v in resolved.items() if v is not None}
    unset = out[out.index("# unset: "):].replace("#", " ").removeprefix("  unset: ").split()
    assert [k.rstrip(",") for k in unset] == [k for k, v in resolved.items() if v is None]
    code, out, err = cli("plan", path, *given, "--show-config", "lr=0.5")
    assert code == 2 and not out and "--show-config 'lr=0.5' matches none of the 2 cells" in err
