"""Adaptive allocation: Thompson sampling on one decision metric, with a floor.

A bandit experiment moves new traffic toward the variant most likely to be best
while the experiment runs, instead of splitting it by fixed weights until the end.
Each re-weighting (on the experiment's cadence, by the experiment actor):

1. takes every active (not paused) arm's values of the decision metric
   (``BanditSettings.metric``) from the stored observations;
2. does nothing until every active arm has ``min_samples`` of them: early numbers
   are noise, and weights chased after noise starve an arm before it is measured
   (the weights stay as configured, no arm is paused, no winner);
3. draws each arm's posterior of the metric's mean ``draws`` times with the
   given numpy Generator (so a seeded one makes the decision reproducible):
   a rate (success rate, rating rate) from Beta(1 + successes, 1 + failures), a
   uniform prior; a mean (rating, cost, queue wait, run time) from the normal
   approximation N(sample mean, standard error²), which for the hundreds of jobs
   ``min_samples`` asks for is the Normal-Inverse-Gamma posterior under a flat
   prior to within the t-to-normal difference;
4. counts how often each arm is the best draw (the largest, or for a metric to
   minimise the smallest, per the experiment's goal for that metric): P(best);
5. pauses an arm whose P(best) was below ``pause_below`` at ``pause_after``
   consecutive re-weightings (the control, which every comparison needs, and the
   current leader are never paused; the streaks are carried from one decision to
   the next by the caller, and a lost streak only delays a pause);
6. sets the weights by probability matching, w = P(best), with a floor per arm:
   ``p = floor + (1 - K * floor) * w`` over the K arms still active, so every arm
   keeps being measured (a floor above 1/K is lowered to 1/K: equal weights);
7. names a winner when an arm's P(best) reaches ``win_at``.

The weights apply to units not yet assigned; a unit already assigned keeps its
stored variant whatever the bandit does (``hashing`` explains the phases).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import numpy as np

from actors.experiments.hashing import traffic_shares
from actors.experiments.model import Experiment, Goal, MetricName, Observation

#: Rates, drawn from a Beta posterior; every other metric is a mean.
RATES = frozenset({MetricName.SUCCESS_RATE, MetricName.RATING_RATE})
#: The goal of a metric the experiment does not list with one of its own.
DEFAULT_GOALS = {
    MetricName.QUEUE_WAIT: Goal.MINIMIZE,
    MetricName.RUN_TIME: Goal.MINIMIZE,
    MetricName.COST: Goal.MINIMIZE,
}


@attrs.frozen
class BanditDecision:
    """One re-weighting: what the experiment should now look like."""

    #: Variant id -> share of new units; sums to 1, paused arms (old and new) 0.
    weights: dict[str, float]
    #: Active variant id -> chance to be best; empty until every arm has its sample.
    p_best: dict[str, float]
    #: Variants this decision pauses (those already paused are not repeated).
    paused: frozenset[str]
    #: The variant whose P(best) reached ``win_at``, if any.
    winner: str | None
    #: Whether every active arm had ``min_samples`` (False: nothing was changed).
    ready: bool
    #: Active variant id -> consecutive re-weightings with P(best) below
    #: ``pause_below``; pass it to the next ``reweigh``.
    low_streaks: dict[str, int]


def goal_of(experiment: Experiment, metric: MetricName) -> Goal:
    """The experiment's goal for ``metric``, else the obvious one (less time and
    cost is better, more of everything else)."""
    for listed in experiment.metrics:
        if listed.name is metric:
            return listed.goal
    return DEFAULT_GOALS.get(metric, Goal.MAXIMIZE)


def arm_values(
    observations: Iterable[Observation], metric: MetricName, variant_ids: Iterable[str]
) -> dict[str, np.ndarray]:
    """Each variant's values of ``metric`` (jobs without one left out)."""
    values: dict[str, list[float]] = {variant_id: [] for variant_id in variant_ids}
    for observation in observations:
        value = observation.value(metric)
        if value is not None and observation.variant_id in values:
            values[observation.variant_id].append(value)
    return {variant_id: np.asarray(found, dtype=float) for variant_id, found in values.items()}


