"""The circuit breaker of one provider: when to stop sending it new work.

Owns the breaker's state machine and nothing else (no I/O): the provider actor
feeds it the outcome of every call it makes, and asks it before sending a new
submission, and it reports each change of state through a callback (the provider
actor turns that into metrics, a log line, and a ``CircuitChanged`` message to the
scheduler, which routes queued jobs by it).

    CLOSED --(failure rate >= threshold over `window` s, at least `min_calls`)--> OPEN
    OPEN --(after `cooldown` s)--> HALF_OPEN
    HALF_OPEN --(a call succeeds)--> CLOSED;  HALF_OPEN --(a call fails)--> OPEN

What counts as a failure: only errors that say the provider itself is unwell
(PROVIDER_ERROR, PROVIDER_UNAVAILABLE, PROVIDER_TIMEOUT). Errors caused by the
request or the account (INVALID_PARAMETERS, CONTENT_MODERATED, AUTHENTICATION_FAILED,
QUOTA_EXCEEDED, NOT_FOUND...) prove the provider answered, so they count as
successes. RATE_LIMITED is neutral: the provider is up but pacing us, which the
token bucket already handles; opening the circuit on it would only move load
elsewhere for the length of a cool-down. INTERNAL_ERROR is our own fault: neutral.

The provider actor records each call's final outcome, after its retries: a
transient error that a retry absorbed is no sign of an unusable provider.

Only *new submissions* are gated. Status checks, cancels and reconciliation lookups
concern tasks already at the provider (already paid for), so they always go out;
their outcomes still feed the breaker, and in HALF_OPEN the first outcome of any
call decides. Time is ``trio.current_time()``, so MockClock drives cool-downs in
tests.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Any

import attrs
import trio

from actors.errors import ErrorCode
from actors.providers.base import ProviderSettings


class CircuitState(enum.IntEnum):
    """Values are what the ``easel_circuit_state`` gauge shows: higher is worse."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


#: Codes that say the provider is unwell; everything else proves it answered.
FAILURE_CODES = frozenset(
    {ErrorCode.PROVIDER_ERROR, ErrorCode.PROVIDER_UNAVAILABLE, ErrorCode.PROVIDER_TIMEOUT}
)
#: Codes that say nothing about the provider's health.
NEUTRAL_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL_ERROR})


def classify(code: ErrorCode | None) -> Outcome:
    """The breaker's view of one call: ``None`` is a call that succeeded."""
    if code is None:
        return Outcome.SUCCESS
    if code in FAILURE_CODES:
        return Outcome.FAILURE
    if code in NEUTRAL_CODES:
        return Outcome.NEUTRAL
    return Outcome.SUCCESS


@attrs.frozen
class BreakerConfig:
    """The knobs of one provider's breaker (``[providers.NAME] breaker_*``)."""

    #: Failure rate (0..1] over the window at which the circuit opens.
    threshold: float = attrs.field(
        default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)]
    )
    #: Seconds of calls the failure rate is measured over.
    window: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    #: Calls in the window before the rate means anything.
    min_calls: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    #: Seconds an open circuit waits before letting probes through.
    cooldown: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Submissions let through at once while half-open.
    probes: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> BreakerConfig:
        """The ``breaker_*`` fields of a provider section."""
        return cls(
            threshold=settings.breaker_threshold,
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            cooldown=settings.breaker_cooldown,
            probes=settings.breaker_probes,
        )


#: ``on_transition(name, old, new)``: called on every change of state.
TransitionCallback = Callable[[str, CircuitState, CircuitState], None]


@attrs.frozen
class CircuitView:
    """What others may know of a breaker: a snapshot, sent as a message.

    ``next_change_at`` is when the state may change by time alone (``None``: only
    a call's outcome can change it), on trio's clock.
    """

    state: CircuitState
    next_change_at: float | None = None


