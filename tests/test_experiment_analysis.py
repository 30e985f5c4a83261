"""``analyze``: an experiment's results from simulated per-job rows (fixed seeds).

A planted effect is found with the confidence computed; an A/A experiment declares
false winners at a rate consistent with alpha; a sample ratio mismatch blocks the
winner; users with many correlated jobs widen the intervals; the recommendation
states the trade-off in numbers; segments are capped with their caveat.
"""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest

from actors.experiments.analysis import analyze, results_to_api
from actors.experiments.model import (
    Allocation,
    Experiment,
    Goal,
    Metric,
    MetricName,
    Observation,
    Role,
    Variant,
)

SUCCESS = Metric(MetricName.SUCCESS_RATE)
#: 2026-12-07, a Monday, 00:00 UTC.
MONDAY = 1796601600.0


def experiment(*ids: str, metrics=(SUCCESS,), **settings) -> Experiment:
    variants = [Variant(v, "flux-schnell", name=v.upper()) for v in ids or ("a", "b")]
    return Experiment(id="exp_test", name="test", variants=variants, metrics=list(metrics),
                      **settings)


def jobs(
    rng: np.random.Generator,
    rates: dict[str, float],
    per_arm: int,
    *,
    cost: dict[str, float] | None = None,
    unit_prefix: str = "u",
) -> list[Observation]:
    """``per_arm`` finished jobs per variant, one unit each, succeeding at ``rates``."""
    out = []
    for variant, rate in rates.items():
        succeeded = rng.random(per_arm) < rate
        run_time = rng.lognormal(2.0, 0.5, per_arm)
        created = MONDAY + rng.random(per_arm) * 7 * 86400
        for i in range(per_arm):
            out.append(Observation(
                variant_id=variant,
                unit=f"{unit_prefix}{variant}{i}",
                succeeded=bool(succeeded[i]),
                run_time=float(run_time[i]),
                queue_wait=1.0,
                cost=(cost or {}).get(variant, 1.0),
                created_at=float(created[i]),
            ))
    return out


def test_a_planted_effect_declares_b_with_the_confidence_computed() -> None:
    """B succeeds 10 points more often than A over 2,000 jobs."""
    observations = jobs(np.random.default_rng(15), {"a": 0.70, "b": 0.80}, 1000)
    results = analyze(experiment("a", "b"), observations)

    a = sum(o.succeeded for o in observations if o.variant_id == "a")
    b = sum(o.succeeded for o in observations if o.variant_id == "b")
    _, p = proportions_ztest([b, a], [1000, 1000])
    assert results.winner is not None
    assert results.winner.variant_id == "b"
    assert results.winner.metric is MetricName.SUCCESS_RATE
    assert results.winner.confidence == pytest.approx(1 - p, abs=1e-12)
    assert results.recommendation == results.winner.recommendation
    assert results.recommendation.startswith("Choose Variant B (confidence ")
    difference = (b - a) / 1000
    assert f"{difference * 100:.1f} points higher success rate, significant" in (
        results.recommendation)
    comparison = next(c for c in results.comparisons if c.metric is MetricName.SUCCESS_RATE)
    assert comparison.better and comparison.significant and comparison.primary
    assert comparison.lift_interval.low < comparison.lift < comparison.lift_interval.high
    assert not results.srm.mismatch


def test_an_aa_experiment_declares_false_winners_at_about_alpha() -> None:
    """200 A/A experiments (two identical arms, success rate and run time as primary
    metrics, Holm across them): the share with any winner is within the 99.9 %
    binomial range of alpha."""
    seeds, per_arm = 200, 300
    spec = experiment("a", "b", metrics=(SUCCESS, Metric(MetricName.RUN_TIME, goal=Goal.MINIMIZE)))
    winners = 0
    for seed in range(seeds):
        observations = jobs(np.random.default_rng(seed), {"a": 0.6, "b": 0.6}, per_arm)
        winners += analyze(spec, observations, top_segments=0).winner is not None
    rate = winners / seeds
    low, high = sps.binom.ppf([0.0005, 0.9995], seeds, 0.05) / seeds
    print(f"A/A false-winner rate: {winners}/{seeds} = {rate:.3f} (alpha 0.05, "
          f"99.9 % binomial range {low:.3f}-{high:.3f})")
    assert low <= rate <= high


