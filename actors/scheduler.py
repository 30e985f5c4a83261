"""The scheduler actor: the persistent priority queue of QUEUED jobs.

The queue is persistent because its contents are the QUEUED rows in SQLite: the
scheduler reloads them whenever it starts, and keeps a heap per provider in memory
(priority descending, then age). A job is handed to its provider actor only once
that provider grants an in-flight slot, so a busy provider's jobs wait here, in
order, instead of piling up in its mailbox.

Mailbox: ``Enqueue(job)`` for a newly accepted job, ``Resync(provider)`` when a
provider actor restarted and may have dropped jobs it had been handed,
``Attach(provider, breaker, catalog)`` from a starting provider actor (its circuit
breaker and the catalog, for routing). Handing a job twice is harmless: the
provider actor's QUEUED -> SUBMITTING transition is conditional, and only one can
win.

Routing around an open circuit (``actors/breaker.py``): a provider's dispatcher asks
its breaker before handing over a job. When the breaker refuses, every job in that
queue whose model names a later fallback on a provider whose circuit is *closed* is
moved there (its row's ``provider``, ``provider_model`` and ``served_model`` are
updated, with a ``fallback`` and a ``circuit`` event); the others stay QUEUED, held
(one ``circuit`` event each), until the circuit lets a probe through or another
circuit closes. Held jobs are never failed for it: a client that cannot wait cancels.
Nothing has been sent for a QUEUED job, so moving it can never pay twice.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Mapping

import attrs
import trio

from actors import metrics
from actors.breaker import CircuitBreaker
from actors.catalog import ModelSpec, later_models
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
    """Reload QUEUED jobs from SQLite: one provider's, or every one's (``None``)."""

    provider: str | None


@attrs.frozen
class Attach:
    """From a provider actor as it starts: route around ``breaker`` using ``catalog``."""

    provider: str
    breaker: CircuitBreaker
    catalog: Mapping[str, ModelSpec]


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
    #: Jobs already told (by an event) that they wait for this provider's circuit.
    held: set[str] = attrs.field(factory=set)
    #: Jobs already looked at for a fallback since the circuits last changed, so a
    #: storm of submissions to an open provider costs one look per job, not n².
    examined: set[str] = attrs.field(factory=set)


class Scheduler:
    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        mailbox_size: int = 1024,
        *,
        catalog: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.send, self._receive = trio.open_memory_channel[Enqueue | Resync | Attach](
            mailbox_size
        )
        self._queues: dict[str, _ProviderQueue] = {}
        # Kept across restarts of ``run``: they are the providers' objects, not ours.
        self.catalog: Mapping[str, ModelSpec] = catalog or {}
        self._breakers: dict[str, CircuitBreaker] = {}
        #: ``fits(job, model)``: whether ``model`` can take the job's request (wired
        #: by the runtime, which knows each provider's adapter family).
        self.fits: Callable[[Job, str], bool] = lambda job, model: True

    def add_provider(
        self,
        name: str,
        slots: SlotPool,
        send: Callable[[Dispatch], object],
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._queues[name] = _ProviderQueue(slots=slots, send=send)
        if breaker is not None:
            self.attach_breaker(name, breaker)

    def attach_breaker(self, name: str, breaker: CircuitBreaker) -> None:
        """Gate ``name``'s dispatches on ``breaker`` (idempotent)."""
        old = self._breakers.get(name)
        if old is breaker:
            return
        if old is not None and self._circuit_moved in old.listeners:
            old.listeners.remove(self._circuit_moved)
        self._breakers[name] = breaker
        breaker.listeners.append(self._circuit_moved)
        self._wake_all()  # held jobs may have somewhere to go now

    def _circuit_moved(self, *_: object) -> None:
        # Synchronous, from the breaker itself: a change can never slip between
        # a dispatcher's look and its wait.
        self._wake_all()

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
            queue.held.clear()
            queue.examined.clear()
        await self._load()
        async with trio.open_nursery() as nursery:
            for name, queue in self._queues.items():
                nursery.start_soon(self._dispatch, queue, name, name=f"dispatch:{name}")
            async for message in self._receive:
                if isinstance(message, Enqueue):
                    self._push(message.job)
                elif isinstance(message, Attach):
                    if message.catalog:
                        self.catalog = message.catalog
                    self.attach_breaker(message.provider, message.breaker)
                else:
                    await self._load(message.provider)

    def _wake_all(self) -> None:
        for queue in self._queues.values():
            queue.examined.clear()  # circuits moved: look at every held job again
            queue.changed.set()

    async def _next_job(self, name: str, queue: _ProviderQueue) -> Job:
        """The best queued job, once ``name``'s circuit lets one through.

        While the breaker refuses, jobs that can move to a fallback are moved and
        the rest are held; we wait for a new job, any circuit's change, or the
        moment this circuit may change by time alone.
        """
        while True:
            if queue.heap:
                breaker = self._breakers.get(name)
                if breaker is None or breaker.allow():
                    _, _, job_id = heapq.heappop(queue.heap)
                    queue.held.discard(job_id)
                    queue.examined.discard(job_id)
                    return queue.jobs.pop(job_id)
                # A fresh event *before* the awaits in _divert: a job or a circuit
                # change arriving meanwhile must wake the wait below.
                queue.changed = trio.Event()
                await self._divert(name, queue, breaker)
                if queue.heap:
                    with trio.move_on_at(breaker.next_change_at() or float("inf")):
                        await queue.changed.wait()
                    continue
            queue.changed = trio.Event()
            await queue.changed.wait()

    def _route(self, job: Job) -> str | None:
        """The first later fallback of ``job`` whose provider's circuit is closed."""
        for model in later_models(self.catalog, job.model, job.served_model):
            spec = self.catalog[model]
            if spec.provider not in self._queues or not self.fits(job, model):
                continue
            breaker = self._breakers.get(spec.provider)
            if breaker is None or breaker.closed:
                return model
        return None

    async def _divert(self, name: str, queue: _ProviderQueue, breaker: CircuitBreaker) -> None:
        """Move what can move off ``name``'s open circuit; note what must wait."""
        moving: list[tuple[Job, str]] = []
        holding: list[Job] = []
        for job_id, job in list(queue.jobs.items()):
            if job_id in queue.examined:
                continue
            queue.examined.add(job_id)
            target = self._route(job)
            if target is None:
                if job_id not in queue.held:
                    queue.held.add(job_id)
                    holding.append(job)
            else:
                queue.held.discard(job_id)
                queue.examined.discard(job_id)
                del queue.jobs[job_id]
                moving.append((job, target))
        if moving:
            queue.heap = [entry for entry in queue.heap if entry[2] in queue.jobs]
            heapq.heapify(queue.heap)
        state = breaker.state.label
        for job in holding:
            await self.store.add_event(job.id, "circuit", {
                "provider": name, "state": state, "action": "held",
            })
        for job, target in moving:
            await self._move(job, target, name, state)

    async def _move(self, job: Job, target: str, provider: str, state: str) -> None:
        spec = self.catalog[target]
        current = job.serving_model
        moved = await self.store.update(
            job.id, JobState.QUEUED,
            provider=spec.provider, provider_model=spec.provider_model, served_model=target,
            event={"kind": "fallback", "from": current, "to": target, "reason": "circuit open",
                   "provider": provider},
        )
        if moved is None:
            return  # cancelled meanwhile
        await self.store.add_event(job.id, "circuit", {
            "provider": provider, "state": state, "action": "rerouted", "to": target,
        })
        metrics.FALLBACKS.labels(model=job.model, to=target, reason="circuit_open").inc()
        log.info("job %s rerouted from %s to %s: circuit of %s is %s",
                 job.id, current, target, provider, state)
        self._push(moved)

    async def _dispatch(self, queue: _ProviderQueue, name: str) -> None:
        while True:
            if self.lifecycle.draining:
                await trio.sleep_forever()
            # Slot first, then the job: the job taken is the best one queued at the
            # moment the provider has room, not the best one when we began waiting.
            ticket = await queue.slots.acquire()
            try:
                job = await self._next_job(name, queue)
            except BaseException:
                ticket.give_back()
                raise
            if self.lifecycle.draining:
                ticket.give_back()
                self._push(job)
                continue
            await queue.send(Dispatch(job, ticket))

