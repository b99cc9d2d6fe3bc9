"""Over two or more [[datasets]], how a suite's contenders rank across them (bench.ranking: mean ranks,
mean z-scores, Friedman and Nemenyi), and that ranking as a Table: a section the text formats print under
the leaderboard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import ranking
from bench.report.load import COLUMNS, DATASET, DATASET_AXIS, Column
from bench.report.significance import ALPHA
from bench.report.table import Table, best_mask

RANK_BY = "test_error"  # the score of a contender on each data set, unless --value names another


def on_validation(metric: str) -> str:
    """A test figure's validation twin (test_error: val_error); any other metric itself."""
    return metric.replace("test_", "val_", 1) if metric.startswith("test_") else metric


def _ranked_by(board: pd.DataFrame, metric: str) -> str:
    """`metric`, or its validation twin when no row has it: a suite without a test split ranks its
    contenders on the split it has."""
    twin = on_validation(metric)
    if twin in board.columns and (metric not in board.columns or board[metric].isna().all()):
        return twin
    return metric


def contender(label: str, dataset: Any) -> str:
    """A cell's label without its data set (bench.suite puts "dataset=<name>" last): the same
    configuration on another data set is the same contender."""
    return " ".join(w for w in str(label).split() if w != f"{DATASET}={dataset}") or "default"


@dataclass(frozen=True)
class CrossDataset:
    """One suite's contenders ranked across its data sets."""
    suite: str
    metric: str
    scores: pd.DataFrame  # contenders x data sets, mean over seeds; holes where a contender did not finish
    dropped: dict[str, list[str]]  # contender -> the data sets it lacks (left out of every statistic)
    ranks: pd.DataFrame | None  # of the complete contenders (None: fewer than two)
    z: pd.Series | None  # mean z-score per complete contender, higher is better
    test: ranking.RankTest | None

    @property
    def higher(self) -> bool:
        return COLUMNS[self.metric].higher

    @property
    def complete(self) -> pd.DataFrame:
        return self.scores.drop(index=list(self.dropped))

    def per_row(self) -> pd.DataFrame:
        """The ranking as columns of the leaderboard's rows (suite, label, contender, rank, mean_rank,
        mean_z, cd_groups, friedman_p, critical_difference), for csv and json."""
        rows = []
        for (name, dataset), label in self.labels.items():
            ranked = self.test is not None and name in self.test.contenders
            rows.append({"suite": self.suite, "label": label, "contender": name,
                         "rank": float(self.ranks.at[name, dataset]) if ranked else None,
                         "mean_rank": self.test.ranking[name] if ranked else None,
                         "mean_z": float(self.z[name]) if ranked else None,
                         "cd_groups": " ".join(self.letters(name)) if ranked else None,
                         "friedman_p": self.test.p_value if ranked else None,
                         "critical_difference": self.test.critical_difference if ranked else None})
        return pd.DataFrame(rows)

    @property
    def labels(self) -> dict[tuple[str, str], str]:
        return self.scores.attrs["labels"]

    def letters(self, name: str) -> list[str]:
        """The critical-difference groups (a, b, ...) that hold `name`: those sharing a letter are not
        significantly different."""
        groups = self.test.groups if self.test else ()
        return [chr(ord("a") + g) for g, members in enumerate(groups) if name in members]


def cross_dataset(board: pd.DataFrame, metric: str = RANK_BY, alpha: float = ALPHA) -> list[CrossDataset]:
    """Per suite whose leaderboard spans two or more data sets (the dataset axis): each contender's
    `metric` (mean over seeds) per data set, its ranks, mean rank, mean z-score, and the Friedman test with
    the Nemenyi critical difference over the contenders scored on every data set. With no row scored by
    `metric`, its validation twin ranks them (CrossDataset.metric says which)."""
    metric = _ranked_by(board, metric)
    column = DATASET_AXIS
    if board.empty or column not in board.columns or metric not in board.columns:
        return []
    out = []
    for suite, part in board[board[column].notna()].groupby("suite", sort=False):
        datasets = list(dict.fromkeys(part[column]))
        if len(datasets) < 2:
            continue
        names = [contender(label, d) for label, d in zip(part["label"], part[column], strict=True)]
        long = pd.DataFrame({"contender": names, "dataset": part[column].to_numpy(),
                             "score": pd.to_numeric(part[metric], errors="coerce").to_numpy(),
                             "label": part["label"].to_numpy()})
        long = long.drop_duplicates(["contender", "dataset"])
        scores = long.pivot(index="contender", columns="dataset", values="score")
        scores = scores.reindex(index=list(dict.fromkeys(names)), columns=datasets)
        scores.attrs["labels"] = {(c, d): lab for c, d, lab in long[["contender", "dataset", "label"]].itertuples(
            index=False)}
        holes = scores.isna()
        dropped = {c: [d for d in datasets if holes.at[c, d]] for c in scores.index if holes.loc[c].any()}
        complete = scores.drop(index=list(dropped))
        higher = COLUMNS[metric].higher
        ranks = z = test = None
        if len(complete) >= 2:
            ranks = ranking.ranks(complete, higher_is_better=higher)
            z = ranking.mean_z_scores(complete, higher_is_better=higher)
            test = ranking.friedman_nemenyi(complete, alpha=alpha, higher_is_better=higher)
        out.append(CrossDataset(str(suite), metric, scores, dropped, ranks, z, test))
    return out


