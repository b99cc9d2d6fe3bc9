"""Advisory file locks between processes: on one machine, and over NFS (Linux emulates flock with NFS byte-range
locks). The kernel drops a lock when its holder dies, however it dies, so a lock that can be taken has no
live owner: no heartbeat or pid guessing decides who may build a shared artefact or run a cell."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileLock:
    """An exclusive lock on `path` (created if missing, never removed: removing it would let two processes
    lock two different files of one name). Re-entrant use is a bug: one holder per FileLock object."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; False, without waiting, when `blocking` is off and another process holds it."""
        assert self._fd is None, "FileLock is not re-entrant"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file drops the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
