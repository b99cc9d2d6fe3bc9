"""The paired comparison on constructed cases with known answers, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support import make_cell


def test_mcnemar_exact_and_chi_square_by_hand():
    from bench.compare import mcnemar

    assert mcnemar(0, 0) == (1.0, "exact")
    assert mcnemar(0, 5)[0] == pytest.approx(2 / 32)  # all five discordant images favour one side
    assert mcnemar(1, 9)[0] == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar(9, 1)[0] == mcnemar(1, 9)[0]
    assert mcnemar(5, 5)[0] == 1.0
    p, method = mcnemar(10, 30)  # chi2 = (|10 - 30| - 1)^2 / 40 = 9.025 -> p = 0.002663 (tables)
    assert method.startswith("chi-square") and p == pytest.approx(0.002663, abs=2e-6)


def test_bootstrap_ci_matches_the_normal_approximation():
    from bench.compare import bootstrap_ci

    same = np.zeros(500, dtype=bool)
    assert bootstrap_ci(same, same) == (0.0, 0.0)
    wrong_a = np.zeros(1000, dtype=bool)
    wrong_a[:100] = True  # A is wrong on 100 images B gets right
    low, high = bootstrap_ci(wrong_a, np.zeros(1000, dtype=bool), resamples=20_000)
    se = math.sqrt(0.1 * 0.9 / 1000)
    assert low == pytest.approx(0.1 - 1.96 * se, abs=0.004) and high == pytest.approx(0.1 + 1.96 * se, abs=0.004)
    assert bootstrap_ci(wrong_a, np.zeros(1000, dtype=bool), resamples=20_000) == (low, high)  # seeded


def _cells(tmp_path, key_b="k0", labels_b=None):
    labels = np.arange(100) % 4
    good = np.eye(4)[labels] * 3
    worse = good.copy()
    worse[:12] = np.eye(4)[(labels[:12] + 1) % 4] * 3  # B wrong on 12 images A gets right
    worse[50] = good[50]
    bad_a = good.copy()
    bad_a[90:92] = np.eye(4)[(labels[90:92] + 1) % 4] * 3  # A wrong on 2 images B gets right
    a = make_cell(tmp_path / "s", "a", arch="a", predictions=(bad_a, labels))
    b = make_cell(tmp_path / "s", "b", arch="b", predictions=(worse, labels if labels_b is None else labels_b),
                  split_key=key_b)
    return a, b


def test_compare_two_cells_on_the_same_images(tmp_path):
    from bench.compare import compare_cells
    from bench.store import load_record

    r = compare_cells(*map(load_record, _cells(tmp_path)))
    assert (r.images, r.a_only_right, r.b_only_right) == (100, 12, 2)
    assert r.error_a == pytest.approx(0.02) and r.error_b == pytest.approx(0.12)
    exact = 2 * sum(math.comb(14, i) for i in range(3)) / 2**14
    assert r.method == "exact" and r.p_value == pytest.approx(exact)
    assert r.ci_low < -0.1 < r.ci_high < 0 and "significant" in r.summary()


def test_compare_refuses_different_splits(tmp_path, cli):
    from bench.compare import compare_cells
    from bench.errors import UserError
    from bench.store import load_record

    a, b = _cells(tmp_path, key_b="other")
    with pytest.raises(UserError, match="different data splits"):
        compare_cells(load_record(a), load_record(b))
    code, _, err = cli("compare", a, b)
    assert code == 2 and "different data splits" in err


def test_compare_refuses_different_test_labels(tmp_path):
    from bench.compare import compare_cells
    from bench.errors import UserError
    from bench.store import load_record

    records = map(load_record, _cells(tmp_path, labels_b=(np.arange(100) + 1) % 4))
    with pytest.raises(UserError, match="labels differ"):
        compare_cells(*records)


def test_cli_compare_by_id_and_label(tmp_path, cli):
    _cells(tmp_path)
    code, out, err = cli("compare", "a", "arch=b*", "--suite", tmp_path / "s", "--resamples", "2000")
    assert code == 0, err
    assert "A right & B wrong 12, A wrong & B right 2" in out and "error A 0.0200, B 0.1200" in out
    code, _, err = cli("compare", "arch=*", "a", "--suite", tmp_path / "s")
    assert code == 2 and "matches 2 cells" in err
    code, _, err = cli("compare", tmp_path / "nowhere", "a")
    assert code == 2 and "not a cell folder" in err


def test_pooled_mcnemar_sums_the_discordant_images_of_each_seed():
    from bench.compare import mcnemar, pooled_mcnemar

    labels = np.arange(50) % 5
    a = np.ones(50, dtype=bool)
    b = a.copy()
    b[:4] = False  # seed 0: A alone right on 4
    c = a.copy()
    c[:3], a2 = False, a.copy()
    a2[10] = False  # seed 1: A alone right on 3, B alone right on 1
    pooled = pooled_mcnemar([((a, labels), (b, labels)), ((a2, labels), (c, labels))])
    assert (pooled.seeds, pooled.images, pooled.a_only_right, pooled.b_only_right) == (2, 100, 7, 1)
    assert pooled.p_value == pytest.approx(mcnemar(7, 1)[0]) and pooled.error_b == pytest.approx(0.07)
    assert pooled_mcnemar([((a, labels), (b, labels[::-1]))]) is None  # other images: nothing to pair
