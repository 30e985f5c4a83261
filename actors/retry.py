"""How repeatable calls are retried: one policy type (placeholder until the shared
retry module lands; moved here from the provider actor unchanged)."""

from __future__ import annotations

import random

import attrs

from actors.providers.base import ProviderSettings


@attrs.frozen
class RetryPolicy:
    """How a provider's repeatable calls are retried.

    Attempt ``n`` (from 1) that failed waits ``min(cap, base * 2**(n-1))`` seconds,
    of which the fraction ``jitter`` is random (1: "full jitter", spreading the
    retries of many jobs that failed together; 0: a fixed schedule), and never less
    than the provider's ``Retry-After``. ``max_attempts`` counts the first try.
    """

    max_attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    base: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=1.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> RetryPolicy:
        """``max_attempts`` and the ``retry_*`` fields of a provider section."""
        return cls(
            max_attempts=settings.max_attempts,
            base=settings.retry_base,
            cap=settings.retry_cap,
            jitter=settings.retry_jitter,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        delay = ceiling * (1 - self.jitter * random.random())
        return max(delay, retry_after or 0.0)
