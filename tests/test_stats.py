"""nbhelpers.measure.stats: paired differences, McNemar's exact test, Wilson intervals, the paired
table."""

import itertools
import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from nbhelpers.core.params import ParameterError
from nbhelpers.measure.stats import (
    accuracy_interval,
    bootstrap_interval,
    discordant_counts,
    mcnemar_exact,
    newcombe_interval,
    paired_difference,
    paired_table,
    seed_summary,
    seeds_paired_difference,
    verdict,
    wilson_interval,
)


def make_pair(n11, b01, b10, n00):
    """Boolean arrays of models A and B with the given paired 2x2 table (A wrong, B right = b01)."""
    a = np.array([True] * n11 + [False] * b01 + [True] * b10 + [False] * n00)
    b = np.array([True] * n11 + [True] * b01 + [False] * b10 + [False] * n00)
    return a, b


def test_discordant_counts_by_hand():
    a = [True, True, False, False, True, False]
    b = [True, False, True, True, True, False]
    assert discordant_counts(a, b) == {"n11": 2, "b01": 2, "b10": 1, "n00": 1, "n": 6}


def test_newcombe_reproduces_the_published_cavo_example():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, Statistical Analysis of Contingency
    # Tables (2017), ch. 8: table [[59, 6], [16, 80]], delta = (6 - 16) / 161 = -0.0621, Newcombe
    # square-and-add 95% CI -0.1186 to -0.0046, McNemar exact conditional P = 0.052479 (as
    # asserted by the R package contingencytables, tests/testthat/test-ch8.R).
    low, high = newcombe_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    a, b = make_pair(59, 6, 16, 80)
    d = paired_difference(a, b)
    assert round(d["difference"], 2) == -6.21 and (d["b01"], d["b10"], d["n"]) == (6, 16, 161)
    assert (round(d["low"], 2), round(d["high"], 2)) == (-11.86, -0.46)
    assert round(mcnemar_exact(a, b), 6) == 0.052479


def test_newcombe_phi_correction_by_hand():
    # n11 * n00 - b01 * b10 = 40 * 40 - 10 * 10 = 1500 > n/2 = 50: phi = (1500 - 50) / 50**2.
    lo1, hi1 = proportion_confint(50, 100, method="wilson")
    p, phi = 0.5, 1450 / 2500
    half = math.sqrt((p - lo1) ** 2 + (hi1 - p) ** 2 - 2 * phi * (p - lo1) * (hi1 - p))
    assert newcombe_interval(40, 10, 10, 40) == pytest.approx((-half, half), abs=1e-12)
    # negative cross-product: phi uncorrected, (1 * 1 - 5 * 5) / sqrt(6 * 6 * 6 * 6) = -2/3
    lo1, hi1 = proportion_confint(6, 12, method="wilson")
    half = math.sqrt(2 * (0.5 - lo1) ** 2 * (1 + 2 / 3))
    assert newcombe_interval(1, 5, 5, 1) == pytest.approx((-half, half), abs=1e-12)
    # 2 * 3 - 1 * 2 = 4 is not above n/2 = 4: phi = 0, the independent square-and-add
    l1, u1 = proportion_confint(3, 8, method="wilson")  # B right: n11 + b01
    l2, u2 = proportion_confint(4, 8, method="wilson")  # A right: n11 + b10
    low = (3 - 4) / 8 - math.sqrt((3 / 8 - l1) ** 2 + (u2 - 4 / 8) ** 2)
    high = (3 - 4) / 8 + math.sqrt((4 / 8 - l2) ** 2 + (u1 - 3 / 8) ** 2)
    assert newcombe_interval(2, 1, 2, 3) == pytest.approx((low, high), abs=1e-12)


def test_newcombe_exact_coverage_by_enumeration():
    # Brute force: every table of n = 30 paired images, weighted by its multinomial probability.
    n = 30
    # Exact coverage near the nominal 95%: without the phi term it is 0.986 and 0.957, the Wald
    # interval's 0.929 and 0.933.
    for p11, p01, p10 in [(0.60, 0.15, 0.10), (0.50, 0.20, 0.20)]:
        truth = p01 - p10
        probs = np.array([p11, p01, p10, 1 - p11 - p01 - p10])
        coverage = 0.0
        for n11, b01, b10 in itertools.product(range(n + 1), repeat=3):
            n00 = n - n11 - b01 - b10
            if n00 < 0:
                continue
            counts = np.array([n11, b01, b10, n00])
            log_pmf = (
                math.lgamma(n + 1)
                - sum(math.lgamma(c + 1) for c in counts)
                + float(np.sum(counts * np.log(probs)))
            )
            low, high = newcombe_interval(n11, b01, b10, n00)
            coverage += math.exp(log_pmf) * (low <= truth <= high)
        assert 0.95 < coverage < 0.975, (p11, p01, p10, coverage)