def posterior_draws(
    metric: MetricName, values: np.ndarray, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """``draws`` samples of the arm's mean of ``metric`` given its ``values``."""
    if metric in RATES:
        successes = float(values.sum())
        return rng.beta(1 + successes, 1 + len(values) - successes, size=draws)
    standard_error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return rng.normal(values.mean(), standard_error, size=draws)


def p_best(
    samples: Mapping[str, np.ndarray],
    metric: MetricName,
    goal: Goal,
    rng: np.random.Generator,
    draws: int = 10_000,
) -> dict[str, float]:
    """Monte Carlo chance that each arm's mean is the best, given its values."""
    ids = list(samples)
    matrix = np.column_stack([posterior_draws(metric, samples[i], rng, draws) for i in ids])
    best = matrix.argmin(axis=1) if goal is Goal.MINIMIZE else matrix.argmax(axis=1)
    counts = np.bincount(best, minlength=len(ids))
    return {variant_id: float(count) / draws for variant_id, count in zip(ids, counts, strict=True)}


def floored(shares: Mapping[str, float], floor: float) -> dict[str, float]:
    """``p = f + (1 - K f) w``: every one of the K arms keeps at least ``f``."""
    k = len(shares)
    floor = min(max(floor, 0.0), 1 / k) if k else 0.0
    total = sum(shares.values())
    return {
        variant_id: floor + (1 - k * floor) * (share / total if total > 0 else 1 / k)
        for variant_id, share in shares.items()
    }


def reweigh(
    experiment: Experiment,
    observations: Iterable[Observation],
    rng: np.random.Generator,
    *,
    low_streaks: Mapping[str, int] | None = None,
    draws: int = 10_000,
) -> BanditDecision:
    """The next weights of a bandit experiment (see the module docstring)."""
    settings = experiment.bandit
    metric = settings.metric
    current = traffic_shares(experiment)
    weights = {variant.id: current.get(variant.id, 0.0) for variant in experiment.variants}
    values = arm_values(observations, metric, current)
    enough = max(settings.min_samples, 1 if metric in RATES else 2)
    streaks = {variant_id: (low_streaks or {}).get(variant_id, 0) for variant_id in current}
    if len(current) < 2 or any(len(found) < enough for found in values.values()):
        return BanditDecision(weights, {}, frozenset(), None, False, streaks)

    chances = p_best(values, metric, goal_of(experiment, metric), rng, draws)
    leader = max(chances, key=chances.__getitem__)
    paused: set[str] = set()
    for variant_id, chance in chances.items():
        low = settings.pause_below is not None and chance < settings.pause_below
        streaks[variant_id] = streaks[variant_id] + 1 if low else 0
        protected = variant_id in (experiment.control.id, leader)
        if not protected and streaks[variant_id] >= settings.pause_after:
            paused.add(variant_id)
    kept = {variant_id: chances[variant_id] for variant_id in chances if variant_id not in paused}
    weights = {variant.id: 0.0 for variant in experiment.variants} | floored(kept, settings.floor)
    winner = leader if chances[leader] >= settings.win_at else None
    kept_streaks = {variant_id: n for variant_id, n in streaks.items() if variant_id not in paused}
    return BanditDecision(weights, chances, frozenset(paused), winner, True, kept_streaks)


def apply_decision(experiment: Experiment, decision: BanditDecision) -> Experiment:
    """The experiment with the decision's weights and pauses on its variants.

    When the shares of new traffic change, so does the phase (``hashing`` explains
    why): within one phase the weights are constant, so the sample-ratio check can
    compare each phase's assignments with that phase's weights. A decision that is
    not ``ready`` changes nothing.
    """
    if not decision.ready:
        return experiment
    variants = [
        attrs.evolve(
            variant,
            weight=decision.weights[variant.id],
            paused=variant.paused or variant.id in decision.paused,
        )
        for variant in experiment.variants
    ]
    before = traffic_shares(experiment)
    changed = decision.paused or any(
        abs(before.get(variant.id, 0.0) - variant.weight) > 1e-12 for variant in variants
    )
    phase = experiment.phase + 1 if changed else experiment.phase
    return attrs.evolve(experiment, variants=variants, phase=phase)
