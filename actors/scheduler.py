"""The scheduler actor: the persistent priority queue of QUEUED jobs, and routing.

The queue is persistent because its contents are the QUEUED rows in the store: the
scheduler reloads them whenever it starts, and keeps a heap per provider in memory
(priority descending, then single submissions before batch items, then age:
``queue_key``). It owns, per provider, the heap, a *credit* (how
many more jobs the provider has said it can take) and the last ``CircuitView`` the
provider reported. It never touches a provider's slots or breaker: providers tell
it what it needs as messages, and it hands a job over only while the provider's
credit lasts, so a busy provider's jobs wait here, in order, not in its mailbox.

It keeps no job, only what ordering needs: each queued job is one int
(``queue_key``: its priority and its ``seq``), so a million queued jobs cost tens
of megabytes. A reload reads those two columns a page at a time
(``Store.queued_page``), and the job itself is read from the store when it is
handed over (``Store.jobs_by_seq``), or looked at for a fallback: one that was
cancelled, taken or moved meanwhile is dropped, and the provider gets the job as
it is stored then.

Mailbox (``actors/messages.py``): ``Enqueue`` (a new job), ``ProviderReady`` (a
provider started: credit and circuit reset, its QUEUED jobs reloaded), ``Demand``
(credit back), ``CircuitChanged``, ``Returned`` (a job handed over but not sent),
``Unaccepted`` (a submission the provider provably refused). It sends ``Submit`` to
the providers. Handing a job twice is harmless: the provider actor's
QUEUED -> SUBMITTING transition is conditional, and only one can win. The jobs the
messages carry are read for their key and let go.

Routing is decided here and only here, by ``actors/routing.py``: a new batch item
(``Enqueue`` of a job with ``batch_id``) whose model several sections offer is
queued on the one with the most free capacity (credit minus queued) and a closed
circuit, moved there in the store first; while a provider's circuit is open, each
of its queued jobs that has a fallback on a closed circuit is moved there and the
others are held (one ``circuit`` event each, never failed for it); an
``Unaccepted`` job moves to its fallback or fails with its error.
"""

from __future__ import annotations

import collections
import heapq
import logging
from collections.abc import Iterable, Mapping

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
from actors.routing import Router, place, reroute
from actors.store import Store

log = logging.getLogger(__name__)

#: How many recent hand-overs a queue remembers (per provider), to drop duplicates.
HANDED_MEMORY = 10_000
#: Most jobs read from the store at once, to hand over or to look at for a fallback.
LOAD_BATCH = 256
#: ``(priority, seq)`` pairs read per page when a queue is reloaded.
RELOAD_PAGE = 20_000
#: Stale heap entries tolerated beyond the live ones before the heap is rebuilt.
_STALE_SLACK = 1024
#: ``seq`` is an SQLite rowid: below 2**63.
_SEQ_SPAN = 1 << 63


def queue_key(priority: int, seq: int, batch: bool = False) -> int:
    """One int that orders jobs as a queue does and gives ``seq`` back
    (``seq_of``): a queue entry is this int alone.

    The order: highest priority first; at equal priority a single submission
    before a batch's item; then the oldest, lowest ``seq``. The middle rule is the
    fairness between batches and singles: a batch's items are inserted (and get
    their ``seq``) when the batch is accepted, so by age alone every item a big
    batch releases would go before any single submitted since, for as long as the
    batch lasts. A batch that must compete with singles says so with its
    priority."""
    return -(2 * priority + (0 if batch else 1)) * _SEQ_SPAN + seq


def seq_of(key: int) -> int:
    return key % _SEQ_SPAN


def _key(job: Job) -> int:
    return queue_key(job.priority, job.seq or 0, job.batch_id is not None)


