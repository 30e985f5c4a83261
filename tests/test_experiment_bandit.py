"""The bandit: Thompson sampling with a floor, its waiting, pausing and winning rules."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from scipy import integrate, stats

from actors.experiments.bandit import (
    apply_decision,
    floored,
    goal_of,
    p_best,
    reweigh,
)
from actors.experiments.model import (
    Allocation,
    BanditSettings,
    Experiment,
    Goal,
    Metric,
    MetricName,
    Observation,
    Variant,
)


def _experiment(n_arms: int = 3, **settings: object) -> Experiment:
    return Experiment(
        id="exp_bandit",
        name="bandit",
        variants=[Variant(id=chr(ord("A") + i), model=f"model-{i}") for i in range(n_arms)],
        metrics=[Metric(MetricName.SUCCESS_RATE)],
        allocation=Allocation.BANDIT,
        bandit=BanditSettings(**settings),  # type: ignore[arg-type]
    )


def _bernoulli(variant_id: str, successes: int, failures: int) -> list[Observation]:
    return [
        Observation(variant_id, f"{variant_id}-{i}", i < successes)
        for i in range(successes + failures)
    ]


def test_p_best_matches_the_exact_beta_probability() -> None:
    values = {"A": np.array([1.0] * 30 + [0.0] * 70), "B": np.array([1.0] * 40 + [0.0] * 60)}
    a, b = stats.beta(31, 71), stats.beta(41, 61)
    exact_b, _ = integrate.quad(lambda x: b.pdf(x) * a.cdf(x), 0, 1)
    chances = p_best(
        values, MetricName.SUCCESS_RATE, Goal.MAXIMIZE, np.random.default_rng(1), 200_000
    )
    assert chances["B"] == pytest.approx(exact_b, abs=0.005)
    assert chances["A"] + chances["B"] == pytest.approx(1.0)


def test_the_floor_formula() -> None:
    weights = floored({"A": 0.0, "B": 0.25, "C": 0.75}, 0.05)
    assert weights == pytest.approx({"A": 0.05, "B": 0.05 + 0.85 * 0.25, "C": 0.05 + 0.85 * 0.75})
    assert sum(weights.values()) == pytest.approx(1.0)
    # A floor that K arms cannot all keep becomes equal weights.
    assert floored({"A": 1.0, "B": 0.0, "C": 0.0}, 0.5) == pytest.approx(
        {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}
    )


def test_goals_default_to_less_time_and_cost() -> None:
    experiment = _experiment()
    assert goal_of(experiment, MetricName.COST) is Goal.MINIMIZE
    assert goal_of(experiment, MetricName.RUN_TIME) is Goal.MINIMIZE
    assert goal_of(experiment, MetricName.RATING) is Goal.MAXIMIZE
    listed = attrs.evolve(experiment, metrics=[Metric(MetricName.RATING, goal=Goal.MINIMIZE)])
    assert goal_of(listed, MetricName.RATING) is Goal.MINIMIZE


def test_no_reweighting_before_every_arm_has_its_sample() -> None:
    experiment = _experiment(2, min_samples=100)
    # B is far better, but A has 99 finished jobs: nothing moves.
    observations = _bernoulli("A", 10, 89) + _bernoulli("B", 900, 100)
    decision = reweigh(experiment, observations, np.random.default_rng(0))
    assert not decision.ready
    assert decision.weights == {"A": 0.5, "B": 0.5}
    assert decision.p_best == {}
    # Nothing changed, so the phase (and every unit's hash) stays.
    assert apply_decision(experiment, decision) == experiment
    assert decision.winner is None
    assert decision.paused == frozenset()
    # Unfinished jobs do not count toward the sample.
    pending = [Observation("A", "a-pending", None)]
    assert not reweigh(experiment, observations + pending, np.random.default_rng(0)).ready
    decision = reweigh(experiment, observations + _bernoulli("A", 1, 0), np.random.default_rng(0))
    assert decision.ready
    assert decision.winner == "B"


def test_the_same_seed_makes_the_same_decision() -> None:
    experiment = _experiment(3, min_samples=20)
    observations = _bernoulli("A", 10, 15) + _bernoulli("B", 12, 13) + _bernoulli("C", 14, 11)
    first = reweigh(experiment, observations, np.random.default_rng(7))
    assert first == reweigh(experiment, observations, np.random.default_rng(7))


def test_traffic_shifts_to_the_better_arm_while_every_arm_keeps_its_floor() -> None:
    """Simulated Bernoulli arms, traffic split by the bandit's weights each round."""
    rates = {"A": 0.30, "B": 0.35, "C": 0.45}
    experiment = _experiment(3, min_samples=50, floor=0.05)
    rng = np.random.default_rng(2026)
    observations: list[Observation] = []
    history = []
    for round_ in range(30):
        ids = [variant.id for variant in experiment.variants]
        shares = [variant.weight for variant in experiment.variants]
        arms = rng.choice(ids, size=300, p=np.asarray(shares) / sum(shares))
        for i, arm in enumerate(arms):
            observations.append(
                Observation(str(arm), f"u{round_}-{i}", bool(rng.random() < rates[arm]))
            )
        decision = reweigh(experiment, observations, rng)
        assert decision.ready
        assert sum(decision.weights.values()) == pytest.approx(1.0)
        assert min(decision.weights.values()) >= 0.05 - 1e-12
        history.append(decision)
        before = experiment
        experiment = apply_decision(experiment, decision)
        # New shares of traffic, new phase: each phase has constant weights.
        moved = [v.weight for v in experiment.variants] != [v.weight for v in before.variants]
        assert experiment.phase == before.phase + moved
    assert history[0].weights["C"] < 0.8
    assert 1 < experiment.phase <= len(history)
    assert history[-1].weights["C"] > 0.85
    assert history[-1].weights["A"] == pytest.approx(0.05, abs=0.01)
    assert all(not decision.paused for decision in history)
    counts = {arm: sum(o.variant_id == arm for o in observations) for arm in rates}
    # Most of the traffic went to the best arm, though every arm was measured.
    assert counts["C"] > 0.7 * len(observations)
    assert min(counts.values()) > 0.05 * len(observations)


