"""``BatchService`` (``runtime.batches``): what the HTTP layer may do with batches.

Create (quotas, then the batch and every item in one transaction), read (the
batch with its counts, its items by index, its finished items in completion
order), cancel and retry. Releasing items is the batch actor's
(``actors/batches/actor.py``): the service tells it of a batch it opened with
``BatchOpened`` after the commit, shielded with the commit, as ``Runtime.submit``
does with ``Enqueue``. A batch lost between the two (a crash) is reloaded by the
actor at its start.

Visibility follows ``Runtime.get_job``: with a ``viewer`` (an API key's id),
another key's batch is NOT_FOUND, exactly as one that does not exist.

A retry re-runs an item as a NEW job for the same ``batch_index`` and
``custom_id``: the old job keeps its history and stays terminal (so the outbox,
quotas and metrics never see a job leave a terminal state), and is marked
``replaced_by`` the new one; every view of a batch shows the newest job of each
index.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping

import trio

from actors.batches.ending import settle
from actors.batches.model import (
    Batch,
    BatchCounts,
    BatchState,
    item_ref,
    parse_item_ref,
    parse_output_ref,
)
from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import AT_PROVIDER, Job, JobState, new_job_id
from actors.messages import BatchOpened
from actors.quotas import Quotas
from actors.store import Store

#: Items ended per transaction by a cancel (each page is published as it commits).
END_PAGE = 1000
#: Why a cancelled batch's items stopped.
CANCELLED_BY_CLIENT = "cancelled by the client"


def _cursor(job: Job) -> str:
    text = f"{job.completed_at!r}:{job.seq}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[float, int] | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        done, seq = text.split(":")
        return float(done), int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise EaselError(ErrorCode.INVALID_REQUEST, "not a cursor of this batch's results",
                         {"after": cursor}) from None


def with_dependencies(job: Job) -> Job:
    """``job`` with every item its input images name (``easel:item/...``) among its
    dependencies: an item never starts before the output it takes exists."""
    for image in job.input_images:
        ref = parse_item_ref(image)
        if ref is not None and ref[0] not in job.depends_on:
            job.depends_on.append(ref[0])
    return job


class BatchService:
    def __init__(
        self,
        store: Store,
        quotas: Quotas,
        *,
        catalog: Mapping[str, ModelSpec],
        actor: trio.MemorySendChannel[BatchOpened],
        outbox: trio.MemorySendChannel[None],
        cancel_job: Callable[[str], Awaitable[Job]],
    ) -> None:
        """``actor``: the batch actor's mailbox; ``outbox``: nudged when a cancel
        ends a batch that owes a webhook; ``cancel_job``: the runtime's cancel of
        one job (``Runtime.cancel``: the provider is asked to stop it)."""
        self._store = store
        self._quotas = quotas
        self._catalog = catalog
        self._actor = actor
        self._cancel_job = cancel_job
        self._outbox = outbox

    async def _opened(self, batch_id: str) -> None:
        try:
            self._actor.send_nowait(BatchOpened(batch_id))
        except trio.WouldBlock:
            await self._actor.send(BatchOpened(batch_id))

    # -- creating ---------------------------------------------------------------

    async def create(self, batch: Batch, jobs: list[Job]) -> Batch:
        """Accept ``batch`` with its items, durably, in one transaction.

        ``jobs`` come built and checked (``batch_index`` 0..n-1, unique
        ``custom_id``s, ``depends_on`` naming items of the batch without a cycle,
        ``priority``, ``owner``, ``cost``, state WAITING); an input image may be a
        dependency's output (``easel:item/<custom_id>/<n>``), which makes that item
        a dependency too. With ``itemWebhooks`` each item without a ``webhook_url``
        takes the batch's, so every item's end is posted as a job's is.

        RATE_LIMITED (as ``Runtime.submit``) when the batch's summed cost passes the
        key's daily spend, or the daemon holds ``max_queue_depth`` unfinished jobs.
        Items count as the key's unfinished jobs only once released.
        """
        options = batch.options
        names = {job.custom_id for job in jobs}
        unknown = sorted({dep for job in jobs for dep in with_dependencies(job).depends_on
                          if dep not in names})
        if unknown:  # the front door checks this; an item in no queue must not wait forever
            raise EaselError(ErrorCode.INVALID_REQUEST, "items depend on items not in the batch",
                             {"customIds": unknown})
        for job in jobs:
            job.batch_id = batch.id
            job.state = JobState.WAITING
            if options.item_webhooks and options.webhook_url and not job.webhook_url:
                job.webhook_url = options.webhook_url
        batch.total = len(jobs)
        batch.state = BatchState.PROCESSING
        cost = sum(job.cost or 0.0 for job in jobs)
        batch.estimated_cost = batch.estimated_cost or cost
        ticket = await self._quotas.admit_batch(batch.owner, cost)
        with trio.CancelScope(shield=True):
            try:
                stored = await self._store.insert_batch(batch, jobs)
            except BaseException:
                ticket.release()
                raise
            await self._opened(stored.id)
        return stored

    # -- reading ----------------------------------------------------------------

    async def _batch(self, batch_id: str, viewer: str | None) -> Batch:
        batch = await self._store.get_batch(batch_id)
        if batch is None or (viewer is not None and batch.owner != viewer):
            raise EaselError(ErrorCode.NOT_FOUND, f"no batch {batch_id}")
        return batch

    async def get(self, batch_id: str, viewer: str | None) -> tuple[Batch, BatchCounts]:
        """The batch and its items' counts (NOT_FOUND: none, or another key's)."""
        batch = await self._batch(batch_id, viewer)
        return batch, await self._store.batch_counts(batch_id)

    async def items(
        self, batch_id: str, viewer: str | None, *, after: int = -1, limit: int = 100
    ) -> list[Job]:
        """Up to ``limit`` items past index ``after``, by index: each index's
        current job (a re-run's, after a retry)."""
        await self._batch(batch_id, viewer)
        return await self._store.batch_items(batch_id, after, limit)

    async def finished(
        self, batch_id: str, viewer: str | None, *, after: str | None = None, limit: int = 500
    ) -> tuple[list[Job], str | None]:
        """Up to ``limit`` finished items in completion order, after the cursor
        ``after``, and the cursor to pass next (``after`` itself when none came).
        Page until a page is shorter than ``limit``; while the batch is
        PROCESSING, later pages may still come. An item re-run by a retry leaves
        the stream (its new job shows once it ends)."""
        await self._batch(batch_id, viewer)
        page = await self._store.batch_finished(batch_id, _after(after), limit)
        return page, (_cursor(page[-1]) if page else after)

    # -- cancel -----------------------------------------------------------------

    async def cancel(self, batch_id: str, viewer: str | None) -> tuple[Batch, BatchCounts]:
        """Cancel a PROCESSING batch (CONFLICT once it ended): WAITING and QUEUED
        items are CANCELLED, items at a provider are cancelled there as
        ``Runtime.cancel`` does, and the batch ends CANCELLED."""
        batch = await self._batch(batch_id, viewer)
        if batch.state.terminal:
            raise EaselError(ErrorCode.CONFLICT, f"batch {batch_id} is already {batch.state.value}",
                             {"status": batch.state.value})
        marked = await self._store.update_batch(
            batch_id, BatchState.PROCESSING, cancelled_at=wall_now(),
            stopped_reason=CANCELLED_BY_CLIENT)
        if marked is None:  # it ended meanwhile
            return await self.cancel(batch_id, viewer)
        error = ErrorInfo(ErrorCode.TASK_CANCELLED, "the batch was cancelled")
        while await self._store.end_batch_items(
                batch_id, [JobState.WAITING, JobState.QUEUED], JobState.CANCELLED, error,
                limit=END_PAGE) == END_PAGE:
            pass
        for job in await self._store.released_items(batch_id):
            if job.state in AT_PROVIDER:
                try:
                    await self._cancel_job(job.id)
                except EaselError as exc:  # it ended meanwhile
                    if exc.code is not ErrorCode.CONFLICT:
                        raise
        await settle(self._store, batch_id, self._outbox)
        return await self.get(batch_id, viewer)

    # -- retry ------------------------------------------------------------------

    def _remake(self, old: Job, name_of: Callable[[str], str | None]) -> Job:
        """A new WAITING job for ``old``'s item: its request as submitted (on its
        catalog model, not a fallback's; a dependency's output named by item
        again, so the re-run takes the dependency's current output)."""
        images = []
        for image in old.input_images:
            ref = parse_output_ref(image)
            name = name_of(ref[0]) if ref is not None else None
            images.append(item_ref(name, ref[1]) if ref is not None and name else image)
        spec = self._catalog.get(old.model)
        return Job(
            id=new_job_id(), model=old.model,
            provider=spec.provider if spec else old.provider,
            provider_model=spec.provider_model if spec else old.provider_model,
            prompt=old.prompt, state=JobState.WAITING,
            number_of_outputs=old.number_of_outputs, input_images=images,
            parameters=old.parameters, priority=old.priority, webhook_url=old.webhook_url,
            user_id=old.user_id, metadata=old.metadata, batch_id=old.batch_id,
            experiment_id=old.experiment_id, variant_id=old.variant_id, cost=old.cost,
            owner=old.owner, preprocess=old.preprocess, custom_id=old.custom_id,
            batch_index=old.batch_index, depends_on=old.depends_on,
        )

    async def retry(
        self, batch_id: str, viewer: str | None, custom_ids: list[str] | None = None
    ) -> tuple[Batch, BatchCounts]:
        """Re-run an ended batch's items that did not succeed (failed, expired,
        upstream-failed, cancelled) and those named in ``custom_ids`` (succeeded
        ones too), in place: each as a new job of the same index; succeeded items
        keep their outputs, and a re-run item that takes a dependency's output
        takes its current one. ``repairs`` grows by one and the batch is
        PROCESSING again.

        CONFLICT while the batch is PROCESSING, or when nothing would re-run;
        INVALID_REQUEST naming the ``custom_ids`` that are no item of it;
        RATE_LIMITED when the re-runs' cost passes the key's daily spend.
        """
        batch = await self._batch(batch_id, viewer)
        if not batch.state.terminal:
            raise EaselError(ErrorCode.CONFLICT,
                             f"batch {batch_id} is PROCESSING: retry it once it has ended",
                             {"status": batch.state.value})
        names = sorted(set(custom_ids or ()))
        count, cost, unknown = await self._store.rerun_plan(batch_id, names)
        if unknown:
            raise EaselError(ErrorCode.INVALID_REQUEST,
                             f"no item of batch {batch_id} has these custom_ids",
                             {"customIds": unknown})
        if not count:
            raise EaselError(ErrorCode.CONFLICT, f"batch {batch_id} has nothing to retry",
                             {"status": batch.state.value})
        ticket = await self._quotas.admit_batch(batch.owner, cost)
        with trio.CancelScope(shield=True):
            try:
                rerun = await self._store.rerun_batch(batch_id, names, self._remake)
            except BaseException:
                ticket.release()
                raise
            if rerun is None:  # retried meanwhile
                ticket.release()
                raise EaselError(ErrorCode.CONFLICT, f"batch {batch_id} is PROCESSING again",
                                 {"status": BatchState.PROCESSING.value})
            await self._opened(batch_id)
        return await self.get(batch_id, viewer)