def ranking_table(r: CrossDataset, several_suites: bool = False) -> Table:
    """The contenders of r, best mean rank first: their score and rank on each data set, mean rank, mean
    z-score and critical-difference group; notes with the Friedman test and the Nemenyi CD."""
    col = COLUMNS[r.metric]
    datasets = list(r.scores.columns)
    title = (f"{r.suite}: " if several_suites else "") + f"ranking across {len(datasets)} data sets"
    headers = ["contender", *datasets, "mean rank", "mean z", "CD group"]
    direction = "higher" if r.higher else "lower"
    notes = [f"Contenders (a row's label without its data set) by {col.header}, mean over seeds ({direction} is "
             f"better), with their rank on each data set in parentheses (1 = best; ties share the mean rank); "
             f"mean rank over the data sets (lower is better) and mean z-score (each data set's scores "
             f"standardised across the contenders, then averaged; higher is better, as in Battle of the "
             f"Backbones). The best of each column is bold."]
    if r.dropped:
        notes.append("dropped from the ranking and the Friedman test, not finished on every data set: "
                     + "; ".join(f"{c} (missing on {', '.join(ds)})" for c, ds in r.dropped.items()))
    if r.test is None:
        notes.append("fewer than two contenders finished on every data set: no ranking")
        return Table(title, headers, [], [], notes, r.scores.reset_index())
    t = r.test
    order = list(t.contenders)
    groups = "; ".join(" = ".join(map(str, g)) for g in t.groups) or "none (every pair differs)"
    verdict = "differ" if t.p_value < t.alpha else "cannot be told apart"
    iman = (f"Iman–Davenport F = {t.iman_davenport:.3f}, p = {t.iman_davenport_p:.3g}" if np.isfinite(t.iman_davenport)
            else "Iman–Davenport F infinite: every data set ranks them alike" if t.iman_davenport == np.inf
            else "no Iman–Davenport F with one data set")
    notes.append(f"Friedman test over {t.datasets} data sets: chi² = {t.statistic:.3f}, p = {t.p_value:.3g} "
                 f"({iman}): the contenders "
                 f"{verdict} at alpha {t.alpha:g}. Nemenyi critical difference CD = {t.critical_difference:.3f} "
                 f"(q = {t.q_alpha:.3f}, {len(order)} contenders): mean ranks closer than CD are not significantly "
                 f"different; contenders sharing a letter under CD group are not: {groups}.")
    z = r.z.reindex(order)
    complete = r.complete.reindex(order)
    rows, flags = [], []
    best_score = {d: best_mask(complete[d].to_numpy(float), col, ["same"] * len(order)) for d in datasets}
    best_rank = best_mask(t.ranking.reindex(order).to_numpy(), Column("", (), 3, "mean_rank"), ["same"] * len(order))
    best_z = np.isclose(z.to_numpy(), z.max())
    for i, name in enumerate(order):
        texts = [f"{complete.at[name, d]:.{col.digits}f} ({r.ranks.at[name, d]:g})" for d in datasets]
        rows.append([str(name), *texts, f"{t.ranking[name]:.2f}", f"{z[name]:+.2f}",
                     " ".join(r.letters(name)) or "—"])
        flags.append([False, *[bool(best_score[d][i]) for d in datasets], bool(best_rank[i]), bool(best_z[i]), False])
    data = complete.copy()
    data["mean_rank"], data["mean_z"] = t.ranking.reindex(order), z
    data["cd_groups"] = [" ".join(r.letters(n)) for n in order]
    data = data.rename_axis("contender").reset_index()
    return Table(title, headers, rows, flags, notes, data, 1)
