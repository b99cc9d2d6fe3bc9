"""[[datasets]]: every cell of a suite on every data set, as one more axis ("dataset")."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import load_suite
from bench.errors import UserError
from bench.suite import expand

GRID = """
[grid]
"model.arch" = ["bench:small_cnn", "bench:mlp"]
"""

DATASETS = """
[[datasets]]
name = "shapes10"
"synthetic.classes" = 10

[[datasets]]
name = "shapes4-longtail"
synthetic = {classes = 4, imbalance = 20}
"""


def _cells(write_suite, extra: str):
    return expand(load_suite(write_suite(extra)))


def test_every_cell_runs_on_every_data_set_with_its_keys_over_data(write_suite):
    path = write_suite(GRID + DATASETS)
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    cells = expand(load_suite(path))
    assert len(cells) == 2 * 2 * 2 and len({c.id for c in cells}) == 8  # archs x data sets x seeds
    by = {(c.config.model.arch, c.axes["dataset"], c.seed): c for c in cells}
    ten, four = by["bench:mlp", "shapes10", 1], by["bench:mlp", "shapes4-longtail", 1]
    assert (ten.config.data.synthetic.classes, ten.config.data.synthetic.imbalance) == (10, 6.0)
    assert (four.config.data.synthetic.classes, four.config.data.synthetic.imbalance) == (4, 20.0)
    assert ten.config.data.synthetic.images == four.config.data.synthetic.images == 120  # the rest of [data] stays
    # the name, not the keys it sets, is the axis: last in the label, as a grid value would be
    assert ten.axes == {"model.arch": "bench:mlp", "dataset": "shapes10"}
    assert ten.label == "arch=bench:mlp dataset=shapes10" and four.label == "arch=bench:mlp dataset=shapes4-longtail"
    assert ten.group == by["bench:mlp", "shapes10", 0].group != four.group  # seeds average, data sets do not


def test_a_data_set_is_the_same_cell_as_writing_its_keys_in_data(write_suite, tmp_path):
    """The id hashes the resolved config: a data set's cells are the cells [data] with its keys would give,
    and a data set that sets nothing leaves the suite's ids as they were."""
    cells = _cells(write_suite, GRID + DATASETS)
    alone = tmp_path / "alone.toml"
    alone.write_text(write_suite(GRID).read_text().replace("classes = 4", "classes = 10"))
    assert {c.id for c in expand(load_suite(alone))} == {c.id for c in cells if c.axes["dataset"] == "shapes10"}
    plain = {c.id: c.label for c in _cells(write_suite, GRID)}
    same = _cells(write_suite, GRID + '[[datasets]]\nname = "as-is"\n')
    assert {c.id: c.label for c in same} == plain  # one data set: not in the label, but in the axes
    assert all(c.axes["dataset"] == "as-is" for c in same)


def test_shipped_suite_ids_are_unchanged_without_datasets():
    """The ids of suites/quickstart.toml (since schema 4 set its crop_pct) as they are without [[datasets]]: a
    suite that does not name data sets keeps its finished results."""
    cells = expand(load_suite(Path(__file__).parent.parent / "suites" / "quickstart.toml"))
    assert [(c.id, c.label) for c in cells] == [
        ("b387ce89c5", "arch=bench:mlp augment=none"), ("c033b35de5", "arch=bench:mlp augment=crop_flip"),
        ("bcdabc946c", "arch=bench:small_cnn augment=none"), ("fa531c75da", "arch=bench:small_cnn augment=crop_flip"),
        ("218c01a2d5", "arch=timm:regnetx_002 augment=none"), ("33ece3e6f8", "arch=timm:regnetx_002 augment=crop_flip")]
    assert all("dataset" not in c.axes and c.dataset is None for c in cells)


def test_labelled_cells_and_grid_keys_win_over_a_data_set(write_suite):
    cells = _cells(write_suite, DATASETS.replace('"synthetic.classes" = 10', '"synthetic.classes" = 10\nimage_size = 24')
                   + '[grid]\n"data.image_size" = [16, 32]\n[[cells]]\nlabel = "scratch"\n')
    assert sorted(c.label for c in cells) == sorted(f"scratch image_size={s} dataset={d}" for s in (16, 32)
                                                    for d in ("shapes10", "shapes4-longtail"))
    assert {c.config.data.image_size for c in cells if c.axes["dataset"] == "shapes10"} == {16, 32}
    # the label says which data set; the keys it sets are not axes of their own
    assert all(set(c.axes) == {"data.image_size", "dataset"} for c in cells)


def test_a_staged_child_starts_from_its_parent_on_the_same_data_set(write_suite):
    cells = _cells(write_suite, DATASETS + """
[[cells]]
label = "head"
"model.freeze" = "all_but_head"
[[cells]]
label = "all"
"model.init_from" = "head"
""")
    heads = {c.dataset: c.id for c in cells if c.explicit_label == "head"}
    children = [c for c in cells if c.explicit_label == "all"]
    assert len(heads) == len(children) == 2 and len(set(heads.values())) == 2
    assert all(c.parent == heads[c.dataset] for c in children)
    order = [c.id for c in cells]
    assert all(order.index(c.parent) < order.index(c.id) for c in children)


@pytest.mark.parametrize(("entry", "key", "words"), [
    ('"synthetic.clases" = 10', "datasets[1].synthetic.clases", ["unknown key", "did you mean 'classes'"]),
    ("synthetic = {classes = 1}", "datasets[1].synthetic.classes", ["greater than or equal to 2"]),
    ("image_size = 3", "datasets[1].image_size", ["greater than or equal to 8"]),
    ('source = "webdataset"', "datasets[1].source", ["synthetic", "folder"]),
    ('"data.source" = "folder"', "datasets[1].data", ["unknown key", 'relative to [data]: write "source"']),
])
def test_a_bad_data_set_key_is_one_line_naming_the_entry(write_suite, cli, entry, key, words):
    path = write_suite(GRID + '[[datasets]]\nname = "a"\n[[datasets]]\nname = "b"\n' + entry + "\n")
    with pytest.raises(UserError) as e:
        expand(load_suite(path))
    assert e.value.key == key and all(w in str(e.value) for w in words), str(e.value)
    code, _, err = cli("plan", path)
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1, err


def test_two_data_sets_with_the_same_data_are_refused(write_suite):
    with pytest.raises(UserError, match="same config") as e:
        _cells(write_suite, '[[datasets]]\nname = "a"\nimage_size = 16\n[[datasets]]\nname = "b"\n')
    assert e.value.key == "datasets"
    with pytest.raises(UserError, match="used twice"):
        _cells(write_suite, '[[datasets]]\nname = "a"\n[[datasets]]\nname = "a"\nimage_size = 24\n')


def test_smoke_stands_in_for_every_data_sets_own_folder(write_suite, tmp_path):
    """--smoke never reads a data set's real folder: each entry's root gets a generated stand-in, and data
    sets that differ only in a shrunk key stay apart."""
    from bench.smoke import smoke_suite

    path = write_suite(f'''
        [suite]
        name = "two-folders"
        [data]
        source = "folder"
        image_size = 64
        [[datasets]]
        name = "birds"
        root = "{tmp_path / 'nowhere' / 'birds'}"
        [[datasets]]
        name = "plants"
        root = "{tmp_path / 'nowhere' / 'plants'}"
        min_side = 20
    ''', base="")
    cells = expand(smoke_suite(load_suite(path)))
    assert [c.dataset for c in cells] == ["birds", "plants"] and len({c.id for c in cells}) == 2
    for c in cells:
        assert "nowhere" not in c.config.data.root and Path(c.config.data.root).is_dir()
