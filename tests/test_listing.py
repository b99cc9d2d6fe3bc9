"""A run lists its data and stats every file once for all its cells (bench.data.listing), and each reader
holds the files it opens to that listing: a file changed since stops it with one line, leaving no cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from bench import api
from bench.cell import RunOptions
from bench.config import DataConfig
from bench.data import cache, curated, listing, sources
from bench.data.listing import LISTINGS
from bench.data.loaders import FileDataset, make_loader
from bench.errors import UserError, first_line
from bench.hashing import stable_hash
from bench.locks import FileLock
from bench.progress import LogProgress
from tests.support import FOLDER_SUITE

SUITE = FOLDER_SUITE + """
[[cells]]
label = "decoded"

[[cells]]
label = "other-lr"
"train.lr" = 0.01

[[cells]]
label = "no-cache"
"data.cache" = "none"
"train.lr" = 0.001
"""


def _photos(root, classes: int = 3, per: int = 12):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.jpg")
    return root


def _changed(file) -> None:
    """The same bytes with a later mtime: what `touch` or a copy that keeps the content does."""
    st = os.stat(file)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _quiet():
    return LogProgress(open(os.devnull, "w"))


@pytest.mark.parametrize("check", [True, False])
def test_a_run_lists_and_stats_its_data_once_for_all_its_cells(tmp_path, monkeypatch, check):
    """With preflight (bench run) its listing is the run's; without, the run lists the data itself: either
    way three cells, one of them decoding the files per batch, read the folder and stat each file once."""
    root = _photos(tmp_path / "data")
    reads, stated = [], []
    read, stats = listing.read_source, sources.file_stats
    monkeypatch.setattr(listing, "read_source", lambda cfg: reads.append(cfg.root) or read(cfg))
    counting = lambda base, paths: stated.extend(paths) or stats(base, paths)  # noqa: E731
    monkeypatch.setattr(sources, "file_stats", counting)
    monkeypatch.setattr(cache, "file_stats", counting)
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(root=root))
    planned = api.plan(path, device="cpu", check=check)
    assert bool(planned.listed) == check
    summary = api.run(planned, results=tmp_path / "r", device="cpu", options=RunOptions(isolate=False, threads=1),
                      progress=_quiet())
    assert len(summary.ran) == 3 and not summary.failed, summary.failed
    assert len(reads) == 1 and sorted(stated) == sorted(f"c{c}/{i}.jpg" for c in range(3) for i in range(12))
    assert planned.listed == {}  # the plan's listing served this run, and is not held while it lasts
    assert [p.name for p in (summary.suite_dir / LISTINGS).iterdir()] == []  # the run's listing went with it
    files = {json.loads((summary.suite_dir / c / "result.json").read_text())["data"]["files"] for c in summary.ran}
    assert files == {curated(planned.cells[0].config.data).files}  # the keys a cell listing on its own gives


def test_a_file_changed_between_plan_and_run_fails_the_cells_that_read_it(tmp_path):
    root = _photos(tmp_path / "data")
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(root=root))
    planned = api.plan(path, device="cpu", only="decoded")
    _changed(root / "c1" / "3.jpg")
    summary = api.run(planned, results=tmp_path / "r", device="cpu", options=RunOptions(isolate=False, threads=1),
                      progress=_quiet())
    assert not summary.ran and len(summary.failed) == 1
    error = json.loads((summary.suite_dir / planned.cells[0].id / "result.json").read_text())["error"]
    assert "c1/3.jpg' changed since this run listed its data" in error and "\n" not in error
    assert "to list the files anew" in error


@pytest.mark.parametrize("reader", ["probe", "probe, in a process pool", "decoded", "decoded, in a process pool",
                                    "undecoded", "per batch", "per batch, on the device", "per batch, in a worker"])
def test_every_reader_holds_the_files_to_their_listing(tmp_path, monkeypatch, reader):
    """The header probe, the decoded cache's build (in a pool of processes, as over 256 images), data.cache =
    "none"'s check and its decoding per batch (bytes for the device, too; in a loader worker): a file not as
    listed is a one-line error naming it, and no cache is left half-built."""
    if "pool" in reader:  # two processes, whatever the machine's cores
        monkeypatch.setattr(cache, "_workers", lambda n: 2)
    root = _photos(tmp_path / "data")
    s = listing.listed(DataConfig(source="folder", root=str(root)))
    heads = None if reader.startswith("probe") else cache.probe(s.root, s.paths, s.stats)
    args = (s.root, s.paths, *(() if heads is None else (heads.width, heads.height)), 16)
    none = cache.undecoded(*args, s.stats) if reader.startswith("per batch") else None
    _changed(root / s.paths[5])
    with pytest.raises(UserError, match="changed since this run listed its data") as e:
        if reader.startswith("probe"):
            cache.probe(s.root, s.paths, s.stats)
        elif reader.startswith("decoded"):
            cache.decoded(*args, s.stats)
        elif reader == "undecoded":
            cache.undecoded(*args, s.stats)
        else:
            ds = FileDataset(none.files, 16, np.arange(len(s.paths)), s.labels, 16, 16,
                             shapes=none.index[:, 1:] if "device" in reader else None, stats=none.stats)
            if "worker" in reader:  # torch re-raises it as "Caught UserError in DataLoader worker process 0"
                batches = iter(make_loader(ds, 8, train=False, seed=0, workers=1))
                try:
                    next(batches)
                finally:  # else torch waits 5 s for the worker when the failed iterator is collected
                    for worker in batches._workers:
                        worker.terminate()
            else:
                ds.__getitems__([4, 5])
    line = first_line(e.value, typed=True)
    assert line.startswith("UserError: data.root: '") and s.paths[5] in line and "changed since" in line
    if reader.startswith("decoded"):  # its folder, and no .partial of it, under the listed files' key
        folder = cache.decoded_folder(s.root, s.paths, 16, s.stats)
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(folder.name)]
    # listed anew, the same files read as they are now
    again = listing.listed(DataConfig(source="folder", root=str(root)))
    assert cache.probe(again.root, again.paths, again.stats).bad.tolist() == [""] * len(again.paths)


def test_a_listing_keeps_what_its_source_read(tmp_path):
    """Names with spaces and accents (one not UTF-8: Latin-1 bytes), the source's own splits, labels and
    stats, through one .npz without pickles; with the source's iNat class metadata."""
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("café", "b c"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                name = f"é {i}.png" if i else os.fsdecode(b"caf\xe9.png")  # surrogates, as the file system gives it
                Image.new("RGB", (6, 5), (i, 0, 0)).save(root / split / cls / name)
    s = listing.listed(DataConfig(source="folder", root=str(root)))
    s.class_meta["café"] = {"supercategory": "Plantae"}
    listing.save(tmp_path / "l.npz", s)
    back = listing.load(tmp_path / "l.npz")
    assert (back.root, back.paths, back.classes, back.class_meta) == (s.root, s.paths, s.classes, s.class_meta)
    assert np.array_equal(back.labels, s.labels) and np.array_equal(back.stats, s.stats)
    assert back.given.tolist() == s.given.tolist() == ["train"] * 6 + ["val"] * 4
    assert s.stats.shape == (10, 2) and (s.stats[:, 0] > 0).all()


def test_the_caches_keys_name_the_files_as_before(tmp_path):
    """Listed stats key the caches as the stats taken per cell did: caches built before are found again."""
    root = _photos(tmp_path / "data", classes=2, per=3)
    s = listing.listed(DataConfig(source="folder", root=str(root)))
    by_hand = [[os.stat(root / p).st_size, os.stat(root / p).st_mtime_ns] for p in s.paths]
    expected = stable_hash({"v": cache.VERSION, "root": str(root.resolve()), "paths": s.paths, "stats": by_hand,
                            "size": 16, "layout": cache.LAYOUT}, 16)
    assert cache.decoded_folder(s.root, s.paths, 16, s.stats).name == expected
    assert cache.decoded_folder(s.root, s.paths, 16).name == expected  # stat'ed there and then


def test_a_run_removes_the_listings_of_runs_that_died_and_keeps_live_ones(tmp_path):
    root = _photos(tmp_path / "data", classes=2, per=2)
    base = tmp_path / "suite" / LISTINGS
    for name in ("dead", "live"):
        (base / name).mkdir(parents=True)
        (base / name / "x.npz").write_bytes(b"")
    (base / "died-before-its-folder.lock").touch()
    dead = FileLock(base / "dead.lock")
    dead.acquire()
    dead.release()  # as when its process died: the kernel drops the lock
    live = FileLock(base / "live.lock")
    live.acquire()
    cfg = DataConfig(source="folder", root=str(root))
    with listing.run_listings(tmp_path / "suite", [cfg, cfg]) as folder:
        assert not (base / "dead").exists() and (base / "live" / "x.npz").is_file()
        assert [p.name for p in folder.iterdir()] == [f"{listing.source_key(cfg)}.npz"]
        assert listing.listed(cfg, folder).paths == sources.read_source(cfg).paths
    assert sorted(p.name for p in base.iterdir()) == ["live", "live.lock"]
    live.release()


def test_a_pool_of_processes_reads_what_one_process_reads(tmp_path, monkeypatch):
    """Each job of the probe, the decoded cache's build and the decode check carries its own rows' names and
    stats: the same headers, pixels and bad rows (a broken file among them) as one process gives."""
    root = _photos(tmp_path / "data")
    (root / "c2" / "5.jpg").write_bytes((root / "c2" / "5.jpg").read_bytes()[:200])  # truncated
    s = listing.listed(DataConfig(source="folder", root=str(root)))
    built = []
    for workers in (1, 2):  # one process; then a pool of two (16 jobs of 2 or 3 rows)
        monkeypatch.setattr(cache, "_workers", lambda n, workers=workers: workers)
        monkeypatch.setenv("BENCH_CACHE", str(tmp_path / f"cache{workers}"))
        heads = cache.probe(s.root, s.paths, s.stats)
        dec = cache.decoded(s.root, s.paths, heads.width, heads.height, 16, s.stats)
        check = cache.undecoded(s.root, s.paths, heads.width, heads.height, 16, s.stats)
        built.append((heads, dec, check))
    (h1, d1, c1), (h2, d2, c2) = built
    for field in ("modes", "width", "height", "bad"):
        assert getattr(h1, field).tolist() == getattr(h2, field).tolist(), field
    bad = s.paths.index("c2/5.jpg")
    assert d1.bad == d2.bad == c1.bad == c2.bad and list(d1.bad) == [bad]
    assert np.array_equal(d1.index, d2.index) and np.array_equal(np.asarray(d1.pixels), np.asarray(d2.pixels))
