"""The scheduler actor: the persistent priority queue of QUEUED jobs, and routing.

The queue is persistent because its contents are the QUEUED rows in the store: the
scheduler reloads them whenever it starts, and keeps a heap per provider in memory
(priority descending, then age). It owns, per provider, the heap, a *credit* (how
many more jobs the provider has said it can take) and the last ``CircuitView`` the
provider reported. It never touches a provider's slots or breaker: providers tell
it what it needs as messages, and it hands a job over only while the provider's
credit lasts, so a busy provider's jobs wait here, in order, not in its mailbox.

Mailbox (``actors/messages.py``): ``Enqueue`` (a new job), ``ProviderReady`` (a
provider started: credit and circuit reset, its QUEUED jobs reloaded), ``Demand``
(credit back), ``CircuitChanged``, ``Returned`` (a job handed over but not sent),
``Unaccepted`` (a submission the provider provably refused). It sends ``Submit`` to
the providers. Handing a job twice is harmless: the provider actor's
QUEUED -> SUBMITTING transition is conditional, and only one can win.

Routing is decided here and only here, by ``actors/routing.py``: while a provider's
circuit is open, each of its queued jobs that has a fallback on a closed circuit is
moved there and the others are held (one ``circuit`` event each, never failed for
it); an ``Unaccepted`` job moves to its fallback or fails with its error.
"""

from __future__ import annotations

import collections
import heapq
import logging
from collections.abc import Mapping

import attrs
import trio

from actors.breaker import CircuitState, CircuitView
from actors.catalog import ModelSpec
from actors.jobs import Job, JobState
from actors.lifecycle import Lifecycle
from actors.messages import (
    Announce,
    CircuitChanged,
    Demand,
    Enqueue,
    ProviderMessage,
    ProviderReady,
    Returned,
    SchedulerMessage,
    Submit,
    Unaccepted,
)
from actors.monitor import Monitor
from actors.routing import Router, reroute
from actors.store import Store

log = logging.getLogger(__name__)

#: How many recent hand-overs a queue remembers (per provider), to drop duplicates.
HANDED_MEMORY = 10_000


