from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.cli import main

# xdist runs one worker per core (pyproject's addopts), and torch would give every worker all the cores: their
# OpenMP pools spin against each other (the default tier took 4 min 24 s, against 3 min 0 s with this share,
# on two cores).
# Each worker gets its share, and so does every cell or rank process it starts (from a fork server that
# inherits the variable); a variable the user set is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // _WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Generated data and decoded caches go to a throwaway folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _torch_threads():
    """A run in this process with RunOptions(threads=N) leaves torch at N threads: each test starts where the
    worker started, whichever tests pytest-xdist gave the worker before it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


TINY = """
[suite]
name = "tiny"
seeds = [0]

[data]
image_size = 16

[data.synthetic]
classes = 4
images = 120
size = 16

[train]
epochs = 2
batch_size = 16
optimizer = "adam"
lr = 0.003
"""


@pytest.fixture
def write_suite(tmp_path):
    """write_suite(extra_toml, base=TINY) -> path of a suite file in tmp_path."""
    def write(extra: str = "", base: str = TINY, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(base) + "\n" + textwrap.dedent(extra))
        return path

    return write


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args) -> (exit code, stdout, stderr), running `bench` in this process."""
    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


PLUGIN = '''
import os
import signal

from torch import nn

from bench.models import register_model


@register_model("{name}")
class Plugged(nn.Module):
    min_size = 1

    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        if self.training:
            {on_train}
        return self.head(x.mean((2, 3)))
'''


def write_plugin(path: Path, name: str, on_train: str = "pass") -> Path:
    """A BENCH_PLUGINS file registering `bench:<name>`, a one-layer network that runs `on_train` (a line of
    Python: a crash, an exception) at every training step."""
    path.write_text(PLUGIN.format(name=name, on_train=on_train))
    return path


@pytest.fixture
def use_plugin(tmp_path, monkeypatch):
    """use_plugin(name, on_train) -> `bench:<name>` (see write_plugin) registered in this process and, through
    BENCH_PLUGINS, in every cell's process; unregistered after the test, so no later test here trains it."""
    from bench.models.builtins import BUILTINS
    from bench.models.plugins import load_plugins

    names = []

    def use(name: str, on_train: str) -> Path:
        path = write_plugin(tmp_path / f"{name}.py", name, on_train)
        monkeypatch.setenv("BENCH_PLUGINS", str(path))
        load_plugins()
        names.append(name)
        return path

    yield use
    for name in names:
        BUILTINS.pop(name, None)