def test_a_sample_ratio_mismatch_is_flagged_and_blocks_the_winner() -> None:
    """600 users in A and 400 in B at 50/50 weights, with B far better."""
    rng = np.random.default_rng(7)
    observations = jobs(rng, {"a": 0.5}, 600) + jobs(rng, {"b": 0.9}, 400)
    results = analyze(experiment("a", "b"), observations)
    assert results.srm.mismatch
    assert results.srm.observed == {"a": 600, "b": 400}
    assert results.srm.expected == {"a": 500.0, "b": 500.0}
    assert results.winner is None
    assert results.recommendation.startswith("No winner: sample ratio mismatch (600 / 400")
    assert any("Sample ratio mismatch" in note for note in results.notes)
    # The comparison itself is still reported (and would be significant).
    assert next(c for c in results.comparisons if c.primary).significant


def test_the_sample_ratio_counts_users_not_jobs() -> None:
    """Equal users per arm, but A's users send three jobs each: no mismatch."""
    rng = np.random.default_rng(8)
    a = jobs(rng, {"a": 0.5}, 300)
    observations = [o for o in a for _ in range(3)] + jobs(rng, {"b": 0.5}, 300)
    assert not analyze(experiment("a", "b"), observations).srm.mismatch


def clustered(rng: np.random.Generator, users: int, per_user: int) -> list[Observation]:
    """Users whose jobs share a propensity to succeed (Beta(2, 2) across users)."""
    out = []
    for variant in ("a", "b"):
        propensity = rng.beta(2, 2, users)
        succeeded = rng.random((users, per_user)) < propensity[:, None]
        out += [
            Observation(variant, f"{variant}{u}", bool(succeeded[u, j]), cost=1.0)
            for u in range(users)
            for j in range(per_user)
        ]
    return out


def test_per_user_aggregation_widens_intervals_for_correlated_jobs() -> None:
    observations = clustered(np.random.default_rng(3), users=100, per_user=20)
    per_user = analyze(experiment("a", "b"), observations)
    # The same jobs with every job its own unit: the per-job (too narrow) view.
    per_job = analyze(experiment("a", "b"), [
        Observation(o.variant_id, f"job{i}", o.succeeded, cost=o.cost)
        for i, o in enumerate(observations)
    ])
    assert per_user.per_unit and not per_job.per_unit

    def width(results, variant="a"):
        interval = results.arms[variant][MetricName.SUCCESS_RATE].interval
        return interval.high - interval.low

    # Intra-user correlation 1/5 over 20 jobs: a design effect of 1 + 19/5 = 4.8,
    # so intervals about sqrt(4.8) = 2.2 times as wide.
    assert width(per_user) > 1.8 * width(per_job)
    arm = per_user.arms["a"][MetricName.SUCCESS_RATE]
    assert (arm.n, arm.units) == (2000, 100)
    comparison = next(c for c in per_user.comparisons if c.primary)
    assert comparison.test == "delta-method welch t (per user)"
    naive = next(c for c in per_job.comparisons if c.primary)
    assert comparison.difference == pytest.approx(naive.difference)
    assert (comparison.difference_interval.high - comparison.difference_interval.low) > 1.8 * (
        naive.difference_interval.high - naive.difference_interval.low)
    assert any("delta-method" in note for note in per_user.notes)


def fixed(variant: str, n: int, successes: int, cost: float) -> list[Observation]:
    return [Observation(variant, f"{variant}{i}", i < successes, cost=cost, run_time=10.0)
            for i in range(n)]


def test_the_recommendation_states_the_trade_off_in_numbers() -> None:
    observations = fixed("a", 1000, 900, 1.0) + fixed("b", 1000, 893, 0.56)
    results = analyze(experiment("a", "b"), observations)
    assert results.winner is None
    assert results.recommendation == (
        "No winner yet: no significant difference. "
        "Variant B costs 44 % less with 0.7 points lower success rate, not significant."
    )
    cost = results.arms["b"][MetricName.COST]
    assert cost.total == pytest.approx(560.0)
    assert cost.per_success == pytest.approx(560.0 / 893)
    assert results.arms["a"][MetricName.COST].per_success == pytest.approx(1000 / 900)


def test_no_winner_before_the_minimum_sample() -> None:
    observations = fixed("a", 40, 10, 1.0) + fixed("b", 40, 38, 1.0)
    results = analyze(experiment("a", "b", min_sample=50), observations)
    assert results.winner is None
    assert results.recommendation.startswith(
        "No winner yet: sample too small (Variant A has 40 finished jobs of the 50 needed")
    assert "Variant B has 70.0 points higher success rate, significant" in (
        results.recommendation)


