"""Comparisons of many contenders over many data sets that a reviewer accepts (issue 12).

The input everywhere is a *score table*: one row per contender (an architecture, a cell), one column per
data set (or any block: a seed, a split), errors by default (lower is better; pass higher_is_better=True
for accuracies). Every function here is pure and returns plain data; scipy is imported by the functions
that use it and matplotlib by the two drawing functions, only when called, so importing this module (and
bench.report, which does) costs neither.

- ranks / mean_ranks: the rank of each contender within each data set (1 = best, ties share the average
  rank), and its mean over data sets: Demsar (2006, JMLR 7) section 3.2.2.
- mean_z_scores: each data set's scores standardised across contenders and averaged, the aggregate that
  "Battle of the Backbones" (Goldblum et al., 2023) ranks backbones by; unlike ranks it keeps how far
  apart scores are, so one data set on which a contender collapses shows.
- friedman_nemenyi: the Friedman test (with Iman and Davenport's F), the Nemenyi critical difference and
  pairwise p-values, and the groups of contenders it cannot tell apart; draw_cd_diagram draws them.
- versus_control + holm: each contender against one (the best, by default), Holm-corrected.
- performance_profile: Dolan and More (2002), as MLCommons AlgoPerf scores training algorithms.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import UserError


def _complete(table: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """The table oriented so that lower is better, refusing what rank statistics cannot use.

    Rank tests need every contender scored on every data set (a block with a hole has no ranking), so a
    missing score is an error here rather than a silently dropped data set."""
    table = pd.DataFrame(table).astype(float)
    if table.shape[0] < 2 or table.shape[1] < 1:
        raise UserError(f"a comparison needs at least 2 contenders and 1 data set, got {table.shape[0]} "
                        f"contenders x {table.shape[1]} data sets")
    holes = [f"{table.index[r]} on {table.columns[c]}" for r, c in zip(*np.nonzero(table.isna().to_numpy()), strict=True)]
    if holes:
        raise UserError(f"{len(holes)} score(s) missing: {', '.join(holes)}",
                        hint="run the missing cells, or drop those data sets from the table")
    return -table if higher_is_better else table


def ranks(table: pd.DataFrame, *, higher_is_better: bool = False) -> pd.DataFrame:
    """The rank of each contender (row) within each data set (column): 1 is the best, ties share the
    average of the ranks they span (scipy.stats.rankdata's 'average')."""
    from scipy import stats

    lower = _complete(table, higher_is_better)
    return pd.DataFrame(stats.rankdata(lower.to_numpy(), axis=0), index=lower.index, columns=lower.columns)


def mean_ranks(table: pd.DataFrame, *, higher_is_better: bool = False) -> pd.Series:
    """Each contender's rank averaged over the data sets, best (lowest) first; equal means keep the
    table's order."""
    return ranks(table, higher_is_better=higher_is_better).mean(axis=1).sort_values(kind="stable").rename("mean rank")


def mean_z_scores(table: pd.DataFrame, *, higher_is_better: bool = False) -> pd.Series:
    """Each contender's z-score averaged over the data sets, best (HIGHEST) first, whichever way the
    table's scores point: a z of +1 is one standard deviation better than the mean contender.

    The standard deviation is the population one (ddof=0) over the contenders of that data set; a data
    set on which every contender scores the same says nothing and contributes z = 0 to all."""
    better = -_complete(table, higher_is_better)  # higher is better from here on
    spread = better.std(axis=0, ddof=0)
    z = (better - better.mean(axis=0)) / spread.where(spread > 0)
    return z.fillna(0.0).mean(axis=1).sort_values(ascending=False, kind="stable").rename("mean z")


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """The Nemenyi critical value q_alpha for k contenders (Demsar 2006, Table 5a): the studentized range
    quantile with infinite degrees of freedom, divided by sqrt(2) because Demsar's statistic compares mean
    ranks, not means scaled by the standard error of one mean."""
    from scipy import stats

    if k < 2:
        raise UserError(f"the Nemenyi test needs at least 2 contenders, got {k}")
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))


def _rank_se(k: int, n: int) -> float:
    """Standard error of the difference of two mean ranks under the null (Demsar 2006, section 3.2.2)."""
    return float(np.sqrt(k * (k + 1) / (6 * n)))


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """CD = q_alpha * sqrt(k(k+1) / 6N): two mean ranks over n data sets that differ by at least this much
    are significantly different at level alpha (Nemenyi)."""
    return nemenyi_q(k, alpha) * _rank_se(k, n)