@attrs.define
class _ProviderQueue:
    send: trio.MemorySendChannel[ProviderMessage]
    heap: list[tuple[int, int, str]] = attrs.field(factory=list)
    jobs: dict[str, Job] = attrs.field(factory=dict)
    #: Jobs the provider has said it can take; 0 until it reports ready.
    credit: int = 0
    circuit: CircuitView = CircuitView(CircuitState.CLOSED)
    #: Set when the provider returned a job its half-open breaker would not let
    #: through: hand nothing over until the circuit changes or this time comes.
    paused_until: float | None = None
    changed: trio.Event = attrs.field(factory=trio.Event)
    #: Jobs already told (by an event) that they wait for this provider's circuit.
    held: set[str] = attrs.field(factory=set)
    #: Jobs already looked at for a fallback since the circuits last changed, so a
    #: storm of submissions to an open provider costs one look per job, not n².
    examined: set[str] = attrs.field(factory=set)
    #: Jobs handed over lately: an ``Enqueue`` or a reload that names one of them
    #: again (a reload can read a new job before its ``Enqueue`` arrives) does not
    #: hand it over twice. Forgotten when the provider restarts (what it had may
    #: be lost) and when it gives one back; bounded, oldest first.
    handed: collections.OrderedDict[str, None] = attrs.field(factory=collections.OrderedDict)

    def clear(self) -> None:
        self.heap.clear()
        self.jobs.clear()
        self.held.clear()
        self.examined.clear()
        self.handed.clear()
        self.credit = 0
        self.circuit = CircuitView(CircuitState.CLOSED)
        self.paused_until = None

    def wake(self) -> None:
        self.changed.set()


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        lifecycle: Lifecycle,
        monitor: Monitor,
        router: Router,
        catalog: Mapping[str, ModelSpec],
        providers: Mapping[str, trio.MemorySendChannel[ProviderMessage]],
        mailbox: trio.MemoryReceiveChannel[SchedulerMessage],
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._monitor = monitor
        self._router = router
        self._catalog = catalog
        self._mailbox = mailbox
        self._queues = {name: _ProviderQueue(send) for name, send in providers.items()}

    def statistics(self) -> dict[str, int]:
        """Jobs queued here, per provider."""
        return {name: len(queue.jobs) for name, queue in self._queues.items()}

    # -- the actor -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for queue in self._queues.values():
            queue.clear()
        await self._store.barrier()  # what a previous run sent is committed
        await self._load()
        async with trio.open_nursery() as nursery:
            for name, queue in self._queues.items():
                nursery.start_soon(self._dispatch, name, queue, name=f"dispatch:{name}")
            task_status.started()
            # A restart lost every provider's credit and circuit: ask again (a
            # provider starting now says it anyway; twice is harmless).
            for queue in self._queues.values():
                await queue.send.send(Announce())
            async for message in self._mailbox:
                await self._handle(message)

    async def _handle(self, message: SchedulerMessage) -> None:
        if isinstance(message, Enqueue):
            self._push(message.job)
            return
        if isinstance(message, Unaccepted):
            await self._unaccepted(message)
            return
        queue = self._queues.get(message.job.provider if isinstance(message, Returned)
                                 else message.provider)
        if queue is None:
            return
        if isinstance(message, Demand):
            queue.credit += message.slots
        elif isinstance(message, CircuitChanged):
            self._circuit_moved(queue, message.circuit)
        elif isinstance(message, ProviderReady):
            queue.credit = message.free
            self._circuit_moved(queue, message.circuit)
            queue.handed.clear()  # a restarted provider may have lost what it had
            await self._load(message.provider)
        else:  # Returned
            if message.circuit is None:
                queue.credit = 0  # it is full: it says Demand when a slot frees
            else:
                queue.credit += 1  # the slot it had taken for the job is free again
                self._circuit_moved(queue, message.circuit)
                if message.circuit.state is CircuitState.HALF_OPEN:
                    queue.paused_until = message.circuit.next_change_at or float("inf")
            self._requeue(message.job)
        queue.wake()

    def _circuit_moved(self, queue: _ProviderQueue, circuit: CircuitView) -> None:
        changed = circuit.state is not queue.circuit.state
        queue.circuit = circuit
        queue.paused_until = None
        if changed:  # held jobs everywhere may have somewhere to go now
            for other in self._queues.values():
                other.examined.clear()
                other.wake()

    def _push(self, job: Job) -> None:
        queue = self._queues.get(job.provider)
        if queue is None:
            log.error("job %s names unknown provider %s; left QUEUED", job.id, job.provider)
            return
        if job.id in queue.jobs or job.id in queue.handed:
            return
        queue.jobs[job.id] = job
        heapq.heappush(queue.heap, (-job.priority, job.seq or 0, job.id))
        # A new job changes what the dispatcher does only when it could hand one over
        # or must move jobs off an open circuit; a full provider is woken by its
        # Demand, not by every submission while it is full.
        if queue.credit > 0 or queue.circuit.state is CircuitState.OPEN:
            queue.wake()

    def _requeue(self, job: Job) -> None:
        """Queue a job we decided to hand over again (given back, or moved)."""
        queue = self._queues.get(job.provider)
        if queue is not None:
            queue.handed.pop(job.id, None)
        self._push(job)

    async def _load(self, provider: str | None = None) -> None:
        for job in await self._store.jobs_in([JobState.QUEUED], provider=provider):
            self._push(job)

    # -- handing jobs over -----------------------------------------------------------

    async def _dispatch(self, name: str, queue: _ProviderQueue) -> None:
        while True:
            if self._lifecycle.draining:
                await trio.sleep_forever()
            job = await self._next_job(name, queue)
            queue.credit -= 1
            queue.handed[job.id] = None
            if len(queue.handed) > HANDED_MEMORY:
                queue.handed.popitem(last=False)
            await queue.send.send(Submit(job))

    async def _next_job(self, name: str, queue: _ProviderQueue) -> Job:
        """The best queued job, once the provider has credit and its circuit lets
        one through. While the circuit is open, jobs that can move are moved and
        the rest are held."""
        while True:
            # A fresh event *before* any await: a message arriving meanwhile must
            # wake the wait below.
            queue.changed = trio.Event()
            wait_until = float("inf")
            if queue.heap:
                if queue.circuit.state is CircuitState.OPEN:
                    await self._divert(name, queue)
                elif queue.paused_until is not None and trio.current_time() < queue.paused_until:
                    wait_until = queue.paused_until
                elif queue.credit > 0 and not self._lifecycle.draining:
                    _, _, job_id = heapq.heappop(queue.heap)
                    queue.held.discard(job_id)
                    queue.examined.discard(job_id)
                    return queue.jobs.pop(job_id)
            with trio.move_on_at(wait_until):
                await queue.changed.wait()

    def _circuits(self) -> dict[str, CircuitState]:
        return {name: queue.circuit.state for name, queue in self._queues.items()}

    async def _divert(self, name: str, queue: _ProviderQueue) -> None:
        """Move what can move off ``name``'s open circuit; note what must wait."""
        moving: list[tuple[Job, str]] = []
        holding: list[Job] = []
        circuits = self._circuits()
        for job_id, job in list(queue.jobs.items()):
            if job_id in queue.examined:
                continue
            queue.examined.add(job_id)
            target = self._router.fallback(job, circuits)
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
        state = queue.circuit.state.label
        for job in holding:
            await self._store.add_event(job.id, "circuit", {
                "provider": name, "state": state, "action": "held",
            })
        for job, target in moving:
            moved = await reroute(
                self._store, self._monitor, job, target, catalog=self._catalog,
                reason="circuit_open", provider=name, state=state,
            )
            if moved is not None:
                self._requeue(moved)

    async def _unaccepted(self, message: Unaccepted) -> None:
        """A submission the provider provably refused (the job is QUEUED at it
        again): to a fallback, or failed."""
        job, error = message.job, message.error
        queue = self._queues.get(job.provider)
        if queue is not None:
            queue.credit += 1  # the provider freed the job's slot
            if job.id in queue.jobs:  # a reload pushed it meanwhile: decided here
                del queue.jobs[job.id]
                queue.heap = [entry for entry in queue.heap if entry[2] in queue.jobs]
                heapq.heapify(queue.heap)
            queue.wake()
        target = self._router.fallback(job, self._circuits())
        if target is not None:
            moved = await reroute(
                self._store, self._monitor, job, target, catalog=self._catalog,
                reason="not_accepted", provider=job.provider,
                code=error.code.value, attempts=job.attempts,
            )
            if moved is not None:
                self._requeue(moved)
            return
        failed = await self._store.transition(job.id, JobState.QUEUED, JobState.FAILED,
                                              error=error, where={"provider": job.provider})
        if failed is not None:
            log.warning("job %s failed: %s %s", job.id, error.code.value, error.message)
            self._monitor.emit("job.failed", job.provider, code=error.code.value)
