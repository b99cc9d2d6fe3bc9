"""Every user error is caught before anything is written: one `error:` line naming the file, the key and the
fix, exit 2, no traceback, no results folder or file. Each bad input goes through the real CLI."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import SCHEMA_VERSION
from bench.errors import UserError
from bench.store import write_json, write_npz
from tests.support import offline

# id -> (case(tmp_path, monkeypatch) -> (bench arguments, fragments of the one error line), pytest marks)
CASES: dict[str, tuple[Callable, tuple]] = {}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def case(name: str, *marks):
    def register(fn: Callable) -> Callable:
        CASES[name] = (fn, marks)
        return fn
    return register


def images(root: Path, counts: dict[str, int], split: str | None = None) -> Path:
    """root/[split/]<class>/<i>.jpg, 8x8 px: enough for the probe and curation, nothing to decode at length."""
    for cls, n in counts.items():
        folder = root / split / cls if split else root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i % 255, 0, 0)).save(folder / f"{i}.jpg")
    return root


def suite(tmp: Path, body: str) -> Path:
    path = tmp / "suite.toml"
    path.write_text(f'[suite]\nname = "bad"\n{body}')
    return path


def folder_suite(tmp: Path, counts: dict[str, int] | None = None, extra: str = "", split: str | None = None) -> Path:
    root = images(tmp / "data", counts or {}, split)
    root.mkdir(exist_ok=True)
    return suite(tmp, f'[data]\nsource = "folder"\nroot = "{root}"\n{extra}')


# ---- the suite file --------------------------------------------------------------------------------

@case("grid-value-not-a-list")
def _(t, mp):
    return ["run", suite(t, '[grid]\n"train.lr" = 0.1\n')], ['grid."train.lr"', "not 0.1", '"train.lr" = [0.1]']


@case("grid-value-not-a-list-plan")
def _(t, mp):
    return ["plan", suite(t, '[grid]\nmodel.freeze = "none"\n')], ['grid."model.freeze"', "non-empty list"]


# ---- folder data --------------------------------------------------------------------------------

@case("folder-missing")
def _(t, mp):
    return ["run", suite(t, f'[data]\nsource = "folder"\nroot = "{t / "nope"}"\n')], ["data.root", "does not exist"]


@case("folder-empty")
def _(t, mp):
    return ["run", folder_suite(t)], ["data.root", "no class subfolders with images"]


@case("folder-classes-without-images")
def _(t, mp):
    for cls in ("ant", "bee"):
        (t / "data" / cls).mkdir(parents=True)
        (t / "data" / cls / "notes.txt").write_text("no image")
    return ["plan", folder_suite(t)], ["data.root", "no class subfolders with images"]


@case("folder-one-class")
def _(t, mp):
    return ["run", folder_suite(t, {"ant": 6})], ["data.root", "one class ('ant')", "two classes or more"]


@case("folder-class-with-one-image")
def _(t, mp):
    return ["run", folder_suite(t, {"ant": 6, "bee": 1})], ["data.root", "class 'bee' has one image",
                                                            "data.min_per_class = 2"]


@case("folder-no-training-image")
def _(t, mp):
    images(t / "data", {"ant": 4, "bee": 4}, "train")
    return ["run", folder_suite(t, {"cicada": 3}, split="val")], ["class 'cicada' has no training image"]


@case("folder-every-image-unreadable")
def _(t, mp):
    for cls in ("ant", "bee"):
        (t / "data" / cls).mkdir(parents=True)
        for i in range(3):
            (t / "data" / cls / f"{i}.jpg").write_bytes(b"")
    return ["run", folder_suite(t)], ["data.root", "6 of 6 images cannot be read, which leaves no images", "bench data inspect"]


@case("curation-leaves-one-class")
def _(t, mp):
    return ["run", folder_suite(t, {"ant": 6, "bee": 3}, "min_per_class = 5\n")], [
        "data.min_per_class: curation leaves one class ('ant'): data.min_per_class (>= 5) keeps 6 of 9 images"]


@case("too-few-images-for-a-val-split")
def _(t, mp):
    return ["run", folder_suite(t, {"ant": 2, "bee": 2})], ["data.split", "no image lands in the validation split"]


# ---- csv manifests --------------------------------------------------------------------------------

def csv_suite(t: Path, text: str | bytes | None, extra: str = "") -> Path:
    root = images(t / "data", {"ant": 4, "bee": 4})
    if text is not None:
        (root / "labels.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    return suite(t, f'[data]\nsource = "csv"\nroot = "{root}"\n{extra}')


GOOD_ROWS = "".join(f"{c}/{i}.jpg,{c}\n" for c in ("ant", "bee") for i in range(4))


@case("csv-manifest-missing")
def _(t, mp):
    return ["run", csv_suite(t, None)], ["data.manifest", "labels.csv' does not exist"]


@case("csv-empty-file")
def _(t, mp):
    return ["run", csv_suite(t, "")], ["data.manifest", "labels.csv' is empty"]


@case("csv-missing-column")
def _(t, mp):
    return ["run", csv_suite(t, "path,class\n" + GOOD_ROWS)], ["data.manifest", "lacks column(s) ['label']"]


@case("csv-header-only")
def _(t, mp):
    return ["plan", csv_suite(t, "path,label\n")], ["data.manifest", "has no rows"]


@case("csv-bad-split-value")
def _(t, mp):
    rows = "path,label,split\n" + "".join(f"{r},train\n" for r in GOOD_ROWS.splitlines()[:-1]) + "bee/3.jpg,bee,valid\n"
    return ["run", csv_suite(t, rows)], ["data.manifest", "line 9 of manifest", "split 'valid'", "train, val or test"]


@case("csv-row-names-a-missing-image")
def _(t, mp):
    return ["run", csv_suite(t, "path,label\n" + GOOD_ROWS + "bee/9.jpg,bee\n")], [
        "data.manifest", "line 10 of manifest", "'bee/9.jpg', which does not exist"]


@case("csv-duplicate-path")
def _(t, mp):
    return ["run", csv_suite(t, "path,label\n" + GOOD_ROWS + "ant/0.jpg,bee\n")], [
        "line 10 of manifest", "lists image 'ant/0.jpg' again (first at line 2"]


@case("csv-not-utf8")
def _(t, mp):
    return ["run", csv_suite(t, ("path,label\n" + GOOD_ROWS).encode() + "ant/0.jpg,fourmi\xe9\n".encode("latin-1"))], [
        "data.manifest", "is not UTF-8"]


@case("csv-empty-label")
def _(t, mp):
    return ["run", csv_suite(t, "path,label\n" + GOOD_ROWS.replace("ant/2.jpg,ant", "ant/2.jpg,"))], [
        "line 4 of manifest", "empty label"]


@case("csv-ragged-row")
def _(t, mp):
    return ["run", csv_suite(t, "path,label\n" + GOOD_ROWS + "ant/1.jpg,ant,extra,more\n")], [
        "data.manifest", "cannot read manifest"]


@case("csv-path-outside-root")
def _(t, mp):
    return ["run", csv_suite(t, "path,label\n" + GOOD_ROWS + "../../etc/passwd,ant\n")], ["outside the data root"]


# ---- iNaturalist annotations ---------------------------------------------------------------------

def inat_doc(paths: list[str]) -> dict:
    cats = sorted({p.split("/")[0] for p in paths})
    return {"images": [{"id": i, "file_name": p} for i, p in enumerate(paths)],
            "annotations": [{"id": i, "image_id": i, "category_id": cats.index(p.split("/")[0])}
                            for i, p in enumerate(paths)],
            "categories": [{"id": i, "name": c} for i, c in enumerate(cats)]}


def inat_suite(t: Path, doc: object | None, raw: bytes | None = None) -> Path:
    root = images(t / "data", {"ant": 4, "bee": 4})
    if raw is not None or doc is not None:
        (root / "train.json").write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return suite(t, f'[data]\nsource = "inat"\nroot = "{root}"\nannotations = {{train = "train.json"}}\n')


PATHS = [f"{c}/{i}.jpg" for c in ("ant", "bee") for i in range(4)]


@case("inat-annotation-file-missing")
def _(t, mp):
    return ["run", inat_suite(t, None)], ["data.annotations.train", "train.json' does not exist"]


@case("inat-not-json")
def _(t, mp):
    return ["run", inat_suite(t, None, b'{"images": [')], ["data.annotations.train", "is not valid JSON"]


@case("inat-top-level-list")
def _(t, mp):
    return ["run", inat_suite(t, [inat_doc(PATHS)])], ["the top level is a list"]


@case("inat-no-images-key")
def _(t, mp):
    doc = inat_doc(PATHS)
    del doc["images"]
    return ["plan", inat_suite(t, doc)], ["data.annotations.train", "no 'images' list"]


@case("inat-dangling-image-id")
def _(t, mp):
    doc = inat_doc(PATHS)
    doc["annotations"][3]["image_id"] = 12345
    return ["plan", inat_suite(t, doc)], ["data.annotations.train", "annotations[3] names image_id 12345"]


@case("inat-annotation-without-category")
def _(t, mp):
    doc = inat_doc(PATHS)
    del doc["annotations"][0]["category_id"]
    return ["run", inat_suite(t, doc)], ["annotations[0] needs an image_id and a category_id"]


@case("inat-category-id-wrong-type")
def _(t, mp):
    doc = inat_doc(PATHS)
    doc["annotations"][1]["category_id"] = [1]
    return ["run", inat_suite(t, doc)], ["annotations[1] needs an image_id and a category_id"]


@case("inat-file-name-not-a-string")
def _(t, mp):
    doc = inat_doc(PATHS)
    doc["images"][2]["file_name"] = 7
    return ["run", inat_suite(t, doc)], ["images[2] needs an id and a file_name string"]


@case("inat-image-file-missing")
def _(t, mp):
    return ["run", inat_suite(t, inat_doc([*PATHS, "bee/9.jpg"]))], [
        "data.annotations.train", "annotations[8] of", "'bee/9.jpg', which does not exist"]


@case("inat-no-annotations")
def _(t, mp):
    doc = inat_doc(PATHS)
    doc["annotations"] = []
    return ["run", inat_suite(t, doc)], ["has no annotations"]


# ---- models, weights, hardware ---------------------------------------------------------------------

@case("freeze-beyond-depth")
def _(t, mp):
    return ["run", suite(t, '[model]\nfreeze = "first:999"\n')], ["model.freeze", "asks for 999 layers",
                                                                  "backbone has 6"]


@case("freeze-beyond-depth-in-grid")
def _(t, mp):
    return ["plan", suite(t, '[grid]\n"model.freeze" = ["none", "last_conv:40"]\n')], [
        'grid."model.freeze"', "asks for 40 convolutions"]


@case("hub-weights-for-a-builtin")
def _(t, mp):
    return ["run", suite(t, "[model]\npretrained = true\n")], ["model.pretrained", "bench:small_cnn has no hub weights"]


@case("hub-weights-offline-no-cache")
def _(t, mp):
    offline(mp, t)
    return ["run", suite(t, '[model]\narch = "tv:alexnet"\npretrained = true\n')], [
        "model.pretrained", "cannot fetch pretrained weights for tv:alexnet", "unreachable"]


@case("hub-weights-timm-has-none")
def _(t, mp):
    return ["run", suite(t, '[model]\narch = "timm:beit3_giant_patch14_224"\npretrained = true\n')], [
        "model.pretrained", "timm has no pretrained weights"]


def weights_suite(t: Path, name: str, data: bytes | None = None, obj: object = None) -> Path:
    path = t / name
    if data is not None:
        path.write_bytes(data)
    elif obj is not None:
        torch.save(obj, path)
    return suite(t, f'[[cells]]\nlabel = "w"\n"model.pretrained" = "{path}"\n')


@case("weights-file-missing")
def _(t, mp):
    return ["run", weights_suite(t, "gone.safetensors")], ["cells[0].model.pretrained", "does not exist"]


@case("weights-file-garbage-safetensors")
def _(t, mp):
    return ["run", weights_suite(t, "junk.safetensors", os.urandom(64))], [
        "cells[0].model.pretrained", "cannot read weights file"]


@case("weights-file-text-pt")
def _(t, mp):
    return ["run", weights_suite(t, "notes.pt", b"these are not weights\n")], ["cannot read weights file"]


@case("weights-file-not-a-state-dict")
def _(t, mp):
    return ["run", weights_suite(t, "list.pt", obj=[1, 2, 3])], ["holds a list, not a state dict"]


@case("weights-file-of-another-network")
def _(t, mp):
    from bench.models import create_model

    return ["run", weights_suite(t, "mlp.pt", obj=create_model("bench:mlp", 3, 32).state_dict())], [
        "cells[0].model.pretrained", "does not fit this architecture"]


@case("weights-file-empty")
def _(t, mp):
    return ["run", weights_suite(t, "empty.safetensors", b"")], ["cannot read weights file", "empty.safetensors"]


@case("weights-file-without-tensors")
def _(t, mp):
    return ["run", weights_suite(t, "meta.pt", obj={"epoch": 3, "arch": "small_cnn"})], [
        "cells[0].model.pretrained", "holds no tensors by name"]


class Payload:
    """Unpickling this would create `marker`: proof that a weights file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@case("weights-file-pickle-payload")
