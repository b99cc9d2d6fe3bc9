"""Progress for a run: rich bars (cells, epochs, batches) on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LogProgress:
    """One line per epoch and per cell: readable in CI logs and files."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start_run(self, total: int, name: str) -> None:
        self._say(f"[bench] {name}: {total} cell(s)")

    def start_cell(self, index: int, total: int, label: str, cell_id: str, epochs: int, steps: int) -> None:
        self._label = label
        self._say(f"[bench] cell {index}/{total} {cell_id} {label}")

    def step(self) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        self._say(f"[bench]   epoch {row['epoch']}: train_loss {row['train_loss']:.4f} "
                  f"val_error {row['val_error']:.4f} ({row['train_seconds']:.1f}s)")

    def end_cell(self, status: str, detail: str = "") -> None:
        self._say(f"[bench]   {status}{': ' + detail if detail else ''}")


class RichProgress(LogProgress):
    def __init__(self, console: Console):
        super().__init__()
        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, transient=True)

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def start_run(self, total: int, name: str) -> None:
        self.cells = self.bars.add_task(f"{name}", total=total)
        self.epochs = self.bars.add_task("epochs", total=1)
        self.batches = self.bars.add_task("batches", total=1)

    def start_cell(self, index: int, total: int, label: str, cell_id: str, epochs: int, steps: int) -> None:
        self.bars.update(self.cells, completed=index - 1)
        self.bars.reset(self.epochs, total=epochs, description=f"{label}")
        self.bars.reset(self.batches, total=steps, description="batches")
        self._steps = steps

    def step(self) -> None:
        self.bars.advance(self.batches)

    def epoch(self, row: dict[str, Any]) -> None:
        self.bars.advance(self.epochs)
        self.bars.reset(self.batches, total=self._steps)

    def end_cell(self, status: str, detail: str = "") -> None:
        self.bars.advance(self.cells)
        self._say(f"  {status} {detail}")


def make_progress(console: Console | None = None) -> LogProgress:
    console = console or Console(stderr=True)
    return RichProgress(console) if console.is_terminal else LogProgress()
