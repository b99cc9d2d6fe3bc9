"""One attempt at a cell: claim it, run it in a child process (or here), and say what became of it. Every
executor's worker calls `attempt`, so the claim — not the executor — decides that one cell runs once."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from bench.cell import Cell, Outcome, RunOptions
from bench.claims import Claim, claim_live, holder, read_claim
from bench.execute import execute
from bench.processes import alongside
from bench.progress import LogProgress
from bench.store import is_done


def attempt(cell: Cell, suite_dir: Path, device: torch.device, progress: LogProgress, index: int, total: int,
            options: RunOptions, env: dict[str, str] | None = None) -> Outcome:
    """Claim `cell` and run it (with `env` over this process's environment when it runs in a child), or say
    why not."""
    def skip(state: str, why: str) -> Outcome:
        progress.start_cell(index, total, cell.label, cell.id, 1, 1)
        progress.end_cell("skipped", why)
        return Outcome(cell.id, state, why)

    cell_dir = suite_dir / cell.id
    if is_done(cell_dir) and not options.force:
        return skip("skipped", "finished earlier (--force reruns it)")
    claim = Claim(cell_dir, cell.config.train.epochs)
    if not claim.acquire():
        return skip("busy", f"running elsewhere ({holder(cell_dir)})")
    try:
        if is_done(cell_dir) and not options.force:
            return skip("skipped", "finished by another run meanwhile")
        if cell.parent and not is_done(suite_dir / cell.parent) and claim_live(read_claim(suite_dir / cell.parent)):
            return skip("busy", f"its parent {cell.parent} is running elsewhere")
        if options.isolate:
            from bench.worker import run_in_child

            record = run_in_child(cell, suite_dir, device, progress, index, total, options, claim, env)
        else:
            with _heartbeat(claim):
                record = execute(cell, suite_dir, device, progress, index, total, options, claim)
    finally:
        claim.release()
    if record["status"] == "ok":
        test = record["metrics"].get("test", {})  # none for a tuning trial
        detail = f"val_error {record['metrics']['val']['top1_error']:.4f}" + \
            (f" test_error {test['top1_error']:.4f}" if test else "")
        progress.end_cell("ok", detail)
        return Outcome(cell.id, "ok", detail)
    progress.end_cell(record["status"].upper(), f"{cell.label} ({cell.id}): {record['error']}")
    return Outcome(cell.id, record["status"], record["error"])


def _heartbeat(claim: Claim):
    """Keep a claim's heartbeat fresh while its cell runs in this process (epochs may outlast STALE_AFTER_S)."""
    def beat(_stop) -> None:
        with contextlib.suppress(OSError):  # a full disk: the cell's own next write stops the run, and says so
            claim.beat()

    return alongside(beat, "bench-heartbeat")
