"""Where each cell of a run stands, read from its folder alone: done, running (where, since when, epoch k of
n), failed (why), resumable (at epoch k) or not started. Reads files only, takes no lock: asking never
disturbs a run."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.checkpoint import saved_epoch
from bench.claims import claim_live, read_claim
from bench.store import CELL, JOB, TUNE, read_json, read_result, tune_files


def cell_states(suite_dir: Path, cells: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """One row per cell (id, label, state, detail): the `cells` given (id, label) in their order, or every
    cell folder under `suite_dir`."""
    suite_dir = Path(suite_dir)
    if cells is None:
        names = sorted(e.name for e in os.scandir(suite_dir) if e.is_dir() and (Path(e.path) / CELL).is_file()) \
            if suite_dir.is_dir() else []
        cells = [(name, _label(suite_dir / name)) for name in names]
    return [{"id": cid, "label": label, **(_tuning(suite_dir, cid) or _state(suite_dir / cid))} for cid, label in cells]


UNFINISHED = ("running", "resumable", "queued", "not started", "tuning")  # every other state is a record the cell left


def summary(rows: list[dict[str, Any]]) -> str:
    """'3 done, 1 running, ...': how many cells stand in each state, in the order states first appear."""
    return ", ".join(f"{n} {state}" for state, n in Counter(r["state"] for r in rows).items())


def _label(cell_dir: Path) -> str:
    try:
        return read_json(cell_dir / CELL)["label"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _tuning(suite_dir: Path, cell_id: str) -> dict[str, str] | None:
    """A contender of a tuned suite, from its tune record (a folder of its id is no trial of this bench's: an
    older bench's trial whose values were the suite's)."""
    try:
        record = read_json(tune_files(suite_dir / TUNE, cell_id)[1])
        trials, cost = record["trials"], record["cost"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    running = sum(t.get("state") == "running" for t in trials)
    done = f"{cost['trials']} of {record['budget']} trials finished ({cost['pruned']} pruned, {cost['failed']} failed)"
    if record.get("chosen"):
        chosen = next((t for t in trials if t.get("cell") == record["chosen"]), {})
        test = (record.get("test") or {}).get("top1_error")
        value = chosen.get("value")
        detail = f"{done}; chose trial {chosen.get('number')} ({record['chosen']})"
        detail += f", {record['metric']} {value:.4f}" if isinstance(value, float) else ""
        detail += f", test_error {test:.4f}" if isinstance(test, float) else ""
        return {"state": "tuned", "detail": detail}
    return {"state": "tuning", "detail": done + (f", {running} running" if running else "")}


def _state(cell_dir: Path) -> dict[str, str]:
    claim = read_claim(cell_dir)
    if claim_live(claim):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claim["started"]))
        beat = time.time() - float(claim.get("heartbeat", 0))
        return {"state": "running", "epoch": claim.get("epoch", 0),
                "detail": f"on {claim['host']} pid {claim['pid']} since {since}, epoch {claim.get('epoch', 0)} "
                          f"of {claim.get('epochs', '?')} done (heartbeat {beat:.0f} s ago)"}
    result = read_result(cell_dir)
    if isinstance(result, dict) and result.get("status") == "ok":
        val = result.get("metrics", {}).get("val", {}).get("top1_error")
        return {"state": "done", "detail": f"val_error {val:.4f}" if isinstance(val, float) else ""}
    if isinstance(result, dict) and result.get("status") == "pruned":  # final, even with a kept checkpoint
        return {"state": "pruned", "detail": str(result.get("error", ""))}
    epoch = saved_epoch(cell_dir)
    if epoch is not None:
        why = f"; last attempt {result.get('status')}: {result.get('error')}" if isinstance(result, dict) else ""
        return {"state": "resumable", "detail": f"at epoch {epoch}{why}"}
    if isinstance(result, dict):
        return {"state": str(result.get("status", "failed")), "detail": str(result.get("error", ""))}
    try:
        job = read_json(cell_dir / JOB)  # submitted to a queue, not yet claimed by its job
        return {"state": "queued", "detail": f"{job['executor']} job {job['job_id']} ({job['cluster']})"}
    except (OSError, ValueError, KeyError, TypeError):
        return {"state": "not started", "detail": ""}