def _friedman(r: np.ndarray, tie_correction: bool) -> tuple[float, float]:
    """Friedman's chi-square and its p-value from the ranks r (data sets x contenders).

    Computed from the ranks rather than by scipy.stats.friedmanchisquare so that it also serves k = 2
    (which scipy refuses) and, with tie_correction=False, Demsar's formula, which his worked figures use.
    With the correction it equals scipy's statistic (the test checks that)."""
    from scipy import stats

    n, k = r.shape
    means = r.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(means**2) - k * (k + 1) ** 2 / 4)
    if tie_correction:
        # each group of t tied contenders in a data set shrinks the rank variance by (t^3 - t) / 12
        ties = sum(float(np.sum(c**3 - c)) for c in (np.unique(row, return_counts=True)[1] for row in r))
        shrink = 1 - ties / (n * k * (k**2 - 1))
        if shrink <= 0:  # every data set a complete tie: no evidence either way
            return 0.0, 1.0
        chi2 /= shrink
    chi2 = max(float(chi2), 0.0)  # rounding can leave -1e-15 for identical rankings
    return chi2, float(stats.chi2.sf(chi2, k - 1))


def _iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """F_F = (N-1) chi2 / (N(k-1) - chi2) with (k-1, (k-1)(N-1)) degrees of freedom (Demsar 2006, eq. after
    the Friedman statistic): less conservative than the chi-square. Perfect agreement of all data sets
    makes the denominator 0, F infinite and p 0."""
    from scipy import stats

    if n < 2:
        return float("nan"), float("nan")  # no denominator degrees of freedom
    room = n * (k - 1) - chi2
    f = (n - 1) * chi2 / room if room > 1e-12 else float("inf")
    return float(f), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def cd_groups(mean_rank: pd.Series, cd: float) -> tuple[tuple[Hashable, ...], ...]:
    """The maximal runs of contenders (in mean-rank order) whose mean ranks span less than cd: the bars of
    a critical-difference diagram. Contenders inside one bar are not significantly different; a contender
    in no bar of two or more differs from every other. Demsar: different iff they differ by *at least* CD."""
    order = mean_rank.sort_values(kind="stable")
    values, names = order.to_numpy(), list(order.index)
    runs = []
    for i in range(len(values)):
        j = i
        while j + 1 < len(values) and values[j + 1] - values[i] < cd:
            j += 1
        if j > i and not (runs and runs[-1][1] >= j):  # a run ending where the last one ended is inside it
            runs.append((i, j))
    return tuple(tuple(names[i:j + 1]) for i, j in runs)


@dataclass(frozen=True)
class RankTest:
    """The Friedman test and the Nemenyi post-hoc comparison of k contenders over n data sets.

    Tuples rather than pandas objects so that the result is immutable and compares by value; the
    properties give the pandas views."""

    contenders: tuple[Hashable, ...]  # best mean rank first
    mean_ranks: tuple[float, ...]  # in the order of contenders
    datasets: int  # N
    alpha: float
    statistic: float  # Friedman chi-square, k - 1 degrees of freedom
    p_value: float
    iman_davenport: float  # F_F, (k - 1, (k - 1)(N - 1)) degrees of freedom
    iman_davenport_p: float
    tie_corrected: bool
    q_alpha: float
    critical_difference: float
    groups: tuple[tuple[Hashable, ...], ...]  # see cd_groups
    nemenyi_p: tuple[tuple[float, ...], ...]  # pairwise, rows and columns in the order of contenders

    @property
    def ranking(self) -> pd.Series:
        return pd.Series(self.mean_ranks, index=list(self.contenders), name="mean rank")

    @property
    def pairwise(self) -> pd.DataFrame:
        names = list(self.contenders)
        return pd.DataFrame(self.nemenyi_p, index=names, columns=names)

    def summary(self) -> str:
        k = len(self.contenders)
        verdict = "differ" if self.p_value < self.alpha else "cannot be told apart"
        return "\n".join([
            f"{k} contenders over {self.datasets} data sets; mean ranks: "
            + ", ".join(f"{c} {r:.3f}" for c, r in zip(self.contenders, self.mean_ranks, strict=True)),
            f"Friedman chi2 = {self.statistic:.3f} (p = {self.p_value:.3g}), Iman-Davenport F = "
            f"{self.iman_davenport:.3f} (p = {self.iman_davenport_p:.3g}): the contenders {verdict} at "
            f"alpha = {self.alpha}",
            f"Nemenyi critical difference {self.critical_difference:.3f} (q = {self.q_alpha:.3f}); not "
            "significantly different: " + ("; ".join(" = ".join(map(str, g)) for g in self.groups) or "none"),
        ])


