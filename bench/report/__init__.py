"""Leaderboards and pivot tables from result records, in six formats.

A report reads cell records (cell.json + result.json) from one or more suite folders, keeps those that
pass the filters, fills metrics missing from result.json from predictions.npz, averages over seeds
(mean ± std (n)), and lays the result out either as a leaderboard (one row per cell, sorted by a metric
in its own direction) or as a pivot (--rows/--cols keys, one --value). The best value of each column is
bold. Rows measured on another device or library version carry a mark (†) and a footnote, and time
columns are never ranked (sorted across, or bolded) across such rows. A leaderboard also marks the rows
significantly worse than the best one on the same test images (*), and, when its records span two or more
[[datasets]], ranks the contenders across them (Friedman, Nemenyi). A tuned suite shows one row per
contender: its chosen trial.

Rooms: load (records into one filtered table); leaderboard and pivot (seeds averaged, laid out as a
Table), with significance (the marks) and cross_dataset (the ranking across data sets) beside the
leaderboard, and table (the Table and its cell formatting); formats (a Table as text). `render` here runs
them in that order. Importing this package loads neither torch, scipy nor matplotlib: the functions that
need them import them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.errors import UserError, did_you_mean
from bench.report.cross_dataset import RANK_BY, on_validation
from bench.report.formats import FORMATS
from bench.report.leaderboard import leaderboard_table
from bench.report.load import (
    COLUMNS,
    DEFAULT_COLUMNS,
    SORT_BY,
    Filter,
    frame,
    progress_notes,
    read_studies,
    tuning_notes,
)
from bench.report.pivot import pivot_table

__all__ = ["COLUMNS", "FORMATS", "Filter", "frame", "read_studies", "render"]


def render(targets: Path | Sequence[Path], fmt: str = "markdown", *, metrics: Sequence[str] | None = None,
           filters: Sequence[str] = (), rows: Sequence[str] = (), cols: Sequence[str] = (),
           value: str | None = None, sort: str | None = None, recompute: bool = False,
           target_error: float | None = None, marks: bool = True) -> str:
    """The report as text: a leaderboard, or a pivot of `value` (default val_error) when `rows` or `cols`
    are given. On a leaderboard, `value` (default test_error) is the score that ranks contenders across
    data sets, and `marks` adds the significance marks (a paired test per row: it reads predictions)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'", hint=did_you_mean(fmt, FORMATS))
    parsed = [Filter.parse(f) for f in filters]
    if value is not None and value not in COLUMNS:
        raise UserError(f"unknown metric '{value}'", hint=did_you_mean(value, COLUMNS))
    if rows or cols:
        value = value or SORT_BY
        df = frame(targets, [value], keys=[*rows, *cols], filters=parsed, recompute=recompute,
                   target_error=target_error)
        _require_cells(df, filters)
        table = pivot_table(df, rows, cols, value)
    else:
        explicit = metrics is not None
        columns = list(metrics) if explicit else list(DEFAULT_COLUMNS)
        if target_error is not None and "time_to_target_s" not in columns:
            columns.append("time_to_target_s")
        rank_by = value or RANK_BY
        needed = list(dict.fromkeys([*columns, *([sort] if sort else []), rank_by, on_validation(rank_by),
                                     "test_error"]))
        df = frame(targets, needed, filters=parsed, recompute=recompute, target_error=target_error)
        _require_cells(df, filters)
        if not explicit and len(df):  # default columns that no record has are noise
            columns = [c for c in columns if c in ("val_error", "test_error") or df[c].notna().any()]
        table = leaderboard_table(df, columns, sort, rank_by=rank_by, marks=marks)
        table.notes.extend(tuning_notes(targets))
    if target_error is not None and (value == "time_to_target_s" if rows or cols else "time_to_target_s" in columns):
        table.notes.insert(1, f"s to target: training seconds until val error first ≤ {target_error:g}, mean ± std "
                              f"over the seeds that reached it, (k of n): how many of the n seeds did; only cells "
                              f"whose every seed reached it are bold.")
    table.notes.extend(progress_notes(targets))  # a run in progress, or cut short, is not the whole suite
    return FORMATS[fmt](table)


def _require_cells(df: pd.DataFrame, filters: Sequence[str]) -> None:
    if not len(df):
        raise UserError("no cell record matches" + (f" --filter {' '.join(filters)}" if filters else ""),
                        hint="check the filters, or run the suite first")
