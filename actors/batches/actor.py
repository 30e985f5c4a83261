"""The batch actor: releases batch items into the scheduler's queue when they may run.

A batch's items are inserted WAITING (in no queue). This actor moves them to
QUEUED, a conditional WAITING -> QUEUED transition followed by ``Enqueue`` to the
scheduler (shielded together, as ``Runtime.submit`` does), when their batch lets
them run:

- at most ``options.concurrency`` items of the batch QUEUED or at a provider at
  once (``parallel: false``: one), the lowest ``batch_index`` first among the
  releasable ones;
- not before ``notBefore``;
- only once every dependency has SUCCEEDED; each ``easel:item/<custom_id>/<n>``
  input image is then rewritten to ``easel:output/<job_id>/<n>``, naming the
  dependency's current job.

And it ends what cannot run: a dependency that did not succeed makes its WAITING
dependents FAILED with UPSTREAM_FAILED (transitively: each of those is a failure
whose dependents follow) while independent items go on; past ``deadline`` items
not started (WAITING, QUEUED) end FAILED with EXPIRED; with ``stopOnError`` the
first failed item makes the items not started CANCELLED and sets
``stopped_reason``. When no item is open the batch gets its end state and
``completed_at``, with its webhook queued in the outbox in the same transaction
(``actors/batches/ending.py``).

State: per open batch a few flags, the failed indexes not yet passed on, and its
timers; never its items. Everything else is read from the store, a page at a time
(``Store.releasable``, ``batch_activity``...). So a restart reloads the open
batches' ids and looks at each afresh: a failure not yet passed on is found
(``failed_dependencies``), a stop is taken up again from the failed count, and
nothing already released is released again (the transition is conditional).

Takes ``BatchOpened`` (``actors/messages.py``) from the batch service, and the
store's change feed (a batch item's end frees concurrency, may fail dependents,
may end the batch). Sends ``Enqueue`` to the scheduler, and a nudge to the outbox
when an ended batch queued its webhook.
"""

from __future__ import annotations

import logging

import attrs
import trio

from actors.batches.ending import settle
from actors.batches.model import Batch, BatchOptions, output_ref, parse_item_ref
from actors.clock import trio_time_of, wall_now
from actors.errors import ErrorCode, ErrorInfo
from actors.jobs import Job, JobState
from actors.messages import BatchOpened, Enqueue, SchedulerMessage
from actors.quotas import Quotas
from actors.store import Store

log = logging.getLogger(__name__)

#: Items ended per transaction (a stop, a deadline, a failure's dependents).
END_PAGE = 1000
#: Failed items asked about at once (for their WAITING dependents).
FAILED_PAGE = 500
#: Items released per read of the releasable ones.
RELEASE_PAGE = 256
#: The two states of an item not started: in no queue yet, or in the scheduler's.
NOT_STARTED = (JobState.WAITING, JobState.QUEUED)


@attrs.define
class _Open:
    """What the actor keeps of one open batch."""

    #: Indexes of items that ended without succeeding, not yet passed on.
    failed: list[int] = attrs.field(factory=list)
    #: Look at the whole batch (just loaded or re-opened): failures not passed on,
    #: whether an item failed.
    fresh: bool = True
    #: An item failed (for ``stopOnError``).
    failure: bool = False
    #: Times a timer is set for (``notBefore``, ``deadline``).
    timers: set[float] = attrs.field(factory=set)