def test_bootstrap_matches_brute_force_resampling():
    # Five images; all 5**5 equally likely resamples give the exact bootstrap distribution.
    a = np.array([True, True, True, False, False])
    b = np.array([True, False, True, True, True])
    diffs = np.array(
        [b[list(i)].mean() - a[list(i)].mean() for i in itertools.product(range(5), repeat=5)]
    )
    values, counts = np.unique(np.round(diffs, 12), return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    exact_low = values[np.searchsorted(cdf, 0.05)]  # 90% percentile interval
    exact_high = values[np.searchsorted(cdf, 0.95)]
    assert np.min(np.abs(cdf - 0.05)) > 0.01 and np.min(np.abs(cdf - 0.95)) > 0.01  # no ties
    d = paired_difference(a, b, confidence=0.90, method="bootstrap", n_boot=100_000, seed=1)
    assert (d["low"], d["high"]) == pytest.approx((100 * exact_low, 100 * exact_high), abs=1e-9)
    assert (round(exact_low, 2), round(exact_high, 2)) == (-0.4, 0.8)  # 0.2 +- 1.645 * 0.335


def test_bootstrap_and_newcombe_agree_on_a_large_test_set():
    a, b = make_pair(9300, 120, 60, 520)
    newc = paired_difference(a, b)
    boot = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=0)
    assert newc["difference"] == boot["difference"] == pytest.approx(0.6)
    se = math.sqrt(180 - 60**2 / 10_000) / 10_000 * 100  # Wald standard error, points
    for d in (newc, boot):
        assert d["low"] == pytest.approx(0.6 - 1.96 * se, abs=0.03)
        assert d["high"] == pytest.approx(0.6 + 1.96 * se, abs=0.03)
    again = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=0)
    other = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=1)
    assert again == boot and (other["low"], other["high"]) != (boot["low"], boot["high"])


@pytest.mark.parametrize(
    "table",
    [(59, 6, 16, 80), (10, 0, 7, 3), (5, 3, 3, 9), (0, 12, 1, 0), (100, 0, 0, 5), (1, 30, 29, 2)],
)
def test_mcnemar_matches_statsmodels(table):
    n11, b01, b10, n00 = table
    a, b = make_pair(*table)
    expected = mcnemar([[n11, b10], [b01, n00]], exact=True).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "k,n,conf",
    [
        (7, 10, 0.95),
        (0, 10, 0.95),
        (10, 10, 0.95),
        (9512, 10_000, 0.95),
        (3, 50, 0.9),
        (1, 1, 0.99),
    ],
)
def test_wilson_matches_statsmodels(k, n, conf):
    expected = proportion_confint(k, n, alpha=1 - conf, method="wilson")
    assert wilson_interval(k, n, conf) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    acc = accuracy_interval(np.arange(n) < k, conf)
    assert acc["accuracy"] == pytest.approx(100 * k / n) and acc["n"] == n
    assert (acc["low"], acc["high"]) == pytest.approx(tuple(100 * e for e in expected), rel=1e-12)


def test_swapping_models_mirrors_everything():
    a, b = make_pair(50, 9, 4, 7)
    ab, ba = paired_difference(a, b), paired_difference(b, a)
    assert ab["difference"] == pytest.approx(-ba["difference"]) and ab["difference"] > 0
    assert (ab["low"], ab["high"]) == pytest.approx((-ba["high"], -ba["low"]), abs=1e-12)
    assert (ab["b01"], ab["b10"]) == (ba["b10"], ba["b01"]) == (9, 4)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)


def test_symmetric_table_is_centred_on_zero():
    a, b = make_pair(30, 5, 5, 10)
    d = paired_difference(a, b)
    assert d["difference"] == 0 and d["low"] < 0
    assert d["low"] == pytest.approx(-d["high"], abs=1e-12)
    assert mcnemar_exact(a, b) == 1.0


def test_identical_models():
    a = np.arange(100) % 10 != 0  # 90% right
    d = paired_difference(a, a.copy())
    assert d["difference"] == 0 and (d["b01"], d["b10"]) == (0, 0)
    assert d["low"] < 0 < d["high"] and verdict(d["low"], d["high"]) == "within noise"
    assert mcnemar_exact(a, a) == 1.0
    boot = paired_difference(a, a, method="bootstrap", n_boot=200)
    assert (boot["low"], boot["high"]) == (0.0, 0.0)


