"""The alert rules and each alert's life (pending, firing, repeat, resolved),
driven by trio's MockClock: no test sleeps."""

from __future__ import annotations

import trio
import trio.testing

from actors.alerts.firing import Change, Tracker
from actors.alerts.records import AlertState, Severity
from actors.alerts.rules import Condition, Observations, evaluate
from actors.alerts.settings import RuleSettings
from actors.alerts.window import Outcomes

RULES = RuleSettings(min_samples=10, for_seconds=60, keep_firing_for=300,
                     repeat_interval=3600)


def test_a_window_forgets_what_left_it() -> None:
    window = Outcomes(span=60)
    for second in range(10):
        window.add("fal", second % 2 == 0, float(second))
    assert window.counts(9.5) == {"fal": (5, 10)}
    assert window.counts(65.0) == {"fal": (2, 4)}  # seconds 6..9 are left
    assert window.counts(200.0) == {}


def failing(seen: Observations, provider: str, bad: int, good: int, now: float) -> None:
    for n in range(bad + good):
        seen.calls.add(provider, n < bad, now)


def test_failure_rate_needs_enough_samples_and_more_than_the_threshold() -> None:
    seen = Observations(RULES)
    failing(seen, "fal", 6, 3, now=0)  # 9 calls: too few to say anything
    assert evaluate(seen, RULES, 1) == []
    failing(seen, "fal", 0, 1, now=1)  # 6 of 10: 60 %
    [condition] = evaluate(seen, RULES, 2)
    assert (condition.fingerprint, condition.severity) == ("failure_rate:fal", Severity.HIGH)
    assert condition.details == {"rate": 0.6, "samples": 10}
    failing(seen, "bfl", 5, 5, now=1)  # exactly 50 %: not over it
    assert [c.subject for c in evaluate(seen, RULES, 2)] == ["fal"]
    assert evaluate(seen, RULES, 3700) == []  # out of the hour


def test_every_other_rule() -> None:
    seen = Observations(RULES)
    for n in range(10):
        seen.finishes.add("kling", n < 3, 0)
        seen.webhooks.add("client", n < 6, 0)
    seen.retried.add("gen_1", False, 0)
    for _ in range(3):
        seen.crashes.add("scheduler", True, 0)
    seen.crashes.add("outbox", True, 0)
    seen.system.add("storage", True, 0)
    seen.database_error = "disk I/O error"
    seen.open_circuits = {"replicate"}
    seen.queue_age = 901
    seen.disk_free = {"/state": 0.01, "/media": 0.2}
    found = {c.fingerprint: c for c in evaluate(seen, RULES, 1)}
    assert sorted(found) == [
        "circuit_open:replicate", "crash_loop:scheduler", "disk_low:/state", "job_retried:gen_1",
        "queue_lag:queue", "system_error:database", "system_error:storage",
        "timeout_rate:kling", "webhook_failing:client",
    ]
    assert found["disk_low:/state"].severity is Severity.CRITICAL
    assert found["crash_loop:scheduler"].instant and not found["circuit_open:replicate"].instant


def condition(subject: str = "fal", instant: bool = False) -> Condition:
    return Condition("failure_rate", subject, Severity.HIGH, f"{subject} fails", instant=instant)


async def test_pending_then_firing_once_repeated_then_resolved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = Tracker(RULES)

    def step(*conditions: Condition) -> list[tuple[Change, AlertState, float | None]]:
        changes = tracker.step(list(conditions), trio.current_time())
        for _, alert in changes:  # as the monitor does once the store wrote it
            alert.sent_at = trio.current_time()
            tracker.stored(alert)
        return [(change, alert.state, alert.ends_at) for change, alert in changes]

    start = trio.current_time()
    assert step(condition()) == []
    assert tracker.pending() == ["failure_rate:fal"]
    await trio.sleep(59)
    assert step(condition()) == []
    await trio.sleep(1)
    assert step(condition()) == [(Change.FIRED, AlertState.FIRING, None)]
    await trio.sleep(30)
    assert step(condition()) == []  # fired once, not again
    await trio.sleep(3600)
    assert step(condition()) == [(Change.REPEATED, AlertState.FIRING, None)]
    # Cleared, but back within keep_firing_for: still the same alert, nothing sent.
    assert step() == []
    await trio.sleep(299)
    assert step(condition()) == []
    assert step() == []
    await trio.sleep(300)
    assert step() == [(Change.RESOLVED, AlertState.RESOLVED, trio.current_time())]
    assert step() == []
    # Coming back later is a new alert, pending again first.
    assert step(condition()) == []
    assert tracker.pending() == ["failure_rate:fal"]
    assert start < trio.current_time()


async def test_a_condition_gone_while_pending_never_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = Tracker(RULES)
    assert tracker.step([condition()], trio.current_time()) == []
    await trio.sleep(30)
    assert tracker.step([], trio.current_time()) == []
    await trio.sleep(40)
    assert tracker.step([condition()], trio.current_time()) == []  # pending anew


async def test_event_rules_fire_at_once_and_a_restart_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = Tracker(RULES)
    [(change, alert)] = tracker.step([condition("x", instant=True)], trio.current_time())
    assert change is Change.FIRED
    alert.sent_at, alert.id = trio.current_time(), 7

    again = Tracker(RULES)  # a restarted monitor, given the store's firing alerts
    again.load([alert])
    await trio.sleep(600)
    assert again.step([condition("x", instant=True)], trio.current_time()) == []
    again.forget(alert.fingerprint)  # an operator resolved it
    [(change, fresh)] = again.step([condition("x", instant=True)], trio.current_time())
    assert change is Change.FIRED and fresh.id is None
