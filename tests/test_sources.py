"""Sources (folder, csv, inat) on a small messy data set; curation counts; bad images; inspection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench.config import DataConfig
from bench.data import curated, prepare
from bench.data.inspect import describe
from bench.data.sources import read_source
from bench.errors import UserError
from tests.conftest import TINY

# class -> number of good RGB images; sizes alternate so the size filters have something to do
COUNTS = {"ant": 12, "bee": 8, "cicada": 5, "dragonfly": 2}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """root/<class>/*.jpg with RGB images of two sizes, one L, CMYK, RGBA and P image, a truncated JPEG,
    a zero-byte file and a text file named .jpg; returns (root, {relative path: kind})."""
    root = tmp_path_factory.mktemp("messy")
    kinds = {}
    rng = np.random.default_rng(0)
    for cls, n in COUNTS.items():
        (root / cls).mkdir()
        for i in range(n):
            size = (40, 30) if i % 3 else (24, 24)  # 40x30 is the modal size
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i:02d}.jpg", quality=90)
            kinds[f"{cls}/{i:02d}.jpg"] = "rgb"
    odd = {"L": Image.new("L", (40, 30), 128), "CMYK": Image.new("CMYK", (40, 30), (0, 50, 100, 0)),
           "RGBA": Image.new("RGBA", (40, 30), (10, 20, 30, 128)), "P": Image.new("RGB", (40, 30), (200, 0, 0)).convert("P")}
    for mode, im in odd.items():
        name = f"ant/mode_{mode}.{'png' if mode in ('RGBA', 'P') else 'jpg'}"
        im.save(root / name)
        kinds[name] = mode
    good = (root / "bee" / "01.jpg").read_bytes()  # 40x30: its header survives the cut, its scan does not
    (root / "bee" / "truncated.jpg").write_bytes(good[: len(good) * 3 // 4])
    (root / "bee" / "empty.jpg").write_bytes(b"")
    (root / "bee" / "notes.jpg").write_text("not an image")
    kinds.update({"bee/truncated.jpg": "bad", "bee/empty.jpg": "bad", "bee/notes.jpg": "bad"})
    return root, kinds


def _steps(cur) -> dict[str, list[int]]:
    return {s["step"]: s["images"] for s in cur.steps}


def test_folder_finds_bad_images_converts_modes_and_never_crashes(messy, tmp_path):
    root, kinds = messy
    cur = curated(DataConfig(source="folder", root=str(root), image_size=16))
    total = len(kinds)
    bad = sorted(p for p, k in kinds.items() if k == "bad")
    assert sorted(cur.bad) == bad
    assert "empty" in cur.bad["bee/empty.jpg"] and "decode" in cur.bad["bee/truncated.jpg"]
    assert _steps(cur)["unreadable"] == [total, total - 2] and _steps(cur)["undecodable"][1] == total - 3
    assert _steps(cur)["modes"] == [total - 2, total - 2]  # convert keeps them
    assert cur.modes == {"CMYK": 1, "L": 1, "P": 1, "RGB": 28, "RGBA": 1}  # the truncated JPEG has a readable RGB header
    x, y = prepare(DataConfig(source="folder", root=str(root), image_size=16), 0, tmp_path).datasets["train"].__getitems__([0, 1])
    assert x.shape == (2, 3, 16, 16)
    # every converted mode decodes to 3 channels
    for i, p in enumerate(cur.samples.paths):
        if kinds[p] == "L":
            offset, h, w = cur.decoded.index[cur.rows[i]]
            assert cur.decoded.pixels[offset:offset + h * w * 3].reshape(h, w, 3).std(axis=2).max() == 0  # grey stays grey


def test_modes_drop_removes_every_non_rgb_image(messy):
    root, kinds = messy
    cur = curated(DataConfig(source="folder", root=str(root), modes="drop"))
    assert _steps(cur)["modes"] == [len(kinds) - 2, len(kinds) - 2 - 4]
    assert not any(kinds[p] in ("L", "CMYK", "RGBA", "P") for p in cur.samples.paths)


# counts include bee/truncated.jpg (a 40x30 RGB header) until the cache build finds it undecodable
@pytest.mark.parametrize(("keys", "step", "after_images", "after_classes"), [
    ({"min_per_class": 5}, "min_per_class", 16 + 9 + 5, 3),  # dragonfly (2) pruned
    ({"top_classes": 2}, "top_classes", 16 + 9, 2),
    ({"max_per_class": 3}, "max_per_class", 3 + 3 + 3 + 2, 4),
    ({"modal_size": True}, "modal_size", (8 + 4) + (5 + 1) + 3 + 1, 4),  # 40x30: 2 of every 3 RGB, odd modes
    ({"min_side": 25}, "min_side", (8 + 4) + (5 + 1) + 3 + 1, 4),
    ({"max_aspect": 1.1}, "max_aspect", 4 + 3 + 2 + 1, 4),  # only the 24x24 squares
])
def test_curation_step_counts(messy, keys, step, after_images, after_classes):
    root, _ = messy
    cur = curated(DataConfig(source="folder", root=str(root), **keys))
    rec = next(s for s in cur.steps if s["step"] == step)
    assert rec["images"][1] == after_images and rec["classes"][1] == after_classes
    last = cur.steps[-1]
    assert last["step"] == "undecodable" and last["images"][0] == after_images
    assert len(cur.samples.paths) == last["images"][1] == after_images - ("bee/truncated.jpg" in cur.bad)
    if step != "max_per_class":  # there, whether the capped subset holds the broken file is the draw's
        assert ("bee/truncated.jpg" in cur.bad) == (step != "max_aspect")  # 40x30 is off the 1.1 aspect limit


def test_fraction_is_stratified_and_fixed(messy):
    root, _ = messy
    a = curated(DataConfig(source="folder", root=str(root), fraction=0.5))
    b = curated(DataConfig(source="folder", root=str(root), fraction=0.5))
    assert a.samples.paths == b.samples.paths  # curation does not depend on the suite seed
    assert _steps(a)["fraction"] == [32, 8 + 4 + 2 + 1]  # half per class, rounded, >= 1 (bee: 4 of 9)
    broken = int("bee/truncated.jpg" in a.bad)  # if the draw kept the truncated file, decoding drops it
    assert np.bincount(a.samples.labels).tolist() == [8, 4 - broken, 2, 1]


def test_csv_manifest_with_split_column(messy, tmp_path):
    root, _ = messy
    rows = ["path,label,split"] + [f"ant/{i:02d}.jpg,ant,{'val' if i < 3 else 'train'}" for i in range(12)]
    rows += [f"cicada/{i:02d}.jpg,cicada,{'val' if i < 2 else 'train'}" for i in range(5)]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(source="csv", root=str(root), manifest="m.csv", split=(0.8, 0.1, 0.1))
    data = prepare(cfg, 0, tmp_path)
    assert data.classes == ["ant", "cicada"] and data.info["images"]["val"] == 5
    split = json.loads((tmp_path / f"{data.split_key}.json").read_text())
    assert sorted(split["val"]) == ["ant/00.jpg", "ant/01.jpg", "ant/02.jpg", "cicada/00.jpg", "cicada/01.jpg"]
    assert len(split["test"]) >= 2 and not set(split["test"]) & set(split["train"])  # carved from train


@pytest.mark.parametrize("bad_path", ["../outside.jpg", "/etc/passwd", "ant/../../x.jpg"])
def test_paths_outside_the_root_are_refused(messy, bad_path):
    root, _ = messy
    (root / "evil.csv").write_text(f"path,label\nant/00.jpg,ant\n{bad_path},ant\n")
    with pytest.raises(UserError, match="outside the data root"):
        read_source(DataConfig(source="csv", root=str(root), manifest="evil.csv"))
    doc = {"images": [{"id": 1, "file_name": bad_path}], "annotations": [{"id": 1, "image_id": 1, "category_id": 0}],
           "categories": [{"id": 0, "name": "ant"}]}
    (root / "evil.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="outside the data root"):
        read_source(DataConfig(source="inat", root=str(root), annotations={"train": "evil.json"}))


def _inat(root, name, paths, cats):
    ids = {c: i + 10 for i, c in enumerate(sorted(cats))}
    doc = {"info": {"year": 2019},
           "images": [{"id": n, "file_name": p, "width": 40, "height": 30} for n, p in enumerate(paths)],
           "annotations": [{"id": n, "image_id": n, "category_id": ids[p.split("/")[0]]} for n, p in enumerate(paths)],
           "categories": [{"id": i, "name": c, "supercategory": "Insecta"} for c, i in ids.items()]}
    (root / name).write_text(json.dumps(doc))


def test_inat_official_val_kept_test_carved_from_train(messy, tmp_path):
    root, _ = messy
    train = [f"ant/{i:02d}.jpg" for i in range(3, 12)] + [f"bee/{i:02d}.jpg" for i in range(2, 8)]
    val = [f"ant/{i:02d}.jpg" for i in range(3)] + [f"bee/{i:02d}.jpg" for i in range(2)]
    _inat(root, "train2019.json", train, {"ant", "bee"})
    _inat(root, "val2019.json", val, {"ant", "bee"})
    cfg = DataConfig(source="inat", root=str(root), annotations={"train": "train2019.json", "val": "val2019.json"})
    samples = read_source(cfg)
    assert samples.classes == ["ant", "bee"] and samples.class_meta["ant"]["supercategory"] == "Insecta"
    data = prepare(cfg, 0, tmp_path)
    split = json.loads((tmp_path / f"{data.split_key}.json").read_text())
    assert sorted(split["val"]) == sorted(val)
    assert set(split["test"]) <= set(train) and len(split["test"]) >= 2
    assert sorted(split["train"] + split["test"]) == sorted(train)
    # an unlabelled test file (as the official ones) is refused with the fix
    (root / "test2019.json").write_text(json.dumps({"images": [{"id": 0, "file_name": "ant/00.jpg"}], "categories": []}))
    with pytest.raises(UserError, match="no annotations"):
        read_source(cfg.model_copy(update={"annotations": {"train": "train2019.json", "test": "test2019.json"}}))


def test_inspect_reports_the_census_and_the_majority_baseline(messy, tmp_path, cli):
    root, kinds = messy
    info = describe(DataConfig(source="folder", root=str(root)))
    assert info["images"] == info["probed"] == len(kinds)
    assert sorted(info["bad_images"]) == sorted(p for p, k in kinds.items() if k == "bad")
    assert info["resolutions"]["top"][0] == ("40x30", 22)
    info = describe(DataConfig(source="folder", root=str(root), min_per_class=5))
    assert info["images"] == len(kinds) and info["probed"] == len(kinds) - 2  # dragonfly's 2 cannot reach 5
    assert info["resolutions"]["top"][0] == ("40x30", 21)
    kept = info["kept"]
    assert kept["classes"] == 3 and kept["per_class"]["max"] == 16 and kept["per_class"]["min"] == 5
    assert kept["majority_baseline_accuracy"] == pytest.approx(16 / 29)
    code, out, _ = cli("data", "inspect", str(root), "--plot", str(tmp_path / "h.png"))
    assert code == 0 and "majority baseline" in out and "bee/truncated.jpg" in out
    with Image.open(tmp_path / "h.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    code, _, err = cli("data", "inspect", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("source", ["csv", "inat"])
def test_smoke_stand_in_uses_the_suites_own_format(write_suite, cli, tmp_path, source):
    extra = {"csv": 'source = "csv"\nroot = "/no/such/place"\nmanifest = "meta/labels.csv"\n',
             "inat": 'source = "inat"\nroot = "/no/such/place"\nmin_per_class = 100\n'
                     'annotations = {train = "train2019.json", val = "val2019.json"}\n'}[source]
    path = write_suite(base=f'[suite]\nname = "s{source}"\n[data]\n{extra}[train]\nepochs = 1\n')
    code, _, err = cli("run", path, "--smoke", "--results", tmp_path / "r")
    assert code == 0, err
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "r").rglob("result.json")]
    assert result["data"]["source"] == source
    steps = {s["step"]: s for s in result["data"]["curation"]}
    assert "min_per_class" in steps if source == "inat" else "min_per_class" not in steps


def test_plan_prints_each_curation_step(write_suite, cli):
    code, out, err = cli("plan", write_suite(base=TINY.replace("image_size = 16", "image_size = 16\nmin_per_class = 25")))
    assert code == 0, err
    # the TINY data: 4 long-tailed classes of 120 images; the two smallest have fewer than 25
    row = next(line for line in out.splitlines() if line.startswith("| min_per_class"))
    before, after = (int(x) for x in row.split("|")[3].replace(",", "").split("->"))
    assert before == 120 and after == 59 + 33 and "4 -> 2" in row.split("|")[4]  # classes of 59, 33, 18, 10


@pytest.mark.parametrize("keys", [{}, {"min_per_class": 20, "fraction": 0.5}, {"top_classes": 2, "max_per_class": 9}])
def test_preview_of_synthetic_data_is_what_generation_and_curation_give(keys):
    """preflight judges synthetic data without generating it: its index must be the generated one."""
    from bench.data.curate import preview

    cfg = DataConfig(synthetic={"classes": 4, "images": 120, "size": 16}, **keys)
    samples, keep, steps, _, _ = preview(cfg)
    cur = curated(cfg)
    assert samples.classes == cur.source.classes and samples.paths == cur.source.paths
    assert [s["images"] for s in steps] == [s["images"] for s in cur.steps[:-1]]  # all but "undecodable"
    assert samples.subset(keep).paths == cur.samples.paths


def test_inat_ids_may_be_strings_and_files_may_share_categories(messy):
    root, _ = messy
    doc = {"images": [{"id": f"{c}{i}", "file_name": f"{c}/{i:02d}.jpg"} for c in ("ant", "bee") for i in range(3)],
           "annotations": [{"image_id": f"{c}{i}", "category_id": c} for c in ("ant", "bee") for i in range(3)]}
    (root / "strings.json").write_text(json.dumps(doc))
    samples = read_source(DataConfig(source="inat", root=str(root), annotations={"train": "strings.json"}))
    assert samples.classes == ["ant", "bee"] and np.bincount(samples.labels).tolist() == [3, 3]
    _inat(root, "overlap.json", ["ant/00.jpg", "bee/05.jpg"], {"ant", "bee"})
    with pytest.raises(UserError, match="lists image 'ant/00.jpg' again"):  # one image in train and val
        read_source(DataConfig(source="inat", root=str(root), annotations={"train": "strings.json",
                                                                          "val": "overlap.json"}))


MESSY_SUITE = """
[suite]
name = "messy"
[data]
source = "folder"
root = "{root}"
image_size = 16
cache_size = 20
split = [0.6, 0.2, 0.2]
min_per_class = 5
[model]
arch = "bench:small_cnn"
pretrained = false
[train]
epochs = 2
batch_size = 8
augment = "crop_flip"
"""


def test_without_the_decoded_cache_a_cell_trains_to_the_same_bits(messy, tmp_path):
    """data.cache = "none" decodes each image from its file per batch, to the pixels the cache holds: the
    same bad files leave the same splits, the cell keeps its id, and its results are bitwise equal."""
    import os

    from bench import api
    from bench.cell import RunOptions
    from bench.progress import LogProgress
    from tests.support import outputs

    root, _ = messy
    path = tmp_path / "messy.toml"
    path.write_text(MESSY_SUITE.format(root=root))
    ids, records = {}, {}
    for mode in ("decoded", "none"):
        planned = api.plan(path, device="cpu", overrides=[f"data.cache={mode}", "data.workers=0"])
        ids[mode] = [c.id for c in planned.cells]
        summary = api.run(planned, results=tmp_path / mode, device="cpu", options=RunOptions(isolate=False, threads=1),
                          progress=LogProgress(open(os.devnull, "w")))
        assert summary.ran and not summary.failed, summary.failed
        records[mode] = json.loads((summary.suite_dir / summary.ran[0] / "result.json").read_text())
    assert ids["decoded"] == ids["none"]
    assert records["none"]["config"]["data"]["cache"] == "none"
    assert records["decoded"]["data"]["bad_images"] == records["none"]["data"]["bad_images"]
    assert "bee/truncated.jpg" in records["none"]["data"]["bad_images"]["files"]
    assert outputs(tmp_path / "decoded" / "messy") == outputs(tmp_path / "none" / "messy")


def test_a_decoded_cache_the_disk_cannot_hold_is_refused_before_it_is_built(messy, tmp_path, monkeypatch):
    """The plan says what the cache will take and where; one the disk cannot hold is one line naming
    data.cache = "none" and data.cache_size, and with data.cache = "none" the same suite plans."""
    from collections import namedtuple

    from bench import api
    from bench.data import cache

    root, _ = messy
    path = tmp_path / "messy.toml"
    path.write_text(MESSY_SUITE.format(root=root).replace("cache_size = 20", "cache_size = 64"))
    note = [n for n in api.plan(path, device="cpu").notes if "decoded cache" in n]
    assert len(note) == 1 and "whole images, shorter side 64 px" in note[0] and "free under" in note[0]
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError) as e:
        api.plan(path, device="cpu")
    assert e.value.key == "data.cache" and 'data.cache = "none"' in str(e.value) and "data.cache_size" in str(e.value)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert api.plan(path, device="cpu", overrides=["data.cache=none"]).cells


@pytest.mark.parametrize("pruning", [{"top_classes": 2}, {"top_classes": 3}, {"min_per_class": 5},
                                     {"min_per_class": 4, "top_classes": 2}, {"top_classes": 2, "modes": "drop"}])
def test_class_pruning_reads_only_the_headers_it_needs_and_keeps_what_reading_every_one_keeps(tmp_path, monkeypatch,
                                                                                             pruning):
    """Listed: a 10, b 9 (5 of them unreadable), c 6 (2 of them greyscale), d 3. top_classes = 2 probes a and b
    first; b keeps 4, so c (6 listed) must be read too, d (3) never: the top two are a and c, as when every
    header is read."""
    from bench.data import cache, curate
    from bench.data.sources import read_source

    rng = np.random.default_rng(0)
    for cls, good, broken, grey in (("a", 10, 0, 0), ("b", 4, 5, 0), ("c", 4, 0, 2), ("d", 3, 0, 0)):
        (tmp_path / cls).mkdir()
        for i in range(good + grey):
            arr = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).convert("L" if i >= good else "RGB").save(tmp_path / cls / f"{i}.png")
        for i in range(broken):
            (tmp_path / cls / f"x{i}.png").write_bytes(b"not an image")
    cfg = DataConfig(source="folder", root=str(tmp_path), **pruning)
    samples = read_source(cfg)
    every = cache.probe(samples.root, samples.paths)
    expected, _, _ = curate.curate(samples, every, cfg)
    read, probe_one = [], cache.probe_one
    monkeypatch.setattr(cache, "probe_one", lambda path, *a: read.append(path.parent.name) or probe_one(path, *a))
    probed, probe, steps = curate.probed(samples, cfg)
    kept, _, _ = curate.curate(probed, probe, cfg)
    assert sorted(np.asarray(probed.paths)[kept]) == sorted(np.asarray(samples.paths)[expected])
    assert "d" not in read and steps[0]["step"] == "candidates"
    if pruning == {"top_classes": 2}:
        assert sorted(set(read)) == ["a", "b", "c"] and len(read) == 10 + 9 + 6  # each header read once


@pytest.mark.parametrize("pruning,key", [({"top_classes": 2}, "data.top_classes"), ({"min_per_class": 1}, "data.min_per_class")])
def test_pruning_that_leaves_one_class_is_blamed_even_when_headers_were_left_unread(tmp_path, pruning, key):
    """b has validation images only: class pruning, which counts training images, cannot keep it."""
    from bench.data.curate import preview, require_trainable

    for split, cls, n in (("train", "a", 5), ("val", "a", 2), ("val", "b", 3)):
        (tmp_path / split / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(source="folder", root=str(tmp_path), **pruning)
    samples, keep, steps, _, _ = preview(cfg)
    with pytest.raises(UserError) as e:
        require_trainable(samples, keep, steps, cfg)
    assert e.value.key == key and "curation leaves one class ('a')" in str(e.value) and "keeps 7 of 10" in str(e.value)
