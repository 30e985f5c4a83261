"""The provider actor: the shared code around one provider's adapter.

It owns the provider's token bucket and in-flight slots (``actors/limits.py``), and
makes every call to the provider: submissions handed over by the scheduler,
status checks for its poller, cancels, and the reconciliation of jobs that a crash
caught in SUBMITTING. Each call spends a token; calls that are safe to repeat are
retried with exponential backoff and jitter, honouring ``Retry-After``.

Mailbox: ``Dispatch(job, ticket)`` from the scheduler; ``CancelTask(job)`` from the
HTTP layer. Each message is handled in a child task, so a slow provider call never
blocks the mailbox.

The rule that keeps a job from being paid twice: a job is marked SUBMITTING, durably,
*before* its request is sent, and a job found in SUBMITTING is never sent again
unless the provider proves it never got it (``reconcile``) or its model is
configured as safe to resubmit.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from actors import context
from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import AT_PROVIDER, Job, JobState
from actors.lifecycle import Lifecycle
from actors.limits import SlotPool, TokenBucket
from actors.monitor import Monitor
from actors.providers.base import (
    Adapter,
    Completed,
    JobRequest,
    ProviderSettings,
    Submitted,
    TaskStatus,
)
from actors.scheduler import Dispatch, Enqueue, Resync
from actors.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")


@attrs.frozen
class CancelTask:
    job: Job


def backoff(attempt: int, retry_after: float | None, base: float = 0.5, cap: float = 30.0) -> float:
    """Full-jitter exponential backoff, never shorter than the provider asked."""
    delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    return max(delay, retry_after or 0.0)


class ProviderActor:
    def __init__(
        self,
        name: str,
        adapter: Adapter,
        settings: ProviderSettings,
        *,
        store: Store,
        catalog: dict[str, ModelSpec],
        lifecycle: Lifecycle,
        monitor: Monitor,
        mailbox_size: int = 256,
    ) -> None:
        self.name = name
        self.adapter = adapter
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.lifecycle = lifecycle
        self.monitor = monitor
        self.bucket = TokenBucket(settings.rate, settings.burst)
        self.slots = SlotPool(settings.max_in_flight)
        self.send, self._receive = trio.open_memory_channel[Dispatch | CancelTask](mailbox_size)
        # Wired by the runtime once every actor exists.
        self.scheduler_send: Callable[[Enqueue | Resync], Awaitable[None]] | None = None
        self.on_running: Callable[[Job], Awaitable[None]] | None = None
        self.on_outputs: Callable[[Job], Awaitable[None]] | None = None
        self.on_cancelled: Callable[[Job], None] | None = None
        #: Public base URL of the daemon; with it, providers that push webhooks are
        #: given ``{callback_base}/api/providers/{name}/webhook``.
        self.callback_base = ""
        self._starts = 0

    # -- calls -------------------------------------------------------------

    async def call(
        self, what: str, fn: Callable[[], Awaitable[T]], *, safe: bool, token_taken: bool = False
    ) -> T:
        """Make one provider call, with tokens and retries.

        ``safe``: the call may be repeated without effect at the provider (a status
        check, a cancel). An unsafe call (a submission) is repeated only when the
        error proves the request never left (``EaselError.sent`` is False).
        ``token_taken``: the caller already spent the first attempt's token.
        """
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1 or not token_taken:
                await self.bucket.take()
            started = trio.current_time()
            try:
                with self.lifecycle.busy():
                    result = await fn()
            except EaselError as exc:
                self.monitor.emit(
                    "provider.call", self.name, call=what, outcome=exc.code.value,
                    seconds=trio.current_time() - started,
                )
                if exc.code is ErrorCode.RATE_LIMITED and exc.retry_after:
                    self.bucket.penalize(exc.retry_after)
                repeatable = safe or not exc.sent
                if not (exc.info.is_retryable and repeatable) or attempt >= self.settings.max_attempts:
                    if attempt > 1:
                        exc.info.details.setdefault("attempts", attempt)
                    raise
                delay = backoff(attempt, exc.retry_after)
                log.info("%s %s failed (%s); retry %d in %.1fs", self.name, what, exc.code.value,
                         attempt, delay)
                await trio.sleep(delay)
                continue
            self.monitor.emit(
                "provider.call", self.name, call=what, outcome="ok",
                seconds=trio.current_time() - started,
            )
            return result

    async def check(self, task_id: str) -> TaskStatus:
        return await self.call("check", lambda: self.adapter.check(task_id), safe=True)

    async def cancel_remote(self, job: Job) -> None:
        """Ask the provider to stop ``job``'s task; failures are only logged."""
        if not job.provider_task_id:
            return
        try:
            await self.call("cancel", lambda: self.adapter.cancel(job.provider_task_id), safe=True)
        except EaselError as exc:
            log.warning("cancel at %s failed: %s", self.name, exc.info.message)

    def request_for(self, job: Job) -> JobRequest:
        spec = self.catalog.get(job.model)
        if spec is None:
            raise EaselError(
                ErrorCode.INVALID_REQUEST, f"model {job.model!r} is no longer in the catalog"
            )
        return JobRequest(
            job_id=job.id,
            model=job.model,
            spec=spec,
            prompt=job.prompt,
            number_of_outputs=job.number_of_outputs,
            input_images=tuple(job.input_images),
            parameters=job.parameters,
            submitting_at=job.submitting_at or 0.0,
            callback_url=self.callback_url,
        )

    @property
    def callback_url(self) -> str | None:
        if not self.callback_base or not hasattr(self.adapter, "parse_webhook"):
            return None
        return f"{self.callback_base.rstrip('/')}/api/providers/{self.name}/webhook"

    # -- the actor ---------------------------------------------------------

    async def run(self) -> None:
        self._starts += 1
        async with trio.open_nursery() as nursery:
            for job_id in await self.store.job_ids_in(AT_PROVIDER, provider=self.name):
                self.slots.adopt(job_id)
            nursery.start_soon(self._reconcile_all)
            if self._starts > 1 and self.scheduler_send is not None:
                # Jobs handed to us before the crash may be lost with it.
                await self.scheduler_send(Resync(self.name))
            async for message in self._receive:
                if isinstance(message, Dispatch):
                    nursery.start_soon(self._submit, message)
                else:
                    nursery.start_soon(self._cancel, message.job)

    async def _fail(self, job: Job, from_state: JobState, error: ErrorInfo) -> None:
        failed = await self.store.transition(job.id, from_state, JobState.FAILED, error=error)
        if failed is not None:
            log.warning("job failed: %s %s", error.code.value, error.message)
            self.monitor.emit("job.failed", self.name, code=error.code.value)

    async def _submit(self, message: Dispatch) -> None:
        job = message.job
        context.job_id.set(job.id)
        context.provider.set(self.name)
        newly_held = not self.slots.holds(job.id)
        message.ticket.bind(job.id)
        try:
            request = self.request_for(job)
        except EaselError as exc:
            await self._fail(job, JobState.QUEUED, exc.info)
            return
        # The token first: a job marked SUBMITTING must be on the wire at once, or a
        # crash while it waits for a token leaves it uncertain for nothing.
        await self.bucket.take()
        now = wall_now()
        job = await self.store.transition(
            job.id, JobState.QUEUED, JobState.SUBMITTING,
            submitting_at=now, attempts=job.attempts + 1,
        )
        if job is None:  # cancelled, or handed to us twice: someone else has it
            if newly_held:
                self.slots.release(message.job.id)
            return
        await self._send_submission(job, attrs.evolve(request, submitting_at=now), token_taken=True)

    async def _send_submission(self, job: Job, request: JobRequest, token_taken: bool = False) -> None:
        try:
            result = await self.call(
                "submit", lambda: self.adapter.submit(request), safe=False, token_taken=token_taken
            )
        except EaselError as exc:
            await self._fail(job, JobState.SUBMITTING, exc.info)
            return
        except Exception as exc:
            log.exception("submission raised")
            await self._fail(job, JobState.SUBMITTING,
                             ErrorInfo(ErrorCode.INTERNAL_ERROR, f"submission failed: {exc!r}"))
            return
        await self._record(job, result)

    async def _record(self, job: Job, result: Submitted | Completed) -> None:
        """Store what the provider answered, then hand the job on."""
        now = wall_now()
        if isinstance(result, Submitted):
            running = await self.store.transition(
                job.id, JobState.SUBMITTING, JobState.RUNNING,
                provider_task_id=result.task_id, started_at=now,
            )
            if running is None:
                # Cancelled while we were submitting: the task exists remotely.
                await self.cancel_remote(attrs.evolve(job, provider_task_id=result.task_id))
                return
            log.info("submitted", extra={"task_id": result.task_id})
            if self.on_running is not None:
                await self.on_running(running)
        else:
            finalizing = await self.store.transition(
                job.id, JobState.SUBMITTING, JobState.FINALIZING,
                provider_outputs=list(result.outputs), started_at=now,
            )
            if finalizing is not None and self.on_outputs is not None:
                await self.on_outputs(finalizing)

    async def _cancel(self, job: Job) -> None:
        context.job_id.set(job.id)
        if self.on_cancelled is not None:
            self.on_cancelled(job)
        await self.cancel_remote(job)

    # -- reconciliation ------------------------------------------------------

    async def _reconcile_all(self) -> None:
        """Settle every job of ours found in SUBMITTING, one at a time.

        One at a time, so two jobs with the same input cannot both adopt the same
        provider task.
        """
        for job in await self.store.jobs_in([JobState.SUBMITTING], provider=self.name):
            context.job_id.set(job.id)
            await self._reconcile(job)
        context.job_id.set(None)

    async def _reconcile(self, job: Job) -> None:
        try:
            request = self.request_for(job)
        except EaselError as exc:
            await self._fail(job, JobState.SUBMITTING, exc.info)
            return
        try:
            found = await self.call("reconcile", lambda: self.adapter.reconcile(request), safe=True)
        except EaselError as exc:
            log.warning("reconciliation lookup failed: %s", exc.info.message)
            found = None
            lookup_error = exc.info.message
        else:
            lookup_error = None
        for task_id in found or []:
            if await self.store.job_by_task(self.name, task_id) is None:
                log.info("adopted provider task after restart", extra={"task_id": task_id})
                await self.store.add_event(job.id, "reconciled", {"task_id": task_id})
                await self._record(job, Submitted(task_id))
                return
        if request.spec.resubmit_on_uncertain:
            log.info("resubmitting uncertain submission (model is safe to resubmit)")
            await self.store.add_event(job.id, "resubmitted", {"reason": "uncertain"})
            await self._send_submission(job, attrs.evolve(request, submitting_at=wall_now()))
            return
        detail = {"provider": self.name, "lookup": "unavailable" if found is None else "no match"}
        if lookup_error:
            detail["lookupError"] = lookup_error
        await self._fail(job, JobState.SUBMITTING, ErrorInfo(
            ErrorCode.UNCERTAIN_SUBMISSION,
            "the daemon stopped while submitting this job and the provider cannot prove "
            "whether it received it; it was not resent to avoid paying twice",
            detail,
        ))