def _(t, mp):
    return ["run", weights_suite(t, "evil.pt", obj={"conv.weight": Payload(t / "pwned")})], [
        "cannot read weights file", "UnpicklingError"]


@case("fp16-without-cuda", NO_CUDA)
def _(t, mp):
    return ["run", suite(t, '[train]\nprecision = "fp16"\n')], ["train.precision", "fp16 training needs a CUDA device"]


@case("device-cuda-without-cuda", NO_CUDA)
def _(t, mp):
    return ["run", suite(t, ""), "--device", "cuda"], ["--device cuda", "no CUDA device"]


# ---- report, compare, export -----------------------------------------------------------------------

def results(t: Path) -> Path:
    """results/s with two finished cells, a and b, on one split; a's predictions.npz is cut short."""
    s = t / "results" / "s"
    s.mkdir(parents=True)
    (s / "suite.toml").write_text('[suite]\nname = "s"\n')
    write_json(s / "splits" / "k.json", {"train": [], "val": ["x/1.jpg", "x/2.jpg"], "test": ["x/1.jpg", "x/2.jpg"]})
    for cell in ("a", "b"):
        write_json(s / cell / "cell.json", {"id": cell, "group": cell, "label": f"cell {cell}", "axes": {},
                                            "config": {"seed": 0}})
        write_json(s / cell / "result.json", {
            "schema_version": SCHEMA_VERSION, "status": "ok", "data": {"split_key": "k", "class_names": ["x", "y"]},
            "metrics": {"val": {"top1_error": 0.5}, "test": {"top1_error": 0.5}}})
        arrays = {f"{split}_{kind}": value for split in ("val", "test")
                  for kind, value in (("logits", np.eye(2, dtype=np.float32)), ("labels", np.array([0, 0])))}
        write_npz(s / cell / "predictions.npz", **arrays)
    npz = s / "a" / "predictions.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    return s


