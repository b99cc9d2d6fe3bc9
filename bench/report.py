"""Leaderboards from result records: one row per cell (mean ± std over seeds), sorted by validation error."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench.metrics import HIGHER_IS_BETTER
from bench.store import load_records

FORMATS = ("markdown", "csv", "json", "table")

# column -> (header, where in result.json, digits)
COLUMNS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "val_error": ("val err", ("metrics", "val", "top1_error"), 3),
    "test_error": ("test err", ("metrics", "test", "top1_error"), 3),
    "test_top5_error": ("test top-5 err", ("metrics", "test", "top5_error"), 3),
    "train_time_s": ("train s", ("cost", "train_time_s"), 1),
    "train_images_per_s": ("train img/s", ("cost", "train_images_per_s"), 0),
    "peak_rss_mb": ("peak RSS MB", ("cost", "peak_rss_mb"), 0),
    "params_total": ("params", ("cost", "params_total"), 0),
    "params_trainable": ("trainable", ("cost", "params_trainable"), 0),
}
SORT_BY = "val_error"


def _get(d: dict, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def frame(suite_dir: Path) -> pd.DataFrame:
    """One row per cell record: id, label, seed, status, axes (as dotted keys) and every COLUMNS value."""
    rows = []
    for rec in load_records(suite_dir):
        cell, result = rec["cell"], rec["result"]
        row = {"suite": Path(suite_dir).name, "id": cell["id"], "group": cell["group"], "label": cell["label"],
               "seed": cell["config"]["seed"], "status": result.get("status"), "error": result.get("error"),
               "device": _get(result, ("env", "device_name"))}
        row.update({f"axis:{k}": (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in cell["axes"].items()})
        row.update({name: _get(result, path) for name, (_, path, _) in COLUMNS.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """Finished cells grouped over seeds: mean, std and n per metric; sorted by mean validation error."""
    ok = df[df["status"] == "ok"] if len(df) else df
    if ok.empty:
        return pd.DataFrame()
    axes = [c for c in ok.columns if c.startswith("axis:")]
    metrics = [c for c in COLUMNS if c in ok.columns]
    agg = ok.groupby("group", sort=False).agg(
        label=("label", "first"), n=("seed", "count"), **{a: (a, "first") for a in axes},
        **{f"{m}": (m, "mean") for m in metrics}, **{f"{m}_std": (m, "std") for m in metrics})
    ascending = not HIGHER_IS_BETTER.get("top1_error", False)
    return agg.sort_values(SORT_BY, ascending=ascending, na_position="last").reset_index()


def _fmt(mean: Any, std: Any, n: int, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    text = f"{mean:,.{digits}f}"
    if n > 1 and std is not None and not pd.isna(std) and round(std, digits) > 0:
        text += f" ± {std:,.{digits}f} ({n})"
    return text


def display_table(board: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    axes = [c for c in board.columns if c.startswith("axis:")]
    headers = [a.removeprefix("axis:").split(".")[-1] for a in axes] or ["cell"]
    headers += [COLUMNS[m][0] for m in COLUMNS if m in board.columns]
    rows = []
    for _, r in board.iterrows():
        row = [str(r[a]) for a in axes] or [r["label"]]
        row += [_fmt(r[m], r.get(f"{m}_std"), int(r["n"]), COLUMNS[m][2]) for m in COLUMNS if m in board.columns]
        rows.append(row)
    return headers, rows


def render(suite_dir: Path, fmt: str = "markdown") -> str:
    df = frame(suite_dir)
    board = leaderboard(df)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return board.to_json(orient="records", indent=2)
    headers, rows = display_table(board)
    failed = df[df["status"] != "ok"] if len(df) else df
    notes = [f"failed: {r['id']} {r['label']}: {r['error']}" for _, r in failed.iterrows()]
    devices = sorted({d for d in df.get("device", pd.Series(dtype=str)).dropna()})
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{Path(suite_dir).name} — sorted by validation error")
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(table)
        for note in notes:
            console.print(note)
        return console.export_text()
    body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    head = f"### {Path(suite_dir).name}\n\n"
    foot = f"\n\nSorted by validation top-1 error; errors are fractions (0–1). Measured on: {', '.join(devices)}."
    foot += "".join(f"\n- {note}" for note in notes)
    return head + body + foot + "\n"