class CircuitBreaker:
    """One provider's breaker, owned by its provider actor.

    Reading (``state``, ``view``, ``statistics``) never changes anything: a breaker
    whose cool-down ended *reads* half-open, and the owner applies the change with
    ``advance()`` (its watcher does so when ``next_change_at`` comes), which is
    when ``on_transition`` hears of it. ``allow`` and ``record`` advance first.
    Not thread-safe; used from the trio thread only.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        on_transition: TransitionCallback,
    ) -> None:
        self.name = name
        self.config = config
        self._on_transition = on_transition
        self._state = CircuitState.CLOSED
        self._calls: collections.deque[tuple[float, bool]] = collections.deque()
        self._failures = 0  # failures among ``_calls``
        self._opened_at = 0.0
        self._probes: list[float] = []  # when each outstanding probe was let through
        self._changed = trio.Event()
        self.transitions = 0

    # -- reading (no side effects) ------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cool-down ended reads half-open."""
        if self._state is CircuitState.OPEN and trio.current_time() >= self.reopens_at:
            return CircuitState.HALF_OPEN
        return self._state

    @property
    def reopens_at(self) -> float:
        """When an open circuit turns half-open (meaningless unless OPEN)."""
        return self._opened_at + self.config.cooldown

    def next_change_at(self) -> float | None:
        """When the state may change by time alone: the end of the cool-down while
        open; while half-open with every probe out, when the oldest probe counts as
        lost (a probe whose job never reached the provider must not block forever)."""
        state = self.state
        if state is CircuitState.OPEN:
            return self.reopens_at
        if state is CircuitState.HALF_OPEN:
            now = trio.current_time()
            probes = [t for t in self._probes if now - t < self.config.cooldown]
            if len(probes) >= self.config.probes:
                return min(probes) + self.config.cooldown
        return None

    def view(self) -> CircuitView:
        return CircuitView(self.state, self.next_change_at())

    @property
    def closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    async def wait_changed(self) -> None:
        """Return at the next change of state applied to the breaker."""
        await self._changed.wait()

    def statistics(self) -> dict[str, Any]:
        now = trio.current_time()
        horizon = now - self.config.window
        recent = [failed for at, failed in self._calls if at >= horizon]
        state = self.state
        stats: dict[str, Any] = {
            "state": state.label,
            "calls": len(recent),
            "failures": sum(recent),
            "transitions": self.transitions,
        }
        if state is CircuitState.OPEN:
            stats["reopensIn"] = round(max(0.0, self.reopens_at - now), 3)
        return stats

    # -- asking and telling (the owner only) -----------------------------------

    def advance(self) -> None:
        """Apply the change time alone makes (open -> half-open once cooled down)."""
        if self._state is CircuitState.OPEN and trio.current_time() >= self.reopens_at:
            self._move(CircuitState.HALF_OPEN)

    def allow(self) -> bool:
        """May a new submission go to the provider now? While half-open this hands
        out one of the ``probes``: call it only when the job will really be sent."""
        self.advance()
        state = self._state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        now = trio.current_time()
        self._probes = [t for t in self._probes if now - t < self.config.cooldown]
        if len(self._probes) < self.config.probes:
            self._probes.append(now)
            return True
        return False

    def record(self, outcome: Outcome) -> None:
        """Feed the final outcome of one call to the provider (after its retries)."""
        self.advance()
        if outcome is Outcome.NEUTRAL:
            if self._probes:
                self._probes.pop(0)  # that probe proved nothing: let another go
            return
        state = self._state
        failed = outcome is Outcome.FAILURE
        if state is CircuitState.OPEN:
            return  # calls that were under way when it opened; only time reopens it
        if state is CircuitState.HALF_OPEN:
            self._move(CircuitState.OPEN if failed else CircuitState.CLOSED)
            return
        now = trio.current_time()
        self._calls.append((now, failed))
        self._failures += failed
        horizon = now - self.config.window
        while self._calls and self._calls[0][0] < horizon:
            _, old = self._calls.popleft()
            self._failures -= old
        calls = len(self._calls)
        if calls >= self.config.min_calls and self._failures / calls >= self.config.threshold:
            self._move(CircuitState.OPEN)

    # -- internals ------------------------------------------------------------

    def _move(self, new: CircuitState) -> None:
        old = self._state
        if new is old:
            return
        self._state = new
        self.transitions += 1
        self._probes.clear()
        if new is CircuitState.OPEN:
            self._opened_at = trio.current_time()
        if new is not CircuitState.HALF_OPEN:
            self._calls.clear()
            self._failures = 0
        self._changed.set()
        self._changed = trio.Event()
        self._on_transition(self.name, old, new)
