"""The poller actor of one provider: a timer heap of running provider tasks.

Every RUNNING job of the provider has one entry, keyed by when it is next due: its
next status check, or its model's ``max_duration`` deadline if that comes first.
The loop sleeps until the earliest entry, takes a token from the provider for each
check (so checks never exceed the provider's rate), and runs the check in a child
task. The next due time is stored on the job (``next_poll_at``), so after a restart
polling resumes on schedule rather than all at once.

It runs beside its provider actor and restarts with it (a provider that crashed
mid-call may have lost the replies a check waits for). Every call to the provider
is a message: ``CheckTask`` (answered on a reply channel) and ``CancelTask`` for a
task past its deadline, so the provider's tokens and breaker stay its own.

Mailbox (``actors/messages.py``): ``Track(job)`` for a job that has just become
RUNNING; ``Forget(job_id)`` for a job cancelled by a client; ``Observed`` for a
provider webhook. A task that succeeded is left FINALIZING for the finalizer, which
follows the store's change feed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Mapping

import attrs
import trio

from actors import context
from actors.adaptive import DurationHistory
from actors.catalog import ModelSpec, PollingSpec, PollingStrategy
from actors.clock import trio_time_of, wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import Job, JobState
from actors.lifecycle import Lifecycle
from actors.messages import (
    CancelTask,
    CheckResult,
    CheckTask,
    Observed,
    PollerMessage,
    ProviderMessage,
    Track,
)
from actors.monitor import Monitor
from actors.polling import delay_before_check, polling_for
from actors.providers.base import ProviderSettings, TaskState, TaskStatus
from actors.store import Store

log = logging.getLogger(__name__)

#: How late a check may run so that checks due close together share a wake-up.
COALESCE_SECONDS = 0.1


@attrs.define
class _Entry:
    job: Job
    spec: PollingSpec
    deadline: float  # wall time at which the task times out
    due: float = 0.0
    generation: int = 0


class Poller:
    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        *,
        catalog: Mapping[str, ModelSpec],
        store: Store,
        lifecycle: Lifecycle,
        monitor: Monitor,
        mailbox: trio.MemoryReceiveChannel[PollerMessage],
        provider: trio.MemorySendChannel[ProviderMessage],
    ) -> None:
        self.name = name
        self._settings = settings
        self._catalog = catalog
        self._store = store
        self._lifecycle = lifecycle
        self._monitor = monitor
        self._mailbox = mailbox
        self._provider = provider
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._counter = itertools.count()
        self._changed = trio.Event()
        # Checks under way at once: enough to spend every token even if each check
        # took the whole request timeout (so tokens, not this, limit the poll rate),
        # few enough that thousands of due tasks do not become thousands of tasks.
        self._checks = trio.Semaphore(max(
            16, 2 * settings.burst, math.ceil(settings.rate * settings.request_timeout)))
        #: Completion times of this provider's models, for adaptive polling.
        self.history = DurationHistory()

    def statistics(self) -> dict[str, int]:
        return {"tracked": len(self._entries)}

    def _schedule(self, entry: _Entry, due: float) -> None:
        entry.generation += 1
        entry.due = min(due, entry.deadline)
        heapq.heappush(self._heap, (entry.due, next(self._counter), entry.job.id, entry.generation))
        self._changed.set()

    def _track(self, job: Job) -> None:
        if job.id in self._entries:
            return  # already watched (a provider actor restarted and re-announced it)
        spec = self._catalog.get(job.serving_model)
        if spec is None:
            log.error("running job %s has unknown model %s; not polled", job.id, job.serving_model)
            return
        polling = polling_for(spec, self._settings.polling)
        started = job.started_at or wall_now()
        entry = _Entry(job=job, spec=polling, deadline=started + spec.max_duration)
        self._entries[job.id] = entry
        due = job.next_poll_at
        if due is None:
            due = wall_now() + self._delay(entry, job.poll_count)
        self._schedule(entry, due)

    def _delay(self, entry: _Entry, checks_done: int) -> float:
        """Seconds from now to the next check of ``entry``'s task."""
        if entry.spec.strategy is PollingStrategy.ADAPTIVE:
            job = entry.job
            elapsed = wall_now() - (job.started_at or wall_now())
            return self.history.delay(job.serving_model, entry.spec, elapsed, checks_done)
        return delay_before_check(entry.spec, checks_done)

    def _adaptive_models(self) -> list[str]:
        default = self._settings.polling
        return [
            name for name, spec in self._catalog.items()
            if spec.provider == self.name
            and polling_for(spec, default).strategy is PollingStrategy.ADAPTIVE
        ]

    async def _load_history(self) -> None:
        found = await self._store.recent_durations(self._adaptive_models(), self.history.window)
        for model, durations in found.items():
            for seconds, seen_running in durations:
                self.history.add(model, seconds, seen_running)

    async def _learn(self, entry: _Entry, exact: bool) -> None:
        """Remember how long a task that just succeeded took.

        Polled: its end lies between the last check that saw it running and now,
        and both bounds are kept (see ``DurationHistory``). Pushed by a verified
        webhook: now is (nearly) exact.
        """
        job = entry.job
        if entry.spec.strategy is not PollingStrategy.ADAPTIVE or job.started_at is None:
            return
        seconds = wall_now() - job.started_at
        seen_running: float | None = None
        if not exact:
            seen_running = max(0.0, job.updated_at - job.started_at) if job.poll_count else 0.0
            seen_running = min(seen_running, seconds * 0.999)
        if self.history.add(job.serving_model, seconds, seen_running):
            await self._store.add_duration(job.serving_model, seconds, seen_running)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._store.barrier()  # what a previous run sent is committed
        self._entries.clear()
        self._heap.clear()
        self.history = DurationHistory()
        await self._load_history()
        for job in await self._store.jobs_in([JobState.RUNNING], provider=self.name):
            self._track(job)
        log.info("%s poller resumed %d running tasks", self.name, len(self._entries))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_mailbox, nursery)
            task_status.started()
            await self._timer_loop(nursery)

    async def _serve_mailbox(self, nursery: trio.Nursery) -> None:
        async for message in self._mailbox:
            if isinstance(message, Track):
                self._track(message.job)
            elif isinstance(message, Observed):
                entry = self._entries.get(message.job_id)
                if entry is None:
                    continue
                if message.status is None:
                    self._schedule(entry, wall_now())  # check it now
                else:
                    entry.generation += 1  # the scheduled check is no longer needed
                    nursery.start_soon(self._apply, entry, message.status, True)
            else:
                self._entries.pop(message.job_id, None)

    async def _timer_loop(self, nursery: trio.Nursery) -> None:
        while True:
            if self._lifecycle.draining:
                await trio.sleep_forever()
            if not self._heap:
                self._changed = trio.Event()
                await self._changed.wait()
                continue
            due, _, job_id, generation = self._heap[0]
            entry = self._entries.get(job_id)
            if entry is None or entry.generation != generation:
                heapq.heappop(self._heap)  # stale: forgotten or rescheduled
                continue
            if due > wall_now():
                self._changed = trio.Event()
                # Wake a little after the earliest due time and take every check due
                # by then: one wake-up per batch instead of one per task, which is
                # most of the CPU a poller of 100,000 tasks spends waiting.
                with trio.move_on_at(trio_time_of(due) + COALESCE_SECONDS):
                    await self._changed.wait()
                continue
            await self._checks.acquire()
            if self._heap and self._heap[0][2] == job_id and self._heap[0][3] == generation:
                heapq.heappop(self._heap)
                # Park the entry so it is not due again while its check runs.
                entry.generation += 1
                nursery.start_soon(self._check_and_release, entry)
            else:
                self._checks.release()

    async def _check_and_release(self, entry: _Entry) -> None:
        try:
            await self._check(entry)
        finally:
            self._checks.release()

    async def _check(self, entry: _Entry) -> None:
        job = entry.job
        context.job_id.set(job.id)
        context.provider.set(self.name)
        if wall_now() >= entry.deadline:
            await self._time_out(entry)
            return
        try:
            status = await self._ask_status(job.provider_task_id or "")
        except EaselError as exc:
            if exc.info.is_retryable:
                log.info("status check failed (%s); will check again", exc.code.value)
                await self._reschedule(entry, progress=job.progress)
                return
            if exc.code is ErrorCode.NOT_FOUND:
                error = ErrorInfo(ErrorCode.TASK_FAILED, "the provider no longer knows this task",
                                  exc.info.details)
            else:
                error = exc.info
            await self._finish(entry, JobState.FAILED, error=error)
            return
        await self._apply(entry, status)

    async def _ask_status(self, task_id: str) -> TaskStatus:
        """The task's status, read by the provider actor (its tokens, its breaker)."""
        send, receive = trio.open_memory_channel[CheckResult](1)
        with receive:
            await self._provider.send(CheckTask(task_id, send))
            try:
                result = await receive.receive()
            except trio.EndOfChannel:  # the provider restarted before it answered
                raise EaselError(ErrorCode.PROVIDER_UNAVAILABLE,
                                 "the provider actor restarted during the check") from None
        if result.error is not None:
            raise result.error
        assert result.status is not None
        return result.status

    async def _apply(self, entry: _Entry, status: TaskStatus, pushed: bool = False) -> None:
        """Act on what the provider says of a task, polled or pushed."""
        context.job_id.set(entry.job.id)
        if status.state is TaskState.RUNNING:
            await self._reschedule(entry, progress=status.progress)
        elif status.state is TaskState.SUCCEEDED:
            await self._learn(entry, exact=pushed)
            await self._finish(entry, JobState.FINALIZING, provider_outputs=list(status.outputs),
                               progress=1.0)
        elif status.state is TaskState.FAILED:
            error = status.error or ErrorInfo(ErrorCode.TASK_FAILED, "the provider task failed")
            await self._finish(entry, JobState.FAILED, error=error)
        else:
            await self._finish(entry, JobState.CANCELLED, error=ErrorInfo(
                ErrorCode.TASK_CANCELLED, "the task was cancelled at the provider"))

    async def _reschedule(self, entry: _Entry, progress: float | None) -> None:
        job = entry.job
        if self._entries.get(job.id) is not entry:  # forgotten or settled meanwhile
            return
        checks = job.poll_count + 1
        now = wall_now()
        due = min(now + self._delay(entry, checks), entry.deadline)
        # Bookkeeping only: written within a second, not waited for (Store.note_poll).
        self._store.note_poll(job.id, due, checks, progress)
        entry.job = attrs.evolve(job, next_poll_at=due, poll_count=checks, progress=progress,
                                 updated_at=now)
        self._schedule(entry, due)

    async def _finish(self, entry: _Entry, state: JobState, **fields: object) -> None:
        self._entries.pop(entry.job.id, None)
        # The check count as the poller knows it: notes not yet flushed
        # (Store.note_poll) no longer apply once the job has left RUNNING.
        fields.setdefault("poll_count", entry.job.poll_count)
        job = await self._store.transition(entry.job.id, JobState.RUNNING, state, **fields)
        if job is None:
            return
        # FINALIZING needs no message: the finalizer follows the change feed, so
        # a crash between this commit and a send cannot strand the job.
        if state is JobState.FAILED:
            log.warning("job failed: %s", job.error.message if job.error else "")
            self._monitor.emit("job.failed", self.name,
                               code=job.error.code.value if job.error else "")
        elif state is JobState.CANCELLED:
            self._monitor.emit("job.cancelled", self.name)

    async def _time_out(self, entry: _Entry) -> None:
        spec = self._catalog[entry.job.serving_model]
        await self._finish(entry, JobState.FAILED, error=ErrorInfo(
            ErrorCode.TASK_TIMEOUT,
            f"the provider task did not finish within {spec.max_duration:g} s",
            {"maxDuration": spec.max_duration},
        ))
        await self._provider.send(CancelTask(entry.job))
