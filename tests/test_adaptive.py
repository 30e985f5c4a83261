"""The adaptive polling plan: its shape, its safety rails, and what it buys.

Everything here is arithmetic on durations: tasks are replayed through
``adaptive_delay`` (the poller's call) one check at a time, with no clock.
"""

from __future__ import annotations

import bisect
import math
import random

import attrs
import cattrs
import pytest

from actors.adaptive import (
    AdaptiveParams,
    AdaptiveSchedule,
    DurationHistory,
    DurationModel,
    adaptive_delay,
    params_from_spec,
    plan_schedule,
)
from actors.catalog import PollingSpec, PollingStrategy
from actors.polling import delay_before_check

FALLBACK = PollingSpec(strategy=PollingStrategy.ADAPTIVE, initial=60, factor=1.5,
                       max_interval=300)


def lognormal(count: int, seed: int, median: float = 360.0, sigma: float = 0.5) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(count)]


def plan(durations: list[float], span: float = 50.0, grid_points: int = 400,
         **params: object) -> AdaptiveSchedule:
    model = DurationModel.from_durations(durations, span=span, grid_points=grid_points)
    return plan_schedule(model, AdaptiveParams(**params))


def polled(durations: list[float], times: list[float]) -> list[tuple[float, float]]:
    """What polling at ``times`` learns of each duration: (last seen running, seen done]."""
    seen = []
    for duration in durations:
        i = bisect.bisect_left(times, duration)
        seen.append((times[i - 1] if i else 0.0, times[i]))
    return seen


def first_times(schedule: AdaptiveSchedule, count: int) -> list[float]:
    times = schedule.check_times()
    return [next(times) for _ in range(count)]


def replay(durations: list[float], next_delay) -> tuple[float, float]:
    """Mean checks per task and mean detection delay, checking as the poller would."""
    checks = 0
    delay = 0.0
    for duration in durations:
        elapsed, done = 0.0, 0
        while elapsed < duration:
            elapsed += next_delay(elapsed, done)
            done += 1
        checks += done
        delay += elapsed - duration
    return checks / len(durations), delay / len(durations)


def assert_well_formed(schedule: AdaptiveSchedule, count: int = 200) -> None:
    times = first_times(schedule, count)
    assert times[0] >= schedule.min_interval
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= schedule.min_interval - 1e-9 for gap in gaps)
    assert all(gap <= schedule.max_interval + 1e-9 for gap in gaps)
    assert all(math.isfinite(t) for t in times)


def test_plan_is_increasing_first_check_before_the_typical_completion():
    schedule = plan(lognormal(1000, seed=1))
    assert_well_formed(schedule)
    assert list(schedule.offsets) == sorted(set(schedule.offsets))
    # Checking before most tasks end costs checks and saves little delay...
    assert 150 < schedule.offsets[0] < 360
    # ...and the intervals are tightest where completions are densest.
    gaps = [b - a for a, b in zip(schedule.offsets, schedule.offsets[1:])]
    assert schedule.offsets[0] > max(gaps[:5])
    assert min(gaps) < 60


def test_smoothed_distribution():
    model = DurationModel.from_durations(lognormal(1000, seed=2))
    assert model.median == pytest.approx(360, rel=0.05)
    assert model.cdf(model.median) == pytest.approx(0.5, abs=0.02)
    values = [model.cdf(t) for t in range(0, 3000, 10)]
    assert values == sorted(values) and values[0] == 0 and values[-1] > 0.999
    # Silverman's rule for one bell-shaped cluster: 0.9 * 0.5 * 1000 ** -0.2 ~ 0.11.
    assert model.bandwidth == pytest.approx(0.113, rel=0.15)


def test_next_check_is_on_the_plan_after_elapsed_even_when_late():
    schedule = plan(lognormal(500, seed=3))
    times = first_times(schedule, 100)
    previous = 0.0
    for elapsed in [0.0, 5.0, times[0] - 0.5, times[0], times[3] + 0.2, times[20] + 7.0,
                    times[-1] + 1000.0, 1e6]:
        at = schedule.next_check_at(elapsed)
        assert at >= elapsed + schedule.min_interval
        assert at >= previous
        previous = at
        if at <= times[-1]:
            assert any(math.isclose(at, t) for t in times)
            # The first planned time after elapsed: nothing planned is skipped.
            assert not [t for t in times if elapsed + schedule.min_interval <= t < at - 1e-9]
    # A check done late lands back on the plan rather than shifting it.
    assert schedule.next_check_at(times[1] + 0.3) == pytest.approx(times[2])
    assert adaptive_delay(schedule, times[1] + 0.3, 2, FALLBACK) == pytest.approx(
        times[2] - times[1] - 0.3)


