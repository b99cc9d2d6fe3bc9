"""Seeds averaged into a leaderboard or a pivot, laid out as a Table of display strings that every format
renders the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import UserError, did_you_mean
from bench.metrics import HIGHER_IS_BETTER
from bench.report.load import COLUMNS, REACHED, SORT_BY, Column

MARKS = ("†", "‡", "§", "¶", "#")


def leaderboard(df: pd.DataFrame, columns: Sequence[str] | None = None, sort: str | None = None,
                keys: Sequence[str] = ()) -> pd.DataFrame:
    """Finished cells grouped over seeds (per suite): mean, std and n per column, env; with
    time_to_target_s, time_to_target_reached (seeds that reached the target) and time_to_target_runs (seeds
    with a history); sorted by `sort` (default: val_error) in its own direction."""
    ok = df[df["status"] == "ok"] if len(df) else df
    if ok.empty:
        return pd.DataFrame()
    columns = [c for c in (columns or COLUMNS) if c in ok.columns]
    firsts = ["label", *[c for c in ("labelled",) if c in ok.columns],
              *[c for c in ok.columns if c.startswith("axis:")], *[f"key:{k}" for k in keys]]
    grouped = ok.groupby(["suite", "group"], sort=False)
    agg = grouped[firsts].first()
    agg["n"] = grouped["seed"].count()
    if "time_to_target_s" in columns and REACHED in ok.columns:
        reached = pd.to_numeric(ok[REACHED], errors="coerce").groupby([ok["suite"], ok["group"]], sort=False)
        agg[REACHED] = reached.sum().astype(int)
        agg["time_to_target_runs"] = reached.count()
    if ok["env"].nunique() == 1:  # the common case, without a Python call per group
        agg["env"] = ok["env"].iloc[0]
    else:
        agg["env"] = grouped["env"].agg(lambda s: " / ".join(sorted(set(s))))
    values = ok[columns].apply(pd.to_numeric, errors="coerce")
    values[["suite", "group"]] = ok[["suite", "group"]]
    g = values.groupby(["suite", "group"], sort=False)
    agg = agg.join(g.mean()).join(g.std().add_suffix("_std")).reset_index()
    sort = sort or (SORT_BY if SORT_BY in columns else (columns[0] if columns else None))
    if sort is None:
        return agg
    if sort not in agg.columns:
        raise UserError(f"cannot sort by '{sort}'", hint=did_you_mean(sort, columns))
    by, ascending = [sort], [not HIGHER_IS_BETTER.get(COLUMNS[sort].metric, False)]
    if COLUMNS[sort].timing and agg["env"].nunique() > 1:
        by, ascending = ["env", sort], [True, ascending[0]]  # times rank only within one environment
    return agg.sort_values(by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def _fmt(mean: Any, std: Any, n: int, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    text = f"{mean:,.{digits}f}"
    if n > 1 and std is not None and not pd.isna(std) and round(std, digits) > 0:
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
    if reached > 1 and std is not None and not pd.isna(std) and round(std, digits) > 0:
        text += f" ± {std:,.{digits}f}"
    return text + of


def _cell_texts(board: pd.DataFrame | list[dict], name: str) -> list[str]:
    """The display strings of column `name` for each leaderboard row."""
    rows = board.to_dict("records") if isinstance(board, pd.DataFrame) else board
    digits = COLUMNS[name].digits
    if name == "time_to_target_s" and rows and REACHED in rows[0]:
        return [_fmt_target(r[name], r[f"{name}_std"], int(r[REACHED]), int(r["time_to_target_runs"]), digits)
                for r in rows]
    return [_fmt(r[name], r[f"{name}_std"], int(r["n"]), digits) for r in rows]


def _rankable(board: pd.DataFrame | list[dict], name: str) -> np.ndarray:
    """The means that may be bold: for time to target, only those of cells whose every seed reached it."""
    rows = board.to_dict("records") if isinstance(board, pd.DataFrame) else board
    values = np.array([np.nan if r[name] is None or pd.isna(r[name]) else float(r[name]) for r in rows])
    if name == "time_to_target_s" and rows and REACHED in rows[0]:
        values[[r[REACHED] < r["time_to_target_runs"] for r in rows]] = np.nan
    return values


def _integers(data: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`columns` (counts, Column.integer: parameters) as integers when every value of them is one, so csv
    and json write 1234, not 1234.0."""
    values = data[list(columns)].apply(pd.to_numeric, errors="coerce")
    finite = values.stack().dropna()
    if len(columns) and len(finite) and (finite == finite.round()).all():
        for c in columns:
            data[c] = values[c].round().astype("Int64")
    return data


