"""Quotas and backpressure: how much one API key, and the daemon as a whole, may take on.

Per key (its own limits stored with it, else the ``[limits]`` defaults): a request
rate (a token bucket, spent by every request the key makes), a maximum of
unfinished jobs (queued or at a provider), and an optional daily spend (each
job's price from the catalog, ``actors/pricing.py``, summed over the jobs the key
had accepted since midnight UTC). For the daemon: a maximum of unfinished jobs
across all callers (``max_queue_depth``). Past any of them the request is refused
with RATE_LIMITED (429), ``Retry-After`` and the limit named in the error's
``details.limit``.

A batch (``admit_batch``) is admitted whole or refused: its items' summed cost
against the key's daily spend, and the daemon's unfinished jobs against
``max_queue_depth`` as for one job. Its items count as unfinished jobs (toward
``max_active_jobs`` and ``max_queue_depth``) only once released to the queue
(``released``, by the batch actor): a batch of 50,000 items waits in the store,
not in any queue, and runs at most its ``maxConcurrency`` at once, so it is not
refused for its size. Released items still count against the key's limit seen
by its single submissions.

The unfinished jobs are counted in memory, so a submission costs no extra database
read: a job counts from the moment it is admitted (before its insert: checking and
reserving happen with no checkpoint between them, so a burst of concurrent
submissions cannot overshoot) until the change feed shows it terminal; a
reservation whose insert failed or replayed an earlier job is given back. ``run``
(the first child of the supervision tree) reloads the counts from the store before
reporting started, so at the first start nothing else has written yet. The day's
spend of a key with a spend limit is read from the store the first time it is
needed in a day, then kept.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping

import attrs
import trio

from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode
from actors.jobs import Job
from actors.keys import ApiKey, KeyLimits, KeyRing
from actors.limits import TokenBucket
from actors.store.protocol import Store

#: Seconds a client refused for too many unfinished jobs is told to wait: jobs end
#: at their own pace, so this is a polite interval, not a promise.
BUSY_RETRY_AFTER = 5

_DAY = 86_400


@attrs.frozen
class QuotaSettings:
    """``[limits]``: the defaults of every key's limits, and the daemon's own. 0
    turns a limit off."""

    #: Requests a second per key.
    rate: float = attrs.field(default=20.0, validator=attrs.validators.ge(0))
    #: Requests a key may make at once before ``rate`` applies.
    burst: int = attrs.field(default=40, validator=attrs.validators.ge(1))
    #: Jobs of one key queued or at a provider at once.
    max_active_jobs: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    #: Cost (the catalog's units) of the jobs one key may have accepted per UTC day.
    daily_spend: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    #: Jobs queued or at a provider at once, across every caller.
    max_queue_depth: int = attrs.field(default=10_000, validator=attrs.validators.ge(0))

    def of(self, key: ApiKey) -> KeyLimits:
        """``key``'s limits, the defaults filled in."""
        own = key.limits
        return KeyLimits(
            rate=self.rate if own.rate is None else own.rate,
            burst=self.burst if own.burst is None else own.burst,
            max_active_jobs=self.max_active_jobs if own.max_active_jobs is None
            else own.max_active_jobs,
            daily_spend=self.daily_spend if own.daily_spend is None else own.daily_spend,
        )


def refused(limit: str, value: float, message: str, retry_after: float) -> EaselError:
    """The one shape of every refusal: RATE_LIMITED naming the limit and its value."""
    wait = max(1, math.ceil(retry_after))
    return EaselError(ErrorCode.RATE_LIMITED, message,
                      {"limit": limit, "value": value, "retryAfter": wait}, retry_after=wait)


@attrs.define(eq=False)
class Ticket:
    """What an admitted submission holds until its insert is known."""

    quotas: Quotas
    owner: str | None
    cost: float
    day: int
    released: bool = False
    #: Unfinished jobs it reserved: one for a job, none for a batch.
    jobs: int = 1

    def release(self) -> None:
        """Give the reservation back (the insert failed or replayed a job)."""
        if not self.released:
            self.released = True
            self.quotas._give_back(self)