def test_below_min_samples_the_spec_decides():
    history = DurationHistory(params=AdaptiveParams(min_samples=20))
    for seconds in lognormal(19, seed=4):
        history.add("video", seconds)
    assert history.schedule_for("video") is None
    assert history.schedule_for("never-seen") is None
    for done in range(8):
        expected = delay_before_check(FALLBACK, done)
        assert history.delay("video", FALLBACK, 1000.0, done) == expected
        assert adaptive_delay(None, 1000.0, done, FALLBACK) == expected
    # The spec's first_check applies to the fallback too.
    with_first = attrs.evolve(FALLBACK, first_check=200)
    assert history.delay("video", with_first, 0.0, 0) == 200
    history.add("video", 360.0)
    assert history.schedule_for("video") is not None
    assert history.delay("video", FALLBACK, 0.0, 0) > 60


def test_intervals_after_the_first_never_exceed_the_cap():
    durations = lognormal(1000, seed=5)
    for cap in (20.0, 45.0, 300.0):
        schedule = plan(durations, max_interval=cap)
        assert_well_formed(schedule, 400)
        assert schedule.max_interval == cap
    # The tail ends at the cap and stays there.
    schedule = plan(durations, max_interval=45.0)
    far = first_times(schedule, 400)
    assert far[-1] - far[-2] == pytest.approx(45.0)
    assert schedule.next_check_at(1e7) - 1e7 <= 45.0 + 1e-6
    # The model's spec sets the cap and the trade-off.
    params = params_from_spec(attrs.evolve(FALLBACK, max_interval=90, check_cost=3))
    assert (params.max_interval, params.check_cost) == (90, 3)


def test_the_cap_holds_where_the_grid_is_coarser_than_it():
    # A wide span and a lone far outlier make grid steps far larger than 10 s.
    durations = [360.0 + i for i in range(30)] + [5e5]
    schedule = plan(durations, max_interval=10.0, span=1e4, grid_points=50)
    assert_well_formed(schedule, 2000)


def test_all_equal_durations():
    schedule = plan([100.0] * 50)
    assert_well_formed(schedule)
    assert 100 <= schedule.offsets[0] <= 110  # one check just after, most of the time
    assert schedule.expected_checks < 2
    assert replay([100.0] * 10, lambda e, d: adaptive_delay(schedule, e, d, FALLBACK)) == (
        1.0, pytest.approx(schedule.offsets[0] - 100))
    # Instant tasks (or clock noise at 0): the first check waits min_interval.
    for instant in ([0.0] * 30, [0.2] * 30):
        schedule = plan(instant, min_interval=1.0)
        assert_well_formed(schedule)
        assert schedule.offsets[0] == pytest.approx(1.0)


def test_very_few_samples():
    for durations in ([100.0, 200.0], [5.0, 5.0, 400.0], lognormal(5, seed=6)):
        schedule = plan(durations)
        assert_well_formed(schedule)
    with pytest.raises(ValueError):
        DurationModel.from_durations([100.0])
    with pytest.raises(ValueError):
        DurationModel.from_durations([math.nan, -1.0, math.inf, 50.0])
    model = DurationModel.from_durations([math.nan, -1.0, 50.0, 70.0])
    assert model.count == 2


def test_huge_outliers_do_not_move_the_body_of_the_plan():
    durations = lognormal(999, seed=7)
    clean = plan(durations)
    for outlier in (1e5, 1e7):
        noisy = plan(durations + [outlier])
        assert_well_formed(noisy, 500)
        for a, b in zip(clean.offsets[:8], noisy.offsets[:8]):
            assert b == pytest.approx(a, rel=0.05)
    # A fifth of the history stuck for a day: the grid stops at median * span.
    stuck = plan(durations[:80] + [86_400.0] * 20)
    assert_well_formed(stuck, 500)
    assert stuck.offsets[-1] <= 360 * 1.3 * 50
    assert stuck.offsets[0] < 360


def test_separate_modes_get_separate_checks():
    rng = random.Random(8)
    warm = [rng.uniform(10, 11) for _ in range(50)]
    cold = [rng.uniform(600, 610) for _ in range(50)]
    schedule = plan(warm + cold)
    assert_well_formed(schedule)
    assert 10 < schedule.offsets[0] < 20  # the warm starts are caught at once
    tasks = warm + cold
    checks, delay = replay(tasks, lambda e, d: adaptive_delay(schedule, e, d, FALLBACK))
    assert checks < 4 and delay < 20


def test_on_a_lognormal_it_beats_fixed_60_on_checks_at_no_worse_delay():
    schedule = DurationHistory(params=AdaptiveParams(max_interval=300))
    for seconds in lognormal(1000, seed=9):
        schedule.add("video", seconds)
    tasks = lognormal(5000, seed=10)  # not what it learned from
    fixed = PollingSpec(strategy=PollingStrategy.FIXED, interval=60)
    fixed_checks, fixed_delay = replay(tasks, lambda e, d: delay_before_check(fixed, d))
    checks, delay = replay(tasks, lambda e, d: schedule.delay("video", FALLBACK, e, d))
    assert checks <= fixed_checks - 1.0
    assert delay <= fixed_delay


