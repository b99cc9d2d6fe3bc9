"""Seeds averaged into a leaderboard or a pivot, laid out as a Table of display strings that every format
renders the same way; with the leaderboard, what a reviewer asks of it: which rows are significantly worse
than the best (a paired test on the same test images), and, over several data sets, how the contenders
rank across them (bench.ranking: mean ranks, mean z-scores, Friedman and Nemenyi)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import ranking
from bench.compare import correctness, pooled_mcnemar
from bench.errors import UserError, did_you_mean
from bench.metrics import HIGHER_IS_BETTER
from bench.report.load import COLUMNS, DATASET, DATASET_AXIS, PARAM, REACHED, SORT_BY, Column

MARKS = ("†", "‡", "§", "¶", "#")
WORSE = "*"  # beside the test error of a row significantly worse than the best row
ALPHA = 0.05  # of the significance marks and the Nemenyi critical difference
RANK_BY = "test_error"  # the score of a contender on each data set, unless --value names another


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
    by, ascending = [sort], [not HIGHER_IS_BETTER.get(COLUMNS[sort].metric, False)]
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
    if not column.ranked or finite.sum() < 2 or (column.timing and len({e for e, f in zip(envs, finite, strict=True) if f}) > 1):
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
    # tables the text formats print after this one (the cross-dataset ranking); csv and json write `data`
    # alone, which carries the same figures as columns of its rows
    sections: list[Table] = field(default_factory=list)


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


def leaderboard_table(df: pd.DataFrame, columns: Sequence[str], sort: str | None = None, *,
                      rank_by: str = RANK_BY, marks: bool = True) -> Table:
    """The leaderboard as a Table; with `marks`, rows significantly worse than the best row on the same
    test images carry WORSE; over two or more data sets, a section ranks the contenders across them by
    `rank_by`."""
    # the test error (the paired test's figure) and the ranking's score are needed whether shown or not
    extra = [c for c in dict.fromkeys([rank_by, "test_error"]) if c not in columns and c in df.columns]
    board = leaderboard(df, [*columns, *extra], sort)
    title = ", ".join(dict.fromkeys(df["suite"])) if len(df) else "no cells"
    if board.empty:
        return Table(title, ["cell"], [], [], _failure_notes(df), board)
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
    marks_env, notes = _marks(board["env"])
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
        texts = _cell_texts(records, c)
        if c == marked and not worse.empty:
            texts = [t + WORSE if w else t for t, w in zip(texts, worse["worse"], strict=True)]
        cells.append(texts)
        values = _rankable(records, c)
        values[partial.to_numpy()] = np.nan  # a contender still being tuned competes for nothing yet
        mask = np.zeros(len(board), dtype=bool)
        for rows_of in blocks:
            mask[rows_of] = _best_mask(values[rows_of], COLUMNS[c], [envs[i] for i in rows_of])
        bold.append(mask)
    headers += [COLUMNS[c].header for c in columns]
    rows = [lead[i] + [col[i] for col in cells] for i in range(len(board))]
    flags = [[False] * len(lead[i]) + [bool(b[i]) for b in bold] for i in range(len(board))]
    direction = "higher" if HIGHER_IS_BETTER.get(COLUMNS[sort].metric) else "lower"
    notes = [f"Sorted by {COLUMNS[sort].header} ({direction} is better); mean ± std (n) over seeds; errors "
             f"are fractions (0–1); the best value of each column is bold"
             f"{' (of each data set: rows are grouped by data set)' if per_dataset else ''}. Measured on: "
             f"{', '.join(sorted(set(df['env'].dropna())))}.", *notes]
    if not worse.empty and worse["compared"].any():
        notes.append(_significance_note(worse, sort, marked))
    notes += _failure_notes(df)
    hidden = ["group", "labelled", *extra, *[f"{c}_std" for c in extra]]
    data = board.drop(columns=[c for c in hidden if c in board.columns])
    data = _integers(data, [c for c in columns if COLUMNS[c].integer])
    if not worse.empty:
        data["worse_p"] = worse["p_adjusted"].to_numpy()
        data["worse"] = worse["worse"].to_numpy()
    rankings = cross_dataset(board, rank_by) if rank_by in board.columns else []
    if rankings:
        data = data.merge(pd.concat([r.per_row() for r in rankings]), how="left", on=["suite", "label"])
    data.columns = [c.removeprefix("axis:").removeprefix(PARAM) for c in data.columns]
    return Table(title, headers, rows, flags, notes, data, len(lead[0]),
                 sections=[ranking_table(r, several) for r in rankings])


# ---------------------------------------------------------------- significance against the best row


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
    higher = HIGHER_IS_BETTER.get(COLUMNS[sort].metric, False)
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


def _significance_note(worse: pd.DataFrame, sort: str, marked: str) -> str:
    n = int(worse["compared"].sum())
    said = (f"{WORSE} beside {COLUMNS[marked].header}: significantly worse" if worse["worse"].any() else
            "No row is significantly worse")  # the test was made: its silence is a finding too
    return (f"{said} on the test images than the best row by "
            f"{COLUMNS[sort].header} (paired McNemar test on per-image correctness, the discordant images summed "
            f"over the seeds both rows ran, each seed on its own split; Holm-corrected over the rows "
            f"compared with the same best row, {n} compared in all; alpha {ALPHA:g}). Rows are compared only with the best row of their own data set and split.")


# ---------------------------------------------------------------- ranking across data sets


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
        return HIGHER_IS_BETTER.get(COLUMNS[self.metric].metric, False)

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
    the Nemenyi critical difference over the contenders scored on every data set."""
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
        higher = HIGHER_IS_BETTER.get(COLUMNS[metric].metric, False)
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
    best_score = {d: _best_mask(complete[d].to_numpy(float), col, ["same"] * len(order)) for d in datasets}
    best_rank = _best_mask(t.ranking.reindex(order).to_numpy(), Column("", (), 3, "mean_rank"), ["same"] * len(order))
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