def friedman_nemenyi(table: pd.DataFrame, *, alpha: float = 0.05, higher_is_better: bool = False,
                     tie_correction: bool = True) -> RankTest:
    """The Friedman test over the table's data sets and the Nemenyi comparison of every pair.

    tie_correction=True divides the statistic by the usual tie factor (as scipy and R's friedman.test do);
    False is Demsar's uncorrected formula. Ties make the uncorrected statistic smaller, hence conservative.
    Nemenyi p-values: the studentized range survival function at |R_i - R_j| * sqrt(2) / SE, so that
    p < alpha exactly when |R_i - R_j| > CD."""
    from scipy import stats

    r = ranks(table, higher_is_better=higher_is_better).T.to_numpy()  # data sets x contenders
    n, k = r.shape
    chi2, p = _friedman(r, tie_correction)
    f, p_f = _iman_davenport(chi2, n, k)
    by_rank = pd.Series(r.mean(axis=0), index=pd.DataFrame(table).index).sort_values(kind="stable")
    q, se = nemenyi_q(k, alpha), _rank_se(k, n)
    diff = np.abs(by_rank.to_numpy()[:, None] - by_rank.to_numpy()[None, :])
    pairwise = np.clip(stats.studentized_range.sf(diff * np.sqrt(2) / se, k, np.inf), 0.0, 1.0)
    np.fill_diagonal(pairwise, 1.0)
    return RankTest(
        contenders=tuple(by_rank.index), mean_ranks=tuple(float(v) for v in by_rank), datasets=n, alpha=alpha,
        statistic=chi2, p_value=p, iman_davenport=f, iman_davenport_p=p_f, tie_corrected=tie_correction,
        q_alpha=q, critical_difference=q * se, groups=cd_groups(by_rank, q * se),
        nemenyi_p=tuple(tuple(float(v) for v in row) for row in pairwise),
    )


def holm(pvalues: Sequence[float] | pd.Series, alpha: float = 0.05) -> pd.DataFrame:
    """Holm's step-down correction of a family of p-values: columns p, p_adjusted, reject (p_adjusted <=
    alpha), in the input's order and with its index (a Series keeps its labels).

    The i-th smallest p is multiplied by (m - i + 1); a running maximum keeps the adjusted values in the
    order of the raw ones, so rejecting stops at the first hypothesis that fails (as statsmodels'
    multipletests(method='holm') does)."""
    p = pd.Series(pvalues, dtype=float)
    if p.isna().any() or ((p < 0) | (p > 1)).any():
        raise UserError("p-values must lie in [0, 1]: " + ", ".join(map(str, p.tolist())))
    m = len(p)
    order = np.argsort(p.to_numpy(), kind="stable")
    scaled = p.to_numpy()[order] * (m - np.arange(m))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return pd.DataFrame({"p": p.to_numpy(), "p_adjusted": adjusted, "reject": adjusted <= alpha}, index=p.index)


def versus_control(result: RankTest, control: Hashable | None = None) -> pd.Series:
    """Two-sided p-value of each contender's mean rank against the control's (the best by default), from
    z = (R_i - R_control) / SE, normal (Demsar 2006, section 3.2.2, comparisons with a control). Feed it to
    holm() to mark the contenders significantly worse than the best; the control itself is left out."""
    from scipy import stats

    ranking = result.ranking
    control = ranking.index[0] if control is None else control
    if control not in ranking.index:
        raise UserError(f"unknown control contender {control!r}",
                        hint="one of: " + ", ".join(map(str, ranking.index)))
    z = (ranking.drop(control) - ranking[control]) / _rank_se(len(ranking), result.datasets)
    return pd.Series(2 * stats.norm.sf(np.abs(z.to_numpy())), index=z.index, name=f"p vs {control}")


def performance_ratios(table: pd.DataFrame, *, higher_is_better: bool = False) -> pd.DataFrame:
    """Each score divided by the best score of its data set (best / score when higher is better), so 1 is
    the best and larger is worse. A missing score (a cell that failed) is an infinite ratio: it never
    counts as solved. Ratios of signed scores mean nothing, so negative scores are refused."""
    table = pd.DataFrame(table).astype(float)
    if (table < 0).to_numpy().any():
        raise UserError("performance ratios need non-negative scores (errors, times, accuracies)")
    best = table.max(axis=0) if higher_is_better else table.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = best / table if higher_is_better else table / best
    # dividing by 0: a best error of 0 leaves the contenders that also scored 0 best (0/0 -> 1) and the
    # others infinitely worse; an accuracy of 0 is infinitely worse than any positive best
    return ratio.mask(table.eq(best), 1.0).fillna(np.inf)


