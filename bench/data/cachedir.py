"""Where generated data and decoded images live: outside results/, shared by every suite and run."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$BENCH_CACHE, else ~/.cache/bench (XDG_CACHE_HOME respected)."""
    if os.environ.get("BENCH_CACHE"):
        return Path(os.environ["BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench"
