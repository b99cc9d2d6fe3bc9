"""A pivot table: one value (mean ± std over seeds) laid out by the values of --rows and --cols keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.errors import UserError
from bench.report.leaderboard import leaderboard
from bench.report.load import COLUMNS
from bench.report.table import Table, as_integers, best_mask, cell_texts, env_marks, failure_notes, rankable


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
        return Table(col.header, [col.header], [], [], failure_notes(df))
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
    marks, notes = env_marks(board["env"])
    headers = [k.split(".")[-1] for k in rows] or [""]
    headers += [", ".join(c) if c else col.header for c in col_keys]
    grid_means = np.array([[rankable([at[(r, c)]], value)[0] if (r, c) in at else np.nan for c in col_keys]
                           for r in row_keys], dtype=float)
    grid_envs = [[at[(r, c)]["env"] if (r, c) in at else "" for c in col_keys] for r in row_keys]
    bold = np.zeros_like(grid_means, dtype=bool)
    if rows:  # best per column; with one row (--cols only), best along it
        for j in range(len(col_keys)):
            bold[:, j] = best_mask(grid_means[:, j], col, [e[j] for e in grid_envs])
    else:
        bold[0] = best_mask(grid_means[0], col, grid_envs[0])
    out_rows, flags = [], []
    for i, r in enumerate(row_keys):
        texts = []
        for c in col_keys:
            rec = at.get((r, c))
            texts.append("—" if rec is None else cell_texts([rec], value)[0] + marks.get(rec["env"], ""))
        out_rows.append(list(r or (col.header,)) + texts)
        flags.append([False] * max(1, len(rows)) + bold[i].tolist())
    by = " × ".join(filter(None, [", ".join(rows), ", ".join(cols)]))
    direction = "higher" if col.higher else "lower"
    notes = [f"{col.header} by {by}" + (f" (columns: {', '.join(cols)})" if cols else "")
             + f"; mean ± std (n) over seeds; {direction} is better, best in bold.", *notes, *failure_notes(df)]
    means = [[at[(r, c)][value] if (r, c) in at else np.nan for c in col_keys] for r in row_keys]
    data = pd.DataFrame(np.array(means, dtype=float), columns=[", ".join(c) if c else value for c in col_keys])
    if col.integer:
        data = as_integers(data, list(data.columns))
    for k, name in enumerate(rows):
        data.insert(k, name, [r[k] for r in row_keys])
    return Table(f"{col.header} by {by}", headers, out_rows, flags, notes, data, max(1, len(rows)))
