"""The scheduler actor: the persistent priority queue of QUEUED jobs.

The queue is persistent because its contents are the QUEUED rows in SQLite: the
scheduler reloads them whenever it starts, and keeps a heap per provider in memory
(priority descending, then age). A job is handed to its provider actor only once
that provider grants an in-flight slot, so a busy provider's jobs wait here, in
order, instead of piling up in its mailbox.

Mailbox: ``Enqueue(job)`` for a newly accepted job, ``Resync(provider)`` when a
provider actor restarted and may have dropped jobs it had been handed. Handing a
job twice is harmless: the provider actor's QUEUED -> SUBMITTING transition is
conditional, and only one can win.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable

import attrs
import trio

from actors.jobs import Job, JobState
from actors.lifecycle import Lifecycle
from actors.limits import SlotPool, SlotTicket
from actors.store import Store

log = logging.getLogger(__name__)


@attrs.frozen
class Enqueue:
    job: Job


@attrs.frozen
class Resync:
    provider: str


@attrs.frozen
class Dispatch:
    """Sent to a provider actor: submit ``job`` with the slot in ``ticket``."""

    job: Job
    ticket: SlotTicket


@attrs.define
class _ProviderQueue:
    slots: SlotPool
    send: Callable[[Dispatch], object]  # async send to the provider's mailbox
    heap: list[tuple[int, int, str]] = attrs.field(factory=list)
    jobs: dict[str, Job] = attrs.field(factory=dict)
    changed: trio.Event = attrs.field(factory=trio.Event)


class Scheduler:
    def __init__(self, store: Store, lifecycle: Lifecycle, mailbox_size: int = 1024) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.send, self._receive = trio.open_memory_channel[Enqueue | Resync](mailbox_size)
        self._queues: dict[str, _ProviderQueue] = {}

    def add_provider(self, name: str, slots: SlotPool, send: Callable[[Dispatch], object]) -> None:
        self._queues[name] = _ProviderQueue(slots=slots, send=send)

    def queued(self, provider: str | None = None) -> int:
        if provider is not None:
            return len(self._queues[provider].jobs)
        return sum(len(q.jobs) for q in self._queues.values())

    def _push(self, job: Job) -> None:
        queue = self._queues.get(job.provider)
        if queue is None:
            log.error("job %s names unknown provider %s; left QUEUED", job.id, job.provider)
            return
        if job.id in queue.jobs:
            return
        queue.jobs[job.id] = job
        heapq.heappush(queue.heap, (-job.priority, job.seq or 0, job.id))
        queue.changed.set()

    async def _load(self, provider: str | None = None) -> None:
        for job in await self.store.jobs_in([JobState.QUEUED], provider=provider):
            self._push(job)

    async def run(self) -> None:
        for queue in self._queues.values():
            queue.heap.clear()
            queue.jobs.clear()
        await self._load()
        async with trio.open_nursery() as nursery:
            for name, queue in self._queues.items():
                nursery.start_soon(self._dispatch, queue, name=f"dispatch:{name}")
            async for message in self._receive:
                if isinstance(message, Enqueue):
                    self._push(message.job)
                else:
                    await self._load(message.provider)

    async def _next_job(self, queue: _ProviderQueue) -> Job:
        while not queue.heap:
            queue.changed = trio.Event()
            await queue.changed.wait()
        _, _, job_id = heapq.heappop(queue.heap)
        return queue.jobs.pop(job_id)

    async def _dispatch(self, queue: _ProviderQueue) -> None:
        while True:
            if self.lifecycle.draining:
                await trio.sleep_forever()
            # Slot first, then the job: the job taken is the best one queued at the
            # moment the provider has room, not the best one when we began waiting.
            ticket = await queue.slots.acquire()
            try:
                job = await self._next_job(queue)
            except BaseException:
                ticket.give_back()
                raise
            if self.lifecycle.draining:
                ticket.give_back()
                self._push(job)
                continue
            await queue.send(Dispatch(job, ticket))