class BatchActor:
    def __init__(
        self,
        store: Store,
        *,
        changes: trio.MemoryReceiveChannel[Job],
        mailbox: trio.MemoryReceiveChannel[BatchOpened],
        scheduler: trio.MemorySendChannel[SchedulerMessage],
        quotas: Quotas,
        outbox: trio.MemorySendChannel[None],
    ) -> None:
        """``changes``: the store's change feed, subscribed once by the runtime so it
        outlives restarts; ``quotas`` counts each released item as its key's
        unfinished job; ``outbox``: nudged when an ended batch queued its webhook."""
        self._store = store
        self._changes = changes
        self._mailbox = mailbox
        self._scheduler = scheduler
        self._quotas = quotas
        self._outbox = outbox
        self._open: dict[str, _Open] = {}
        #: Batches to look at, in the order they asked (a dict as an ordered set).
        self._dirty: dict[str, None] = {}
        self._wake = trio.Event()

    # -- the actor -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._open.clear()
        self._dirty.clear()
        await self._store.barrier()  # what a previous run sent is committed
        while True:  # what the feed holds now is in the store read next
            try:
                self._changes.receive_nowait()
            except trio.WouldBlock:
                break
        for batch_id in await self._store.open_batches():
            self._take(batch_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_changes)
            nursery.start_soon(self._follow_mailbox)
            task_status.started()
            while True:
                self._wake = trio.Event()
                while self._dirty:
                    batch_id = next(iter(self._dirty))
                    del self._dirty[batch_id]
                    if batch_id in self._open:
                        await self._step(nursery, batch_id)
                await self._wake.wait()

    def _mark(self, batch_id: str) -> None:
        self._dirty[batch_id] = None
        self._wake.set()

    def _take(self, batch_id: str) -> None:
        """Take on an open batch (anew when it was re-opened)."""
        self._open[batch_id] = _Open()
        self._mark(batch_id)

    async def _follow_mailbox(self) -> None:
        async for message in self._mailbox:
            self._take(message.batch_id)

    async def _follow_changes(self) -> None:
        async for job in self._changes:
            if job.batch_id is None or not job.state.terminal:
                continue
            state = self._open.get(job.batch_id)
            if state is None:
                continue
            if job.state is not JobState.SUCCEEDED and job.batch_index is not None:
                state.failed.append(job.batch_index)
            if job.state is JobState.FAILED:
                state.failure = True
            self._mark(job.batch_id)

    async def _timer(self, nursery: trio.Nursery, batch_id: str, at: float) -> None:
        """Look at ``batch_id`` again at wall time ``at``."""
        state = self._open[batch_id]
        if at in state.timers:
            return
        state.timers.add(at)

        async def ring() -> None:
            await trio.sleep_until(trio_time_of(at))
            if batch_id in self._open:
                self._mark(batch_id)

        nursery.start_soon(ring, name=f"batch-timer:{batch_id}")

    # -- one look at a batch ---------------------------------------------------

    async def _step(self, nursery: trio.Nursery, batch_id: str) -> None:
        state = self._open[batch_id]
        batch = await self._store.get_batch(batch_id)
        if batch is None or batch.state.terminal:
            self._open.pop(batch_id, None)
            return
        options = batch.options
        sweep = state.fresh
        if state.fresh:
            state.fresh = False
            state.failure = state.failure or (await self._store.batch_counts(batch_id)).failed > 0
        now = wall_now()
        stopped = options.stop_on_error and state.failure and batch.cancelled_at is None
        if stopped:
            await self._stop(batch)
        if options.deadline is not None:
            if now >= options.deadline:
                await self._end_all(batch_id, JobState.FAILED, ErrorInfo(
                    ErrorCode.EXPIRED, "the batch's deadline passed before the item started"))
            else:
                await self._timer(nursery, batch_id, options.deadline)
        await self._pass_on_failures(batch_id, state, sweep)
        if options.not_before is not None and now < options.not_before:
            await self._timer(nursery, batch_id, options.not_before)
        elif batch.cancelled_at is None and not stopped:
            await self._release(batch_id, options)
        released, waiting = await self._store.batch_activity(batch_id)
        if not released and not waiting:
            ended = await settle(self._store, batch_id, self._outbox)
            if ended is not None:
                log.info("batch %s ended %s", batch_id, ended.state.value)
                self._open.pop(batch_id, None)

    async def _end_all(self, batch_id: str, to_state: JobState, error: ErrorInfo,
                       dependents_of: int | None = None) -> None:
        states = [JobState.WAITING] if dependents_of is not None else NOT_STARTED
        while await self._store.end_batch_items(
                batch_id, states, to_state, error, dependents_of=dependents_of,
                limit=END_PAGE) == END_PAGE:
            pass

    async def _stop(self, batch: Batch) -> None:
        """``stopOnError``: an item failed; the items not started are cancelled."""
        reason = "stopOnError: an item failed"
        if batch.stopped_reason is None:
            await self._store.update_batch(batch.id, batch.state, stopped_reason=reason)
        await self._end_all(batch.id, JobState.CANCELLED,
                            ErrorInfo(ErrorCode.TASK_CANCELLED, reason))

    async def _pass_on_failures(self, batch_id: str, state: _Open, sweep: bool) -> None:
        """The WAITING dependents of items that did not succeed fail UPSTREAM_FAILED
        (theirs follow when their own ends come through the feed)."""
        pending, state.failed = state.failed, []
        if not (pending or sweep):
            return
        if sweep:
            failed = await self._store.failed_dependencies(batch_id)
        else:
            failed = []
            for start in range(0, len(pending), FAILED_PAGE):
                failed += await self._store.failed_dependencies(
                    batch_id, pending[start:start + FAILED_PAGE])
        for index, custom_id in failed:
            await self._end_all(batch_id, JobState.FAILED, ErrorInfo(
                ErrorCode.UPSTREAM_FAILED, f"dependency {custom_id!r} did not succeed",
                {"dependency": custom_id}), dependents_of=index)

    # -- releasing ---------------------------------------------------------------

    async def _release(self, batch_id: str, options: BatchOptions) -> None:
        released, waiting = await self._store.batch_activity(batch_id)
        free = options.concurrency - released
        while free > 0 and waiting:
            wanted = min(free, RELEASE_PAGE)
            page = await self._store.releasable(batch_id, wanted)
            for job in page:
                free -= await self._release_one(job)
            if len(page) < wanted:
                break

    async def _release_one(self, job: Job) -> int:
        """Release ``job`` (1), or end it when an output it takes does not exist, or
        leave it when it moved meanwhile (0)."""
        images = job.input_images
        if any(parse_item_ref(image) for image in images):
            assert job.batch_id is not None and job.batch_index is not None
            deps = {dep.custom_id: dep for dep in
                    await self._store.batch_dependencies(job.batch_id, job.batch_index)}
            images = []
            for image in job.input_images:
                ref = parse_item_ref(image)
                if ref is None:
                    images.append(image)
                    continue
                dep = deps.get(ref[0])
                if dep is None or dep.state is not JobState.SUCCEEDED or ref[1] >= len(dep.results):
                    await self._store.transition(
                        job.id, JobState.WAITING, JobState.FAILED, error=ErrorInfo(
                            ErrorCode.UPSTREAM_FAILED,
                            f"item {ref[0]!r} has no output {ref[1]} to take",
                            {"dependency": ref[0], "output": ref[1]}))
                    return 0
                images.append(output_ref(dep.id, ref[1]))
        with trio.CancelScope(shield=True):
            moved = await self._store.transition(
                job.id, JobState.WAITING, JobState.QUEUED, released_at=wall_now(),
                input_images=images)
            if moved is None:
                return 0
            self._quotas.released(moved)
            try:
                self._scheduler.send_nowait(Enqueue(moved))
            except trio.WouldBlock:
                await self._scheduler.send(Enqueue(moved))
        return 1