def _best_mask(values: np.ndarray, column: Column, envs: Sequence[str]) -> np.ndarray:
    """Which entries are the best (ties at display precision included); none for a timing column whose
    entries come from more than one environment."""
    values = np.round(np.asarray(values, dtype=float), column.digits)
    finite = ~np.isnan(values)
    if finite.sum() < 2 or (column.timing and len({e for e, f in zip(envs, finite, strict=True) if f}) > 1):
        return np.zeros(len(values), dtype=bool)
    best = np.nanmax(values) if HIGHER_IS_BETTER.get(column.metric, False) else np.nanmin(values)
    return finite & (values == best)


# ---------------------------------------------------------------- layout


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


def _marks(envs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The most common environment is unmarked; each other one gets a mark and a footnote."""
    counts = pd.Series(list(envs)).value_counts(sort=True)
    if len(counts) < 2:
        return {}, []
    reference, others = counts.index[0], list(counts.index[1:])
    marks = {env: MARKS[i] if i < len(MARKS) else f"*{i + 1}" for i, env in enumerate(others)}
    notes = [f"{marks[e]} measured on {e}, not on {reference}; times are not ranked across environments"
             for e in others]
    return marks, notes


def leaderboard_table(df: pd.DataFrame, columns: Sequence[str], sort: str | None = None) -> Table:
    board = leaderboard(df, columns, sort)
    title = ", ".join(dict.fromkeys(df["suite"])) if len(df) else "no cells"
    if board.empty:
        return Table(title, ["cell"], [], [], _failure_notes(df), board)
    columns = [c for c in columns if c in board.columns]
    # a suite that names its [[cells]] is read by those names: one label column, not one per config key
    labelled = "labelled" in board.columns and bool(board["labelled"].fillna(False).astype(bool).any())
    axes = [] if labelled else [c for c in board.columns if c.startswith("axis:")]
    several = board["suite"].nunique() > 1
    headers = (["suite"] if several else []) + (["label"] if labelled else
                                                [a.removeprefix("axis:").split(".")[-1] for a in axes] or ["cell"])
    lead = [[s] if several else [] for s in board["suite"]]
    if axes:
        lead = [p + ["—" if pd.isna(v) else str(v) for v in vals]
                for p, vals in zip(lead, board[axes].itertuples(index=False), strict=True)]
    else:
        lead = [p + [label] for p, label in zip(lead, board["label"], strict=True)]
    marks, notes = _marks(board["env"])
    for row, env in zip(lead, board["env"], strict=True):
        row[-1] += marks.get(env, "")
    envs, records = board["env"].tolist(), board.to_dict("records")
    cells, bold = [], []
    for c in columns:
        cells.append(_cell_texts(records, c))
        bold.append(_best_mask(_rankable(records, c), COLUMNS[c], envs))
    headers += [COLUMNS[c].header for c in columns]
    rows = [lead[i] + [col[i] for col in cells] for i in range(len(board))]
    flags = [[False] * len(lead[i]) + [bool(b[i]) for b in bold] for i in range(len(board))]
    sort = sort or (SORT_BY if SORT_BY in columns else columns[0])
    direction = "higher" if HIGHER_IS_BETTER.get(COLUMNS[sort].metric) else "lower"
    notes = [f"Sorted by {COLUMNS[sort].header} ({direction} is better); mean ± std (n) over seeds; errors "
             f"are fractions (0–1); the best value of each column is bold. Measured on: "
             f"{', '.join(sorted(set(df['env'].dropna())))}.", *notes, *_failure_notes(df)]
    data = board.drop(columns=[c for c in ("group", "labelled") if c in board.columns])
    data = _integers(data, [c for c in columns if COLUMNS[c].integer])
    data.columns = [c.removeprefix("axis:") for c in data.columns]
    return Table(title, headers, rows, flags, notes, data, len(lead[0]))


def _failure_notes(df: pd.DataFrame) -> list[str]:
    failed = df[df["status"] != "ok"] if len(df) else df  # failed, diverged, oom, crashed: listed, never ranked
    return [f"{r.status}: {r.id} {r.label}: {r.error}" for r in failed.itertuples()]


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def pivot_table(df: pd.DataFrame, rows: Sequence[str], cols: Sequence[str], value: str) -> Table:
    """`value` (mean ± std over seeds) laid out with one row per combination of the `rows` keys' values
    and one column per combination of the `cols` keys' values (either may be empty: study 001's Table 2
    is --cols only, its Table 3 --rows only)."""
    keys = [*rows, *cols]
    board = leaderboard(df, [value], value, keys)
    col = COLUMNS[value]
    if board.empty:
        return Table(col.header, [col.header], [], [], _failure_notes(df))
    rk, ck = [f"key:{k}" for k in rows], [f"key:{k}" for k in cols]
    clash = board.groupby(rk + ck, sort=False)["group"].count() if keys else pd.Series([len(board)])
    if (clash > 1).any():
        where = ", ".join(f"{k}={v}" for k, v in zip(keys, np.atleast_1d(clash[clash > 1].index[0]), strict=False))
        raise UserError(f"{int(clash.max())} different cells fall in one pivot cell ({where or 'all'})",
                        hint="add a --rows/--cols key that tells them apart, or --filter to keep one")
    row_keys = list(dict.fromkeys(board[rk].itertuples(index=False, name=None))) if rows else [()]
    col_keys = sorted(dict.fromkeys(board[ck].itertuples(index=False, name=None)),
                      key=lambda t: tuple(_natural(x) for x in t)) if cols else [()]
    at = {(tuple(r[k] for k in rk), tuple(r[k] for k in ck)): r for r in board.to_dict("records")}
    marks, notes = _marks(board["env"])
    headers = [k.split(".")[-1] for k in rows] or [""]
    headers += [", ".join(c) if c else col.header for c in col_keys]
    grid_means = np.array([[_rankable([at[(r, c)]], value)[0] if (r, c) in at else np.nan for c in col_keys]
                           for r in row_keys], dtype=float)
    grid_envs = [[at[(r, c)]["env"] if (r, c) in at else "" for c in col_keys] for r in row_keys]
    bold = np.zeros_like(grid_means, dtype=bool)
    if rows:  # best per column; with one row (--cols only), best along it
        for j in range(len(col_keys)):
            bold[:, j] = _best_mask(grid_means[:, j], col, [e[j] for e in grid_envs])
    else:
        bold[0] = _best_mask(grid_means[0], col, grid_envs[0])
    out_rows, flags = [], []
    for i, r in enumerate(row_keys):
        texts = []
        for c in col_keys:
            rec = at.get((r, c))
            texts.append("—" if rec is None else _cell_texts([rec], value)[0] + marks.get(rec["env"], ""))
        out_rows.append(list(r or (col.header,)) + texts)
        flags.append([False] * max(1, len(rows)) + bold[i].tolist())
    by = " × ".join(filter(None, [", ".join(rows), ", ".join(cols)]))
    direction = "higher" if HIGHER_IS_BETTER.get(col.metric) else "lower"
    notes = [f"{col.header} by {by}" + (f" (columns: {', '.join(cols)})" if cols else "")
             + f"; mean ± std (n) over seeds; {direction} is better, best in bold.", *notes, *_failure_notes(df)]
    means = [[at[(r, c)][value] if (r, c) in at else np.nan for c in col_keys] for r in row_keys]
    data = pd.DataFrame(np.array(means, dtype=float), columns=[", ".join(c) if c else value for c in col_keys])
    if col.integer:
        data = _integers(data, list(data.columns))
    for k, name in enumerate(rows):
        data.insert(k, name, [r[k] for r in row_keys])
    return Table(f"{col.header} by {by}", headers, out_rows, flags, notes, data, max(1, len(rows)))