def test_the_plan_forecasts_what_it_then_does():
    """The cost formula the DP minimises is the one a replay measures."""
    schedule = plan(lognormal(2000, seed=11), check_cost=5.0)
    tasks = lognormal(20000, seed=12)
    checks, delay = replay(tasks, lambda e, d: adaptive_delay(schedule, e, d, FALLBACK))
    assert checks == pytest.approx(schedule.expected_checks, rel=0.05)
    assert delay == pytest.approx(schedule.expected_delay, rel=0.08)


def test_check_cost_trades_checks_for_delay():
    durations = lognormal(1000, seed=13)
    tasks = lognormal(5000, seed=14)
    results = []
    for cost in (2.0, 5.0, 20.0):
        schedule = plan(durations, check_cost=cost)
        results.append(replay(tasks, lambda e, d, s=schedule: adaptive_delay(s, e, d, FALLBACK)))
    (c1, d1), (c2, d2), (c3, d3) = results
    assert c1 > c2 > c3
    assert d1 < d2 < d3


def test_learning_from_polled_intervals_matches_learning_from_durations():
    durations = lognormal(1000, seed=17)
    tasks = lognormal(5000, seed=18)
    exact = plan(durations)
    coarse = [60.0 * k for k in range(1, 100)]  # fixed 60 s polling saw them
    censored = plan_schedule(DurationModel.from_observations([], polled(durations, coarse)))
    assert_well_formed(censored)
    assert censored.offsets[0] == pytest.approx(exact.offsets[0], rel=0.1)
    checks_exact, delay_exact = replay(tasks, lambda e, d: adaptive_delay(exact, e, d, FALLBACK))
    checks, delay = replay(tasks, lambda e, d: adaptive_delay(censored, e, d, FALLBACK))
    assert checks == pytest.approx(checks_exact, rel=0.06)
    assert delay == pytest.approx(delay_exact, rel=0.08)
    # Mixed histories (some completions pushed by webhook, exact) work too.
    mixed = DurationModel.from_observations(durations[:300], polled(durations[300:], coarse))
    assert mixed.count == 1000
    assert_well_formed(plan_schedule(mixed))


def test_relearning_from_its_own_polling_does_not_drift_later():
    """Detection times are late by the detection delay; a plan learned from them
    checks later, and the next detection times are later still. Intervals do not."""
    tasks = lognormal(5000, seed=19)

    def generations(as_intervals: bool) -> list[float]:
        history = DurationHistory(window=1000, refresh_seconds=0.0, refresh_fraction=1.0)
        times = [60.0 * k for k in range(1, 100)]
        delays = []
        for generation in range(4):
            for seen_running, seen_done in polled(lognormal(1000, seed=20 + generation), times):
                assert history.add("video", seen_done, seen_running if as_intervals else None)
            schedule = history.schedule_for("video")
            assert schedule is not None
            times = first_times(schedule, 100)
            delays.append(
                replay(tasks, lambda e, d, s=schedule: adaptive_delay(s, e, d, FALLBACK))[1])
        return delays

    delays = generations(as_intervals=True)
    assert max(delays) < 29.5
    assert delays[-1] < delays[0] + 2.0
    naive = generations(as_intervals=False)
    assert naive[-1] > naive[0] + 4.0 and naive[-1] > max(delays) + 8.0


def test_history_window_and_rebuild_rate():
    now = [0.0]
    history = DurationHistory(window=100, params=AdaptiveParams(min_samples=20),
                              refresh_fraction=0.1, refresh_seconds=60.0,
                              clock=lambda: now[0])
    assert not history.add("m", -3.0)
    assert not history.add("m", math.nan)
    assert not history.add("m", 100.0, seen_running=100.0)
    assert not history.add("m", 100.0, seen_running=-1.0)
    assert history.count("m") == 0
    for seconds in lognormal(150, seed=15):
        assert history.add("m", seconds)
    assert history.count("m") == 100
    first = history.schedule_for("m")
    assert first is not None and first.samples == 100
    assert history.schedule_for("m") is first
    for seconds in lognormal(20, seed=16, median=600):
        history.add("m", seconds)
    assert history.schedule_for("m") is first  # enough new samples, too soon
    now[0] = 61.0
    second = history.schedule_for("m")
    assert second is not first
    assert second.offsets[0] > first.offsets[0]  # the slower recent jobs moved it
    now[0] = 200.0
    history.add("m", 400.0)
    assert history.schedule_for("m") is second  # late enough, too few new samples
    # Other parameters (a different spec) rebuild at once.
    other = history.schedule_for("m", AdaptiveParams(check_cost=20.0))
    assert other is not second and len(other.offsets) < len(second.offsets)


def test_polling_spec_accepts_adaptive():
    converter = cattrs.Converter(forbid_extra_keys=True)
    spec = converter.structure({"strategy": "adaptive", "check_cost": 3, "max_interval": 120},
                               PollingSpec)
    assert spec.strategy is PollingStrategy.ADAPTIVE
    assert spec.check_cost == 3
    assert PollingSpec().check_cost == 5.0
    # Until a model has a history, adaptive polls as the spec's exponential.
    assert [delay_before_check(spec, k) for k in range(3)] == [2.0, 3.0, 4.5]
    with pytest.raises(ValueError):
        PollingSpec(check_cost=0)
