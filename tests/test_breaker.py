"""actors/breaker.py and the submission-safety rule of actors/provider.py: pure
logic, time from trio's MockClock (no real waiting)."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from actors.breaker import BreakerConfig, CircuitBreaker, CircuitState, Outcome, classify
from actors.catalog import MediaKind, ModelSpec, check_fallbacks, fallback_chain, later_models
from actors.errors import EaselError, ErrorCode
from actors.provider import not_accepted
from actors.providers.base import ProviderSettings

S, F, N = Outcome.SUCCESS, Outcome.FAILURE, Outcome.NEUTRAL


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


def breaker(**config: float) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    b = CircuitBreaker(
        "p", BreakerConfig(**config),  # type: ignore[arg-type]
        on_transition=lambda name, old, new: moves.append((old.label, new.label)),
    )
    return b, moves


def feed(b: CircuitBreaker, *outcomes: Outcome) -> None:
    for outcome in outcomes:
        b.record(outcome)


async def test_opens_at_the_threshold_once_the_minimum_sample_is_there(clock: MockClock) -> None:
    b, moves = breaker(threshold=0.5, min_calls=4, window=60)
    feed(b, F, F, F)  # 100% failures, but only 3 calls: not yet a sample
    assert b.state is CircuitState.CLOSED and b.allow()
    feed(b, S)  # 3/4 = 75% >= 50%
    assert b.state is CircuitState.OPEN
    assert not b.allow()
    assert moves == [("closed", "open")]


async def test_stays_closed_below_the_threshold(clock: MockClock) -> None:
    b, _ = breaker(threshold=0.5, min_calls=4)
    for _ in range(10):
        feed(b, S, F, S)  # 33% failures
    assert b.closed


async def test_old_calls_leave_the_window(clock: MockClock) -> None:
    b, _ = breaker(threshold=0.5, min_calls=4, window=10)
    feed(b, F, F, F)
    clock.jump(11)  # those three are out of the window now
    feed(b, S, S, S, F)  # 1/4 in the window
    assert b.closed
    assert b.statistics()["calls"] == 4


async def test_neutral_outcomes_are_not_counted(clock: MockClock) -> None:
    b, _ = breaker(threshold=0.5, min_calls=2)
    feed(b, N, N, N, F)
    assert b.closed  # one failure, one call counted
    feed(b, F)
    assert b.state is CircuitState.OPEN


async def test_cooldown_half_open_probe_success_closes(clock: MockClock) -> None:
    b, moves = breaker(min_calls=2, cooldown=30, probes=1)
    feed(b, F, F)
    assert b.state is CircuitState.OPEN
    assert b.next_change_at() == pytest.approx(trio.current_time() + 30)
    clock.jump(29.9)
    assert not b.allow()
    clock.jump(0.1)
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()  # the one probe
    assert not b.allow()  # only one at a time
    feed(b, S)
    assert b.state is CircuitState.CLOSED and b.allow()
    assert moves == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    # Closed afresh: the failures before the open count no more.
    feed(b, F)
    assert b.closed


async def test_half_open_probe_failure_reopens_for_another_cooldown(clock: MockClock) -> None:
    b, moves = breaker(min_calls=1, cooldown=5)
    feed(b, F)
    clock.jump(5)
    assert b.allow()
    feed(b, F)
    assert b.state is CircuitState.OPEN
    clock.jump(4)
    assert b.state is CircuitState.OPEN  # the cool-down restarted at the failed probe
    clock.jump(1)
    assert b.state is CircuitState.HALF_OPEN
    b.advance()
    assert [new for _, new in moves] == ["open", "half-open", "open", "half-open"]


async def test_reading_changes_nothing(clock: MockClock) -> None:
    """State, view and statistics are snapshots: only ``advance``, ``allow`` and
    ``record`` (the owner's calls) apply the change time makes, and report it."""
    b, moves = breaker(min_calls=1, cooldown=5, window=10)
    feed(b, F)
    clock.jump(6)
    for _ in range(3):
        assert b.state is CircuitState.HALF_OPEN
        assert b.view().state is CircuitState.HALF_OPEN
        assert b.statistics()["state"] == "half-open"
    assert moves == [("closed", "open")] and b.transitions == 1
    b.advance()
    assert moves == [("closed", "open"), ("open", "half-open")]


async def test_a_lost_probe_does_not_block_forever(clock: MockClock) -> None:
    b, _ = breaker(min_calls=1, cooldown=5, probes=1)
    feed(b, F)
    clock.jump(5)
    assert b.allow()  # this probe's job never reaches the provider
    assert not b.allow()
    assert b.next_change_at() == pytest.approx(trio.current_time() + 5)
    clock.jump(5)
    assert b.allow()


async def test_a_neutral_probe_lets_the_next_one_go(clock: MockClock) -> None:
    b, _ = breaker(min_calls=1, cooldown=5, probes=1)
    feed(b, F)
    clock.jump(5)
    assert b.allow()
    feed(b, N)  # rate limited: says nothing about health
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()


async def test_outcomes_while_open_change_nothing(clock: MockClock) -> None:
    b, moves = breaker(min_calls=1, cooldown=5)
    feed(b, F)
    feed(b, S, S, F)  # calls that were under way when it opened
    assert b.state is CircuitState.OPEN and len(moves) == 1


async def test_wait_changed_wakes_on_a_transition(clock: MockClock) -> None:
    b, _ = breaker(min_calls=1, cooldown=5)
    woke: list[CircuitState] = []

    async def waiter() -> None:
        await b.wait_changed()
        woke.append(b.state)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        feed(b, F)
    assert woke == [CircuitState.OPEN]


def test_what_counts_as_a_failure() -> None:
    for code in (ErrorCode.PROVIDER_ERROR, ErrorCode.PROVIDER_UNAVAILABLE,
                 ErrorCode.PROVIDER_TIMEOUT):
        assert classify(code) is F
    for code in (ErrorCode.INVALID_PARAMETERS, ErrorCode.CONTENT_MODERATED,
                 ErrorCode.AUTHENTICATION_FAILED, ErrorCode.QUOTA_EXCEEDED, None):
        assert classify(code) is S
    assert classify(ErrorCode.RATE_LIMITED) is N


def test_config_from_settings_defaults_and_overrides() -> None:
    assert BreakerConfig.from_settings(ProviderSettings()) == BreakerConfig()
    config = BreakerConfig.from_settings(
        ProviderSettings(breaker_threshold=0.25, breaker_cooldown=2.0))
    assert (config.threshold, config.cooldown, config.min_calls) == (0.25, 2.0, 10)


# -- the submission-safety rule ------------------------------------------------------


def test_only_provable_refusals_are_not_accepted() -> None:
    refused = EaselError(ErrorCode.PROVIDER_UNAVAILABLE, "connect", sent=False)
    limited = EaselError(ErrorCode.RATE_LIMITED, "429", {"status": 429})
    assert not_accepted(refused) and not_accepted(limited)
    for status in (500, 502, 503, 504):
        assert not not_accepted(EaselError(ErrorCode.PROVIDER_ERROR, "5xx", {"status": status}))
    assert not not_accepted(EaselError(ErrorCode.PROVIDER_TIMEOUT, "read timeout"))
    assert not not_accepted(EaselError(ErrorCode.PROVIDER_ERROR, "not JSON", {"status": 200}))


# -- fallbacks in the catalog -----------------------------------------------------------


def spec(provider: str, kind: MediaKind = MediaKind.IMAGE, fallbacks: tuple[str, ...] = ()) -> ModelSpec:
    return ModelSpec(provider=provider, provider_model="x", kind=kind, fallbacks=list(fallbacks))


def test_fallback_chain_skips_unknown_other_kind_and_repeats() -> None:
    catalog = {
        "a": spec("p", fallbacks=("b", "gone", "v", "b", "a", "c")),
        "b": spec("q", fallbacks=("c",)),
        "c": spec("r"),
        "v": spec("r", MediaKind.VIDEO),
    }
    assert fallback_chain(catalog, "a") == ["a", "b", "c"]
    assert later_models(catalog, "a", None) == ["b", "c"]
    assert later_models(catalog, "a", "b") == ["c"]  # forward only, along a's list
    assert later_models(catalog, "a", "c") == []
    assert later_models(catalog, "a", "v") == []  # served by something off the chain


def test_check_fallbacks_names_each_problem_with_its_path() -> None:
    catalog = {
        "a": spec("p", fallbacks=("a", "nope", "v", "b")),
        "b": spec("q"),
        "v": spec("r", MediaKind.VIDEO),
    }
    assert check_fallbacks(catalog) == [
        "models.a.fallbacks[0]: a model cannot be its own fallback",
        "models.a.fallbacks[1]: no model 'nope' in the catalog",
        "models.a.fallbacks[2]: 'v' makes video, not image",
    ]
