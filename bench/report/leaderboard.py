"""Seeds averaged into a leaderboard (one row per cell, sorted by a metric in its own direction) and the
leaderboard laid out as a Table, with what a reviewer asks of it: which rows are significantly worse than the
best (bench.report.significance) and, over several data sets, how the contenders rank across them
(bench.report.cross_dataset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import UserError, did_you_mean
from bench.report.cross_dataset import RANK_BY, cross_dataset, on_validation, ranking_table
from bench.report.load import COLUMNS, DATASET_AXIS, PARAM, REACHED, SORT_BY
from bench.report.significance import WORSE, significance, significance_note
from bench.report.table import (
    Table,
    as_integers,
    best_mask,
    cell_texts,
    env_marks,
    failure_notes,
    param_text,
    rankable,
)


def leaderboard(df: pd.DataFrame, columns: Sequence[str] | None = None, sort: str | None = None,
                keys: Sequence[str] = ()) -> pd.DataFrame:
    """Finished cells grouped over seeds (per suite): mean, std and n per column, env; with
    time_to_target_s, time_to_target_reached (seeds that reached the target) and time_to_target_runs (seeds
    with a history); sorted by `sort` (default: val_error) in its own direction."""
    ok = df[df["status"] == "ok"] if len(df) else df
    if ok.empty:
        return pd.DataFrame()
    columns = [c for c in (columns or COLUMNS) if c in ok.columns]
    firsts = ["label", *[c for c in ("labelled", "partial") if c in ok.columns],
              *[c for c in ok.columns if c.startswith("axis:")], *[f"key:{k}" for k in keys]]
    params = [c for c in ok.columns if c.startswith(PARAM)]
    grouped = ok.groupby(["suite", "group"], sort=False)
    agg = grouped[firsts].first()
    if params:  # a tuned contender's chosen values: its seeds may have chosen differently
        agg = agg.join(grouped[params].agg(_chosen))
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
    by, ascending = [sort], [not COLUMNS[sort].higher]
    if COLUMNS[sort].timing and agg["env"].nunique() > 1:
        by, ascending = ["env", sort], [True, ascending[0]]  # times rank only within one environment
    if _datasets(agg) > 1:  # a row ranks among the rows of its own data set
        by, ascending = [DATASET_AXIS, *by], [True, *ascending]
    return agg.sort_values(by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def _datasets(board: pd.DataFrame) -> int:
    column = DATASET_AXIS
    return board[column].nunique() if column in board.columns else 0


def _chosen(values: pd.Series) -> Any:
    """One seed's chosen value, or each seed's, "0.01 / 0.003", where they differ."""
    distinct = list(dict.fromkeys(v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))))
    return distinct[0] if len(distinct) == 1 else " / ".join(map(param_text, distinct)) if distinct else None


def leaderboard_table(df: pd.DataFrame, columns: Sequence[str], sort: str | None = None, *,
                      rank_by: str = RANK_BY, marks: bool = True) -> Table:
    """The leaderboard as a Table; with `marks`, rows significantly worse than the best row on the same
    test images carry WORSE; over two or more data sets, a section ranks the contenders across them by
    `rank_by`."""
    # the test error (the paired test's figure) and the ranking's score are needed whether shown or not
    extra = [c for c in dict.fromkeys([rank_by, on_validation(rank_by), "test_error"])
             if c not in columns and c in df.columns]
    board = leaderboard(df, [*columns, *extra], sort)
    title = ", ".join(dict.fromkeys(df["suite"])) if len(df) else "no cells"
    if board.empty:
        return Table(title, ["cell"], [], [], failure_notes(df), board)
    columns = [c for c in columns if c in board.columns]
    # a suite that names its [[cells]] is read by those names: one label column, not one per config key
    labelled = "labelled" in board.columns and bool(board["labelled"].fillna(False).astype(bool).any())
    axes = [] if labelled else [c for c in board.columns if c.startswith("axis:")]
    params = [c for c in board.columns if c.startswith(PARAM)]
    several = board["suite"].nunique() > 1
    headers = (["suite"] if several else []) + (["label"] if labelled else
                                                [a.removeprefix("axis:").split(".")[-1] for a in axes] or ["cell"])
    lead = [[s] if several else [] for s in board["suite"]]
    if axes:
        lead = [p + ["—" if pd.isna(v) else str(v) for v in vals]
                for p, vals in zip(lead, board[axes].itertuples(index=False), strict=True)]
    else:
        lead = [p + [label] for p, label in zip(lead, board["label"], strict=True)]
    marks_env, notes = env_marks(board["env"])
    partial = board["partial"].fillna(False).astype(bool) if "partial" in board.columns else pd.Series(False, board.index)
    for row, env, part in zip(lead, board["env"], partial, strict=True):
        row[-1] += marks_env.get(env, "") + (" (partial)" if part else "")
    if params:  # the chosen hyperparameters of a tuned contender, named by their dotted keys
        headers += [c.removeprefix(PARAM) for c in params]
        lead = [row + [param_text(v) for v in vals] for row, vals in zip(lead, board[params].itertuples(index=False),
                                                                         strict=True)]
    envs, records = board["env"].tolist(), board.to_dict("records")
    sort = sort or (SORT_BY if SORT_BY in columns else columns[0])
    worse = significance(df, board, sort) if marks else pd.DataFrame()
    marked = "test_error" if "test_error" in columns else sort
    cells, bold = [], []
    per_dataset = _datasets(board) > 1  # the best of each column is the best on each data set
    blocks = (list(board.groupby(DATASET_AXIS, sort=False, dropna=False).indices.values()) if per_dataset
              else [np.arange(len(board))])
    for c in columns:
        texts = cell_texts(records, c)
        if c == marked and not worse.empty:
            texts = [t + WORSE if w else t for t, w in zip(texts, worse["worse"], strict=True)]
        cells.append(texts)
        values = rankable(records, c)
        values[partial.to_numpy()] = np.nan  # a contender still being tuned competes for nothing yet
        mask = np.zeros(len(board), dtype=bool)
        for rows_of in blocks:
            mask[rows_of] = best_mask(values[rows_of], COLUMNS[c], [envs[i] for i in rows_of])
        bold.append(mask)
    headers += [COLUMNS[c].header for c in columns]
    rows = [lead[i] + [col[i] for col in cells] for i in range(len(board))]
    flags = [[False] * len(lead[i]) + [bool(b[i]) for b in bold] for i in range(len(board))]
    direction = "higher" if COLUMNS[sort].higher else "lower"
    notes = [f"Sorted by {COLUMNS[sort].header} ({direction} is better); mean ± std (n) over seeds; errors "
             f"are fractions (0–1); the best value of each column is bold"
             f"{' (of each data set: rows are grouped by data set)' if per_dataset else ''}. Measured on: "
             f"{', '.join(sorted(set(df['env'].dropna())))}.", *notes]
    if not worse.empty and worse["compared"].any():
        notes.append(significance_note(worse, sort, marked))
    notes += failure_notes(df)
    hidden = ["group", "labelled", *extra, *[f"{c}_std" for c in extra]]
    data = board.drop(columns=[c for c in hidden if c in board.columns])
    data = as_integers(data, [c for c in columns if COLUMNS[c].integer])
    if not worse.empty:
        data["worse_p"] = worse["p_adjusted"].to_numpy()
        data["worse"] = worse["worse"].to_numpy()
    rankings = cross_dataset(board, rank_by)
    if rankings:
        data = data.merge(pd.concat([r.per_row() for r in rankings]), how="left", on=["suite", "label"])
    data.columns = [c.removeprefix("axis:").removeprefix(PARAM) for c in data.columns]
    return Table(title, headers, rows, flags, notes, data, len(lead[0]),
                 sections=[ranking_table(r, several) for r in rankings])
