"""A provider's two limits: a token bucket for its request rate, and in-flight slots.

Tokens pace *calls* (submissions, status checks, cancels all spend one), the way a
provider's requests-per-minute limit counts them. Slots bound *tasks*: a job holds
one from the moment it is handed to the provider until it is terminal, the way a
provider's "N active tasks" limit counts them. Both are plain objects owned by the
provider actor and made afresh each time it starts (slots from the jobs the store
shows at the provider).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import trio


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated: float | None = None
        self._lock = trio.Lock()  # first come, first served among waiters

    def _refill(self) -> None:
        now = trio.current_time()
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def take_nowait(self) -> bool:
        """Spend a token if one is there now."""
        self._refill()
        if self._tokens >= 1 and not self._lock.locked():
            self._tokens -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a token and spend it. Waiters are served in arrival order."""
        async with self._lock:
            self._refill()
            while self._tokens < 1:
                await trio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1

    def penalize(self, seconds: float) -> None:
        """Empty the bucket for ``seconds`` (the provider said 429, Retry-After)."""
        self._refill()
        self._tokens = min(self._tokens, -seconds * self.rate)

    @property
    def available(self) -> float:
        """Tokens now (a reading: it changes nothing)."""
        if self._updated is None:
            return self._tokens
        elapsed = trio.current_time() - self._updated
        return min(self.burst, self._tokens + elapsed * self.rate)


@attrs.frozen
class SlotStatistics:
    capacity: int
    held: int


class SlotPool:
    """In-flight task slots, held per job id.

    Owned by the provider actor: the scheduler never touches it, it is told how
    many jobs it may hand over (``ProviderReady.free``, then one ``Demand`` per slot
    freed). ``hold`` never waits: a job handed over when every slot is taken is
    given back to the scheduler instead. ``release`` is idempotent, so every path
    that ends a job may release without knowing whether another already did.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: set[str] = set()

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self._held))

    def hold(self, job_id: str) -> bool:
        """Take a slot for ``job_id`` if one is free (False: none is)."""
        if len(self._held) >= self.capacity:
            return False
        self._held.add(job_id)
        return True

    def retain(self, job_ids: Iterable[str]) -> None:
        """Hold exactly ``job_ids`` (the jobs found at the provider when its actor
        starts), even beyond capacity: they are at the provider whether or not we
        have room for them."""
        self._held = set(job_ids)

    def release(self, job_id: str) -> bool:
        """Free ``job_id``'s slot; whether it held one."""
        if job_id in self._held:
            self._held.discard(job_id)
            return True
        return False

    def holds(self, job_id: str) -> bool:
        return job_id in self._held

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(self.capacity, len(self._held))
