"""Trackers: a suite's cells also sent to MLflow, TensorBoard or Weights & Biases (`[log]`, `bench log`).

  base        what a tracker is given (CellRun, Ending) and does (Tracker, Run); the registry
  sync        follows cells' folders from the parent process and drives the trackers; never fails a cell
  mlflow, tensorboard, wandb   one tracker each, imported only when a suite asks for it
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from bench.config.suite import Log
from bench.errors import UserError

# [log] key -> the package it needs (each is an extra of bench: pip install 'bench[<key>]')
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}


def wanted(log: Log) -> dict[str, Any]:
    """The trackers `log` turns on, with their targets (true, a URI or folder, W&B's mode)."""
    return {name: target for name in PACKAGES if (target := getattr(log, name)) not in (False, None)}


def check_installed(names, file=None) -> None:
    """One line with the install command for a tracker whose package is missing."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"needs the {PACKAGES[name]} package, which is not installed", file=file,
                            key=f"log.{name}", hint=f"pip install 'bench[{name}]'")


def tracker_class(name: str):
    """The Tracker registered under `name`, its module imported now (the registry fills as modules load)."""
    from bench.trackers.base import TRACKERS

    check_installed([name])
    importlib.import_module(f"bench.trackers.{name}")
    return TRACKERS[name]