def performance_profile(table: pd.DataFrame, taus: Sequence[float] | None = None, *,
                        higher_is_better: bool = False) -> pd.DataFrame:
    """Dolan-More performance profile: rho(tau), the fraction of data sets on which a contender's score
    is within a factor tau of that data set's best (ratio <= tau); one column per contender, indexed by
    tau. The default taus are 1 and every finite ratio that occurs, where the step function changes, so
    the profile is exact; draw it as steps ('post')."""
    ratio = performance_ratios(table, higher_is_better=higher_is_better)
    if taus is None:
        finite = ratio.to_numpy()[np.isfinite(ratio.to_numpy())]
        taus = np.unique(np.concatenate([[1.0], finite]))
    taus = np.asarray(taus, dtype=float)
    within = ratio.to_numpy()[:, :, None] <= taus[None, None, :]  # contenders x data sets x taus
    return pd.DataFrame(within.mean(axis=1).T, index=pd.Index(taus, name="tau"), columns=ratio.index)


def _label(name: Hashable) -> str:
    """A contender's label; a MultiIndex row (arch, augment) becomes 'arch / augment'."""
    return " / ".join(map(str, name)) if isinstance(name, tuple) else str(name)


def draw_cd_diagram(result: RankTest, path: Path | str, title: str = "") -> Path:
    """Demsar's critical-difference diagram as a PNG: the axis of mean ranks (1, the best, on the left),
    each contender joined to its mean rank (the better half labelled on the left, the rest on the right),
    the CD interval above the axis and a thick bar under each group cd_groups found."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(result.contenders)
    names, means = [_label(c) for c in result.contenders], list(result.mean_ranks)
    left = (k + 1) // 2  # the better half goes to the left side
    rows = max(left, k - left)
    bar_gap = 0.25  # vertical units between stacked group bars
    first_label = 1.0 + bar_gap * len(result.groups)  # labels start below the group bars
    height = first_label + rows * 0.5 + 0.3

    # the axes hold the rank axis at a fixed width; the labels stand outside them and savefig's tight
    # bounding box grows the image to fit them, so long names never squeeze the axis
    fig = Figure(figsize=(4.5, 0.5 + 0.45 * height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    lo, hi = 1, max(k, int(np.ceil(max(means))))
    margin = max(0.3, 0.1 * (hi - lo))
    ax.set_xlim(lo - margin, hi + margin)
    ax.set_ylim(height, -1.4)  # y grows downwards, like the figure in the paper
    ax.axis("off")

    ax.hlines(0, lo, hi, color="black", linewidth=1.2)
    for tick in range(lo, hi + 1):
        ax.vlines(tick, -0.12, 0, color="black", linewidth=1.0)
        ax.text(tick, -0.2, str(tick), ha="center", va="bottom", fontsize=10)
    for tick in np.arange(lo + 0.5, hi, 1.0):
        ax.vlines(tick, -0.06, 0, color="black", linewidth=0.7)

    cd = result.critical_difference
    if cd <= hi - lo + 1:
        ax.hlines(-0.85, lo, lo + cd, color="black", linewidth=1.5)
        ax.vlines([lo, lo + cd], -0.95, -0.75, color="black", linewidth=1.5)
        ax.text(lo + cd / 2, -0.95, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=10)

    x_left, x_right = ax.get_xlim()
    for i, (name, mean) in enumerate(zip(names, means, strict=True)):
        on_left = i < left
        y = first_label + 0.5 * (i if on_left else k - 1 - i)  # innermost lowest, so no two lines cross
        end = x_left if on_left else x_right
        ax.plot([mean, mean, end], [0, y, y], color="black", linewidth=1.0)
        ax.text(end - 0.04 * margin if on_left else end + 0.04 * margin, y, f"{name} ({mean:.2f})" if on_left else f"({mean:.2f}) {name}",
                ha="right" if on_left else "left", va="center", fontsize=10)

    for g, group in enumerate(result.groups):
        ranks_in = [means[result.contenders.index(c)] for c in group]
        y = 0.35 + bar_gap * g
        ax.hlines(y, min(ranks_in) - 0.05, max(ranks_in) + 0.05, color="black", linewidth=4, capstyle="round")

    ax.set_title(title or f"Nemenyi, alpha = {result.alpha}; Friedman p = {result.p_value:.3g} "
                          f"(N = {result.datasets})", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def draw_performance_profile(profile: pd.DataFrame, path: Path | str, title: str = "") -> Path:
    """The profile as step curves, one per contender: the higher and further left, the better. The last
    step is carried to 5% beyond the largest tau so that it is visible."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6))  # fixed axes; the tight bounding box makes room for the legend
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    taus = profile.index.to_numpy(dtype=float)
    end = taus[-1] + 0.05 * max(taus[-1] - taus[0], 0.2)
    x = np.append(taus, end)
    for name in profile.columns:
        y = profile[name].to_numpy(dtype=float)
        ax.step(x, np.append(y, y[-1]), where="post", label=_label(name), linewidth=1.6)
    ax.set(xlabel="tau (score within a factor tau of the best)", ylabel="fraction of data sets",
           ylim=(-0.03, 1.03), xlim=(taus[0], end), title=title or "Performance profile")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)  # off the curves
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
