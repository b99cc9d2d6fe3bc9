"""One `bench run` of a suite, plain or tuned: the device checked before anything is written, the suite
folder with its suite.toml, run.json (what this run set out to run), and SIGTERM (a scheduler's preemption,
`kill`) stopping the run as Ctrl-C does: cleanly, every checkpoint resumable."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.device import resolve_device
from bench.store import RUN, SUITE_FILE, atomic_write_text, write_json


@dataclass(frozen=True)
class Session:
    dir: Path  # results/<suite>, absolute
    device: torch.device
    executor: str
    started: float

    def note_run(self, cells: Iterable[str], **extra: Any) -> None:
        """run.json: the cells this run set out to run (a report of fewer says "partial")."""
        write_json(self.dir / RUN, {"cells": list(cells), "executor": self.executor, "started": self.started,
                                    **extra})


@contextlib.contextmanager
def open_session(results: Path, name: str, suite_text: str, device: str, executor: str) -> Iterator[Session]:
    dev = resolve_device(device)  # before anything is written
    suite_dir = Path(results).resolve() / name
    suite_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(suite_dir / SUITE_FILE, suite_text)
    with sigterm_interrupts():
        yield Session(suite_dir, dev, executor, time.time())


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
