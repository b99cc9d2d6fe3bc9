"""A data set's files listed and stat'ed once per run, not once per cell.

`bench run` reads each source its cells name (the folder walked, the manifest or annotations parsed) and
stats every listed file, once: the plan's preflight does it, and the run writes what it read to
results/<suite>/listings/<run>/, one file per source, which every cell of the run (in a child process, on a
Ray or Slurm worker) loads instead of listing and stat'ing again. On iNat 2021's 2.79 M files that is about
36 s per cell on a warm local disk (benchmarks/test_listing.py), more on a network file system, spent once.

A listing's sizes and mtimes are also what its readers hold the files to: the probe of the headers, the
decoded cache's build and data.cache = "none"'s decoding per batch each open a file, fstat it (no second
path lookup) and stop with one line when it is not the file that was listed, rather than train on images
that differ from the ones the cache keys, splits and finished cells are named by. Without a run's listing
(`bench data inspect`) the source is read and stat'ed there and then, and the files held to that.

A run's folder lives while the run does: its lock is held by the run's process and the folder removed at
its end; one left by a run that died is removed by the next run, which can take its lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bench.config import DataConfig
from bench.data.sources import Samples, read_source
from bench.errors import UserError
from bench.hashing import stable_hash
from bench.locks import FileLock
from bench.store import atomic_path

LISTINGS = "listings"  # under results/<suite>/, beside splits/ and init/
VERSION = 1
SEP = "\0"  # cannot occur in a file name


def source_key(cfg: DataConfig) -> str:
    """What decides a source's listing: where it reads from and what index names its files."""
    return stable_hash({"v": VERSION, "source": cfg.source, "root": str(Path(cfg.root or ".").resolve()),
                        "manifest": cfg.manifest, "annotations": cfg.annotations}, 16)


def listed(cfg: DataConfig, folder: Path | str | None = None) -> Samples:
    """The source's samples with every file's stats: from the run's listing in `folder` when it has this
    source's, else read and stat'ed now."""
    if folder is not None:
        with contextlib.suppress(FileNotFoundError):  # none, or gone with a run that ended: listed here
            return load(Path(folder) / f"{source_key(cfg)}.npz")
    return read_source(cfg)  # every source stats the files it lists


def _joined(items: Iterable[str]) -> np.ndarray:
    # surrogateescape: a name that is not UTF-8 comes from the file system as surrogates, and goes back so
    return np.frombuffer(SEP.join(items).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _split(blob: np.ndarray) -> list[str]:
    return blob.tobytes().decode("utf-8", "surrogateescape").split(SEP) if blob.size else []


def save(file: Path, samples: Samples) -> None:
    """One .npz, no pickles: names as one NUL-separated text, labels and stats as arrays."""
    with atomic_path(file) as tmp, open(tmp, "wb") as f:
        given = samples.given is not None
        np.savez(f, paths=_joined(samples.paths), labels=samples.labels, stats=samples.stats,
                 classes=_joined(samples.classes), given=_joined(samples.given.tolist() if given else []),
                 head=np.frombuffer(json.dumps({"root": str(samples.root), "given": given,
                                                "class_meta": samples.class_meta}).encode(), dtype=np.uint8))


def load(file: Path) -> Samples:
    with np.load(file, allow_pickle=False) as z:
        head = json.loads(z["head"].tobytes())
        given = np.array(_split(z["given"]), dtype=object) if head["given"] else None
        return Samples(Path(head["root"]), _split(z["paths"]), z["labels"], _split(z["classes"]), given,
                       head["class_meta"], z["stats"])


@contextlib.contextmanager
def run_listings(suite_dir: Path, datas: Iterable[DataConfig],
                 known: MutableMapping[str, Samples] | None = None) -> Iterator[Path]:
    """This run's listing folder, with every source of `datas` in it (those `known`, by source_key, as the
    plan's preflight read them, taken out of it: a plan's listing serves the run that follows it, and is not
    held in memory while the run lasts; the others read now), removed when the run ends. Folders of runs
    whose process is gone are removed first."""
    base = Path(suite_dir) / LISTINGS
    _clean(base)
    token = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder, lock = base / token, FileLock(base / f"{token}.lock")
    lock.acquire()
    try:
        folder.mkdir(parents=True)
        done: set[str] = set()
        for cfg in datas:
            key = source_key(cfg)
            if cfg.source == "synthetic" or key in done:  # generated: a function of its config, no files
                continue
            done.add(key)
            samples = (known if known is not None else {}).pop(key, None)
            with contextlib.suppress(UserError):  # a missing folder: the cell says so itself, on its record
                save(folder / f"{key}.npz", samples if samples is not None else listed(cfg))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()
        (base / f"{token}.lock").unlink(missing_ok=True)  # a unique name: nobody else will lock it again


def _clean(base: Path) -> None:
    """Remove the listings of runs that died, and their lock files: a lock that can be taken has no live
    holder (the kernel dropped it with the process). A live run takes its lock before making its folder."""
    if not base.is_dir():
        return
    for token in {p.name.removesuffix(".lock") for p in base.iterdir()}:
        lock = FileLock(base / f"{token}.lock")
        if lock.acquire(blocking=False):
            try:
                shutil.rmtree(base / token, ignore_errors=True)
            finally:
                lock.release()
                lock.path.unlink(missing_ok=True)


def opened(path: str | Path, expected: np.ndarray | tuple[int, int] | None) -> BinaryIO:
    """`path` open for reading, held to its listed (size, mtime ns) when `expected` is given: a file
    changed since it was listed is a one-line error, not other pixels under the listed files' names."""
    f = open(path, "rb")
    if expected is None:
        return f
    st = os.fstat(f.fileno())
    size, mtime = (int(v) for v in expected)
    if (st.st_size, st.st_mtime_ns) != (size, mtime):
        f.close()
        was = "absent" if size < 0 else f"{size:,} bytes, modified {_when(mtime)}"
        raise UserError(f"'{path}' changed since this run listed its data ({was}; now {st.st_size:,} bytes, "
                        f"modified {_when(st.st_mtime_ns)})", key="data.root",
                        hint="leave the data unchanged while a run reads it; run again (bench run, or api.plan "
                             "then api.run) to list the files anew (finished cells keep the files they trained on)")
    return f


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))
