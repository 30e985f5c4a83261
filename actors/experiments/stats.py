"""The statistics of an experiment's results: tests, intervals and corrections.

Pure functions over numbers and numpy arrays, no I/O; ``analysis.py`` applies them
to the stored per-job rows. Every test is written out from its formula, with
``scipy.stats`` for the distributions, and checked against statsmodels' and
scipy's own implementations in the tests:

- ``sample_ratio``: Pearson's chi-squared test of the units per variant against
  the configured shares. A p-value below ``SRM_ALPHA`` means the assignment is
  broken (a bug, a crash that lost one arm's jobs, bots), and every other number
  is suspect: no winner may be declared.
- ``two_proportion_z`` (pooled variance) for success and rating rates, with
  ``wilson_interval`` per arm (the Wald interval is far too narrow near 0 and 1).
- ``welch_t`` for durations, cost and ratings: unequal variances, Welch-
  Satterthwaite degrees of freedom, on values capped at a percentile (``cap_at``)
  so one stuck job does not swamp the mean; medians are reported beside it.
- ``mann_whitney_u``: the rank test reported as a check beside Welch for ratings
  (1-5, heavily tied, far from normal).
- ``ratio_estimate``: the delta-method variance of ``sum(x) / sum(n)`` over units,
  for when the unit of assignment (the user) has several jobs: jobs of one user are
  correlated, and the per-job variance would make the intervals too narrow.
- ``relative_lift``: ``variant / control - 1`` with its delta-method standard error.
- ``holm``: Holm's step-down adjustment of a family of p-values.
- ``sequential_halfwidth`` / ``always_valid_p``: the normal-mixture confidence
  sequence (the mixture sequential probability ratio test of Robbins, as
  Optimizely's stats engine and Eppo's sequential mode use it), valid at every look,
  so results can be watched while the experiment runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from scipy import stats

from actors.experiments.model import Interval, SampleRatio

#: Two-sided significance level of every test and interval (95 % intervals).
ALPHA = 0.05
#: A sample-ratio-mismatch p-value below this flags the experiment (1 in 1,000:
#: with results looked at often, a laxer threshold would cry wolf).
SRM_ALPHA = 0.001
#: The percentile durations and costs are capped at (winsorised) before Welch's test.
CAP_PERCENTILE = 99.0


@attrs.frozen
class Estimate:
    """A mean and the standard error of that mean, from ``n`` independent units."""

    mean: float
    se: float
    n: int


@attrs.frozen
class TestResult:
    statistic: float
    p_value: float
    #: Degrees of freedom (Welch's t); None for normal-theory tests.
    df: float | None = None


# -- sample ratio ---------------------------------------------------------------------------


def sample_ratio(observed: Mapping[str, int], weights: Mapping[str, float]) -> SampleRatio:
    """Pearson's chi-squared test of ``observed`` units per variant against ``weights``.

    The weights are normalised; ``expected`` holds counts (total x share). With
    fewer than two variants or no units there is nothing to test: p = 1.
    """
    keys = list(weights)
    counts = np.array([observed.get(key, 0) for key in keys], dtype=float)
    shares = np.array([weights[key] for key in keys], dtype=float)
    total = counts.sum()
    expected = total * shares / shares.sum() if shares.sum() > 0 else np.zeros_like(shares)
    live = expected > 0
    if total == 0 or live.sum() < 2:
        chi2, p_value = 0.0, 1.0
    else:
        chi2 = float((((counts - expected) ** 2)[live] / expected[live]).sum())
        # A unit in a variant meant to get no traffic is a mismatch on its own.
        p_value = 0.0 if counts[~live].sum() > 0 else float(stats.chi2.sf(chi2, live.sum() - 1))
    return SampleRatio(
        observed={key: int(count) for key, count in zip(keys, counts)},
        expected={key: float(value) for key, value in zip(keys, expected)},
        chi2=chi2,
        p_value=p_value,
        mismatch=p_value < SRM_ALPHA,
    )


# -- proportions ----------------------------------------------------------------------------


def _z(alpha: float) -> float:
    return float(stats.norm.isf(alpha / 2))


def wilson_interval(successes: int, n: int, alpha: float = ALPHA) -> Interval:
    """Wilson's score interval for a proportion (stays inside [0, 1], honest at
    small n and near 0 or 1, where the Wald interval is not)."""
    p = successes / n
    z = _z(alpha)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(centre - half, centre + half)


def proportion_estimate(successes: int, n: int) -> Estimate:
    p = successes / n
    return Estimate(p, math.sqrt(p * (1 - p) / n), n)


def two_proportion_z(successes_a: int, n_a: int, successes_b: int, n_b: int) -> TestResult:
    """The pooled two-proportion z-test of b against a (statistic > 0: b higher).

    Under the null both arms share one rate, so its variance is estimated from the
    pooled proportion. When both arms are all successes (or all failures) there is
    no evidence of a difference: z = 0, p = 1.
    """
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return TestResult(0.0, 1.0)
    z = (p_b - p_a) / se
    return TestResult(z, float(2 * stats.norm.sf(abs(z))))


# -- means ----------------------------------------------------------------------------------


def cap_at(values: np.ndarray, percentile: float = CAP_PERCENTILE) -> float:
    """The level values are capped at: the ``percentile`` of the values given.

    ``analysis`` passes every arm's values together, so all arms share one cap (a
    cap per arm would treat the arms differently). Only the upper tail is capped:
    durations and costs are bounded below by zero, and the long tail is the stuck
    job or the retried one.
    """
    return float(np.percentile(values, percentile))


def mean_estimate(values: np.ndarray) -> Estimate:
    """The sample mean with its standard error (sample standard deviation, n - 1)."""
    n = len(values)
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(np.mean(values)), se, n)


def t_interval(centre: float, se: float, df: float, alpha: float = ALPHA) -> Interval:
    """Student's interval: one mean (df = n - 1), or a Welch difference (its df)."""
    half = float(stats.t.isf(alpha / 2, df)) * se
    return Interval(centre - half, centre + half)