def test_a_mean_metric_to_minimise_favours_the_cheaper_arm() -> None:
    experiment = attrs.evolve(
        _experiment(2, metric=MetricName.COST, min_samples=30),
        metrics=[Metric(MetricName.COST, goal=Goal.MINIMIZE)],
    )
    rng = np.random.default_rng(3)
    observations = [
        Observation(arm, f"{arm}{i}", True, cost=float(cost))
        for arm, mean in (("A", 0.10), ("B", 0.08))
        for i, cost in enumerate(rng.normal(mean, 0.02, size=200))
    ]
    decision = reweigh(experiment, observations, rng)
    assert decision.p_best["B"] > 0.99
    assert decision.winner == "B"
    assert decision.weights["B"] > decision.weights["A"] >= 0.01
    # Maximising the same numbers turns the answer round.
    flipped = attrs.evolve(experiment, metrics=[Metric(MetricName.COST, goal=Goal.MAXIMIZE)])
    assert reweigh(flipped, observations, rng).winner == "A"


def test_rating_is_a_mean_of_the_rated_jobs() -> None:
    experiment = _experiment(2, metric=MetricName.RATING, min_samples=40)
    observations = [Observation("A", f"a{i}", True, rating=3 + i % 2) for i in range(60)] + [
        Observation("B", f"b{i}", True, rating=4 + i % 2 if i < 40 else None) for i in range(60)
    ]
    decision = reweigh(experiment, observations, np.random.default_rng(4))
    assert decision.ready
    assert decision.winner == "B"
    # 39 rated jobs are not 40.
    fewer = [o for o in observations if o.unit != "b0"]
    assert not reweigh(experiment, fewer, np.random.default_rng(4)).ready


def test_an_arm_that_stays_unlikely_is_paused_after_its_streak() -> None:
    experiment = _experiment(3, min_samples=100, pause_below=0.05, pause_after=2, win_at=0.999)
    # A (the control) and C are both hopeless against B: C is paused, A never is.
    observations = _bernoulli("A", 20, 180) + _bernoulli("B", 90, 110) + _bernoulli("C", 20, 180)
    rng = np.random.default_rng(5)
    first = reweigh(experiment, observations, rng)
    assert first.paused == frozenset()
    assert first.low_streaks == {"A": 1, "B": 0, "C": 1}
    second = reweigh(experiment, observations, rng, low_streaks=first.low_streaks)
    assert second.paused == {"C"}
    assert second.weights["C"] == 0.0
    assert second.weights["A"] >= 0.01
    assert sum(second.weights.values()) == pytest.approx(1.0)
    assert "C" not in second.low_streaks
    paused = apply_decision(experiment, second)
    assert [v.paused for v in paused.variants] == [False, False, True]
    assert paused.phase == experiment.phase + 1
    # A paused arm is out of later decisions; it keeps weight 0.
    third = reweigh(paused, observations, rng, low_streaks=second.low_streaks)
    assert set(third.p_best) == {"A", "B"}
    assert third.weights["C"] == 0.0
    assert third.paused == frozenset()


def test_a_streak_is_broken_by_one_good_reweighting() -> None:
    experiment = _experiment(2, min_samples=50, pause_below=0.2, pause_after=2)
    even = _bernoulli("A", 30, 30) + _bernoulli("B", 30, 30)
    decision = reweigh(experiment, even, np.random.default_rng(6), low_streaks={"B": 1})
    assert decision.low_streaks == {"A": 0, "B": 0}
    assert decision.paused == frozenset()


def test_a_winner_needs_win_at() -> None:
    experiment = _experiment(2, min_samples=100, win_at=0.95)
    close = _bernoulli("A", 50, 50) + _bernoulli("B", 53, 47)
    decision = reweigh(experiment, close, np.random.default_rng(8))
    assert 0.5 < decision.p_best["B"] < 0.95
    assert decision.winner is None
    clear = _bernoulli("A", 500, 500) + _bernoulli("B", 600, 400)
    decision = reweigh(experiment, clear, np.random.default_rng(8))
    assert decision.p_best["B"] >= 0.95
    assert decision.winner == "B"
