"""The experiment statistics (actors/experiments/stats.py) against statsmodels and scipy.

Each statistic is written out from its formula in stats.py; here it must agree with
the reference implementations to 1e-9 on fixed data. The delta-method lift and the
always-valid intervals, which have no reference implementation there, are checked
by simulation (vectorised, fixed seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from actors.experiments import stats

TOL = 1e-9
RNG_SEED = 20261201


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


@pytest.mark.parametrize(
    ("observed", "weights"),
    [
        ({"a": 5120, "b": 4880}, {"a": 1.0, "b": 1.0}),
        ({"a": 300, "b": 640, "c": 1010}, {"a": 1.0, "b": 2.0, "c": 3.0}),
        ({"a": 600, "b": 400}, {"a": 0.5, "b": 0.5}),
    ],
)
def test_sample_ratio_matches_scipy_chisquare(observed, weights) -> None:
    srm = stats.sample_ratio(observed, weights)
    counts = np.array(list(observed.values()), dtype=float)
    shares = np.array(list(weights.values()))
    expected = counts.sum() * shares / shares.sum()
    reference = sps.chisquare(counts, expected)
    assert srm.chi2 == pytest.approx(reference.statistic, abs=TOL)
    assert srm.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert srm.mismatch is bool(reference.pvalue < 0.001)
    assert srm.expected == pytest.approx(dict(zip(observed, expected)))


def test_sample_ratio_flags_units_in_a_variant_meant_to_get_none() -> None:
    srm = stats.sample_ratio({"a": 500, "b": 500, "c": 3}, {"a": 1.0, "b": 1.0, "c": 0.0})
    assert srm.mismatch


def test_sample_ratio_without_units_is_sound() -> None:
    srm = stats.sample_ratio({}, {"a": 1.0, "b": 1.0})
    assert (srm.p_value, srm.mismatch) == (1.0, False)


@pytest.mark.parametrize(("successes", "n"), [(0, 20), (3, 17), (450, 1000), (999, 1000), (7, 7)])
def test_wilson_interval_matches_statsmodels(successes: int, n: int) -> None:
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    interval = stats.wilson_interval(successes, n)
    assert interval.low == pytest.approx(low, abs=TOL)
    assert interval.high == pytest.approx(high, abs=TOL)


@pytest.mark.parametrize(("a", "b"), [((700, 1000), (800, 1000)), ((45, 120), (30, 95)),
                                      ((9, 10), (10, 12))])
def test_two_proportion_z_matches_statsmodels_pooled(a, b) -> None:
    z, p = proportions_ztest([b[0], a[0]], [b[1], a[1]])
    result = stats.two_proportion_z(a[0], a[1], b[0], b[1])
    assert result.statistic == pytest.approx(z, abs=TOL)
    assert result.p_value == pytest.approx(p, abs=TOL)


def test_two_proportion_z_without_variance_finds_nothing() -> None:
    assert stats.two_proportion_z(50, 50, 80, 80).p_value == 1.0


def test_welch_t_matches_statsmodels_unequal_variances(rng) -> None:
    a = rng.lognormal(1.0, 0.8, 230)
    b = rng.lognormal(1.2, 0.5, 170)
    t, p, df = ttest_ind(b, a, usevar="unequal")
    result = stats.welch_t(a, b)
    assert result.statistic == pytest.approx(t, abs=TOL)
    assert result.p_value == pytest.approx(p, abs=TOL)
    assert result.df == pytest.approx(df, abs=TOL)
    # The difference's interval, as statsmodels' CompareMeans gives it.
    low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(usevar="unequal")
    se = math.hypot(stats.mean_estimate(a).se, stats.mean_estimate(b).se)
    interval = stats.t_interval(float(b.mean() - a.mean()), se, result.df)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=TOL)


def test_t_interval_of_one_mean_matches_statsmodels(rng) -> None:
    values = rng.normal(3.0, 2.0, 41)
    estimate = stats.mean_estimate(values)
    low, high = DescrStatsW(values).tconfint_mean()
    interval = stats.t_interval(estimate.mean, estimate.se, estimate.n - 1)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=TOL)


def test_welch_t_of_fixed_prices_is_exact() -> None:
    result = stats.welch_t(np.full(10, 1.0), np.full(12, 0.56))
    assert (result.statistic, result.p_value) == (-math.inf, 0.0)
    assert stats.welch_t(np.full(10, 1.0), np.full(12, 1.0)).p_value == 1.0


def test_capping_is_the_percentile_of_the_values(rng) -> None:
    values = np.concatenate([rng.exponential(10.0, 990), np.full(10, 10_000.0)])
    cap = stats.cap_at(values)
    assert cap == pytest.approx(np.percentile(values, 99), abs=TOL)
    assert np.minimum(values, cap).max() < 10_000


def test_mann_whitney_matches_scipy_on_tied_ratings(rng) -> None:
    x = rng.integers(1, 6, 140).astype(float)
    y = np.clip(rng.integers(1, 6, 95) + rng.integers(0, 2, 95), 1, 5).astype(float)
    reference = sps.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
    result = stats.mann_whitney_u(x, y)
    assert result.statistic == pytest.approx(reference.statistic, abs=TOL)
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)


def test_holm_matches_statsmodels() -> None:
    p_values = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04, 0.9]
    _, adjusted, _, _ = multipletests(p_values, alpha=0.05, method="holm")
    assert stats.holm(p_values) == pytest.approx(list(adjusted), abs=TOL)


def test_ratio_estimate_matches_a_cluster_robust_mean(rng) -> None:
    """The delta-method variance of sum(x) / sum(n) over users equals the
    cluster-robust (CR1) variance of the per-job mean with users as clusters."""
    jobs = rng.integers(1, 15, 80)
    users = np.repeat(np.arange(80), jobs)
    propensity = rng.beta(2, 2, 80)
    y = (rng.random(len(users)) < propensity[users]).astype(float)
    fit = sm.OLS(y, np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": users})
    estimate = stats.ratio_estimate(np.bincount(users, y), np.bincount(users).astype(float))
    assert estimate.mean == pytest.approx(y.mean(), abs=TOL)
    assert estimate.se == pytest.approx(fit.bse[0], abs=TOL)
    assert estimate.n == 80


def test_ratio_estimate_with_one_job_per_unit_is_the_plain_mean(rng) -> None:
    values = rng.normal(5.0, 1.5, 60)
    ratio = stats.ratio_estimate(values, np.ones(60))
    plain = stats.mean_estimate(values)
    assert (ratio.mean, ratio.se) == pytest.approx((plain.mean, plain.se), abs=TOL)


def test_welch_from_per_user_estimates_matches_statsmodels_with_one_job_each(rng) -> None:
    """With one job per user the per-user test is Welch's test on the jobs."""
    a, b = rng.normal(1.0, 1.0, 300), rng.normal(1.1, 2.0, 250)
    t, p, df = ttest_ind(b, a, usevar="unequal")
    result = stats.welch(stats.ratio_estimate(a, np.ones(300)), stats.ratio_estimate(b, np.ones(250)))
    assert (result.statistic, result.p_value, result.df) == pytest.approx((t, p, df), abs=TOL)