@case("compare-no-such-suite")
def _(t, mp):
    return ["compare", "--suite", t / "no" / "such" / "dir", "a", "b"], ["no results folder at", "no/such/dir"]


@case("compare-corrupt-predictions")
def _(t, mp):
    return ["compare", "--suite", results(t), "a", "b"], ["a/predictions.npz: damaged predictions file"]


@case("export-corrupt-predictions")
def _(t, mp):
    return ["export", results(t) / "a", "--out", t / "sub.csv"], ["a/predictions.npz: damaged predictions file",
                                                                  "--only a --force"]


@case("report-plots-corrupt-predictions")
def _(t, mp):
    return ["report", results(t), "--plots", t / "plots"], ["a/predictions.npz: damaged predictions file"]


@case("export-no-such-cell")
def _(t, mp):
    return ["export", "zzz", "--suite", results(t), "--out", t / "sub.csv"], ["'zzz' matches 0 cells"]


@case("report-recompute-corrupt-predictions")
def _(t, mp):
    return ["report", results(t), "--recompute", "--out", t / "board.md"], ["a/predictions.npz: damaged"]


@case("compare-cell-folder-missing")
def _(t, mp):
    return ["compare", t / "no-cell", t / "other"], ["no-cell' is not a cell folder (no result.json)"]


