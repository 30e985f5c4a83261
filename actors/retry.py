"""How long to wait before trying again: the one backoff schedule of Easel.

Owns ``Backoff`` (exponential, capped, jittered, honouring ``Retry-After``),
``RetryPolicy`` (a ``Backoff`` with a number of attempts) and
``parse_retry_after`` (the header, in seconds). Every retry in the daemon
draws its waits from these: a provider's repeatable calls and the finalizer's
downloads (``RetryPolicy``), the supervisor's restarts, the outbox's delivery
schedule and the finalizer's attempts after a local problem (``Backoff``; the
supervisor bounds restarts by its intensity, the outbox by a row's age, the
finalizer not at all: a billed output is never given up for a local problem).

Why not ``stamina``: it sleeps with ``trio.sleep`` under trio (so MockClock would
drive it), but it is a loop around a call, not a schedule, and only the provider's
call loop has that shape. The outbox stores its next attempt's time in SQLite and
needs the wait as a value; the supervisor needs it per child, started over after a
healthy run, and counted against its restart intensity; the provider spends a
token, records a refusal and feeds its breaker between attempts. stamina's total
``timeout`` is measured on ``time.monotonic`` (through tenacity), not on trio's
clock, and its switches for tests are process-global. So the schedule is this
small pure type, and each caller keeps its loop.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from actors.providers.base import ProviderSettings

#: Beyond this many doublings every schedule has long reached its cap (and ``2**n``
#: would overflow a float).
_MAX_DOUBLINGS = 64


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff: the wait after failed attempt ``n`` (from 1).

    The ceiling is ``min(cap, base * 2**(n-1))``; the fraction ``jitter`` of it is
    random, so the wait lies in ``[ceiling * (1 - jitter), ceiling]`` (1: "full
    jitter", which spreads the retries of many callers that failed together; 0: a
    fixed schedule). ``cap`` is thus a true maximum, except that a wait is never
    shorter than the ``Retry-After`` the other side asked for.
    """

    base: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=1.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt ``attempt`` (jitter only shortens it)."""
        doublings = max(attempt - 1, 0)
        if doublings >= _MAX_DOUBLINGS:
            return self.cap
        return min(self.cap, self.base * 2**doublings)

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one.

        ``retry_after``: the other side's ``Retry-After``, in seconds; the wait is
        never shorter. ``rng``: the source of the jitter (the ``random`` module's
        when not given; tests pass a seeded one).
        """
        draw = (rng or random).random()
        delay = self.ceiling(attempt) * (1 - self.jitter * draw)
        return max(delay, retry_after or 0.0)


@attrs.frozen(kw_only=True)
class RetryPolicy(Backoff):
    """A ``Backoff`` for calls retried a bounded number of times.

    ``max_attempts`` counts the first try: 1 means never retried.
    """

    max_attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> RetryPolicy:
        """``max_attempts`` and the ``retry_*`` fields of a provider section."""
        return cls(
            max_attempts=settings.max_attempts,
            base=settings.retry_base,
            cap=settings.retry_cap,
            jitter=settings.retry_jitter,
        )


#: The longest ``Retry-After`` taken as asked: a peer that says ``inf`` or a date
#: next year must not stop a provider, a download or a delivery for good.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP
    date), at most ``MAX_RETRY_AFTER``, or ``None`` when it is absent or
    unreadable (``nan``, ``inf`` included)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        seconds = when.timestamp() - time.time()
    return bounded_retry_after(seconds)


def bounded_retry_after(seconds: float | None) -> float | None:
    """A wait a peer asked for, however it was read (a header, an adapter's own
    field): ``None`` unless finite, else clamped to ``[0, MAX_RETRY_AFTER]``."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