def test_relative_lift_delta_method_matches_simulation(rng) -> None:
    """The delta-method standard error of b/a - 1 is the spread of the lift over
    many replications (within 5 %), and its interval covers the truth ~95 %."""
    reps, n = 4000, 400
    a = rng.exponential(2.0, (reps, n))
    b = rng.exponential(2.5, (reps, n))
    lifts = b.mean(axis=1) / a.mean(axis=1) - 1
    estimates = [
        stats.relative_lift(stats.mean_estimate(a[i]), stats.mean_estimate(b[i]))
        for i in range(reps)
    ]
    assert [lift for lift, _ in estimates] == pytest.approx(list(lifts), abs=TOL)
    se_all = np.array([se for _, se in estimates])
    assert np.median(se_all) == pytest.approx(lifts.std(), rel=0.05)
    covered = np.abs(lifts - 0.25) <= 1.959963984540054 * se_all
    assert 0.93 < covered.mean() < 0.97
    assert stats.relative_lift(stats.Estimate(0.0, 0.1, 10), stats.Estimate(1.0, 0.1, 10)) is None


def test_always_valid_p_and_interval_agree() -> None:
    se = 0.02
    tau2 = stats.mixture_variance(se, 400, 100)
    half = stats.sequential_halfwidth(se, tau2)
    assert stats.always_valid_p(half * 0.999, se, tau2) > 0.05
    assert stats.always_valid_p(half * 1.001, se, tau2) < 0.05
    # Wider than the fixed-horizon interval, which is only valid at one look.
    assert half > stats.normal_interval(0.0, se).high


def test_confidence_sequence_keeps_alpha_under_continuous_peeking(rng) -> None:
    """Under no effect, watching after every unit for 3,000 units: the always-valid
    interval ever excludes zero in at most alpha of the runs, while the fixed 95 %
    interval, peeked at the same way, does so in far more."""
    paths, steps = 400, 3000
    n = np.arange(1, steps + 1)
    means = np.cumsum(rng.normal(0.0, 1.0, (paths, steps)), axis=1) / n
    se = 1 / np.sqrt(n)
    half = stats.sequential_halfwidth(se, stats.mixture_variance(se, n, 100))
    always_valid = (np.abs(means[:, 10:]) > half[10:]).any(axis=1).mean()
    peeking = (np.abs(means[:, 10:]) > 1.959963984540054 * se[10:]).any(axis=1).mean()
    bound = sps.binom.ppf(0.999, paths, stats.ALPHA) / paths
    print(f"ever excluded zero: always valid {always_valid:.3f}, peeking {peeking:.3f}")
    assert always_valid <= bound
    assert peeking > 3 * stats.ALPHA