def test_all_discordant_extremes():
    a, b = make_pair(0, 0, 20, 0)  # A right everywhere, B wrong everywhere
    d = paired_difference(a, b)
    assert d["difference"] == -100 and d["low"] == -100 and -100 < d["high"] < 0
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**20, rel=1e-12)
    up = paired_difference(b, a)
    assert up["difference"] == 100 and up["high"] == 100 and up["low"] == pytest.approx(-d["high"])
    boot = paired_difference(b, a, method="bootstrap", n_boot=100)
    assert (boot["low"], boot["high"]) == (100.0, 100.0)
    assert verdict(d["low"], d["high"]) == "worse" and verdict(up["low"], up["high"]) == "better"


def test_verdict_words():
    assert verdict(0.1, 2.0) == "better" and verdict(-2.0, -0.1) == "worse"
    assert verdict(-0.1, 0.1) == verdict(0.0, 1.0) == verdict(-1.0, 0.0) == "within noise"


def test_paired_table():
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.9
    wrong, right = np.flatnonzero(~base), np.flatnonzero(base)

    def flip(fix, brk):
        m = base.copy()
        m[wrong[:fix]] = True
        m[right[:brk]] = False
        return m

    preds = {"better": flip(60, 10), "base": base, "worse": flip(5, 50), "noise": flip(12, 10)}
    t = paired_table(preds, "base")
    assert t["model"].tolist() == ["base", "better", "worse", "noise"]
    assert t["verdict"].tolist() == ["baseline", "better", "worse", "within noise"]
    assert list(t.columns) == [
        "model",
        "n",
        "accuracy",
        "acc_low",
        "acc_high",
        "difference",
        "diff_low",
        "diff_high",
        "b01",
        "b10",
        "p_mcnemar",
        "verdict",
    ]
    row = t.set_index("model").loc["better"]
    assert (row["b01"], row["b10"], row["n"]) == (60, 10, 1000) and row["difference"] == 5.0
    k = int(preds["better"].sum())
    assert (row["acc_low"], row["acc_high"]) == pytest.approx(
        tuple(100 * e for e in proportion_confint(k, 1000, method="wilson")), rel=1e-12
    )
    assert row["p_mcnemar"] == pytest.approx(
        mcnemar([[k - 60, 10], [60, 1000 - k - 10]], exact=True).pvalue, rel=1e-12
    )
    d = paired_difference(base, preds["better"])
    assert (row["diff_low"], row["diff_high"]) == (d["low"], d["high"])
    first = t.iloc[0]
    assert first["difference"] == 0 and math.isnan(first["diff_low"])
    assert math.isnan(first["p_mcnemar"])
    boot = paired_table(preds, "base", method="bootstrap", n_boot=500, seed=3)
    assert boot["verdict"].tolist() == t["verdict"].tolist()


def test_seed_summary():
    assert seed_summary([97.0, 98.0, 99.0]) == (98.0, 1.0, 3)
    s = seed_summary(np.array([0.5]))
    assert s.mean == 0.5 and math.isnan(s.std) and s.n == 1


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], "98", [True, False], [[1.0, 2.0]]])
def test_seed_summary_bad_values(bad):
    with pytest.raises(ParameterError, match="values=.*finite numbers"):
        seed_summary(bad)


