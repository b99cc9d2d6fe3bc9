"""Rank statistics over many data sets, against Demsar (2006, JMLR 7) and constructed tables worked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import ranking
from bench.errors import UserError

# Demsar (2006), Table 6: AUC (higher is better) of C4.5 with and without curtailing the minimal number of
# examples in a leaf (m) and the confidence level of pruning (cf), on 14 UCI data sets. This is the input.
DEMSAR_AUC = pd.DataFrame(
    [[0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
     [0.628, 0.661, 0.654, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
     [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
     [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
     [0.972, 0.981, 0.975, 0.975], [0.957, 0.978, 0.946, 0.970]],
    index=["adult (sample)", "breast cancer", "breast cancer wisconsin", "cmc", "ionosphere", "iris",
           "liver disorders", "lung cancer", "lymphography", "mushroom", "primary tumor", "rheum", "voting",
           "wine"],
    columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"],
).T  # contenders x data sets


def demsar_as_ranked() -> pd.DataFrame:
    """The table as the paper's ranks read it. Printed to three decimals, voting ties C4.5+cf and C4.5+m+cf
    at 0.975, which would rank them 2.5 and 2.5; the published average ranks (2.893 = 40.5/14 and 1.964 =
    27.5/14, against 41/14 and 27/14 from the tie) say the paper ranked C4.5+cf second there, so its
    unrounded AUC was the larger. Breaking that one tie is the only change."""
    table = DEMSAR_AUC.copy()
    table.loc["C4.5+cf", "voting"] = 0.9751
    return table


@pytest.mark.parametrize(("k", "q"), list(zip(range(2, 11), [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031,
                                                            3.102, 3.164], strict=True)))
def test_nemenyi_q_matches_demsar_table_5a(k, q):
    # the table rounds from an older studentized range table: k = 3 and k = 7 differ from the exact quantile
    # (2.34370, 2.94832) by 7e-4, so "to printed precision" is within one unit of the last digit
    assert ranking.nemenyi_q(k, 0.05) == pytest.approx(q, abs=1e-3)


@pytest.mark.parametrize(("k", "q"), [(2, 1.645), (4, 2.291)])  # Table 5(b); 2.291 is the one section 3.2.2 uses
def test_nemenyi_q_at_alpha_010(k, q):
    assert ranking.nemenyi_q(k, 0.10) == pytest.approx(q, abs=1e-3)


def test_demsar_worked_example_as_published():
    result = ranking.friedman_nemenyi(demsar_as_ranked(), higher_is_better=True, tie_correction=False)
    published = {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}
    assert {c: round(r, 3) for c, r in zip(result.contenders, result.mean_ranks, strict=True)} == published
    assert result.contenders == ("C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5")
    assert round(result.statistic, 2) == 9.28  # chi2_F
    assert round(result.iman_davenport, 2) == 3.69  # F_F
    assert result.iman_davenport_p < 0.05  # the paper: F(3, 39) = 2.85 at 0.05, so the null is rejected
    assert round(result.q_alpha, 3) == 2.569
    assert round(result.critical_difference, 2) == 1.25
    # the largest gap, 3.143 - 1.964 = 1.18, is under CD: Nemenyi cannot separate any pair at 0.05
    assert result.groups == (("C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"),)


def test_demsar_worked_example_at_alpha_010():
    # CD = 2.291 * sqrt(4 * 5 / (6 * 14)) = 1.12: C4.5 (3.143) is now worse than C4.5+m (2.000, gap 1.143)
    # and C4.5+m+cf (1.964, gap 1.179), but not than C4.5+cf (gap 0.25)
    result = ranking.friedman_nemenyi(demsar_as_ranked(), alpha=0.10, higher_is_better=True)
    assert round(result.critical_difference, 2) == 1.12
    assert result.groups == (("C4.5+m+cf", "C4.5+m", "C4.5+cf"), ("C4.5+cf", "C4.5"))
    p = result.pairwise
    assert p.loc["C4.5", "C4.5+m"] < 0.10 and p.loc["C4.5", "C4.5+m+cf"] < 0.10
    assert p.loc["C4.5", "C4.5+cf"] > 0.10 and p.loc["C4.5+m", "C4.5+m+cf"] > 0.10


def test_demsar_table_as_printed_keeps_the_voting_tie():
    # only C4.5+cf and C4.5+m+cf share voting's 2.5, against 2 and 3 in the paper: 41/14 and 27/14
    means = ranking.mean_ranks(DEMSAR_AUC, higher_is_better=True)
    assert means.to_dict() == pytest.approx({"C4.5": 44 / 14, "C4.5+m": 28 / 14, "C4.5+cf": 41 / 14,
                                             "C4.5+m+cf": 27 / 14})


def test_nemenyi_pairwise_p_values():
    result = ranking.friedman_nemenyi(demsar_as_ranked(), higher_is_better=True)
    p = result.pairwise
    # scikit-posthocs 0.17.1 posthoc_nemenyi_friedman gives these to 1e-15 (checked once by hand; not a dependency)
    assert p.loc["C4.5", "C4.5+m+cf"] == pytest.approx(0.074185, abs=1e-6)
    assert p.loc["C4.5", "C4.5+m"] == pytest.approx(0.088673, abs=1e-6)
    assert np.allclose(p, p.T) and (np.diag(p) == 1).all()
    # p < alpha exactly where the mean ranks differ by more than CD, at any alpha
    for alpha in (0.05, 0.10, 0.25):
        at = ranking.friedman_nemenyi(demsar_as_ranked(), alpha=alpha, higher_is_better=True)
        gap = np.abs(np.subtract.outer(at.mean_ranks, at.mean_ranks))
        assert ((at.pairwise.to_numpy() < alpha) == (gap > at.critical_difference)).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_corrected_friedman_equals_scipy(seed):
    scores = np.random.default_rng(seed).integers(0, 4, size=(5, 9)).astype(float)  # small integers: many ties
    result = ranking.friedman_nemenyi(pd.DataFrame(scores))
    expected = stats.friedmanchisquare(*scores)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)


def test_friedman_extremes():
    # every data set ranks a < b < c: chi2 reaches N(k - 1) = 8, F_F's denominator vanishes
    agree = pd.DataFrame([[0.1, 0.2, 0.3, 0.1], [0.2, 0.3, 0.4, 0.5], [0.3, 0.4, 0.5, 0.6]], index=list("abc"))
    result = ranking.friedman_nemenyi(agree)
    assert result.statistic == pytest.approx(8.0) and result.p_value == pytest.approx(np.exp(-4))  # chi2(2) sf
    assert result.iman_davenport == np.inf and result.iman_davenport_p == 0.0
    tied = ranking.friedman_nemenyi(pd.DataFrame(np.ones((3, 4)), index=list("abc")))
    assert (tied.statistic, tied.p_value, tied.iman_davenport) == (0.0, 1.0, 0.0)
    assert tied.groups == (("a", "b", "c"),) and tied.mean_ranks == (2.0, 2.0, 2.0)


def test_two_contenders_are_allowed():
    # k = 2, which scipy.stats.friedmanchisquare refuses; a wins 3 of 3: ranks 1, 2; chi2 = 12*3/6 * (1 + 4 - 4.5) = 3
    result = ranking.friedman_nemenyi(pd.DataFrame([[0.1, 0.2, 0.3], [0.2, 0.3, 0.4]], index=["a", "b"]))
    assert result.statistic == pytest.approx(3.0) and result.q_alpha == pytest.approx(1.960, abs=1e-3)


def test_ranks_with_ties_and_direction():
    errors = pd.DataFrame({"d1": [0.10, 0.20, 0.20, 0.40], "d2": [0.30, 0.30, 0.30, 0.10], "d3": [0.5, 0.4, 0.3, 0.2]},
                          index=["a", "b", "c", "d"])
    # d1: a 1, b and c share 2 and 3 -> 2.5, d 4; d2: d 1, a b c share 2, 3, 4 -> 3; d3: reversed 4 3 2 1
    expected = pd.DataFrame({"d1": [1, 2.5, 2.5, 4], "d2": [3.0, 3, 3, 1], "d3": [4.0, 3, 2, 1]}, index=errors.index)
    pd.testing.assert_frame_equal(ranking.ranks(errors), expected)
    # means: a 8/3, b 8.5/3, c 7.5/3, d 2: best first, so d c a b
    means = ranking.mean_ranks(errors)
    assert list(means.index) == ["d", "c", "a", "b"]
    assert means.to_numpy() == pytest.approx([2, 7.5 / 3, 8 / 3, 8.5 / 3])
    # the same table read as accuracies ranks every data set the other way round: rank' = k + 1 - rank
    pd.testing.assert_frame_equal(ranking.ranks(errors, higher_is_better=True), 5 - expected)


def test_mean_z_scores_by_hand():
    errors = pd.DataFrame({"d1": [0.1, 0.2, 0.3], "d2": [0.4, 0.4, 0.1], "flat": [0.5, 0.5, 0.5]}, index=list("abc"))
    # d1: mean 0.2, population sd sqrt(2/3)*0.1; lower error is better, so a gets +sqrt(3/2), c -sqrt(3/2)
    # d2: mean 0.3, sd sqrt(0.02) = 0.1*sqrt(2): a and b get -1/sqrt(2), c +2/sqrt(2); flat: 0 for all
    s, t = np.sqrt(1.5), 1 / np.sqrt(2)
    z = ranking.mean_z_scores(errors)
    assert z.to_dict() == pytest.approx({"a": (s - t) / 3, "b": (0 - t) / 3, "c": (-s + 2 * t) / 3})
    assert list(z.index) == ["a", "c", "b"]  # highest (best) first
    flipped = ranking.mean_z_scores(errors, higher_is_better=True)
    assert flipped.to_dict() == pytest.approx({k: -v for k, v in z.items()})


@pytest.mark.parametrize(("means", "cd", "groups"), [
    ([1.0, 1.5, 2.4, 3.0, 4.0], 1.0, (("a", "b"), ("b", "c"), ("c", "d"))),  # d-e differ by exactly CD: significant
    ([1.0, 1.2, 1.4, 3.0], 0.5, (("a", "b", "c"),)),  # b-c lies inside a-c, so it is no bar of its own
    ([1.0, 2.0, 3.0], 0.5, ()),  # every pair differs
    ([2.0, 1.0, 2.0], 0.1, (("a", "c"),)),  # equal means join; order is by mean rank
])
def test_cd_groups(means, cd, groups):
    names = "abcde"[: len(means)]
    found = ranking.cd_groups(pd.Series(means, index=list(names)), cd)
    assert found == groups


def test_holm_textbook():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    out = ranking.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert out["p_adjusted"].to_numpy() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert out["reject"].tolist() == [True, False, False, True]


def test_holm_keeps_labels_and_caps_at_one():
    out = ranking.holm(pd.Series({"b": 0.2, "c": 0.6, "d": 0.01}), alpha=0.05)
    assert list(out.index) == ["b", "c", "d"]
    assert out["p_adjusted"].to_numpy() == pytest.approx([0.4, 0.6, 0.03])  # 0.6*1, after 0.2*2 and 0.01*3
    assert out["reject"].tolist() == [False, False, True]
    assert ranking.holm([0.5, 0.9])["p_adjusted"].tolist() == [1.0, 1.0]  # 0.5*2 = 1, then max(1, 0.9)
    with pytest.raises(UserError):
        ranking.holm([0.2, 1.5])


def test_versus_control_feeds_holm():
    result = ranking.friedman_nemenyi(demsar_as_ranked(), higher_is_better=True)
    p = ranking.versus_control(result)  # control: C4.5+m+cf, mean rank 27.5/14
    se = np.sqrt(4 * 5 / (6 * 14))
    # C4.5: z = (44 - 27.5) / 14 / se = 2.415 -> two-sided p = 0.0157
    assert p["C4.5"] == pytest.approx(2 * stats.norm.sf(16.5 / 14 / se)) and round(p["C4.5"], 4) == 0.0157
    assert list(p.index) == ["C4.5+m", "C4.5+cf", "C4.5"]
    assert ranking.holm(p)["reject"].tolist() == [False, False, True]  # 0.0157 * 3 = 0.047
    with pytest.raises(UserError, match="unknown control"):
        ranking.versus_control(result, "C5.0")


def test_performance_profile_by_hand():
    errors = pd.DataFrame({"d1": [0.1, 0.2, 0.4], "d2": [0.2, 0.2, 0.1], "d3": [0.0, 0.0, 0.3]}, index=list("abc"))
    # ratios to each data set's best: d1 a 1, b 2, c 4; d2 a 2, b 2, c 1; d3 (best 0) a 1, b 1, c infinite
    ratios = ranking.performance_ratios(errors)
    assert ratios.to_numpy() == pytest.approx(np.array([[1, 2, 1], [2, 2, 1], [4, 1, np.inf]]))
    profile = ranking.performance_profile(errors)
    assert profile.index.tolist() == [1.0, 2.0, 4.0]
    expected = [[2 / 3, 1 / 3, 1 / 3], [1, 1, 1 / 3], [1, 1, 2 / 3]]  # rows tau, columns a b c
    assert profile.to_numpy() == pytest.approx(np.array(expected))
    assert ranking.performance_profile(errors, taus=[1.5])["a"].tolist() == pytest.approx([2 / 3])


def test_performance_profile_accuracies_and_failures():
    accuracy = pd.DataFrame({"d1": [0.9, 0.45, np.nan], "d2": [0.5, 0.8, 0.8]}, index=list("abc"))
    # best / score: d1 a 1, b 2, c failed (never solved); d2 a 1.6, b 1, c 1
    ratios = ranking.performance_ratios(accuracy, higher_is_better=True)
    assert ratios.to_numpy() == pytest.approx(np.array([[1, 1.6], [2, 1], [np.inf, 1]]))
    profile = ranking.performance_profile(accuracy, taus=[1, 1.7, 2, 100], higher_is_better=True)
    assert profile["c"].tolist() == [0.5, 0.5, 0.5, 0.5]
    assert profile["a"].tolist() == [0.5, 1, 1, 1] and profile["b"].tolist() == [0.5, 0.5, 1, 1]
    with pytest.raises(UserError, match="non-negative"):
        ranking.performance_ratios(accuracy - 0.6)


def test_rank_statistics_refuse_missing_scores():
    holes = pd.DataFrame({"d1": [0.1, np.nan], "d2": [0.2, 0.3]}, index=["a", "b"])
    with pytest.raises(UserError, match="b on d1"):
        ranking.friedman_nemenyi(holes)
    with pytest.raises(UserError, match="at least 2 contenders"):
        ranking.ranks(holes.iloc[:1])


def test_summary_names_the_figures():
    text = ranking.friedman_nemenyi(demsar_as_ranked(), higher_is_better=True, tie_correction=False).summary()
    assert "chi2 = 9.279" in text and "F = 3.686" in text and "critical difference 1.254" in text


@pytest.mark.parametrize(("table", "higher"), [
    (demsar_as_ranked(), True),
    (pd.DataFrame([[0.1, 0.2, 0.3], [0.2, 0.1, 0.4]], index=["a", "b"]), False),  # k = 2
    (pd.DataFrame(np.random.default_rng(0).random((6, 8)) + np.arange(6)[:, None] * 0.1,
                  index=pd.MultiIndex.from_product([["tv:resnext50_32x4d", "timm:convnext_tiny", "bench:mlp"],
                                                    ["none", "crop_flip"]])), False),
], ids=["demsar", "two", "multiindex"])
def test_drawings_write_png(tmp_path, table, higher):
    cd = ranking.draw_cd_diagram(ranking.friedman_nemenyi(table, higher_is_better=higher), tmp_path / "cd" / "cd.png")
    pp = ranking.draw_performance_profile(ranking.performance_profile(table, higher_is_better=higher),
                                          tmp_path / "profile.png")
    for path in (cd, pp):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
