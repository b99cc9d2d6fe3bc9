"""Which leaderboard rows are significantly worse than the best row on the same test images: McNemar's
test on per-image correctness, pooled over seeds (bench.compare), Holm-corrected (bench.ranking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import ranking
from bench.compare import correctness, pooled_mcnemar
from bench.errors import UserError
from bench.report.load import COLUMNS, DATASET_AXIS

WORSE = "*"  # beside the test error of a row significantly worse than the best row
ALPHA = 0.05  # of the significance marks and the Nemenyi critical difference


def significance(df: pd.DataFrame, board: pd.DataFrame, sort: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Per leaderboard row: whether it is significantly worse on the test images than the best row by
    `sort` among the rows it can be paired with (same suite, data set and splits). The paired test is
    McNemar's on per-image correctness, its discordant images summed over the seeds both rows ran
    (bench.compare.pooled_mcnemar); p-values are Holm-corrected over the rows compared with one best row.

    Columns: compared (a test was made), p, p_adjusted, worse (rejected, and its pooled error higher).
    Only rows with a test error take part; a best row without saved predictions compares with none."""
    out = pd.DataFrame({"compared": False, "p": np.nan, "p_adjusted": np.nan, "worse": False}, index=board.index)
    ok = df[df["status"] == "ok"]
    if "test_error" not in board.columns or sort not in board.columns or "split_key" not in ok.columns:
        return out
    runs: dict[tuple, dict[int, tuple[Any, Path]]] = {}  # (suite, group) -> seed -> (split key, cell folder)
    for suite, group, seed, key, cell_dir in zip(*(ok[c].tolist() for c in ("suite", "group", "seed", "split_key",
                                                                          "dir")), strict=True):
        runs.setdefault((suite, group), {})[seed] = (key, cell_dir)
    higher = COLUMNS[sort].higher
    seen: dict[Path, Any] = {}

    def right(cell_dir: Path) -> Any:
        if cell_dir not in seen:
            try:
                seen[cell_dir] = correctness(cell_dir)
            except UserError:  # damaged predictions: that run is not paired; --recompute says what is wrong
                seen[cell_dir] = None
        return seen[cell_dir]

    blocks: dict[tuple, list[int]] = {}
    column = DATASET_AXIS
    datasets = board[column] if column in board.columns else pd.Series(None, index=board.index, dtype=object)
    for i, suite, group, test, by, dataset in zip(board.index, *(board[c].tolist() for c in ("suite", "group",
                                                  "test_error", sort)), datasets.tolist(), strict=True):
        if pd.isna(test) or pd.isna(by):
            continue
        splits = frozenset(k for k, _ in runs[(suite, group)].values())
        blocks.setdefault((suite, None if pd.isna(dataset) else dataset, splits), []).append(i)
    for members in blocks.values():
        if len(members) < 2:
            continue
        values = board.loc[members, sort].astype(float)
        best = values.idxmax() if higher else values.idxmin()
        best_runs = runs[(board.at[best, "suite"], board.at[best, "group"])]
        if not any(right(d) is not None for _, d in best_runs.values()):
            continue  # no predictions to pair with: the whole block stays unmarked, at no cost
        tested = {}
        for i in members:
            if i == best:
                continue
            these = runs[(board.at[i, "suite"], board.at[i, "group"])]
            pairs = [(right(best_runs[seed][1]), right(d)) for seed, (key, d) in these.items()
                     if seed in best_runs and best_runs[seed][0] == key]
            pooled = pooled_mcnemar((a, b) for a, b in pairs if a is not None and b is not None)
            if pooled is not None:
                tested[i] = pooled
        if not tested:
            continue
        holm = ranking.holm(pd.Series({i: t.p_value for i, t in tested.items()}), alpha)
        for i, t in tested.items():
            # pooled error_a is the best row's: a row that beats the best on test is not "worse"
            out.loc[i, ["compared", "p", "p_adjusted"]] = [True, t.p_value, holm.at[i, "p_adjusted"]]
            out.at[i, "worse"] = bool(holm.at[i, "reject"]) and t.error_b > t.error_a
    out["compared"] = out["compared"].astype(bool)
    out["worse"] = out["worse"].astype(bool)
    return out


def significance_note(worse: pd.DataFrame, sort: str, marked: str) -> str:
    n = int(worse["compared"].sum())
    said = (f"{WORSE} beside {COLUMNS[marked].header}: significantly worse" if worse["worse"].any() else
            "No row is significantly worse")  # the test was made: its silence is a finding too
    return (f"{said} on the test images than the best row by "
            f"{COLUMNS[sort].header} (paired McNemar test on per-image correctness, the discordant images summed "
            f"over the seeds both rows ran, each seed on its own split; Holm-corrected over the rows "
            f"compared with the same best row, {n} compared in all; alpha {ALPHA:g}). Rows are compared only with the best row of their own data set and split.")