def test_no_finished_jobs() -> None:
    results = analyze(experiment("a", "b"), [Observation("a", "u1", None)])
    assert results.recommendation == "No winner yet: no finished jobs."
    assert results.arms["b"][MetricName.SUCCESS_RATE].n == 0


def test_holm_runs_across_variants_and_primary_metrics() -> None:
    rng = np.random.default_rng(11)
    metrics = (SUCCESS, Metric(MetricName.RUN_TIME, goal=Goal.MINIMIZE),
               Metric(MetricName.COST, role=Role.SECONDARY, goal=Goal.MINIMIZE))
    observations = jobs(rng, {"a": 0.6, "b": 0.64, "c": 0.67}, 500)
    results = analyze(experiment("a", "b", "c", metrics=metrics), observations)
    family = [c for c in results.comparisons if c.primary]
    assert {(c.variant_id, c.metric) for c in family} == {
        (v, m) for v in "bc" for m in (MetricName.SUCCESS_RATE, MetricName.RUN_TIME)}
    _, adjusted, _, _ = multipletests([c.p_value for c in family], method="holm")
    assert [c.adjusted_p for c in family] == pytest.approx(list(adjusted), abs=1e-12)
    secondary = [c for c in results.comparisons if not c.primary]
    assert all(c.adjusted_p is None for c in secondary)
    assert len(results.comparisons) == 2 * len(MetricName)


def test_the_control_is_kept_when_every_variant_is_worse() -> None:
    observations = fixed("a", 500, 450, 1.0) + fixed("b", 500, 300, 1.0)
    results = analyze(experiment("a", "b"), observations)
    assert results.winner.variant_id == "a"
    assert results.recommendation.startswith("Keep Variant A (confidence > 99.9 %): ")
    assert "30.0 points lower success rate, significant" in results.recommendation


def test_ratings_are_tested_by_welch_with_mann_whitney_as_a_check() -> None:
    rng = np.random.default_rng(5)
    observations = []
    for variant, mean in (("a", 3.0), ("b", 3.4)):
        ratings = np.clip(np.round(rng.normal(mean, 1.0, 400)), 1, 5).astype(int)
        observations += [Observation(variant, f"{variant}{i}", True, rating=int(r))
                         for i, r in enumerate(ratings)]
    results = analyze(experiment("a", "b"), observations)
    rating = next(c for c in results.comparisons if c.metric is MetricName.RATING)
    assert rating.test == "welch t" and rating.check_test == "mann-whitney u"
    assert rating.p_value < 0.001 and rating.check_p_value < 0.001
    assert results.arms["b"][MetricName.RATING].n == 400
    assert results.arms["b"][MetricName.RATING_RATE].mean == 1.0


def test_long_tails_are_capped_and_medians_reported() -> None:
    observations = [Observation("a", f"a{i}", True, run_time=10.0 + i % 10) for i in range(200)]
    observations += [Observation("b", f"b{i}", True, run_time=10.0 + i % 10) for i in range(199)]
    observations.append(Observation("b", "stuck", True, run_time=100_000.0))
    results = analyze(experiment("a", "b"), observations)
    arm = results.arms["b"][MetricName.RUN_TIME]
    assert arm.capped_at is not None and arm.capped_at < 100
    assert arm.mean < 20 and arm.median == pytest.approx(14.5)
    assert arm.total > 100_000
    comparison = next(c for c in results.comparisons if c.metric is MetricName.RUN_TIME)
    assert not comparison.significant


def test_segments_are_capped_with_the_caveat() -> None:
    rng = np.random.default_rng(21)
    observations = jobs(rng, {"a": 0.6, "b": 0.6}, 600)
    # Twelve attribute values of decreasing size.
    sizes = np.repeat(np.arange(12), np.arange(12, 0, -1) * 15)[: len(observations)]
    observations = [
        Observation(o.variant_id, o.unit, o.succeeded, cost=o.cost, created_at=o.created_at,
                    segment=f"s{sizes[i % len(sizes)]:02d}")
        for i, o in enumerate(observations)
    ]
    results = analyze(experiment("a", "b", segment_attribute="tier"), observations,
                      top_segments=5)
    assert len(results.segments) == 5
    # 12 attribute values + weekday/weekend + 4 hour bands.
    note = next(note for note in results.notes if note.startswith("Segments:"))
    assert "the 5 largest of 18" in note and "multiple comparisons" in note
    assert "day=weekday" in results.segments
    for key, arms in results.segments.items():
        assert set(arms) == {"a", "b"}
        assert arms["a"][MetricName.SUCCESS_RATE].n > 0, key
    sizes_shown = [sum(arm[MetricName.SUCCESS_RATE].n for arm in arms.values())
                   for arms in results.segments.values()]
    assert sizes_shown == sorted(sizes_shown, reverse=True)