@attrs.define
class _ProviderQueue:
    send: trio.MemorySendChannel[ProviderMessage]
    #: Keys (``queue_key``) of the jobs queued here, a heap. An entry whose key is
    #: not in ``queued`` is stale (the job left meanwhile) and is skipped.
    heap: list[int] = attrs.field(factory=list)
    queued: set[int] = attrs.field(factory=set)
    #: Jobs the provider has said it can take; 0 until it reports ready.
    credit: int = 0
    circuit: CircuitView = CircuitView(CircuitState.CLOSED)
    #: Set when the provider returned a job its half-open breaker would not let
    #: through: hand nothing over until the circuit changes or this time comes.
    paused_until: float | None = None
    changed: trio.Event = attrs.field(factory=trio.Event)
    #: Jobs already told (by an event) that they wait for this provider's circuit.
    held: set[int] = attrs.field(factory=set)
    #: Queued jobs not yet looked at for a fallback since the circuits last
    #: changed (``rescan``: all of them), so a storm of submissions to an open
    #: provider costs one look per job, not n².
    unexamined: list[int] = attrs.field(factory=list)
    rescan: bool = False
    #: Jobs taken off the heap and being read from the store to be handed over.
    loading: set[int] = attrs.field(factory=set)
    #: Jobs handed over lately: an ``Enqueue`` or a reload that names one of them
    #: again (a reload can read a new job before its ``Enqueue`` arrives) does not
    #: hand it over twice. Forgotten when the provider restarts (what it had may
    #: be lost) and when it gives one back; bounded, oldest first.
    handed: collections.OrderedDict[int, None] = attrs.field(factory=collections.OrderedDict)

    def clear(self) -> None:
        self.heap.clear()
        self.queued.clear()
        self.held.clear()
        self.unexamined.clear()
        self.rescan = False
        self.loading.clear()
        self.handed.clear()
        self.credit = 0
        self.circuit = CircuitView(CircuitState.CLOSED)
        self.paused_until = None

    def wake(self) -> None:
        self.changed.set()

    @property
    def free(self) -> int:
        """The jobs the provider can take beyond those queued for it (negative:
        queued beyond its credit). Counting those being read to be handed over
        keeps it unchanged by a hand-over, which moves one job and one credit."""
        return self.credit - len(self.queued) - len(self.loading)

    def holds(self, key: int) -> bool:
        return key in self.queued or key in self.loading or key in self.handed

    def add(self, key: int) -> None:
        self.queued.add(key)
        heapq.heappush(self.heap, key)
        if self.circuit.state is CircuitState.OPEN:
            self.unexamined.append(key)

    def add_many(self, keys: list[int]) -> bool:
        """Queue those of ``keys`` not held already; whether any was new."""
        new = [key for key in keys if not self.holds(key)]
        if not new:
            return False
        self.queued.update(new)
        if len(new) > len(self.heap) // 8:
            self.heap += new
            heapq.heapify(self.heap)
        else:
            for key in new:
                heapq.heappush(self.heap, key)
        if self.circuit.state is CircuitState.OPEN:
            self.unexamined += new
        return True

    def remove(self, key: int) -> None:
        self.queued.discard(key)
        self.held.discard(key)
        if len(self.heap) > 2 * len(self.queued) + _STALE_SLACK:
            self.heap = list(self.queued)
            heapq.heapify(self.heap)

    def pop(self, most: int) -> list[int]:
        """Up to ``most`` of the best queued keys, taken off the queue."""
        keys: list[int] = []
        while self.heap and len(keys) < most:
            key = heapq.heappop(self.heap)
            if key in self.queued:
                self.remove(key)
                keys.append(key)
        return keys

    def remember(self, key: int) -> None:
        self.handed[key] = None
        if len(self.handed) > HANDED_MEMORY:
            self.handed.popitem(last=False)


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
        return {name: len(queue.queued) for name, queue in self._queues.items()}

    # -- the actor -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for queue in self._queues.values():
            queue.clear()
        await self._store.barrier()  # what a previous run sent is committed
        for name in self._queues:
            await self._load(name)
        async with trio.open_nursery() as nursery:
            for name, queue in self._queues.items():
                nursery.start_soon(self._dispatch, name, queue, name=f"dispatch:{name}")
            task_status.started()
            # A restart lost every provider's credit and circuit: ask again (a
            # provider starting now says it anyway; twice is harmless).
            for queue in self._queues.values():
                await queue.send.send(Announce())
            while True:
                # No name holds the message between two: the job an ``Enqueue``
                # carries is let go as soon as its key is queued.
                await self._handle(await self._mailbox.receive())

    async def _handle(self, message: SchedulerMessage) -> None:
        if isinstance(message, Enqueue):
            await self._enqueue(message.job)
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
                other.rescan = True  # the next look lists the queue afresh
                other.unexamined = []
                other.wake()

    async def _enqueue(self, job: Job) -> None:
        """Queue a new job: a batch item on the section ``Router.spread`` picks."""
        free = {name: queue.free for name, queue in self._queues.items()}
        target = self._router.spread(job, free, self._circuits())
        if target is not None:
            provider = self._catalog[target].provider
            moved = await place(self._store, job, target, catalog=self._catalog,
                                free=free[provider])
            if moved is None:
                return  # cancelled meanwhile: nothing to queue
            job = moved
        self._push(job)

    def _push(self, job: Job) -> None:
        queue = self._queues.get(job.provider)
        if queue is None:
            log.error("job %s names unknown provider %s; left QUEUED", job.id, job.provider)
            return
        if job.seq is None:
            log.error("job %s was never stored; not queued", job.id)
            return
        self._add(queue, _key(job))

    def _add(self, queue: _ProviderQueue, key: int) -> None:
        if queue.holds(key):
            return
        queue.add(key)
        # A new job changes what the dispatcher does only when it could hand one over
        # or must move jobs off an open circuit; a full provider is woken by its
        # Demand, not by every submission while it is full.
        if queue.credit > 0 or queue.circuit.state is CircuitState.OPEN:
            queue.wake()

    def _requeue(self, job: Job) -> None:
        """Queue a job we decided to hand over again (given back, or moved)."""
        queue = self._queues.get(job.provider)
        if queue is not None:
            queue.handed.pop(_key(job), None)
        self._push(job)

    async def _load(self, name: str) -> None:
        """Queue ``name``'s QUEUED rows, read a page of ``(priority, seq)`` at a time
        and queued at once when the last page is in: one ``heapify`` instead of a
        push per job, and the queue as the dispatcher sees it never half loaded."""
        queue = self._queues[name]
        keys: list[int] = []
        after = 0
        while True:
            page = await self._store.queued_page(name, after, RELOAD_PAGE)
            keys += [queue_key(priority, seq, bool(batch)) for priority, seq, batch in page]
            if len(page) < RELOAD_PAGE:
                break
            after = page[-1][1]
        if queue.add_many(keys):
            queue.wake()

    async def _read(self, keys: Iterable[int]) -> dict[int, Job]:
        """The jobs of ``keys`` as stored now, by key (a key whose row is gone is absent)."""
        jobs = await self._store.jobs_by_seq(seq_of(key) for key in keys)
        return {_key(job): job for job in jobs}

    # -- handing jobs over -----------------------------------------------------------

    async def _dispatch(self, name: str, queue: _ProviderQueue) -> None:
        while True:
            if self._lifecycle.draining:
                await trio.sleep_forever()
            keys = await self._next_keys(name, queue)
            queue.loading.update(keys)
            jobs = await self._read(keys)
            for key in keys:
                queue.loading.discard(key)
                job = jobs.get(key)
                if job is None or job.state is not JobState.QUEUED or job.provider != name:
                    continue  # cancelled, taken or moved meanwhile: not ours to hand over
                if not self._may_hand_over(queue):
                    self._add(queue, key)  # the credit or the circuit went meanwhile
                    continue
                queue.credit -= 1
                queue.remember(key)
                await queue.send.send(Submit(job))

    def _may_hand_over(self, queue: _ProviderQueue) -> bool:
        paused = queue.paused_until is not None and trio.current_time() < queue.paused_until
        return (queue.credit > 0 and not self._lifecycle.draining and not paused
                and queue.circuit.state is not CircuitState.OPEN)

    async def _next_keys(self, name: str, queue: _ProviderQueue) -> list[int]:
        """The best queued jobs (as many as the credit, at most ``LOAD_BATCH``), once
        the provider has credit and its circuit lets them through. While the
        circuit is open, jobs that can move are moved and the rest are held."""
        while True:
            # A fresh event *before* any await: a message arriving meanwhile must
            # wake the wait below.
            queue.changed = trio.Event()
            wait_until = float("inf")
            if queue.queued:
                if queue.circuit.state is CircuitState.OPEN:
                    if await self._divert(name, queue):
                        continue  # more may be waiting to be looked at
                elif queue.paused_until is not None and trio.current_time() < queue.paused_until:
                    wait_until = queue.paused_until
                elif queue.credit > 0 and not self._lifecycle.draining:
                    return queue.pop(min(queue.credit, LOAD_BATCH))
            with trio.move_on_at(wait_until):
                await queue.changed.wait()

    def _circuits(self) -> dict[str, CircuitState]:
        return {name: queue.circuit.state for name, queue in self._queues.items()}

    async def _divert(self, name: str, queue: _ProviderQueue) -> bool:
        """Move what can move off ``name``'s open circuit and note what must wait,
        for the next ``LOAD_BATCH`` jobs not looked at yet; False when none is left."""
        if queue.rescan:
            queue.rescan = False
            queue.unexamined = list(queue.queued)
        keys: list[int] = []
        while queue.unexamined and len(keys) < LOAD_BATCH:
            key = queue.unexamined.pop()
            if key in queue.queued:
                keys.append(key)
        if not keys:
            return False
        circuits = self._circuits()
        state = queue.circuit.state.label
        jobs = await self._read(keys)
        for key in keys:
            job = jobs.get(key)
            if key not in queue.queued:
                continue  # it left while we read
            if job is None or job.state is not JobState.QUEUED or job.provider != name:
                queue.remove(key)  # cancelled or taken meanwhile
                continue
            target = self._router.fallback(job, circuits)
            if target is None:
                if key not in queue.held:
                    queue.held.add(key)
                    await self._store.add_event(job.id, "circuit", {
                        "provider": name, "state": state, "action": "held",
                    })
                continue
            queue.remove(key)
            moved = await reroute(
                self._store, self._monitor, job, target, catalog=self._catalog,
                reason="circuit_open", provider=name, state=state,
            )
            if moved is not None:
                self._requeue(moved)
        return True

    async def _unaccepted(self, message: Unaccepted) -> None:
        """A submission the provider provably refused (the job is QUEUED at it
        again): to a fallback, or failed."""
        job, error = message.job, message.error
        queue = self._queues.get(job.provider)
        if queue is not None:
            queue.credit += 1  # the provider freed the job's slot
            queue.remove(_key(job))  # a reload may have queued it meanwhile: decided here
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
