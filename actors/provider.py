"""The provider actor: the shared code around one provider's adapter.

It owns the provider's token bucket and in-flight slots (``actors/limits.py``), its
retry policy and its circuit breaker (``actors/breaker.py``): no other task reads
or writes them, and they are made afresh each time the actor starts (the slots
from the jobs the store shows at the provider). It makes every call to the
provider: submissions, status checks for its poller, cancels, and the
reconciliation of jobs that a crash caught in SUBMITTING. Each attempt spends a
token and each call's final outcome feeds the breaker; calls that are safe to
repeat, and submissions the provider provably refused, are retried per
``RetryPolicy`` (exponential backoff, jitter, cap, honouring ``Retry-After``).

Mailbox (``actors/messages.py``): ``Submit`` from the scheduler, ``CheckTask`` from
its poller, ``CancelTask`` from the HTTP layer and the poller. Each is handled in a
child task, so a slow provider call never blocks the mailbox. It also follows the
store's change feed, to free the slot of a job that ended or moved away. It tells
the scheduler ``ProviderReady`` when it starts, ``Demand`` when a slot frees,
``CircuitChanged``, ``Returned`` and ``Unaccepted``; its poller ``Track`` and
``Forget``.

The rule that keeps a job from being paid twice: a job is marked SUBMITTING, durably,
*before* its request is sent, and a job whose create's answer was lost (or that a
restart found SUBMITTING) is never sent again nor failed as retryable unless the
provider proves it never got it: it becomes RESOLVING and its task is looked for in
the provider's list (``_resolve``) until the section's ``lookup_window`` ends, and
only then is it failed UNCERTAIN_SUBMISSION (or resent, for a model configured as
safe to resubmit). The same rule decides fallbacks: a submission that failed is
handed back for the scheduler's routing (``Unaccepted``) only when ``not_accepted``
proves the provider holds nothing for it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import trio

from actors import context
from actors.breaker import BreakerConfig, CircuitBreaker, CircuitState, Outcome, classify
from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.images.inputs import InputPreparer
from actors.jobs import AT_PROVIDER, TERMINAL, Job, JobState
from actors.lifecycle import Lifecycle
from actors.limits import SlotPool, TokenBucket
from actors.messages import (
    Announce,
    CheckResult,
    CheckTask,
    CircuitChanged,
    Demand,
    Forget,
    PollerMessage,
    ProviderMessage,
    ProviderReady,
    Returned,
    SchedulerMessage,
    Submit,
    Track,
    Unaccepted,
    reply_nowait,
)
from actors.monitor import Monitor
from actors.providers.base import (
    Adapter,
    Capabilities,
    Completed,
    JobRequest,
    ProviderSettings,
    Submitted,
    TaskLister,
)
from actors.retry import Backoff, RetryPolicy, bounded_retry_after
from actors.store import Store
from actors.sweep import OrphanSweep  # the orphan sweep (issue 9, item 3)

log = logging.getLogger(__name__)

T = TypeVar("T")


#: HTTP answers to a submission that are documented refusals: the provider turned
#: the request away before creating anything (rate or concurrency limit).
REFUSAL_STATUSES = frozenset({429})


def not_accepted(exc: EaselError) -> bool:
    """Does ``exc`` prove the provider holds nothing for the request that failed?

    True when the request never reached it (``sent`` is False: connection refused,
    or refused by the adapter before sending) or it answered with a documented
    refusal (429). Everything else may have created a task: a timeout, a reset, a
    malformed answer, and 5xx too: a 500 can come after the task was stored, and a
    gateway's 502/503/504 says nothing about what the backend did. Resending or
    falling back after those could pay twice, so they are final.
    """
    return not exc.sent or exc.info.details.get("status") in REFUSAL_STATUSES


#: Between two lookups for a job whose create's answer was lost.
RESOLVE_BACKOFF = Backoff(base=1.0, cap=30.0, jitter=1.0)

#: Submission failures after which the provider may hold the task.
_DOUBTFUL = frozenset({ErrorCode.PROVIDER_TIMEOUT, ErrorCode.PROVIDER_UNAVAILABLE,
                       ErrorCode.PROVIDER_ERROR})


@attrs.frozen
class Lookup:
    """What one walk of the provider's task list learned about a request.

    ``found``: the ids of matching tasks, oldest first, kept even when a later page
    failed. ``complete``: the walk reached the end of what the provider lists
    within the lookup window, so a task missing from ``found`` is not listed (yet).
    ``error``: why the walk stopped early, if it did.
    """

    found: tuple[str, ...] = ()
    complete: bool = False
    error: str | None = None


class ProviderActor:
    def __init__(
        self,
        name: str,
        adapter: Adapter,
        settings: ProviderSettings,
        *,
        store: Store,
        catalog: Mapping[str, ModelSpec],
        lifecycle: Lifecycle,
        monitor: Monitor,
        mailbox: trio.MemoryReceiveChannel[ProviderMessage],
        changes: trio.MemoryReceiveChannel[Job],
        scheduler: trio.MemorySendChannel[SchedulerMessage],
        poller: trio.MemorySendChannel[PollerMessage],
        capabilities: Capabilities,
        callback_base: str,
        inputs: InputPreparer,
    ) -> None:
        """``changes``: every job change the store commits (to free the slots of
        jobs that ended or moved away). ``callback_base``: the daemon's public
        base URL when the provider pushes webhooks (empty otherwise); with it,
        submissions carry ``{callback_base}/api/providers/{name}/webhook``.
        ``inputs``: makes a job's input images ready for this provider."""
        self.name = name
        self.adapter = adapter
        self.settings = settings
        self._inputs = inputs
        self._store = store
        self._catalog = catalog
        self._lifecycle = lifecycle
        self._monitor = monitor
        self._mailbox = mailbox
        self._changes = changes
        self._scheduler = scheduler
        self._poller = poller
        self._capabilities = capabilities
        self._callback_base = callback_base
        self._retry = RetryPolicy.from_settings(settings)
        self._sweep = OrphanSweep(name, adapter, settings, store, self.call)  # orphan sweep
        self._reset()

    def _reset(self) -> None:
        """Fresh limits and breaker: what a (re)started actor begins with."""
        self._bucket = TokenBucket(self.settings.rate, self.settings.burst)
        self._slots = SlotPool(self.settings.max_in_flight)
        self._adopting = trio.Lock()
        self._breaker = CircuitBreaker(
            self.name, BreakerConfig.from_settings(self.settings), on_transition=self._circuit_moved
        )
        self._monitor.emit("circuit", self.name, state="closed", value=int(CircuitState.CLOSED),
                           initial=True)

    def statistics(self) -> dict[str, Any]:
        """A snapshot of the actor's limits and circuit (reading changes nothing)."""
        slots = self._slots.statistics()
        return {
            "slotsHeld": slots.held,
            "slotsCapacity": slots.capacity,
            "tokens": round(self._bucket.available, 2),
            "circuit": self._breaker.statistics(),
        }

    # -- calls -------------------------------------------------------------

    async def call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        safe: bool,
        token_taken: bool = False,
        on_retry: Callable[[int], Awaitable[None]] | None = None,
        on_refused: Callable[[int], Awaitable[None]] | None = None,
    ) -> T:
        """Make one provider call, with tokens, retries and the circuit breaker.

        The breaker is fed the call's *final* outcome, not every attempt: a blip
        that a retry absorbed did not make the provider unusable, and counting
        attempts would open the circuit on a provider that serves every call.

        ``safe``: the call may be repeated without effect at the provider (a status
        check, a cancel). An unsafe call (a submission) is repeated only when the
        error proves the provider holds nothing for it (``not_accepted``).
        ``token_taken``: the caller already spent the first attempt's token.
        ``on_retry(attempt)``: awaited before attempt 2, 3, ... is sent (the
        submission path counts every attempt on the job). ``on_refused(attempt)``:
        awaited when an unsafe call was refused and will be retried, before the
        backoff (the submission path records that nothing is at the provider).
        A final error carries ``details["attempts"]``.
        """
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1 or not token_taken:
                await self._bucket.take()
            if attempt > 1 and on_retry is not None:
                await on_retry(attempt)
            started = trio.current_time()
            try:
                with self._lifecycle.busy():
                    result = await fn()
            except EaselError as exc:
                self._monitor.emit(
                    "provider.call", self.name, call=what, outcome=exc.code.value,
                    seconds=trio.current_time() - started,
                )
                # However the adapter read it: an absurd one must not stop every
                # call for good.
                retry_after = bounded_retry_after(exc.retry_after)
                if exc.code is ErrorCode.RATE_LIMITED and retry_after:
                    self._bucket.penalize(retry_after)
                repeatable = safe or not_accepted(exc)
                if not (exc.info.is_retryable and repeatable) or attempt >= self._retry.max_attempts:
                    exc.info.details["attempts"] = attempt
                    self._breaker.record(classify(exc.code))
                    raise
                if not safe and on_refused is not None:
                    await on_refused(attempt)
                delay = self._retry.delay(attempt, retry_after)
                log.info("%s %s failed (%s); retry %d in %.1fs", self.name, what, exc.code.value,
                         attempt, delay)
                await trio.sleep(delay)
                continue
            self._breaker.record(classify(None))
            self._monitor.emit(
                "provider.call", self.name, call=what, outcome="ok",
                seconds=trio.current_time() - started,
            )
            return result

    async def cancel_remote(self, job: Job) -> None:
        """Ask the provider to stop ``job``'s task; failures are only logged."""
        if not job.provider_task_id:
            return
        try:
            await self.call("cancel", lambda: self.adapter.cancel(job.provider_task_id), safe=True)
        except EaselError as exc:
            log.warning("cancel at %s failed: %s", self.name, exc.info.message)

    def request_for(self, job: Job) -> JobRequest:
        """The request for ``job`` as its serving model (a fallback, once moved)."""
        model = job.serving_model
        spec = self._catalog.get(model)
        if spec is None:
            raise EaselError(
                ErrorCode.INVALID_REQUEST, f"model {model!r} is no longer in the catalog"
            )
        return JobRequest(
            job_id=job.id,
            model=model,
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
        if not self._callback_base:
            return None
        return f"{self._callback_base.rstrip('/')}/api/providers/{self.name}/webhook"

    # -- the actor ---------------------------------------------------------

    def _circuit_moved(self, name: str, old: CircuitState, new: CircuitState) -> None:
        log.warning("circuit of %s: %s -> %s", name, old.label, new.label)
        self._monitor.emit("circuit", name, state=new.label, value=int(new), previous=old.label)

    async def _watch_circuit(self) -> None:
        """Apply the breaker's time-driven change (open -> half-open) when it is due,
        and tell the scheduler of every change, so metrics and held jobs see it even
        when no call asks the breaker.

        A change that happens while a send waits is not lost: the loop compares
        the breaker's transition count with the one its last report carried, and
        only waits when they agree (no await between that look and the wait).
        """
        reported = self._breaker.transitions
        while True:
            if self._breaker.transitions == reported:
                due = self._breaker.next_change_at()
                with trio.move_on_at(due if due is not None else float("inf")):
                    await self._breaker.wait_changed()
            self._breaker.advance()
            reported = self._breaker.transitions
            await self._scheduler.send(CircuitChanged(self.name, self._breaker.view()))

    async def _follow_changes(self) -> None:
        """Free the slot of each job of ours that ended or moved to another provider
        (whoever moved it: the poller, the finalizer, a client's cancel, the
        scheduler's routing) and tell the scheduler it may hand over another."""
        async for job in self._changes:
            if not self._slots.holds(job.id):
                continue
            if job.state in TERMINAL or job.provider != self.name:
                self._slots.release(job.id)
                await self._scheduler.send(Demand(self.name))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reload, announce, then serve the mailbox; the same at every (re)start.

        A job handed over before a crash and not yet SUBMITTING is QUEUED still: the
        scheduler reloads it on ``ProviderReady``. A task recorded RUNNING before a
        crash is reloaded by the poller, which restarts with this actor.
        """
        self._reset()
        # What our previous run sent before it was cancelled commits first.
        await self._store.barrier()
        self._slots.retain(await self._store.job_ids_in(AT_PROVIDER, provider=self.name))
        # Read what a crash left in SUBMITTING *before* taking new work: a job we
        # mark SUBMITTING from here on is ours, never one to reconcile.
        stuck = await self._store.jobs_in([JobState.SUBMITTING], provider=self.name)
        resolving = await self._store.jobs_in([JobState.RESOLVING], provider=self.name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_circuit)
            nursery.start_soon(self._follow_changes)
            await self._settle(nursery, stuck, resolving)
            nursery.start_soon(self._sweep.run)  # orphan sweep
            task_status.started()
            # After started(): a full scheduler mailbox must not hold up the tree.
            await self._announce()
            async for message in self._mailbox:
                if isinstance(message, Submit):
                    nursery.start_soon(self._submit, message.job)
                elif isinstance(message, CheckTask):
                    nursery.start_soon(self._check, message)
                elif isinstance(message, Announce):
                    nursery.start_soon(self._announce)
                else:
                    nursery.start_soon(self._cancel, message.job)

    async def _announce(self) -> None:
        """Tell the scheduler how many jobs we can take and how the circuit is."""
        await self._scheduler.send(ProviderReady(self.name, self._slots.free,
                                                 self._breaker.view()))

    async def _fail(self, job: Job, from_state: JobState, error: ErrorInfo) -> None:
        failed = await self._store.transition(job.id, from_state, JobState.FAILED, error=error,
                                              where={"provider": self.name})
        if failed is not None:
            log.warning("job failed: %s %s", error.code.value, error.message)
            self._monitor.emit("job.failed", self.name, code=error.code.value)

    async def _check(self, message: CheckTask) -> None:
        with message.reply:
            try:
                status = await self.call(
                    "check", lambda: self.adapter.check(message.task_id), safe=True)
            except EaselError as exc:
                reply_nowait(message.reply, CheckResult(error=exc))
            else:
                reply_nowait(message.reply, CheckResult(status=status))

    async def _submit(self, job: Job) -> None:
        context.job_id.set(job.id)
        context.provider.set(self.name)
        if self._slots.holds(job.id):
            # Handed over twice (the scheduler reloaded it while we had it): the
            # first hand-over carries on; the credit spent on this one comes back.
            await self._scheduler.send(Demand(self.name))
            return
        if not self._slots.hold(job.id):
            await self._scheduler.send(Returned(job, None))
            return
        submitting: Job | None = None
        try:
            try:
                # Input images in the provider's form, preprocessed (worker threads),
                # before anything is spent on the job: a bad image fails it here.
                request = await self._inputs.prepare(self.request_for(job), job.preprocess)
            except EaselError as exc:
                await self._fail(job, JobState.QUEUED, exc.info)
                return
            # The token first: a job marked SUBMITTING must be on the wire at once,
            # or a crash while it waits for a token leaves it uncertain for nothing.
            await self._bucket.take()
            if self._lifecycle.draining:
                return  # QUEUED still: taken up again after the restart
            if not self._breaker.allow():
                # The circuit opened (or every half-open probe is out) since the
                # scheduler last heard: nothing was sent, so it may hold or move it.
                self._slots.release(job.id)
                await self._scheduler.send(Returned(job, self._breaker.view()))
                return
            # From the mark to the recorded answer is one piece of work a drain
            # waits for, so a drain never leaves a job SUBMITTING for nothing.
            with self._lifecycle.busy():
                now = wall_now()
                # Still ours: the scheduler may have rerouted it while we waited for
                # the token (after a reload handed it over twice), and sending it
                # here too would pay twice.
                submitting = await self._store.transition(
                    job.id, JobState.QUEUED, JobState.SUBMITTING,
                    where={"provider": self.name, "served_model": job.served_model},
                    submitting_at=now, attempts=job.attempts + 1,
                )
                if submitting is None:  # cancelled or rerouted meanwhile
                    self._breaker.record(Outcome.NEUTRAL)  # the probe, if any, goes back
                    return
                await self._send_submission(
                    submitting, attrs.evolve(request, submitting_at=now), token_taken=True)
        finally:
            if submitting is None and self._slots.release(job.id):
                # Never sent (failed, cancelled, rerouted, draining): the slot is
                # free; ``Returned`` above already told the scheduler so.
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(5):
                        await self._scheduler.send(Demand(self.name))

    async def _send_submission(self, job: Job, request: JobRequest, token_taken: bool = False) -> None:
        """Send ``job`` (in SUBMITTING, its first attempt already counted) and
        record the answer; retries are counted on the job before they are sent."""
        first = job.attempts

        async def count(attempt: int) -> None:
            counted = await self._store.update(
                job.id, JobState.SUBMITTING, attempts=first + attempt - 1)
            if counted is None:  # cancelled while waiting to retry: send nothing more
                raise EaselError(ErrorCode.TASK_CANCELLED, "cancelled before the retry",
                                 retryable=False)

        async def refused(attempt: int) -> None:
            # Durable before the backoff: a crash while waiting to retry then leaves
            # proof that the provider holds nothing (see _refused_last).
            await self._store.add_event(job.id, "refused", {"attempt": first + attempt - 1})

        try:
            result = await self.call(
                "submit", lambda: self.adapter.submit(request), safe=False,
                token_taken=token_taken, on_retry=count, on_refused=refused,
            )
        except EaselError as exc:
            exc.info.details["attempts"] = first + exc.info.details.get("attempts", 1) - 1
            if exc.info.is_retryable and not_accepted(exc):
                await self._hand_back(job, exc.info)
                return
            if exc.sent and exc.code in _DOUBTFUL:
                await self._doubt(job, request, exc.info)
                return
            await self._fail(job, JobState.SUBMITTING, exc.info)
            return
        except Exception as exc:
            log.exception("submission raised")
            await self._fail(job, JobState.SUBMITTING,
                             ErrorInfo(ErrorCode.INTERNAL_ERROR, f"submission failed: {exc!r}"))
            return
        await self._record(job, result)

    async def _hand_back(self, job: Job, error: ErrorInfo) -> None:
        """Nothing is at the provider: put the job back in the queue, durably, then
        let the scheduler route it (a fallback, or failed with ``error``).

        QUEUED before the message: if we or the scheduler crash before it is
        handled, the job is a queued job like any other, never a SUBMITTING one a
        restart would have to reconcile (and might resend while the scheduler,
        handling a stale message, moves it to a fallback too).
        """
        attempts = error.details.get("attempts", job.attempts)
        queued = await self._store.transition(
            job.id, JobState.SUBMITTING, JobState.QUEUED, where={"provider": self.name},
            submitting_at=None, attempts=attempts,
            event={"reason": "refused", "code": error.code.value},
        )
        self._slots.release(job.id)
        if queued is not None:
            await self._scheduler.send(Unaccepted(queued, error))
        else:  # cancelled meanwhile: the slot is free all the same
            await self._scheduler.send(Demand(self.name))

    async def _doubt(self, job: Job, request: JobRequest, cause: ErrorInfo | None) -> None:
        """The provider may hold a task for ``job`` (SUBMITTING) and we cannot tell:
        its create's answer was lost (``cause``) or the daemon stopped mid-create
        (``None``). Never a retryable failure: a client that retried would pay twice.

        A provider that can list its tasks: the job becomes RESOLVING and is looked
        for until its lookup window ends. Otherwise, or once the window has passed
        with nothing found: resent when its model is safe to resubmit, else failed
        UNCERTAIN_SUBMISSION, not retryable.
        """
        if cause is None:
            reason = "the daemon stopped while the create was in flight"
        else:
            reason = f"the create's answer was lost ({cause.code.value}: {cause.message})"
        if not self._capabilities.lookup:
            await self._uncertain(job, JobState.SUBMITTING, request, reason, Lookup(
                error=f"{self.name} offers no way to list its tasks"))
            return
        resolving = await self._store.transition(
            job.id, JobState.SUBMITTING, JobState.RESOLVING, where={"provider": self.name},
            stage_reason=reason,
            event={"reason": reason, "code": cause.code.value if cause else None,
                   "lookupUntil": (job.submitting_at or wall_now())
                   + self.settings.lookup_window},
        )
        if resolving is not None:
            await self._resolve(resolving, request, cause.code.value if cause else "restart")

    async def _resolve(self, job: Job, request: JobRequest, after: str) -> None:
        """Look for ``job``'s task (RESOLVING) until it is found, the job leaves
        RESOLVING (a client cancelled it), or the provider's lookup window ends.

        Lookups are retried with backoff and jitter; while another job of ours with
        the same request is queued or being submitted, none is made (a lookup by
        input could not tell their tasks apart). Adoption is one at a time across
        this provider's jobs, so two jobs can never adopt one task. The deadline is
        on the job (its ``submitting_at``), so a restart resumes the same search.
        """
        context.job_id.set(job.id)
        deadline = (job.submitting_at or wall_now()) + self.settings.lookup_window
        last = Lookup()
        attempt = 0
        while True:
            if not await self._store.has_twin(job, [JobState.QUEUED, JobState.SUBMITTING]):
                last = await self._look_up(request)
                if await self._adopt(job, last.found, {"after": after},
                                     from_state=JobState.RESOLVING):
                    return
            if wall_now() >= deadline:
                break
            attempt += 1
            await trio.sleep(min(RESOLVE_BACKOFF.delay(attempt), max(0.0, deadline - wall_now())))
            current = await self._store.get_job(job.id)
            if current is None or current.state is not JobState.RESOLVING:
                return  # cancelled meanwhile
        await self._uncertain(job, JobState.RESOLVING, request, job.stage_reason or "", last)

    async def _uncertain(self, job: Job, from_state: JobState, request: JobRequest,
                         reason: str, lookup: Lookup) -> None:
        """Nothing proves the provider holds a task for ``job``, nor that it does not."""
        if request.spec.resubmit_on_uncertain:
            log.info("resubmitting uncertain submission (model is safe to resubmit)")
            if from_state is JobState.RESOLVING:
                moved = await self._store.transition(
                    job.id, JobState.RESOLVING, JobState.SUBMITTING,
                    where={"provider": self.name}, stage_reason=None)
                if moved is None:
                    return
                job = moved
            await self._resubmit(job, request, "uncertain")
            return
        detail: dict[str, Any] = {
            "provider": self.name, "reason": reason,
            "lookup": "no match" if lookup.complete else "unavailable",
        }
        if lookup.error:
            detail["lookupError"] = lookup.error
        await self._fail(job, from_state, ErrorInfo(
            ErrorCode.UNCERTAIN_SUBMISSION,
            f"{reason}; {self.name} may hold a task for this job, and none was found: it "
            "was not resent, to avoid paying twice",
            detail, retryable=False,
        ))

    async def _refused_last(self, job: Job) -> bool:
        """Whether the provider refused ``job``'s last counted attempt."""
        refusals = [event for event in await self._store.events(job.id) if event["kind"] == "refused"]
        return bool(refusals) and refusals[-1].get("attempt") == job.attempts

    async def _resubmit(self, job: Job, request: JobRequest, reason: str) -> None:
        await self._store.add_event(job.id, "resubmitted", {"reason": reason})
        counted = await self._store.update(job.id, JobState.SUBMITTING, attempts=job.attempts + 1)
        if counted is None:
            return  # cancelled meanwhile
        await self._send_submission(counted, attrs.evolve(request, submitting_at=wall_now()))

    async def _look_up(self, request: JobRequest) -> Lookup:
        """Walk the provider's task list, newest page first, for tasks matching
        ``request``.

        Each page is its own call (one rate-limit token per request sent, and a
        page that fails is retried alone per ``RetryPolicy``). The walk stops at
        the first page holding a match no job has claimed yet: ``found`` then ends
        with that page's matches, and the claimed matches of earlier pages come
        before them (``_adopt`` skips those). A caller whose adoption still fails
        (claimed in between) may call again; the walk starts over from the newest
        page. It is ``complete`` when it reached the end of the provider's reach
        (``LookupPage.next_cursor`` is ``None``) without stopping; a page that
        still fails after its retries, or the adapter's page limit, ends it
        incomplete with the matches found so far and the reason.
        """
        if not isinstance(self.adapter, TaskLister):
            return Lookup(error="the provider offers no lookup")
        lister = self.adapter
        found: list[str] = []
        cursor: str | None = None
        for _ in range(lister.lookup_pages):
            try:
                page = await self.call(
                    "lookup", functools.partial(lister.lookup_page, request, cursor), safe=True)
            except EaselError as exc:
                log.warning("lookup stopped at a failing page: %s", exc.info.message)
                return Lookup(found=tuple(found), error=exc.info.message)
            found.extend(task_id for task_id in page.matches if task_id not in found)
            if page.next_cursor is None:
                return Lookup(found=tuple(found), complete=True)
            if await self._unclaimed(page.matches):
                return Lookup(found=tuple(found))
            cursor = page.next_cursor
        return Lookup(found=tuple(found),
                      error=f"the list holds more than {lister.lookup_pages} pages to look through")

    async def _unclaimed(self, task_ids: Sequence[str]) -> bool:
        """Whether one of ``task_ids`` is no job's task yet (one ``_adopt`` may take)."""
        for task_id in task_ids:
            if await self._store.job_by_task(self.name, task_id) is None:
                return True
        return False

    async def _adopt(self, job: Job, found: Sequence[str], why: dict[str, Any],
                     from_state: JobState = JobState.SUBMITTING) -> bool:
        """Carry ``job`` on with the first of ``found`` no other job has claimed.

        One adoption at a time across this provider's jobs (``_adopting``): the
        check that no job holds a task and the write that gives it one must not
        interleave with another's, or two jobs could adopt the same task."""
        async with self._adopting:
            for task_id in found:
                if await self._store.job_by_task(self.name, task_id) is None:
                    log.info("adopted provider task", extra={"task_id": task_id})
                    await self._store.add_event(job.id, "reconciled",
                                                {"task_id": task_id, **why})
                    await self._record(job, Submitted(task_id), from_state)
                    return True
        return False

    async def _record(self, job: Job, result: Submitted | Completed,
                      from_state: JobState = JobState.SUBMITTING) -> None:
        """Store what the provider answered, then hand the job on."""
        now = wall_now()
        if isinstance(result, Submitted):
            running = await self._store.transition(
                job.id, from_state, JobState.RUNNING, where={"provider": self.name},
                provider_task_id=result.task_id, started_at=now, stage_reason=None,
            )
            if running is None:
                # Cancelled while we were submitting: the task exists remotely.
                await self.cancel_remote(attrs.evolve(job, provider_task_id=result.task_id))
                return
            log.info("submitted", extra={"task_id": result.task_id})
            await self._poller.send(Track(running))
        else:
            # Nothing to send: the finalizer follows the store's change feed.
            await self._store.transition(
                job.id, JobState.SUBMITTING, JobState.FINALIZING,
                provider_outputs=list(result.outputs), started_at=now,
            )

    async def _cancel(self, job: Job) -> None:
        context.job_id.set(job.id)
        try:
            self._poller.send_nowait(Forget(job.id))
        except trio.WouldBlock:
            # A full mailbox: the poller keeps checking the task until the
            # provider reports it ended or its deadline passes; then its
            # RUNNING -> ... transition finds the job CANCELLED and drops it.
            pass
        await self.cancel_remote(job)

    # -- reconciliation ------------------------------------------------------

    async def _settle(self, nursery: trio.Nursery, stuck: list[Job],
                      resolving: list[Job]) -> None:
        """Take up every job of ours a restart found SUBMITTING or RESOLVING, each in
        its own task (a search may last the whole lookup window); adoption is one
        at a time (``_adopting``), so two jobs cannot adopt the same task."""
        for job in stuck:
            nursery.start_soon(self._reconcile, job)
        for job in resolving:
            nursery.start_soon(self._resume, job)

    async def _reconcile(self, job: Job) -> None:
        context.job_id.set(job.id)
        try:
            request = self.request_for(job)
        except EaselError as exc:
            await self._fail(job, JobState.SUBMITTING, exc.info)
            return
        if await self._refused_last(job):
            # Its last attempt was refused and the next was never counted, so never
            # sent: resending cannot pay twice, whatever the model says.
            log.info("resubmitting: the last attempt before the restart was refused")
            await self._resubmit(job, request, "refused before the restart")
            return
        await self._doubt(job, request, None)

    async def _resume(self, job: Job) -> None:
        """Go on looking for the task of a job a restart found RESOLVING."""
        try:
            request = self.request_for(job)
        except EaselError as exc:
            await self._fail(job, JobState.RESOLVING, exc.info)
            return
        await self._resolve(job, request, "restart")
