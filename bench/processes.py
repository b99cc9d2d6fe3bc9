"""How bench starts a process that trains — a cell's (bench.worker) or one of its ranks' (bench.ranks) — and
makes it one: from a fork server that imported what training needs once, in the launching run's environment
and folder."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterator
from functools import cache

from bench.environment import quiet_known_notices
from bench.models.plugins import load_plugins


@cache
def spawn_context():
    """How bench starts a process that trains (a cell, or one of its ranks): from a fork server that
    imported what training needs once."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # what every cell's process uses, imported once here rather than in each child: the cell's code, and
        # the metrics its evaluation computes (bench.metrics imports torchmetrics lazily, for the reports)
        ctx.set_forkserver_preload(["bench.execute", "torchmetrics.functional.classification"])
        return ctx
    return mp.get_context("spawn")


def adopt(env: dict[str, str], cwd: str) -> None:
    """Make this process the one a cell runs in: the launching run's environment (over this one's) and
    folder, and the plugins that environment names."""
    os.environ.update(env)
    os.chdir(cwd)
    quiet_known_notices()
    load_plugins()


@contextlib.contextmanager
def alongside(check: Callable[[threading.Event], None], name: str, period_s: float = 1.0) -> Iterator[None]:
    """`check(stop)` every `period_s` in a thread of its own while the block runs; `stop` is set as the block
    ends (a check that waits on it wakes at once)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            check(stop)

    thread = threading.Thread(target=loop, daemon=True, name=name)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
