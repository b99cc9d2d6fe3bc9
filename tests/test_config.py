"""Suite parsing, expansion into cells, ids and labels, and one-line errors for bad suites."""

from __future__ import annotations

import pytest

from bench.config import load_suite
from bench.suite import expand


def test_defaults_come_from_code(write_suite):
    cells = expand(load_suite(write_suite()))
    assert len(cells) == 1
    cfg = cells[0].config
    assert cfg.model.arch == "bench:small_cnn" and cfg.train.epochs == 2 and cfg.data.image_size == 16
    assert cfg.train.schedule == "constant" and cfg.data.split == (0.7, 0.15, 0.15)


def test_grid_times_cells_times_seeds(write_suite):
    path = write_suite("""
        [grid]
        "model.arch" = ["bench:mlp", "bench:small_cnn"]
        "train.lr" = [0.01, 0.001]

        [[cells]]
        label = "scratch"

        [[cells]]
        label = "sgd"
        "train.optimizer" = "sgd"
    """)
    text = path.read_text().replace("seeds = [0]", "seeds = [0, 1]")
    path.write_text(text)
    cells = expand(load_suite(path))
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.id for c in cells}) == 16  # every resolved config is its own cell
    assert len({c.group for c in cells}) == 8  # seeds share a group
    labels = {c.label for c in cells}
    assert "sgd arch=bench:mlp lr=0.01" in labels
    assert all(set(c.axes) == {"model.arch", "train.lr", "train.optimizer"} for c in cells)


def test_unquoted_dotted_grid_keys_nest_and_still_work(write_suite):
    cells = expand(load_suite(write_suite("""
        [grid]
        model.arch = ["bench:mlp", "bench:small_cnn"]
    """)))
    assert [c.config.model.arch for c in cells] == ["bench:mlp", "bench:small_cnn"]


def test_cell_id_is_a_stable_hash_of_the_resolved_config(write_suite):
    a = expand(load_suite(write_suite("[grid]\n\"train.lr\" = [0.1, 0.2]\n")))
    b = expand(load_suite(write_suite("[grid]\n\"train.lr\" = [0.1, 0.2]\n", name="other.toml")))
    assert [c.id for c in a] == [c.id for c in b]
    # the same config written differently (explicit default) is the same cell
    c = expand(load_suite(write_suite("[model]\narch = \"bench:small_cnn\"\n[grid]\n\"train.lr\" = [0.1, 0.2]\n",
                                      name="third.toml")))
    assert [x.id for x in c] == [x.id for x in a]


BAD = [
    # (suite text appended to / replacing the tiny suite, expected fragments of the one-line error)
    ("[data]\nimage_sise = 32\n", ["data.image_sise", "unknown key", "did you mean 'image_size'"]),
    ("[model]\narch = \"tv:resnet500\"\n", ["model.arch", "unknown architecture 'tv:resnet500'"]),
    ("[model]\narch = \"resnet18\"\n", ["model.arch", "needs a registry prefix"]),
    ("[grid]\n\"model.arch\" = [\"bench:mlp\", \"timm:resnet1800\"]\n", ['grid."model.arch"', "timm:resnet1800"]),
    ("[grid]\n\"train.optimiser\" = [\"sgd\"]\n", ['grid."train.optimiser"', "unknown key", "optimizer"]),
    ("[train]\noptimizer = \"adamz\"\n", ["train.optimizer", "unknown optimizer 'adamz'", "did you mean"]),
    ("[train]\nepochs = \"ten\"\n", ["train.epochs", "integer"]),
    ("[train]\nlr = -1\n", ["train.lr", "greater than 0"]),
    ("[model]\nfreeze = \"half\"\n", ["model.freeze", "not a freeze mode"]),
    ("[data]\nsplit = [0.5, 0.2, 0.2]\n", ["data.split", "sum to 1"]),
    ("[data]\nsource = \"folder\"\nroot = \"/no/such/folder\"\n", ["data.root", "does not exist"]),
    ("[data]\nsource = \"lmdb\"\n", ["data.source", "synthetic", "folder"]),
    ("[[cells]]\nlabel = \"x\"\n\"model.pretrained\" = \"missing.safetensors\"\n", ["model.pretrained", "does not exist"]),
    ("[[cells]]\n\"train.augment\" = \"mixup2\"\n", ["cells[0].train.augment", "unknown augment"]),
    ("[grid]\n\"train.lr\" = []\n", ['grid."train.lr"', "non-empty list"]),
    ("[grid]\n\"train.lr\" = 0.1\n", ['grid."train.lr"', "non-empty list", "not 0.1", '"train.lr" = [0.1]']),
    ("[trian]\nepochs = 3\n", ["trian", "unknown table", "did you mean 'train'"]),
    ("[suite\nname = 1\n", ["not valid TOML"]),
    ("[train]\noptimizer = \"adan\"\nbetas = [0.9, 0.99]\n", ["train.betas", "adan takes 3 betas, not 2"]),
    ("[grid]\n\"train.layer_decay\" = [0.7]\n", ['grid."train.layer_decay"', "needs a timm: architecture"]),
]


@pytest.mark.parametrize(("extra", "fragments"), BAD, ids=[f[0][0] for _, f in BAD])
def test_bad_suite_is_one_line_exit_2_and_writes_nothing(write_suite, cli, tmp_path, extra, fragments):
    path = write_suite(extra, base='[suite]\nname = "bad"\n')
    results = tmp_path / "results"
    code, out, err = cli("run", path, "--results", results)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and not results.exists()


def test_missing_suite_file(cli, tmp_path):
    code, _, err = cli("plan", tmp_path / "nope.toml")
    assert code == 2 and "no such suite file" in err


def test_plan_lists_cells_without_training(write_suite, cli, tmp_path):
    path = write_suite("[grid]\n\"model.arch\" = [\"bench:mlp\", \"tv:alexnet\"]\n")
    code, out, _ = cli("plan", path)
    assert code == 0
    assert "2 cell(s)" in out and "tv:alexnet" in out and "bench:mlp" in out


def test_a_key_a_newer_bench_adds_at_its_default_keeps_every_id(write_suite):
    """Finished results survive an upgrade: ids hash only the values that differ from the defaults."""
    from bench.cell import Cell
    from bench.config import CellConfig

    class Newer(CellConfig):
        future_key: int = 3

    for cell in expand(load_suite(write_suite("[grid]\n\"train.lr\" = [0.1, 0.2]\n"))):
        newer = Cell(config=Newer.model_validate(cell.config.model_dump()), label=cell.label, axes=cell.axes)
        assert newer.id == cell.id and newer.group == cell.group
        changed = Cell(config=Newer.model_validate({**cell.config.model_dump(), "future_key": 4}), label="", axes={})
        assert changed.id != cell.id
