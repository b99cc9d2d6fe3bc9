"""The Table every format renders (display strings, which of them are bold, footnotes, the numbers
csv and json write) and the cell formatting the leaderboard, pivot and ranking tables share: mean ± std (n),
time to target, the best of a column, environment marks, failure notes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.report.load import COLUMNS, REACHED, Column

MARKS = ("†", "‡", "§", "¶", "#")


@dataclass(frozen=True)
class Table:
    """What every format renders: display strings, which of them are best, footnotes, and the numbers."""
    title: str
    headers: list[str]
    rows: list[list[str]]
    bold: list[list[bool]]
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=pd.DataFrame)  # what csv and json write
    lead: int = 1  # leading label columns (left-aligned); the rest are values
    # tables the text formats print after this one (the cross-dataset ranking); csv and json write `data`
    # alone, which carries the same figures as columns of its rows
    sections: list[Table] = field(default_factory=list)


def param_text(value: Any) -> str:
    """A hyperparameter as a table shows it: 3 significant digits for a float (a learning rate)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _fmt(mean: Any, std: Any, n: int, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    text = f"{mean:,.{digits}f}"
    # a spread that rounds to 0 is still shown: "± 0.000 (3)" says three seeds agreed, a bare mean says one
    if n > 1 and std is not None and not pd.isna(std):
        text += f" ± {std:,.{digits}f} ({n})"
    return text


def _fmt_target(mean: Any, std: Any, reached: int, runs: int, digits: int) -> str:
    """Time to target: mean ± std over the seeds that reached it, and how many of the seeds did."""
    of = f" ({reached} of {runs})" if runs > 1 else ""
    if not runs:
        return "—"  # no history to read
    if not reached:
        return "not reached" + of
    text = f"{mean:,.{digits}f}"
    if reached > 1 and std is not None and not pd.isna(std):
        text += f" ± {std:,.{digits}f}"
    return text + of


def cell_texts(board: pd.DataFrame | list[dict], name: str) -> list[str]:
    """The display strings of column `name` for each leaderboard row."""
    rows = board.to_dict("records") if isinstance(board, pd.DataFrame) else board
    digits = COLUMNS[name].digits
    if name == "time_to_target_s" and rows and REACHED in rows[0]:
        return [_fmt_target(r[name], r[f"{name}_std"], int(r[REACHED]), int(r["time_to_target_runs"]), digits)
                for r in rows]
    return [_fmt(r[name], r[f"{name}_std"], int(r["n"]), digits) for r in rows]


def rankable(board: pd.DataFrame | list[dict], name: str) -> np.ndarray:
    """The means that may be bold: for time to target, only those of cells whose every seed reached it."""
    rows = board.to_dict("records") if isinstance(board, pd.DataFrame) else board
    values = np.array([np.nan if r[name] is None or pd.isna(r[name]) else float(r[name]) for r in rows])
    if name == "time_to_target_s" and rows and REACHED in rows[0]:
        values[[r[REACHED] < r["time_to_target_runs"] for r in rows]] = np.nan
    return values


def as_integers(data: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`columns` (counts, Column.integer: parameters) as integers when every value of them is one, so csv
    and json write 1234, not 1234.0."""
    values = data[list(columns)].apply(pd.to_numeric, errors="coerce")
    finite = values.stack().dropna()
    if len(columns) and len(finite) and (finite == finite.round()).all():
        for c in columns:
            data[c] = values[c].round().astype("Int64")
    return data


def best_mask(values: np.ndarray, column: Column, envs: Sequence[str]) -> np.ndarray:
    """Which entries are the best (ties at display precision included); none for a timing column whose
    entries come from more than one environment."""
    values = np.round(np.asarray(values, dtype=float), column.digits)
    finite = ~np.isnan(values)
    if not column.ranked or finite.sum() < 2 or (column.timing and len({e for e, f in zip(envs, finite, strict=True) if f}) > 1):
        return np.zeros(len(values), dtype=bool)
    best = np.nanmax(values) if column.higher else np.nanmin(values)
    return finite & (values == best)


def env_marks(envs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The most common environment is unmarked; each other one gets a mark and a footnote."""
    counts = pd.Series(list(envs)).value_counts(sort=True)
    if len(counts) < 2:
        return {}, []
    reference, others = counts.index[0], list(counts.index[1:])
    marks = {env: MARKS[i] if i < len(MARKS) else f"*{i + 1}" for i, env in enumerate(others)}
    notes = [f"{marks[e]} measured on {e}, not on {reference}; times are not ranked across environments"
             for e in others]
    return marks, notes


def failure_notes(df: pd.DataFrame) -> list[str]:
    failed = df[df["status"] != "ok"] if len(df) else df  # failed, diverged, oom, crashed: listed, never ranked
    return [f"{r.status}: {r.id} {r.label}: {r.error}" for r in failed.itertuples()]
