"""Claimed cells: which process runs a cell, so that two `bench run`s never run one cell at once.

A claim is an exclusive lock on `<cell>/.lock`, held for as long as the cell runs, and a `claim.json` beside
it saying who holds it (host, pid, start, heartbeat, epoch k of n) for `bench status`. On one machine the
lock alone decides: the kernel drops it when its holder dies, however it dies. Across machines on a shared
file system whose locks may not reach the other machines (NFS mounted with nolock), a claim from another
host also counts while its heartbeat is younger than `stale_after` seconds.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from bench.locks import FileLock
from bench.store import CLAIM, LOCK, read_json, write_json

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
HOST = socket.gethostname()


def read_claim(cell_dir: Path) -> dict[str, Any] | None:
    try:
        claim = read_json(Path(cell_dir) / CLAIM)
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None


def holder(cell_dir: Path) -> str:
    """Who holds the cell, for a message: host, pid, epoch k of n."""
    claim = read_claim(cell_dir) or {}
    return f"{claim.get('host', '?')} pid {claim.get('pid', '?')}, epoch {claim.get('epoch', '?')}/{claim.get('epochs', '?')}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def claim_live(claim: dict[str, Any] | None, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether the claim's owner looks alive: its pid on this host, its heartbeat from another."""
    if not claim:
        return False
    if claim.get("host") == HOST:
        return pid_alive(int(claim.get("pid", -1)))
    return time.time() - float(claim.get("heartbeat", 0)) < stale_after


class Claim:
    """acquire() a cell for this process, update() while it runs (a heartbeat, the epoch), release()."""

    def __init__(self, cell_dir: Path, epochs: int, stale_after: float = STALE_AFTER_S):
        self.dir, self.epochs, self.stale_after = Path(cell_dir), epochs, stale_after
        self.lock = FileLock(self.dir / LOCK)
        self.record: dict[str, Any] = {}
        self.last_beat = 0.0

    def acquire(self) -> bool:
        """True when this process now owns the cell; False when a live process does."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.lock.acquire(blocking=False):
            return False
        other = read_claim(self.dir)
        # the lock was free, so an owner on this host is dead; one elsewhere may hold a lock we cannot see
        if other and other.get("host") != HOST and claim_live(other, self.stale_after):
            self.lock.release()
            return False
        now = time.time()
        self.record = {"host": HOST, "pid": os.getpid(), "started": now, "heartbeat": now, "epoch": 0,
                       "epochs": self.epochs}
        write_json(self.dir / CLAIM, self.record)
        self.last_beat = now
        return True

    def update(self, **fields: Any) -> None:
        """Refresh the heartbeat (and any fields, e.g. epoch=k)."""
        self.record.update(fields, heartbeat=time.time())
        write_json(self.dir / CLAIM, self.record)
        self.last_beat = self.record["heartbeat"]

    def beat(self) -> None:
        """A heartbeat when the last is HEARTBEAT_S old: cheap to call often."""
        if time.time() - self.last_beat >= HEARTBEAT_S:
            self.update()

    def release(self) -> None:
        if self.lock.held:
            (self.dir / CLAIM).unlink(missing_ok=True)
            self.lock.release()