def test_segments_by_weekday_and_hour_band_in_utc() -> None:
    saturday_night = MONDAY + 5 * 86400 + 23 * 3600
    monday_morning = MONDAY + 7 * 3600
    observations = [Observation(v, f"{v}{i}", True, created_at=t)
                    for i, (v, t) in enumerate([("a", saturday_night), ("b", monday_morning)])]
    segments = analyze(experiment("a", "b"), observations).segments
    assert set(segments) == {"day=weekday", "day=weekend", "hour=06-12 UTC", "hour=18-24 UTC"}
    assert segments["day=weekend"]["a"][MetricName.SUCCESS_RATE].n == 1
    assert segments["day=weekend"]["b"][MetricName.SUCCESS_RATE].n == 0


def test_a_bandit_wins_on_its_chance_to_be_best() -> None:
    rng = np.random.default_rng(4)
    observations = jobs(rng, {"a": 0.5, "b": 0.55}, 300)
    spec = experiment("a", "b", allocation=Allocation.BANDIT)
    results = analyze(spec, observations, p_best={"a": 0.02, "b": 0.98},
                      weights={"a": 0.1, "b": 0.9})
    assert results.srm is None
    assert results.winner.variant_id == "b" and results.winner.confidence == 0.98
    assert results.recommendation.startswith("Choose Variant B: best with probability 98.0 %")
    assert results.weights == {"a": 0.1, "b": 0.9}
    waiting = analyze(spec, observations, p_best={"a": 0.2, "b": 0.8})
    assert waiting.winner is None
    assert "Variant B is best with probability 80.0 %, 95.0 % needed" in waiting.recommendation


def test_sequential_results_are_always_valid_and_wider() -> None:
    observations = jobs(np.random.default_rng(15), {"a": 0.70, "b": 0.80}, 1000)
    fixed_horizon = analyze(experiment("a", "b"), observations)
    sequential = analyze(experiment("a", "b", sequential=True), observations)
    c_fixed = next(c for c in fixed_horizon.comparisons if c.primary)
    c_seq = next(c for c in sequential.comparisons if c.primary)
    assert c_seq.test.endswith("(always valid)") and sequential.sequential
    assert c_seq.p_value > c_fixed.p_value
    width = c_seq.difference_interval.high - c_seq.difference_interval.low
    assert width > c_fixed.difference_interval.high - c_fixed.difference_interval.low
    assert sequential.winner.variant_id == "b"


def test_results_to_api_is_json_with_camel_case_keys() -> None:
    observations = fixed("a", 200, 150, 1.0) + fixed("b", 200, 170, 0.5)
    body = results_to_api(analyze(experiment("a", "b", segment_attribute="tier"), observations))
    text = json.dumps(body, allow_nan=False)
    assert json.loads(text) == body
    assert body["experimentId"] == "exp_test"
    assert body["sampleRatio"]["mismatch"] is False
    assert body["arms"]["b"]["cost"]["perSuccess"] == pytest.approx(100 / 170)
    comparison = body["comparisons"][0]
    assert {"variantId", "controlId", "liftInterval", "adjustedP", "differenceInterval"} <= set(
        comparison)
    assert body["recommendation"]
    # Fixed prices: the cost difference is exact, its statistic infinite, and JSON-safe.
    cost = next(c for c in body["comparisons"] if c["metric"] == "cost")
    assert cost["pValue"] == 0.0 and cost["lift"] == pytest.approx(-0.5)


