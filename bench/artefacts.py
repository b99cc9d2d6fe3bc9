"""Shared artefacts: generated data, the probe and decoded caches, splits, initial weights, feature caches.

Each is built by one process at a time (`building` holds a lock beside it, so a second process waits and
then finds it made), verified complete by its builder before the rename that publishes it, and sealed
with a digest of its bytes (`seal`). Whoever uses it later checks the seal (`intact`): a derived cache
that does not match is rebuilt, initial weights are refused (the cells trained from them would no longer
be comparable). A builder that dies leaves only a `.partial-*` folder or `.*.tmp*` file, which the next
builder of the same artefact removes: it holds the lock, so nobody else is writing them.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import UserError
from bench.hashing import file_digest
from bench.locks import FileLock
from bench.store import read_json, write_json


def _lock(target: Path) -> FileLock:
    return FileLock(target.parent / f".{target.name}.lock")


def _clean_partials(target: Path) -> None:
    for stale in [*target.parent.glob(f"{target.name}.partial-*"), *target.parent.glob(f".{target.name}.*.tmp*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def building(target: Path | str) -> Iterator[None]:
    """Hold the build lock of `target` (a file or a folder): inside, check whether it exists and is intact,
    and build it if not. Leftovers of builders that died are removed on entry."""
    target = Path(target)
    with _lock(target):
        _clean_partials(target)
        yield


def _seal_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256.json")


def seal(path: Path | str) -> str:
    """Record the digest, size and mtime of a just-built file beside it; returns the digest."""
    path = Path(path)
    st = path.stat()
    digest = file_digest(path)
    write_json(_seal_path(path), {"sha256": digest, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return digest


def sealed_digest(path: Path | str) -> str | None:
    try:
        return str(read_json(_seal_path(Path(path)))["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def intact(path: Path | str, *, quick: bool = False) -> bool:
    """Whether `path` still holds the bytes it was sealed with. `quick` trusts an unchanged size and mtime
    (for caches of many GB, which would otherwise be read whole at every use); anything else reads it all."""
    path = Path(path)
    try:
        record = read_json(_seal_path(path))
        st = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or st.st_size != record.get("bytes"):
        return False
    if quick and st.st_mtime_ns == record.get("mtime_ns"):
        return True
    return file_digest(path) == record.get("sha256")


def reserve(path: Path | str, nbytes: int, what: str) -> None:
    """Allocate `nbytes` for `path` now, so that a full disk is one clear error here rather than a bus error
    (SIGBUS) later, when a memory map writes into a hole the file system cannot fill."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: write as before
            return
        if e.errno == errno.ENOSPC:
            raise no_space(path.parent, nbytes, what) from None
        raise
    finally:
        os.close(fd)


def no_space(folder: Path, nbytes: int | None, what: str) -> UserError:
    """A full disk in one line: `folder`, and what its own file system has free (that of its nearest existing
    ancestor, where the folder would have been made)."""
    from rich.filesize import decimal

    need = f"; {what} needs {decimal(nbytes)}" if nbytes else ""
    there = next(p for p in (folder, *folder.parents) if p.exists())
    have = f", {decimal(shutil.disk_usage(there).free)} are free"
    return UserError(f"no space left on the device{need}{have}", file=folder,
                     hint="free some space there, or point $BENCH_CACHE (caches) or --results (records) "
                          "at a larger disk")