def _without_variance(difference: float) -> TestResult:
    """A difference between samples that do not vary is exact: p = 0, or 1 if none."""
    return TestResult(math.copysign(math.inf, difference), 0.0) if difference else (
        TestResult(0.0, 1.0)
    )


def welch_t(a: np.ndarray, b: np.ndarray) -> TestResult:
    """Welch's t-test of mean(b) against mean(a): unequal variances, with the
    Welch-Satterthwaite degrees of freedom.

    When neither sample varies (a fixed price per job) the difference is exact:
    p = 0 if the means differ, 1 if not.
    """
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return _without_variance(float(np.mean(b) - np.mean(a)))
    return welch(mean_estimate(a), mean_estimate(b))


def welch(a: Estimate, b: Estimate) -> TestResult:
    """Welch's test from two estimates: t = (b - a) / sqrt(se_a² + se_b²), with
    Welch-Satterthwaite degrees of freedom from the units behind each (n - 1).

    On per-user ratio estimates it is the delta-method test with a small-sample
    correction: with few users per arm a normal reference would be too eager.
    """
    va, vb = a.se**2, b.se**2
    difference = b.mean - a.mean
    if va + vb == 0:
        return _without_variance(difference)
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return TestResult(t, float(2 * stats.t.sf(abs(t), df)), df)


def mann_whitney_u(x: np.ndarray, y: np.ndarray) -> TestResult:
    """The Mann-Whitney U test, two-sided: the statistic is U of ``x``; p from the
    normal approximation with the tie correction and a continuity correction (ratings
    are heavily tied, so the exact distribution does not apply)."""
    n1, n2 = len(x), len(y)
    ranks = stats.rankdata(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    n = n1 + n2
    _, ties = np.unique(ranks, return_counts=True)
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1))))
    if sigma == 0:
        return TestResult(u1, 1.0)
    u = max(u1, n1 * n2 - u1)
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    return TestResult(u1, float(min(1.0, 2 * stats.norm.sf(z))))


# -- ratio metrics (the unit is the user) ---------------------------------------------------------


def ratio_estimate(numerators: np.ndarray, denominators: np.ndarray) -> Estimate:
    """``sum(x) / sum(n)`` over units, with the delta-method standard error.

    Each unit (a user) contributes a sum ``x_i`` (of successes, seconds, cost) over
    its ``n_i`` jobs. With K units, means x̄ and n̄ and sample variances and
    covariance over units (K - 1), the first-order (delta-method) variance of
    R = x̄ / n̄ is::

        Var(R) = (s_x² - 2 R s_xn + R² s_n²) / (K n̄²)

    It treats the unit, not the job, as the independent draw: jobs of one user
    share that user's prompts and habits. With one job per unit it is the ordinary
    variance of the mean.
    """
    k = len(numerators)
    ratio = float(numerators.sum() / denominators.sum())
    if k < 2:
        return Estimate(ratio, math.nan, k)
    cov = np.cov(numerators, denominators, ddof=1)
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (
        k * float(np.mean(denominators)) ** 2
    )
    return Estimate(ratio, math.sqrt(max(float(variance), 0.0)), k)


