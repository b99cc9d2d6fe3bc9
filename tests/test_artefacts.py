"""Shared artefacts: built once under a lock, verified, sealed; damaged ones rebuilt or refused; data that
changed under finished cells refused; a full disk is one line."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import artefacts
from bench.config import SyntheticConfig
from bench.data import cache, synthetic
from tests.support import FOLDER_SUITE


def _images(root: Path, per_class: int = 8, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture
def folder_suite(tmp_path):
    root = _images(tmp_path / "data")
    path = tmp_path / "files.toml"
    path.write_text(FOLDER_SUITE.format(root=root))
    return path, root


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_data_changed_under_finished_cells_is_refused_and_force_reruns(folder_suite, tmp_path, cli):
    path, root = folder_suite
    results = tmp_path / "r"
    assert cli("run", path, "--results", results, "--in-process")[0] == 0
    (cell,) = [p for p in (results / "files").iterdir() if (p / "result.json").is_file()]
    first = json.loads((cell / "result.json").read_text())
    assert cli("run", path, "--results", results, "--in-process")[0] == 0  # unchanged data: skipped, no error

    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "class0" / "new.png")  # one image more
    before = _snapshot(results)
    code, out, err = cli("run", path, "--results", results, "--in-process")
    assert code == 2, err
    (line,) = _error_lines(err)
    assert "images under 1 finished cell(s) changed" in line and "--force" in line and cell.name in line
    assert "Traceback" not in out + err
    assert _snapshot(results) == before  # nothing rewritten, not even suite.toml

    assert cli("run", path, "--results", results, "--in-process", "--force")[0] == 0
    rerun = json.loads((cell / "result.json").read_text())
    assert rerun["data"]["files"] != first["data"]["files"]
    assert rerun["data"]["split_key"] != first["data"]["split_key"]
    assert rerun["data"]["images"]["train"] + rerun["data"]["images"]["val"] + rerun["data"]["images"]["test"] == 25


def test_an_edited_image_counts_as_changed_data(folder_suite, tmp_path, cli):
    path, root = folder_suite
    results = tmp_path / "r"
    assert cli("run", path, "--results", results, "--in-process")[0] == 0
    img = root / "class1" / "3.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(img)  # same name, other pixels (and size, mtime)
    code, _, err = cli("run", path, "--results", results, "--in-process")
    assert code == 2 and "changed since they ran" in err


def test_generated_data_is_built_once_when_two_builders_ask_at_once(tmp_path, monkeypatch):
    drawn = []
    render = synthetic.render

    def counting(c, size, rng):
        drawn.append(c)
        return render(c, size, rng)

    monkeypatch.setattr(synthetic, "render", counting)
    cfg = SyntheticConfig(classes=3, images=30, size=16)
    roots = []
    threads = [threading.Thread(target=lambda: roots.append(synthetic.generate(cfg, tmp_path / "gen")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert roots == [tmp_path / "gen"] * 2
    assert len(drawn) == sum(synthetic.class_sizes(cfg))  # drawn once, not twice
    assert len(list((tmp_path / "gen").glob("*/*.jpg"))) == len(drawn)
    assert not list(tmp_path.glob("gen.partial-*"))


def test_generated_data_missing_an_image_is_generated_again(tmp_path):
    cfg = SyntheticConfig(classes=3, images=30, size=16)
    root = synthetic.generate(cfg, tmp_path / "gen")
    victim = next(root.glob("*/*.jpg"))
    data = victim.read_bytes()
    victim.unlink()
    synthetic.generate(cfg, root)
    assert victim.read_bytes() == data


def _decoded_setup(tmp_path):
    root = _images(tmp_path / "imgs", per_class=4, classes=2)
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    return root, paths


def _decoded(root, paths):
    heads = cache.probe(root, paths)
    return cache.decoded(root, paths, heads.width, heads.height, 8)


def test_altered_decoded_pixels_are_noticed_and_rebuilt(tmp_path, capsys):
    root, paths = _decoded_setup(tmp_path)
    original = np.array(_decoded(root, paths).pixels)
    folder = _decoded(root, paths).folder
    pixels = np.load(folder / "pixels.npy", mmap_mode="r+")
    pixels[0] ^= 0xFF  # one pixel, same size: only the seal can tell
    pixels.flush()
    del pixels
    os.utime(folder / "pixels.npy")  # what any writer leaves behind
    capsys.readouterr()
    again = _decoded(root, paths)
    assert np.array_equal(np.array(again.pixels), original)
    assert "incomplete or altered; building it again" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["meta.json", "pixels.npy", "index.npy", "seal"])
def test_a_damaged_decoded_cache_is_rebuilt_not_trusted(tmp_path, damage):
    root, paths = _decoded_setup(tmp_path)
    original = np.array(_decoded(root, paths).pixels)
    folder = _decoded(root, paths).folder
    target = {"meta.json": folder / "meta.json", "pixels.npy": folder / "pixels.npy",
              "index.npy": folder / "index.npy", "seal": folder / ".pixels.npy.sha256.json"}[damage]
    target.write_bytes(b"\x93NUMPY garbage" if damage.endswith(".npy") else b"{not json")
    assert np.array_equal(np.array(_decoded(root, paths).pixels), original)


def test_a_garbage_probe_cache_is_probed_again(tmp_path):
    root, paths = _decoded_setup(tmp_path)
    first = cache.probe(root, paths)
    (file,) = (cache.cache_root() / "probe").glob(f"{cache._key(root, paths, None)}.npz")
    file.write_bytes(b"PK\x03\x04 not a zip")
    again = cache.probe(root, paths)
    assert list(again.width) == list(first.width) == [20] * len(paths)


def test_leftovers_of_a_builder_that_died_are_removed(tmp_path):
    root, paths = _decoded_setup(tmp_path)
    folder = cache.decoded_folder(root, paths, 8)
    stale = folder.with_name(folder.name + ".partial-dead")
    stale.mkdir(parents=True)
    (stale / "pixels.npy").write_bytes(b"half")
    _decoded(root, paths)
    assert not stale.exists() and (folder / "meta.json").is_file()


def test_altered_initial_weights_are_refused_before_anything_runs(folder_suite, tmp_path, cli):
    path, _ = folder_suite
    results = tmp_path / "r"
    assert cli("run", path, "--results", results, "--in-process")[0] == 0
    (init,) = (results / "files" / "init").glob("*.safetensors")
    blob = bytearray(init.read_bytes())
    blob[-1] ^= 0x01  # one bit of one weight
    init.write_bytes(bytes(blob))
    before = _snapshot(results)
    code, out, err = cli("run", path, "--results", results, "--in-process", "--force")
    assert code == 2 and "Traceback" not in out + err
    (line,) = _error_lines(err)
    assert str(init) in line and "sha256 differs" in line and "--force" in line
    assert _snapshot(results) == before


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_cache_disk_fails_the_cell_in_one_line_and_publishes_nothing(folder_suite, tmp_path, cli,
                                                                             monkeypatch):
    path, _ = folder_suite
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(artefacts.os, "posix_fallocate", _enospc)
    code, out, err = cli("run", path, "--results", tmp_path / "r", "--in-process")
    assert code == 1 and "Traceback" not in out + err
    (cell,) = [p for p in (tmp_path / "r" / "files").iterdir() if (p / "result.json").is_file()]
    result = json.loads((cell / "result.json").read_text())
    assert result["status"] == "failed"
    assert "no space left on the device; the decoded-image cache needs" in result["error"]
    assert str(tmp_path / "cache" / "decoded") in result["error"]
    published = [p.name for p in (tmp_path / "cache" / "decoded").iterdir() if not p.name.startswith(".")]
    assert published == []  # no cache folder, no .partial-* left: only the build lock


def test_a_full_results_disk_is_one_line_and_leaves_no_half_file(folder_suite, tmp_path, cli, monkeypatch):
    path, _ = folder_suite
    results = tmp_path / "r"
    import tempfile

    mkstemp = tempfile.mkstemp

    def full(*args, dir=None, **kwargs):
        if dir is not None and str(results) in str(dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(str(dir), "x"))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full)
    code, out, err = cli("run", path, "--results", results, "--in-process")
    assert code == 1 and "Traceback" not in out + err
    (line,) = _error_lines(err)
    assert "no space left on the device" in line and str(results / "files") in line
    assert not [p for p in results.rglob("*") if p.is_file() and ".tmp" in p.name]