class Quotas:
    """The counters and buckets behind every limit; one per runtime."""

    def __init__(self, settings: QuotaSettings, *, store: Store, keys: KeyRing,
                 catalog: Mapping[str, ModelSpec],
                 changes: trio.MemoryReceiveChannel[Job]) -> None:
        self.settings = settings
        self._store = store
        self._keys = keys
        self._catalog = catalog
        self._changes = changes
        self._active: collections.Counter[str | None] = collections.Counter()
        self._total = 0
        self._buckets: dict[str, TokenBucket] = {}
        #: owner -> (UTC day number, cost accepted that day).
        self._spend: dict[str, tuple[int, float]] = {}
        self._loading = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reload the unfinished counts, then follow the change feed."""
        await self._store.barrier()
        while True:  # what the feed holds now is in the counts read next
            try:
                self._changes.receive_nowait()
            except trio.WouldBlock:
                break
        counts = await self._store.unfinished_by_owner()
        self._active = collections.Counter(counts)
        self._total = sum(counts.values())
        task_status.started()
        async for job in self._changes:
            # A batch item that ended without being released was never counted.
            if job.state.terminal and (job.batch_id is None or job.released_at is not None):
                self._finished(job.owner)

    def _finished(self, owner: str | None) -> None:
        self._total = max(0, self._total - 1)
        if self._active[owner] > 1:
            self._active[owner] -= 1
        else:
            self._active.pop(owner, None)

    def released(self, job: Job) -> None:
        """Count a batch item just released to the queue (WAITING -> QUEUED) as
        unfinished until the change feed shows it ended."""
        self._active[job.owner] += 1
        self._total += 1

    def _give_back(self, ticket: Ticket) -> None:
        if ticket.jobs:
            self._finished(ticket.owner)
        if ticket.owner is None:
            return
        day, spent = self._spend.get(ticket.owner, (None, 0.0))
        if day == ticket.day:
            self._spend[ticket.owner] = (ticket.day, spent - ticket.cost)

    def take_request(self, key: ApiKey) -> None:
        """Spend one of ``key``'s request tokens, or raise RATE_LIMITED."""
        limits = self.settings.of(key)
        assert limits.rate is not None and limits.burst is not None
        if not limits.rate:
            return
        bucket = self._buckets.get(key.id)
        if bucket is None:
            bucket = self._buckets[key.id] = TokenBucket(limits.rate, limits.burst)
        if not bucket.take_nowait():
            raise refused("rate", limits.rate,
                          f"more than {limits.rate:g} requests a second with this key",
                          (1 - bucket.available) / limits.rate)

    async def admit(self, job: Job) -> Ticket:
        """Reserve room for ``job`` (stamping its ``cost``), or raise RATE_LIMITED
        naming the limit it would pass."""
        spec = self._catalog.get(job.model)
        cost = spec.price(job.number_of_outputs, job.parameters) if spec is not None else 0.0
        if cost:
            job.cost = cost
        return await self._reserve(job.owner, cost, 1)

    async def admit_batch(self, owner: str | None, cost: float) -> Ticket:
        """Reserve a batch's summed ``cost`` of ``owner``'s daily spend, or raise
        RATE_LIMITED: past the spend, or with the daemon at ``max_queue_depth``
        (no unfinished job is reserved: items count once released)."""
        return await self._reserve(owner, cost, 0)

    async def _reserve(self, owner: str | None, cost: float, count: int) -> Ticket:
        limits = KeyLimits()
        if owner is not None:
            key = await self._keys.get(owner)
            if key is not None:
                limits = self.settings.of(key)
        now = wall_now()
        day = int(now // _DAY)
        if owner is not None and limits.daily_spend:
            await self._load_spend(owner, day)
        # From here to the reservation: no checkpoint.
        depth = self.settings.max_queue_depth
        if depth and self._total >= depth:
            raise refused("max_queue_depth", depth,
                          f"Easel holds {depth} unfinished jobs, its most", BUSY_RETRY_AFTER)
        if count and limits.max_active_jobs and self._active[owner] >= limits.max_active_jobs:
            raise refused("max_active_jobs", limits.max_active_jobs,
                          f"this key has {limits.max_active_jobs} unfinished jobs, its most",
                          BUSY_RETRY_AFTER)
        if owner is not None and limits.daily_spend:
            spent = self._spend[owner][1]
            if spent + cost > limits.daily_spend:
                raise refused("daily_spend", limits.daily_spend,
                              f"this key's jobs today would cost more than "
                              f"{limits.daily_spend:g}, its daily limit",
                              (day + 1) * _DAY - now)
            self._spend[owner] = (day, spent + cost)
        if count:
            self._active[owner] += count
            self._total += count
        return Ticket(self, owner, cost, day, jobs=count)

    async def _load_spend(self, owner: str, day: int) -> None:
        async with self._loading:
            if self._spend.get(owner, (None, 0.0))[0] != day:
                self._spend[owner] = (day, await self._store.spend_since(owner, day * _DAY))