def test_the_sample_ratio_is_checked_on_the_current_phase() -> None:
    """Phase 0 ran at 50/50, phase 1 at 80/20: all units together look mismatched
    against the current weights, the current phase's units do not."""
    rng = np.random.default_rng(9)
    spec = experiment("a", "b", phase=1)
    spec.variants = [attrs.evolve(spec.variants[0], weight=0.8),
                     attrs.evolve(spec.variants[1], weight=0.2)]
    old = jobs(rng, {"a": 0.5, "b": 0.5}, 500, unit_prefix="old")
    new = jobs(rng, {"a": 0.5}, 800) + jobs(rng, {"b": 0.5}, 200)
    observations = [attrs.evolve(o, phase=0) for o in old] + [
        attrs.evolve(o, phase=1) for o in new]
    results = analyze(spec, observations)
    assert results.srm.observed == {"a": 800, "b": 200} and not results.srm.mismatch
    assert any("phases 0 to 1" in note for note in results.notes)
    unphased = analyze(spec, [attrs.evolve(o, phase=None) for o in observations])
    assert unphased.srm.mismatch


def test_no_observations_at_all() -> None:
    results = analyze(experiment("a", "b"), [])
    assert results.recommendation == "No winner yet: no finished jobs."
    assert results.srm.p_value == 1.0 and results.segments is None
    assert json.dumps(results_to_api(results), allow_nan=False)


def test_the_recommendation_with_too_few_jobs_to_compare() -> None:
    results = analyze(experiment("a", "b"), fixed("a", 2, 1, 1.0) + fixed("b", 1, 1, 2.0))
    assert results.recommendation == (
        "No winner yet: sample too small (Variant B has 1 finished job of the 100 needed "
        "per arm). Variant B has no success rate to compare yet."
    )


def test_the_recommendation_names_every_primary_metric() -> None:
    metrics = (SUCCESS, Metric(MetricName.RATING))
    observations = [Observation(v, f"{v}{i}", i % 10 < rate, cost=1.0, rating=rating)
                    for v, rate, rating in (("a", 8, 4), ("b", 9, 3)) for i in range(200)]
    results = analyze(experiment("a", "b", metrics=metrics), observations)
    assert results.recommendation == (
        "No winner yet: no variant is significantly better on a primary metric without "
        "being significantly worse on another. Variant B has 10.0 points higher success "
        "rate, significant (confidence 99.5 %); a 1.00 lower rating, significant "
        "(confidence > 99.9 %)."
    )


def test_a_disagreeing_rank_check_is_noted() -> None:
    """The same mean rating (3), but two thirds of B's ratings are above all of A's:
    Welch sees nothing, the ranks see a difference."""
    a = [3] * 300
    b = [4] * 200 + [1] * 100
    observations = [Observation("a", f"a{i}", True, rating=r) for i, r in enumerate(a)]
    observations += [Observation("b", f"b{i}", True, rating=r) for i, r in enumerate(b)]
    results = analyze(experiment("a", "b"), observations)
    rating = next(c for c in results.comparisons if c.metric is MetricName.RATING)
    assert (rating.p_value < 0.05) != (rating.check_p_value < 0.05)
    assert any("Mann-Whitney check" in note for note in results.notes)


def test_of_several_better_variants_the_most_certain_wins() -> None:
    observations = (fixed("a", 500, 300, 1.0) + fixed("b", 500, 400, 1.0)
                    + fixed("c", 500, 360, 1.0))
    results = analyze(experiment("a", "b", "c"), observations)
    assert results.winner.variant_id == "b"
    assert results.recommendation.endswith(
        "Variant C also beats Variant A; the variants were not tested against each other, "
        "only against the control.")


def test_per_user_aggregation_keeps_alpha_where_per_job_tests_do_not() -> None:
    """A/A with 50 users per arm sending 10 correlated jobs each, over 100 seeds: the
    per-user analysis declares false winners at about alpha; the same jobs analysed
    as independent declare them several times as often."""
    seeds = 100
    spec = experiment("a", "b")
    per_user = per_job = 0
    for seed in range(seeds):
        observations = clustered(np.random.default_rng(1000 + seed), users=50, per_user=10)
        per_user += analyze(spec, observations, top_segments=0).winner is not None
        as_jobs = [attrs.evolve(o, unit=f"job{i}") for i, o in enumerate(observations)]
        per_job += analyze(spec, as_jobs, top_segments=0).winner is not None
    high = sps.binom.ppf(0.9995, seeds, 0.05) / seeds
    print(f"clustered A/A false-winner rate: per user {per_user / seeds:.2f}, "
          f"per job {per_job / seeds:.2f}")
    assert per_user / seeds <= high
    assert per_job > 2 * per_user
