"""Early stopping (train.monitor, mode, patience, min_delta): which epoch is best, and when to stop."""

from __future__ import annotations

from typing import Any

from bench.directions import maximises, monitored


class EarlyStopping:
    """Tracks the monitored validation figure: which epoch is best, and when to stop (after `patience`
    epochs without an improvement larger than min_delta). Ties on the monitor go to the lower val_loss,
    then to the earlier epoch."""

    def __init__(self, monitor: str, mode: str, patience: int | None, min_delta: float):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if maximises(monitor, mode) else 1.0
        self.best: tuple[float, float] | None = None
        self.since_best = 0

    def update(self, row: dict[str, Any]) -> bool:
        """True when this epoch is the new best."""
        value = self.sign * monitored(row, self.monitor)
        if self.best is None or value < self.best[0] - self.min_delta or (
                self.min_delta == 0 and value == self.best[0] and row["val_loss"] < self.best[1]):
            self.best, self.since_best = (value, row["val_loss"]), 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience


def as_selected(row: dict[str, Any], variant: str) -> dict[str, Any]:
    """The epoch's row as the stopper reads it: val_* of the selected weights (history keeps val_* raw)."""
    if variant == "raw":
        return row
    return {**row, **{k: row[f"{k}_{variant}"] for k in ("val_loss", "val_error", "val_top5_error")}}