def test_bad_inputs_name_the_argument():
    a = np.ones(5, bool)
    with pytest.raises(
        ParameterError,
        match=r"correct_b=.*shape \(4,\).*same length as "
        r"correct_a \(5\)",
    ):
        paired_difference(a, np.ones(4, bool))
    with pytest.raises(ParameterError, match=r"correct_a=.*dtype int64.*boolean"):
        paired_difference(np.ones(5, int), a)
    with pytest.raises(ParameterError, match=r"correct_b=.*boolean"):
        mcnemar_exact(a, [1.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ParameterError, match=r"correct_a=.*shape \(0,\)"):
        paired_difference(np.ones(0, bool), np.ones(0, bool))
    with pytest.raises(ParameterError, match=r"correct=.*shape \(2, 2\)"):
        accuracy_interval(np.ones((2, 2), bool))
    for conf in (0, 1, 1.5, -0.1, 95, True):
        with pytest.raises(ParameterError, match=rf"confidence={conf!r}.*\(0\.0, 1\.0\)"):
            paired_difference(a, a, confidence=conf)
    with pytest.raises(ParameterError, match="method='wald'.*'newcombe', 'bootstrap'"):
        paired_difference(a, a, method="wald")
    with pytest.raises(ParameterError, match=r"n_boot=10\b.*>= 100"):
        paired_difference(a, a, method="bootstrap", n_boot=10)
    with pytest.raises(ParameterError, match=r"successes=11.*\[0, 10\]"):
        wilson_interval(11, 10)
    with pytest.raises(ParameterError, match=r"b10=3.*\[0, 2\]"):
        bootstrap_interval(3, 3, 5)


def test_paired_table_bad_inputs():
    a = np.ones(5, bool)
    with pytest.raises(ParameterError, match="baseline='x'.*'m', 'n'"):
        paired_table({"m": a, "n": a}, "x")
    with pytest.raises(ParameterError, match=r"predictions\['n'\]=.*baseline's length \(5\)"):
        paired_table({"m": a, "n": np.ones(6, bool)}, "m")
    with pytest.raises(ParameterError, match=r"predictions\['n'\]=.*boolean"):
        paired_table({"m": a, "n": np.ones(5)}, "m")
    with pytest.raises(ParameterError, match="predictions=.*non-empty mapping"):
        paired_table({}, "m")
    with pytest.raises(ParameterError, match="confidence=2"):
        paired_table({"m": a}, "m", confidence=2)


def test_seeds_paired_difference_by_hand():
    a = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], dtype=bool)
    b = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    r = seeds_paired_difference(a, b)
    # per image: (0+0)/2, (0+1)/2, (1+1)/2, (0+0)/2 -> mean 0.375; seeds: +25 and +50 points
    assert r["difference"] == pytest.approx(37.5)
    assert r["seed_std"] == pytest.approx(np.std([25.0, 50.0], ddof=1))
    assert (r["n"], r["seeds"]) == (4, 2)
    assert 0.0 <= r["low"] <= 37.5 <= r["high"] <= 100.0
    # over the seeds: mean 37.5, sd 17.68, t(1) = 12.706 -> 37.5 +- 12.706 * 17.68 / sqrt(2)
    half = 12.7062 * np.std([25.0, 50.0], ddof=1) / np.sqrt(2)
    assert r["seed_low"] == pytest.approx(37.5 - half, rel=1e-4)
    assert r["seed_high"] == pytest.approx(37.5 + half, rel=1e-4)
    assert r["seed_verdict"] == "within noise"  # two seeds this far apart settle little


def test_seeds_paired_difference_constant_difference_has_no_spread():
    a = np.zeros((3, 50), dtype=bool)
    r = seeds_paired_difference(a, ~a)
    assert r["low"] == r["high"] == r["difference"] == pytest.approx(100.0)
    assert r["verdict"] == "better" and r["seed_std"] == 0.0
    assert r["seed_low"] == r["seed_high"] == 100.0 and r["seed_verdict"] == "better"


def test_seeds_paired_difference_one_seed_agrees_with_newcombe():
    rng = np.random.default_rng(3)
    a = rng.random(10000) < 0.95
    b = np.where(rng.random(10000) < 0.04, ~a, a)
    r = seeds_paired_difference(a, b)
    n = paired_difference(a, b)
    assert r["difference"] == pytest.approx(n["difference"])
    assert np.isnan(r["seed_std"]) and r["seeds"] == 1
    assert np.isnan(r["seed_low"]) and r["seed_verdict"] == "one seed"
    # two valid 95% intervals of the same difference; each end within a tenth of the half-width
    half = (n["high"] - n["low"]) / 2
    assert abs(r["low"] - n["low"]) < 0.1 * half and abs(r["high"] - n["high"]) < 0.1 * half


def test_seeds_paired_difference_averaging_seeds_narrows_the_interval():
    rng = np.random.default_rng(4)
    a = rng.random((4, 5000)) < 0.9
    b = rng.random((4, 5000)) < 0.9
    one = seeds_paired_difference(a[0], b[0])
    four = seeds_paired_difference(a, b)
    assert four["high"] - four["low"] < 0.7 * (one["high"] - one["low"])  # independent seeds: ~1/2


def test_seeds_paired_difference_rejects_bad_input():
    with pytest.raises(ParameterError, match="correct_b"):
        seeds_paired_difference(np.zeros((2, 5), bool), np.zeros((3, 5), bool))
    with pytest.raises(ParameterError, match="correct_a"):
        seeds_paired_difference(np.zeros((2, 5)), np.zeros((2, 5), bool))


def test_paired_difference_says_its_verdict():
    a = np.array([False] * 60 + [True] * 940)
    b = np.array([True] * 60 + [True] * 940)
    assert paired_difference(a, b)["verdict"] == "better"
    assert paired_difference(b, a)["verdict"] == "worse"
    assert paired_difference(a, a.copy())["verdict"] == "within noise"
