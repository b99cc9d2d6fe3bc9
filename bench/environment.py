"""Where a cell ran, as its record says: versions, device, CPU, threads, host, executor; its process's
peak memory; and the two notices of libraries that a bench process leaves out of its output."""

from __future__ import annotations

import logging
import os
import platform
import resource
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bench

if TYPE_CHECKING:
    import torch

EXECUTOR_ENV = "BENCH_EXECUTOR"  # set for a cell's process by the executor that runs it


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0), so the peak is per cell."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _rss_anon_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class AnonPeak:
    """The peak of this process's anonymous memory while the block runs: RssAnon, what the process allocated,
    without the page cache of the files it maps (the decoded-image cache's pages, which VmHWM counts). The
    kernel keeps no high-water mark of it, so a thread samples it every `every` seconds; `mb` is None where
    /proc is absent (macOS)."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak_kb = every, _rss_anon_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self._take()

    def _take(self) -> None:
        now = _rss_anon_kb()
        if now is not None and self.peak_kb is not None:
            self.peak_kb = max(self.peak_kb, now)

    def __enter__(self) -> AnonPeak:
        if self.peak_kb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._take()

    @property
    def mb(self) -> float | None:
        return None if self.peak_kb is None else self.peak_kb / 1024


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    import timm
    import torch  # here, so that the CLI's quiet_known_notices imports no torch
    import torchvision

    from bench import distributed

    return {
        "bench": bench.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "host": platform.node(),
        "executor": os.environ.get(EXECUTOR_ENV, "local"),
        # the cell's ranks (bench.distributed): processes, each on its own GPU on CUDA
        "world_size": distributed.world(),
        **({"distributed_backend": torch.distributed.get_backend()} if distributed.world() > 1 else {}),
    }


# Ray's note, as it starts a local instance, that the instance uses token authentication (Ray's default):
# bench starts that instance itself, for the run. Ray's other notices (token authentication off) still show.
RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def _not_ray_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(RAY_TOKEN_NOTICE)


def quiet_known_notices() -> None:
    """Leave two libraries' notices out of this process's output, and only those two: torchvision's that
    Inception v3's and GoogLeNet's default initialisation will change one day (a release that changes it
    changes the initial weights of new cells, which each record's env.torchvision then says), and Ray's
    (RAY_TOKEN_NOTICE). Called where bench starts: the CLI, and each cell's own process."""
    warnings.filterwarnings("ignore", message="The default weight initialization of (inception_v3|GoogleNet) ",
                            category=FutureWarning, module="torchvision")
    ray_token = logging.getLogger(RAY_TOKEN_LOGGER)
    if _not_ray_token_notice not in ray_token.filters:
        ray_token.addFilter(_not_ray_token_notice)
