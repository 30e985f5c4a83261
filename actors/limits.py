"""A provider's two limits: a token bucket for its request rate, and in-flight slots.

Tokens pace *calls* (submissions, status checks, cancels all spend one), the way a
provider's requests-per-minute limit counts them. Slots bound *tasks*: a job holds
one from the moment it is handed to the provider until it is terminal, the way a
provider's "N active tasks" limit counts them. Both are plain trio objects owned by
the provider actor and outliving its restarts.
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
        self._refill()
        return self._tokens


@attrs.define
class SlotStatistics:
    capacity: int
    held: int
    waiting: int


class SlotPool:
    """In-flight task slots, held per job id.

    ``acquire`` waits for a free slot; ``release(job_id)`` is idempotent, so every
    path that ends a job may release without knowing whether another already did.
    ``adopt`` takes a slot without waiting, for tasks found running after a restart:
    they are at the provider whether or not we have room for them.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: set[str] = set()
        self._anonymous = 0
        self._changed = trio.Event()
        self._waiting = 0

    @property
    def free(self) -> int:
        return self.capacity - len(self._held) - self._anonymous

    async def acquire(self) -> SlotTicket:
        """Wait for a free slot; the ticket is then bound to a job with ``bind``."""
        self._waiting += 1
        try:
            while self.free <= 0:
                if self._changed.is_set():
                    self._changed = trio.Event()
                await self._changed.wait()
        finally:
            self._waiting -= 1
        self._anonymous += 1
        return SlotTicket(self)

    def retain(self, job_ids: Iterable[str]) -> None:
        """Hold exactly ``job_ids`` (the jobs found at the provider when its actor
        starts): a slot bound to a job that a crash left QUEUED, or that was moved
        to another provider meanwhile, is freed instead of lost for good."""
        self._held = set(job_ids)
        self._changed.set()

    def release(self, job_id: str) -> None:
        if job_id in self._held:
            self._held.discard(job_id)
            self._changed.set()

    def holds(self, job_id: str) -> bool:
        return job_id in self._held

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(self.capacity, len(self._held) + self._anonymous, self._waiting)


@attrs.define(eq=False)
class SlotTicket:
    """A slot granted but not yet tied to a job."""

    pool: SlotPool
    used: bool = False

    def bind(self, job_id: str) -> None:
        """Tie the slot to ``job_id``; a job that already holds one gives this back."""
        if self.used:
            return
        self.used = True
        self.pool._anonymous -= 1
        if job_id in self.pool._held:
            self.pool._changed.set()
        self.pool._held.add(job_id)

    def give_back(self) -> None:
        if not self.used:
            self.used = True
            self.pool._anonymous -= 1
            self.pool._changed.set()
