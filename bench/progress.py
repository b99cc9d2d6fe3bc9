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

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start_run(self, total: int, name: str) -> None:
        self.say(f"[bench] {name}: {total} cell(s)")

    def start_cell(self, index: int, total: int, label: str, cell_id: str, epochs: int, steps: int) -> None:
        self._label = label
        self.say(f"[bench] cell {index}/{total} {cell_id} {label}")

    def step(self) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        self.say(f"[bench]   epoch {row['epoch']}: train_loss {row['train_loss']:.4f} "
                  f"val_error {row['val_error']:.4f} ({row['train_seconds']:.1f}s)")

    def end_cell(self, status: str, detail: str = "") -> None:
        self.say(f"[bench]   {status}{': ' + detail if detail else ''}")


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

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)  # error texts hold [brackets] of their own

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
        self.say(f"  {status} {detail}")


class LiveView(LogProgress):
    """One view of a whole suite whose cells run in parallel, on any executor: read every second from the
    cell folders, as `bench status` reads them (claims, checkpoints, records), so it shows cells running on
    other machines as well as here. On a terminal a table redrawn in place; elsewhere a line per change."""

    def __init__(self, suite_dir, cells, console: Console | None = None, stream=None, interval: float = 1.0):
        super().__init__(stream)
        self.suite_dir, self.listed = suite_dir, [(c.id, c.label) for c in cells]
        self.console = console if console is not None and console.is_terminal else None
        self.interval, self.seen = interval, {}

    def __enter__(self):
        import threading

        from rich.live import Live

        self.live = Live(self._table([]), console=self.console, refresh_per_second=2) if self.console else None
        if self.live:
            self.live.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="bench-live-view")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._refresh()
        if self.live:
            self.live.__exit__(*exc)
        return False

    def say(self, text: str) -> None:
        if self.live:
            self.live.console.print(text, highlight=False, markup=False)
        else:
            super().say(text)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._refresh()

    def _refresh(self) -> None:
        from bench.status import cell_states

        rows = cell_states(self.suite_dir, self.listed)
        if self.live:
            self.live.update(self._table(rows))
            return
        for r in rows:
            key = (r["state"], r.get("epoch"))
            if self.seen.get(r["id"]) != key:
                if r["id"] in self.seen or r["state"] != "not started":
                    super().say(f"[bench] {r['label']} ({r['id']}): {r['state']}"
                                 + (f" {r['detail']}" if r["detail"] else ""))
                self.seen[r["id"]] = key

    @staticmethod
    def _table(rows):
        from rich.table import Table

        from bench.status import summary

        table = Table("cell", "label", "state", "detail", box=None, caption=summary(rows))
        for r in rows:
            table.add_row(r["id"], r["label"], r["state"], r["detail"])
        return table


def make_progress(console: Console | None = None) -> LogProgress:
    console = console or Console(stderr=True)
    return RichProgress(console) if console.is_terminal else LogProgress()