# -- differences and lifts ----------------------------------------------------------------------


def normal_interval(centre: float, se: float, alpha: float = ALPHA) -> Interval:
    half = _z(alpha) * se
    return Interval(centre - half, centre + half)


def relative_lift(control: Estimate, variant: Estimate) -> tuple[float, float] | None:
    """``variant / control - 1`` and its delta-method standard error.

    For independent means with standard errors s_c and s_v::

        Var(v / c) = s_v² / c² + v² s_c² / c⁴

    None when the control's mean is zero (no relative change exists).
    """
    c, v = control.mean, variant.mean
    if c == 0:
        return None
    se = math.sqrt(variant.se**2 / c**2 + v**2 * control.se**2 / c**4)
    return v / c - 1, se


# -- many comparisons -------------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Sorted ascending, the i-th smallest (from 0) of m is multiplied by m - i, and
    the adjusted values are made non-decreasing and at most 1. Rejecting where the
    adjusted p < alpha keeps the family-wise error rate at alpha, with more power
    than Bonferroni.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


# -- always-valid (sequential) inference ------------------------------------------------------------


def mixture_variance(se: Any, n: Any, planned_n: float, alpha: float = ALPHA) -> Any:
    """The normal mixture's variance τ², tuned so the sequence is tightest at ``planned_n``.

    With σ² the per-unit variance (≈ se² n), Howard et al. (2021, "Time-uniform,
    nonparametric, nonasymptotic confidence sequences", section 3.5) give the
    near-optimal mixture for a target sample m as τ² = σ² L / m with
    L = 2 log(1/α) + log(1 + 2 log(1/α)). The width is flat around its optimum: at
    ten times the planned sample it is some 7 % wider than tuned there.
    """
    level = 2 * math.log(1 / alpha) + math.log(1 + 2 * math.log(1 / alpha))
    return se * se * n * level / planned_n


def sequential_halfwidth(se: Any, tau2: Any, alpha: float = ALPHA) -> Any:
    """The half-width of the always-valid interval around an estimate with standard
    error ``se``, from the normal-mixture SPRT.

    The mixture over effects θ ~ N(0, τ²) of the Gaussian likelihood ratios is::

        Λ = sqrt(se² / (se² + τ²)) exp(τ² z² / (2 (se² + τ²)))    (z = estimate / se)

    and since Λ is a nonnegative martingale under the null, P(Λ ever ≥ 1/α) ≤ α
    (Ville's inequality). Inverting Λ < 1/α at every θ gives the confidence sequence
    estimate ± se sqrt((1 + se²/τ²) (log(1 + τ²/se²) + 2 log(1/α))), valid at every
    look, however often the results are watched. Takes floats or numpy arrays.
    """
    if np.ndim(se) == 0 and se == 0:
        return 0.0
    ratio = tau2 / (se * se)
    return se * np.sqrt((1 + 1 / ratio) * (np.log1p(ratio) + 2 * math.log(1 / alpha)))


def sequential_interval(centre: float, se: float, n: float, planned_n: float,
                        alpha: float = ALPHA) -> Interval:
    """The always-valid interval around ``centre``, its mixture tuned for ``planned_n``
    with ``n`` units behind the estimate now (``mixture_variance``)."""
    half = float(sequential_halfwidth(se, mixture_variance(se, n, planned_n, alpha), alpha))
    return Interval(centre - half, centre + half)


def always_valid_p(estimate: float, se: float, tau2: float) -> float:
    """The always-valid p-value min(1, 1/Λ) of the normal-mixture SPRT (no effect
    against effects drawn from N(0, τ²)): p < alpha exactly when zero lies outside
    the ``sequential_halfwidth`` interval."""
    if se == 0:
        return 0.0 if estimate else 1.0
    v = se * se
    log_lr = 0.5 * math.log(v / (v + tau2)) + tau2 * (estimate / se) ** 2 / (2 * (v + tau2))
    return math.exp(-log_lr) if log_lr > 0 else 1.0
