"""The provider actor: the shared code around one provider's adapter.

It owns the provider's token bucket and in-flight slots (``actors/limits.py``), its
retry policy and its circuit breaker (``actors/breaker.py``), and makes every call
to the provider: submissions handed over by the scheduler, status checks for its
poller, cancels, and the reconciliation of jobs that a crash caught in SUBMITTING.
Each attempt spends a token and each call's final outcome feeds the breaker; calls
that are safe to repeat, and submissions the provider provably refused, are retried
per ``RetryPolicy`` (exponential backoff, jitter, cap, honouring ``Retry-After``).

Mailbox: ``Dispatch(job, ticket)`` from the scheduler; ``CancelTask(job)`` from the
HTTP layer. Each message is handled in a child task, so a slow provider call never
blocks the mailbox.

The rule that keeps a job from being paid twice: a job is marked SUBMITTING, durably,
*before* its request is sent, and a job found in SUBMITTING is never sent again
unless the provider proves it never got it (``reconcile``) or its model is
configured as safe to resubmit. The same rule decides fallbacks: a submission that
failed is moved to its model's next fallback only when ``not_accepted`` proves the
provider holds nothing for it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from actors import context
from actors.breaker import BreakerConfig, CircuitBreaker, CircuitState, classify
from actors.catalog import ModelSpec, later_models
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
from actors.scheduler import Attach, Dispatch, Enqueue, Resync
from actors.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")


@attrs.frozen
class CancelTask:
    job: Job


@attrs.frozen
class RetryPolicy:
    """How a provider's repeatable calls are retried.

    Attempt ``n`` (from 1) that failed waits ``min(cap, base * 2**(n-1))`` seconds,
    of which the fraction ``jitter`` is random (1: "full jitter", spreading the
    retries of many jobs that failed together; 0: a fixed schedule), and never less
    than the provider's ``Retry-After``. ``max_attempts`` counts the first try.
    """

    max_attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    base: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=1.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> RetryPolicy:
        """``max_attempts`` and the ``retry_*`` fields of a provider section."""
        return cls(
            max_attempts=settings.max_attempts,
            base=settings.retry_base,
            cap=settings.retry_cap,
            jitter=settings.retry_jitter,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        delay = ceiling * (1 - self.jitter * random.random())
        return max(delay, retry_after or 0.0)


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


#: Submission failures after which the provider may hold the task.
_DOUBTFUL = frozenset({ErrorCode.PROVIDER_TIMEOUT, ErrorCode.PROVIDER_UNAVAILABLE,
                       ErrorCode.PROVIDER_ERROR})


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
        self.retry = RetryPolicy.from_settings(settings)
        self.breaker = CircuitBreaker(
            name, BreakerConfig.from_settings(settings), on_transition=self._circuit_moved
        )
        monitor.emit("circuit", name, state="closed", value=int(CircuitState.CLOSED), initial=True)
        #: ``fits(job, model)``: whether a fallback ``model`` can take the job's
        #: request (wired by the runtime, which knows every section's adapter).
        self.fits: Callable[[Job, str], bool] = lambda job, model: True
        self.send, self._receive = trio.open_memory_channel[Dispatch | CancelTask](mailbox_size)
        # Wired by the runtime once every actor exists.
        self.scheduler_send: Callable[[Enqueue | Resync | Attach], Awaitable[None]] | None = None
        self.on_running: Callable[[Job], Awaitable[None]] | None = None
        self.on_outputs: Callable[[Job], Awaitable[None]] | None = None
        self.on_cancelled: Callable[[Job], None] | None = None
        #: Public base URL of the daemon; with it, providers that push webhooks are
        #: given ``{callback_base}/api/providers/{name}/webhook``.
        self.callback_base = ""
        self._starts = 0

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
                await self.bucket.take()
            if attempt > 1 and on_retry is not None:
                await on_retry(attempt)
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
                repeatable = safe or not_accepted(exc)
                if not (exc.info.is_retryable and repeatable) or attempt >= self.retry.max_attempts:
                    exc.info.details["attempts"] = attempt
                    self.breaker.record(classify(exc.code))
                    raise
                if not safe and on_refused is not None:
                    await on_refused(attempt)
                delay = self.retry.delay(attempt, exc.retry_after)
                log.info("%s %s failed (%s); retry %d in %.1fs", self.name, what, exc.code.value,
                         attempt, delay)
                await trio.sleep(delay)
                continue
            self.breaker.record(classify(None))
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
        """The request for ``job`` as its serving model (a fallback, once moved)."""
        model = job.serving_model
        spec = self.catalog.get(model)
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
        if not self.callback_base or not hasattr(self.adapter, "parse_webhook"):
            return None
        return f"{self.callback_base.rstrip('/')}/api/providers/{self.name}/webhook"

    # -- the actor ---------------------------------------------------------

    def _circuit_moved(self, name: str, old: CircuitState, new: CircuitState) -> None:
        log.warning("circuit of %s: %s -> %s", name, old.label, new.label)
        self.monitor.emit("circuit", name, state=new.label, value=int(new), previous=old.label)

    async def _watch_circuit(self) -> None:
        """Apply the breaker's time-driven change (open -> half-open) when it is due,
        so metrics and held jobs see it even when no call asks the breaker."""
        while True:
            if self.breaker.state is CircuitState.OPEN:
                with trio.move_on_at(self.breaker.reopens_at):
                    await self.breaker.wait_changed()
                self.breaker.statistics()  # reading the state applies the change
            else:
                await self.breaker.wait_changed()

    async def run(self) -> None:
        self._starts += 1
        async with trio.open_nursery() as nursery:
            self.slots.retain(await self.store.job_ids_in(AT_PROVIDER, provider=self.name))
            nursery.start_soon(self._watch_circuit)
            if self.scheduler_send is not None:
                await self.scheduler_send(Attach(self.name, self.breaker, self.catalog))
            # Read what a crash left in SUBMITTING *before* taking new work: a job we
            # mark SUBMITTING from here on is ours, never one to reconcile.
            stuck = await self.store.jobs_in([JobState.SUBMITTING], provider=self.name)
            nursery.start_soon(self._reconcile_all, stuck)
            if self._starts > 1 and self.scheduler_send is not None:
                # Jobs handed to us before the crash may be lost with it, and a job
                # we were moving to a fallback may have reached no queue: reload all
                # (the scheduler ignores jobs it already holds).
                await self.scheduler_send(Resync(None))
            if self._starts > 1 and self.on_running is not None:
                # A crash between recording a task and handing it to the poller
                # would leave it RUNNING and unwatched: hand over every one again
                # (the poller ignores those it already tracks).
                for running in await self.store.jobs_in([JobState.RUNNING], provider=self.name):
                    await self.on_running(running)
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
        if self.breaker.state is CircuitState.OPEN and self.scheduler_send is not None:
            # Dispatched just before the circuit opened: nothing was sent yet, so
            # the scheduler may still hold it or move it to a fallback.
            if newly_held:
                self.slots.release(job.id)
            await self.scheduler_send(Enqueue(job))
            return
        try:
            request = self.request_for(job)
        except EaselError as exc:
            await self._fail(job, JobState.QUEUED, exc.info)
            return
        # The token first: a job marked SUBMITTING must be on the wire at once, or a
        # crash while it waits for a token leaves it uncertain for nothing.
        await self.bucket.take()
        now = wall_now()
        # Still ours: a circuit reroute may have moved it to a fallback's provider
        # while we waited for the token, and sending it here too would pay twice.
        job = await self.store.transition(
            job.id, JobState.QUEUED, JobState.SUBMITTING,
            where={"provider": self.name, "served_model": job.served_model},
            submitting_at=now, attempts=job.attempts + 1,
        )
        if job is None:  # cancelled, rerouted, or handed to us twice and taken
            await self._release_unless_ours(message.job.id)
            return
        await self._send_submission(job, attrs.evolve(request, submitting_at=now), token_taken=True)

    async def _release_unless_ours(self, job_id: str) -> None:
        """Free ``job_id``'s slot here unless the job is at this provider now (the
        other hand-over of a job handed twice)."""
        current = await self.store.get_job(job_id)
        if current is None or current.provider != self.name or current.state not in AT_PROVIDER:
            self.slots.release(job_id)

    async def _send_submission(self, job: Job, request: JobRequest, token_taken: bool = False) -> None:
        """Send ``job`` (in SUBMITTING, its first attempt already counted) and
        record the answer; retries are counted on the job before they are sent."""
        first = job.attempts

        async def count(attempt: int) -> None:
            counted = await self.store.update(
                job.id, JobState.SUBMITTING, attempts=first + attempt - 1)
            if counted is None:  # cancelled while waiting to retry: send nothing more
                raise EaselError(ErrorCode.TASK_CANCELLED, "cancelled before the retry",
                                 retryable=False)

        async def refused(attempt: int) -> None:
            # Durable before the backoff: a crash while waiting to retry then leaves
            # proof that the provider holds nothing (see _refused_last).
            await self.store.add_event(job.id, "refused", {"attempt": first + attempt - 1})

        try:
            result = await self.call(
                "submit", lambda: self.adapter.submit(request), safe=False,
                token_taken=token_taken, on_retry=count, on_refused=refused,
            )
        except EaselError as exc:
            exc.info.details["attempts"] = first + exc.info.details.get("attempts", 1) - 1
            if await self._fall_back(job, exc):
                return
            if await self._adopt_after_doubt(job, request, exc):
                return
            await self._fail(job, JobState.SUBMITTING, exc.info)
            return
        except Exception as exc:
            log.exception("submission raised")
            await self._fail(job, JobState.SUBMITTING,
                             ErrorInfo(ErrorCode.INTERNAL_ERROR, f"submission failed: {exc!r}"))
            return
        await self._record(job, result)

    async def _adopt_after_doubt(self, job: Job, request: JobRequest, exc: EaselError) -> bool:
        """After a submission whose fate is unknown (a timeout, a dropped connection,
        a 5xx or an unreadable answer after the request went out), look for the task
        at once, as after a crash: if the provider shows it, the job carries on with
        it instead of failing while its task runs, paid for and unseen.

        Skipped while another job of ours with the same request is queued or being
        submitted: a lookup by input could not tell their tasks apart.
        """
        if not exc.sent or exc.code not in _DOUBTFUL:
            return False
        if await self.store.has_twin(job, [JobState.QUEUED, JobState.SUBMITTING]):
            return False
        found, _ = await self._look_up(request)
        return await self._adopt(job, found, {"after": exc.code.value})

    async def _refused_last(self, job: Job) -> bool:
        """Whether the provider refused ``job``'s last counted attempt."""
        refusals = [event for event in await self.store.events(job.id) if event["kind"] == "refused"]
        return bool(refusals) and refusals[-1].get("attempt") == job.attempts

    async def _resubmit(self, job: Job, request: JobRequest, reason: str) -> None:
        await self.store.add_event(job.id, "resubmitted", {"reason": reason})
        counted = await self.store.update(job.id, JobState.SUBMITTING, attempts=job.attempts + 1)
        if counted is None:
            return  # cancelled meanwhile
        await self._send_submission(counted, attrs.evolve(request, submitting_at=wall_now()))

    async def _look_up(self, request: JobRequest) -> tuple[list[str] | None, str | None]:
        """The provider's tasks matching ``request`` (``None``: it cannot tell), and
        why the lookup failed, if it did."""
        try:
            found = await self.call("reconcile", lambda: self.adapter.reconcile(request), safe=True)
        except EaselError as exc:
            log.warning("reconciliation lookup failed: %s", exc.info.message)
            return None, exc.info.message
        return found, None

    async def _adopt(self, job: Job, found: list[str] | None, why: dict[str, Any]) -> bool:
        """Carry ``job`` on with the first of ``found`` no other job has claimed."""
        for task_id in found or []:
            if await self.store.job_by_task(self.name, task_id) is None:
                log.info("adopted provider task", extra={"task_id": task_id})
                await self.store.add_event(job.id, "reconciled", {"task_id": task_id, **why})
                await self._record(job, Submitted(task_id))
                return True
        return False

    async def _fall_back(self, job: Job, exc: EaselError) -> bool:
        """Move a job whose submission failed to its model's next fallback.

        Only for a retryable provider-side failure that ``not_accepted`` proves left
        nothing at the provider: falling back when the provider may hold the task
        would pay twice. The job goes back to QUEUED on the fallback's provider (so
        its breaker, slots and poller take it from there) with a ``fallback`` event.
        Returns whether the job is taken care of.
        """
        if not (exc.info.is_retryable and not_accepted(exc)) or self.scheduler_send is None:
            return False
        current = job.serving_model
        later = [model for model in later_models(self.catalog, job.model, job.served_model)
                 if self.fits(job, model)]
        if not later:
            return False
        target = later[0]
        spec = self.catalog[target]
        attempts = exc.info.details.get("attempts", job.attempts)
        reason = f"{exc.code.value} after {attempts} attempts (not accepted by {self.name})"
        moved = await self.store.transition(
            job.id, JobState.SUBMITTING, JobState.QUEUED,
            provider=spec.provider, provider_model=spec.provider_model, served_model=target,
            submitting_at=None, attempts=attempts,
            event={"reason": "fallback", "to": target},
        )
        self.slots.release(job.id)
        if moved is None:
            return True  # cancelled meanwhile: nothing left to do
        await self.store.add_event(job.id, "fallback", {
            "from": current, "to": target, "reason": reason, "code": exc.code.value,
        })
        self.monitor.emit("fallback", self.name, model=job.model, to=target,
                          reason="not_accepted")
        log.warning("job moved from %s to fallback %s: %s", current, target, reason)
        await self.scheduler_send(Enqueue(moved))
        return True

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

    async def _reconcile_all(self, stuck: list[Job]) -> None:
        """Settle every job of ours found in SUBMITTING at start, one at a time.

        One at a time, so two jobs with the same input cannot both adopt the same
        provider task.
        """
        for job in stuck:
            context.job_id.set(job.id)
            await self._reconcile(job)
        context.job_id.set(None)

    async def _reconcile(self, job: Job) -> None:
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
        found, lookup_error = await self._look_up(request)
        if await self._adopt(job, found, {"after": "restart"}):
            return
        if request.spec.resubmit_on_uncertain:
            log.info("resubmitting uncertain submission (model is safe to resubmit)")
            await self._resubmit(job, request, "uncertain")
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