@case("export-corrupt-split-file")
def _(t, mp):
    s = results(t)
    (s / "splits" / "k.json").write_text('{"val": [')
    return ["export", s / "b", "--out", t / "sub.csv"], ["splits/k.json: not a bench split file", "--only b --force"]


@case("report-cell-json-without-label")
def _(t, mp):
    s = results(t)
    write_json(s / "b" / "cell.json", {"id": "b", "config": {"seed": 0}})
    return ["report", s], ["b/cell.json: not a bench cell record", "--only b --force"]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks) for name, (_, marks) in CASES.items()])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, cli, monkeypatch):
    work = tmp_path / "cwd"  # a `results/` written by default would land here
    work.mkdir()
    monkeypatch.chdir(work)
    args, fragments = CASES[name][0](tmp_path, monkeypatch)
    if args[0] == "run":
        args = [*args, "--results", tmp_path / "r"]
    before = _files(tmp_path)
    code, out, err = cli(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert _files(tmp_path) == before  # no results folder, no cell, no report, no rewritten suite.toml
    assert not (tmp_path / "pwned").exists()


def test_there_are_thirty_bad_inputs_or_more():
    assert len(CASES) >= 30


# ---- direct checks: what the CLI cannot show on this machine, and pickles in every place -------------

@NO_CUDA
def test_preflight_refuses_a_device_this_machine_lacks(write_suite):
    from bench.config import load_suite
    from bench.suite import expand, preflight

    spec = load_suite(write_suite())
    with pytest.raises(UserError, match="--device cuda, but torch sees no CUDA device"):
        preflight(spec, expand(spec), device="cuda")
    preflight(spec, expand(spec), device="cpu")


def test_hub_is_not_asked_when_the_initial_weights_are_saved(write_suite, tmp_path, monkeypatch):
    """An offline rerun of a suite whose initial weights the first run saved needs no hub."""
    from bench.config import load_suite
    from bench.suite import expand, preflight
    from bench.weights import init_key

    offline(monkeypatch, tmp_path)
    spec = load_suite(write_suite('[model]\narch = "tv:alexnet"\npretrained = true\n'))
    cells = expand(spec)
    with pytest.raises(UserError, match="cannot fetch pretrained weights"):
        preflight(spec, cells, device="cpu", results=tmp_path / "r")
    init = tmp_path / "r" / "tiny" / "init" / f"{init_key(cells[0].config, 4)}.safetensors"  # TINY: 4 classes
    init.parent.mkdir(parents=True)
    init.touch()
    preflight(spec, cells, device="cpu", results=tmp_path / "r")


def test_pickle_payloads_never_run_as_weights_checkpoint_or_parent(tmp_path):
    from bench.checkpoint import Checkpoint
    from bench.models import create_model
    from bench.store import load_best
    from bench.weights import read_state_file

    marker = tmp_path / "pwned"
    evil = {"conv.weight": Payload(marker)}
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof"))).close()  # a real payload: plain pickle runs it
    assert (tmp_path / "proof").exists()
    torch.save(evil, tmp_path / "w.pt")
    with pytest.raises(UserError, match="cannot read weights file"):
        read_state_file(tmp_path / "w.pt")
    cell = tmp_path / "cell"
    cell.mkdir()
    torch.save({"fingerprint": "f", "model": evil}, cell / "checkpoint.pt")
    with pytest.raises(UserError, match="not a readable bench checkpoint"):
        Checkpoint(cell, "f", 3).load()
    torch.save(evil, cell / "best.safetensors")  # a staged cell's parent weights: safetensors never unpickle
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; what matters is that nothing ran
        load_best(create_model("bench:small_cnn", 4, 32), cell)
    assert not marker.exists()
