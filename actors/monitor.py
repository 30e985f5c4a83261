"""The monitor actor: counts what happens, keeps the error log, raises alerts,
without ever slowing the data path down.

Takes, on its mailbox, ``MonitorEvent``s (senders use ``emit``: ``send_nowait``,
so a full mailbox drops the event and bumps ``dropped`` instead of blocking) and
``ResolveAlert`` (an operator resolving an alert from the admin pages). It also
follows the store's change feed (finished jobs: timeouts, failures, retries) and,
while it runs, every ERROR record logged in the process (``ErrorLogHandler``,
which only appends to a thread-safe buffer: a log call never waits for it).

What it owns:

- counters by kind and provider, and the Prometheus metrics of those events;
- the error log: entries buffered and written in one batch ``flush_interval``
  after the first arrives (no timer runs while the buffer is empty), never in a
  request's path;
- the alert rules' observations (``actors/alerts/rules.py``), evaluated every
  ``evaluate_interval``, and each alert's life (``actors/alerts/firing.py``): an
  alert's change and its notifications are stored together, then each channel's
  loop (``actors/alerts/delivery.py``) sends them;
- retention: rows older than ``retention_days`` pruned every ``prune_interval``.

Built without a store (the unit tests of other actors), it only counts.
"""

from __future__ import annotations

import collections
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import metrics
from actors.alerts.alerters import Alerter, alerters_for
from actors.alerts.delivery import Bell, deliver
from actors.alerts.firing import Tracker
from actors.alerts.records import Alert, AlertState, ErrorEntry, Level
from actors.alerts.rules import Observations, evaluate
from actors.alerts.settings import MonitoringSettings
from actors.batches.model import NEVER_RAN
from actors.clock import wall_now
from actors.errors import ErrorCode
from actors.jobs import Job, JobState
from actors.redaction import redact, redact_text
from actors.retry import Backoff
from actors.store import Store

log = logging.getLogger(__name__)

#: Error log entries held for the next batch at most; past it, new ones are dropped
#: (and counted): a storm of errors must not eat the memory.
MAX_BUFFERED_ERRORS = 10_000

#: Seconds a database ping may take before it counts as not answering.
PING_TIMEOUT = 5.0


@attrs.frozen
class MonitorEvent:
    kind: str  # e.g. "job.succeeded", "job.failed", "provider.call", "actor.crash"
    provider: str | None = None
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ResolveAlert:
    """From the admin pages: ``by`` resolved alert ``alert_id``; the alert as
    stored (or None: no such alert) is sent on ``reply``."""

    alert_id: int
    by: str
    reply: trio.MemorySendChannel[Alert | None] = attrs.field(eq=False)


MonitorMessage = MonitorEvent | ResolveAlert


class ErrorLogHandler(logging.Handler):
    """Every ERROR (and CRITICAL) record of the process, into the monitor's buffer.
    Safe from any thread: it only appends to a deque."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__(logging.ERROR)
        self._monitor = monitor

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._monitor.note_error(_entry_of(record))
        except Exception:  # a log call must never fail for the error log
            self.handleError(record)


def _entry_of(record: logging.LogRecord) -> ErrorEntry:
    stack = None
    if record.exc_info and record.exc_info[1] is not None:
        stack = logging.Formatter().formatException(record.exc_info)
    elif record.stack_info:
        stack = record.stack_info
    source = f"component:{record.name}"
    if record.name == "actors.supervisor" and record.msg == "%s crashed" and record.args:
        source = f"actor:{record.args[0]}"  # type: ignore[index]
    context = {"logger": record.name, "function": record.funcName, "line": record.lineno}
    for key in ("job_id", "provider", "request_id"):
        if hasattr(record, key):
            context[key] = getattr(record, key)
    return ErrorEntry(
        Level.CRITICAL if record.levelno >= logging.CRITICAL else Level.ERROR,
        source, redact_text(record.getMessage()), record.created,
        stack=redact_text(stack) if stack else None, context=redact(context),
        job_id=getattr(record, "job_id", None),
    )


def _component(logger: str) -> str | None:
    """The system component an ERROR record of ``logger`` is about, if any."""
    if logger.startswith("actors.store"):
        return "database"
    if logger.startswith(("actors.storage", "actors.finalizer")):
        return "storage"
    return None


class Monitor:
    def __init__(
        self,
        mailbox_size: int = 10_000,
        *,
        store: Store | None = None,
        settings: MonitoringSettings | None = None,
        changes: trio.MemoryReceiveChannel[Job] | None = None,
        watched_dirs: Sequence[Path] = (),
        alerters: Sequence[Alerter] | None = None,
    ) -> None:
        """``store``, ``changes`` (a subscription to the store's change feed) and
        ``settings``: the daemon's monitor; without a store it only counts.
        ``watched_dirs``: directories whose disk's free space the ``disk_low``
        rule watches. ``alerters``: the channels (by default those configured in
        ``settings``)."""
        self._send, self._receive = trio.open_memory_channel[MonitorMessage](mailbox_size)
        self.counts: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self.dropped = 0
        self.settings = settings or MonitoringSettings()
        self._store = store
        self._changes = changes
        self._dirs = list(watched_dirs)
        s = self.settings
        self._alerters = list(alerters) if alerters is not None else alerters_for(
            s.email, s.webhook, s.slack)
        self.seen = Observations(s.rules)
        self._tracker = Tracker(s.rules)
        self._errors: collections.deque[ErrorEntry] = collections.deque()
        #: Components (database, storage) of ERROR records since the last flush.
        self._system_errors: collections.deque[str] = collections.deque()
        self.errors_dropped = 0
        self._bell = Bell()
        self.handler = ErrorLogHandler(self)
        self._providers: dict[str, ProviderFigures] = {}
        #: Set when entries wait in the buffer; the run's token, for other threads.
        self._waiting = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def channels(self) -> list[str]:
        return [alerter.channel for alerter in self._alerters]

    def emit(self, kind: str, provider: str | None = None, **data: Any) -> None:
        """Record an event; never blocks, never raises."""
        try:
            self._send.send_nowait(MonitorEvent(kind, provider, data))
        except trio.WouldBlock:
            self.dropped += 1
            metrics.MONITOR_DROPPED.inc()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1

    def note_error(self, entry: ErrorEntry) -> None:
        """Queue an error log entry for the next batch; any thread, never blocks."""
        if len(self._errors) >= MAX_BUFFERED_ERRORS:
            self.errors_dropped += 1
            return
        self._errors.append(entry)  # deque.append is atomic: safe from a log thread
        component = _component(entry.context.get("logger", ""))
        if component is not None:
            self._system_errors.append(component)
        self._wake_flush()

    def _wake_flush(self) -> None:
        """Start the flush timer: at once in the trio thread, through the run's token
        from any other (no timer ticks while nothing waits to be written)."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            token = self._token
            if token is not None:
                try:
                    token.run_sync_soon(self._set_waiting)
                except trio.RunFinishedError:
                    pass
            return
        self._set_waiting()

    def _set_waiting(self) -> None:
        self._waiting.set()

    async def resolve_alert(self, alert_id: int, by: str) -> Alert | None:
        """Ask the monitor to resolve an alert (it owns their life) and wait."""
        send, receive = trio.open_memory_channel[Alert | None](1)
        await self._send.send(ResolveAlert(alert_id, by, send))
        with trio.fail_after(30):
            return await receive.receive()

    # -- running ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        store = self._store
        if store is None:
            task_status.started()
            async for message in self._receive:
                if isinstance(message, MonitorEvent):
                    self._handle(message)
            return
        await store.barrier()
        firing = await store.list_alerts(AlertState.FIRING, limit=100_000)
        self._tracker.load(firing)
        metrics.ALERTS_FIRING.set(len(firing))
        self._token = trio.lowlevel.current_trio_token()
        root = logging.getLogger()
        root.addHandler(self.handler)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_changes)
                nursery.start_soon(self._flush_when_waiting)
                nursery.start_soon(self._every, self.settings.evaluate_interval, self._evaluate)
                nursery.start_soon(self._every, self.settings.prune_interval, self._prune)
                backoff = Backoff(base=self.settings.retry_base, cap=self.settings.retry_cap)
                for alerter in self._alerters:
                    nursery.start_soon(lambda a=alerter: deliver(
                        store, a, backoff=backoff, max_attempts=self.settings.max_attempts,
                        bell=self._bell, on_outcome=_count_notification))
                task_status.started()
                async for message in self._receive:
                    if isinstance(message, ResolveAlert):
                        await self._resolve(message)
                    else:
                        self._handle(message)
        finally:
            root.removeHandler(self.handler)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._flush()
                for alerter in self._alerters:
                    await alerter.aclose()

    @staticmethod
    async def _every(seconds: float, step: Any) -> None:
        while True:
            await trio.sleep(seconds)
            await step()

    async def _flush_when_waiting(self) -> None:
        """Write the buffer ``flush_interval`` after an entry arrives (a batch)."""
        while True:
            await self._waiting.wait()
            await trio.sleep(self.settings.flush_interval)
            self._waiting = trio.Event()
            await self._flush()

    async def _follow_changes(self) -> None:
        if self._changes is None:
            return
        async for job in self._changes:
            self._observe_job(job)

    def _observe_job(self, job: Job) -> None:
        if not job.state.terminal:
            return
        now = wall_now()
        code = job.error.code if job.error else None
        metrics.JOBS_COMPLETED.labels(model=job.model, state=job.state.value,
                                      code=code.value if code else "").inc()
        if job.attempts > 1:
            metrics.JOB_ATTEMPTS_RETRIED.labels(model=job.model).inc(job.attempts - 1)
        if job.started_at is not None and job.completed_at is not None:
            metrics.JOB_RUN_SECONDS.labels(model=job.model).observe(
                max(0.0, job.completed_at - job.started_at))
        if job.submitting_at is not None:
            metrics.JOB_QUEUE_SECONDS.labels(model=job.model).observe(
                max(0.0, job.submitting_at - job.created_at))
        # A batch item that never ran (its dependency failed, its deadline passed)
        # says nothing of its provider: not among the provider's finishes, and
        # logged as the batch's.
        never_ran = code in NEVER_RAN
        if job.state is not JobState.CANCELLED and not never_ran:
            self.seen.finishes.add(job.provider, code is ErrorCode.TASK_TIMEOUT, now)
        if job.attempts > self.settings.rules.max_retries:
            self.seen.retried.add(job.id, True, now)
        if job.state is JobState.FAILED and job.error is not None:
            source = f"batch:{job.batch_id}" if never_ran else f"provider:{job.provider}"
            self.note_error(ErrorEntry(
                Level.WARN, source, redact_text(job.error.message), now,
                context=redact({"code": job.error.code.value, "model": job.model,
                                "attempts": job.attempts, "details": job.error.details}),
                job_id=job.id, provider_task_id=job.provider_task_id,
            ))

    async def _flush(self) -> None:
        """Write the buffered error log entries in one batch."""
        assert self._store is not None
        batch = []
        while self._errors:
            batch.append(self._errors.popleft())
        now = wall_now()
        while self._system_errors:
            self.seen.system.add(self._system_errors.popleft(), True, now)
        if not batch:
            return
        try:
            await self._store.add_errors(batch)
        except Exception as exc:  # the store failing is what the rules watch for
            self.seen.database_error = f"error log not written: {exc}"
            self.errors_dropped += len(batch)

    async def _evaluate(self) -> None:
        assert self._store is not None
        store, seen, now = self._store, self.seen, wall_now()
        seen.database_error = None
        try:
            with trio.fail_after(PING_TIMEOUT):
                oldest = await store.oldest_queued_at()
            seen.queue_age = now - oldest if oldest is not None else None
            metrics.QUEUE_OLDEST_AGE.set(seen.queue_age or 0.0)
        except Exception as exc:  # trio.TooSlowError included
            seen.database_error = f"{type(exc).__name__}: {exc}"
        seen.disk_free = await trio.to_thread.run_sync(_disk_free, self._dirs)
        for change, alert in self._tracker.step(evaluate(seen, self.settings.rules, now), now):
            log.info("alert %s %s: %s", alert.fingerprint, change.value, alert.message)
            await self._store_alert(alert)
        metrics.ALERTS_FIRING.set(self._tracker.firing())

    async def _store_alert(self, alert: Alert) -> None:
        assert self._store is not None
        try:
            stored = await self._store.record_alert(alert, self.channels)
        except Exception:
            log.exception("alert %s could not be stored", alert.fingerprint)
            return
        self._tracker.stored(stored)
        self._bell.ring()

    async def _resolve(self, message: ResolveAlert) -> None:
        assert self._store is not None
        alert = await self._store.get_alert(message.alert_id)
        if alert is not None and alert.state is AlertState.FIRING:
            self._tracker.forget(alert.fingerprint)
            alert = attrs.evolve(alert, state=AlertState.RESOLVED, ends_at=wall_now(),
                                 details={**alert.details, "resolvedBy": message.by})
            await self._store_alert(alert)
            alert = await self._store.get_alert(message.alert_id)
        try:
            message.reply.send_nowait(alert)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _prune(self) -> None:
        assert self._store is not None
        before = wall_now() - self.settings.retention_days * 86_400
        pruned = await self._store.prune_monitoring(before)
        if pruned:
            log.info("pruned %d error log entries and alerts", pruned)

    def _handle(self, event: MonitorEvent) -> None:
        self.counts[(event.kind, event.provider)] += 1
        provider = event.provider or ""
        now = wall_now()
        if event.kind.startswith("job."):
            metrics.JOBS_FINISHED.labels(provider=provider, outcome=event.kind[4:]).inc()
        elif event.kind == "provider.call":
            outcome = event.data.get("outcome", "")
            if outcome != ErrorCode.RATE_LIMITED.value:  # a 429 says nothing of health
                self.seen.calls.add(provider, outcome != "ok", now)
            self._providers.setdefault(provider, ProviderFigures()).note(
                outcome, event.data.get("seconds"), now)
            metrics.PROVIDER_CALLS.labels(
                provider=provider, call=event.data.get("call", ""), outcome=outcome,
            ).inc()
            if "seconds" in event.data:
                metrics.PROVIDER_LATENCY.labels(
                    provider=provider, call=event.data.get("call", "")
                ).observe(event.data["seconds"])
        elif event.kind == "actor.crash":
            self.seen.crashes.add(event.data.get("actor", ""), True, now)
            metrics.ACTOR_RESTARTS.labels(actor=event.data.get("actor", "")).inc()
        elif event.kind == "circuit":
            # ``state`` is a CircuitState value; ``initial`` marks the state a breaker
            # starts in, which sets the gauge without counting a transition.
            if event.data.get("state") == "open":
                self.seen.open_circuits.add(provider)
            else:
                self.seen.open_circuits.discard(provider)
            metrics.CIRCUIT_STATE.labels(provider=provider).set(event.data.get("value", 0))
            if not event.data.get("initial"):
                metrics.CIRCUIT_TRANSITIONS.labels(
                    provider=provider, state=event.data.get("state", "")
                ).inc()
        elif event.kind.startswith("webhook."):
            outcome = event.kind.removeprefix("webhook.")
            self.seen.webhooks.add("client", outcome != "delivered", now)
            metrics.WEBHOOK_DELIVERIES.labels(
                outcome=outcome, reason=event.data.get("reason", ""),
            ).inc()
        elif event.kind == "fallback":
            metrics.FALLBACKS.labels(
                model=event.data.get("model", ""), to=event.data.get("to", ""),
                reason=event.data.get("reason", ""),
            ).inc()

    def statistics(self) -> dict[str, Any]:
        by_kind: dict[str, int] = collections.Counter()
        for (kind, _), n in self.counts.items():
            by_kind[kind] += n
        return {"events": dict(by_kind), "dropped": self.dropped,
                "errorsDropped": self.errors_dropped, "alertsFiring": self._tracker.firing(),
                "alertsPending": len(self._tracker.pending()),
                "databaseError": self.seen.database_error,
                "diskFree": dict(self.seen.disk_free),
                "providers": {name: figures.to_json()
                              for name, figures in self._providers.items()}}


#: Call latencies kept per provider for its p95.
LATENCY_SAMPLES = 500


@attrs.define
class ProviderFigures:
    """A provider's calls as the monitor saw them: for the detailed health."""

    calls: int = 0
    failures: int = 0
    latencies: collections.deque[float] = attrs.field(
        factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))
    last_success: float | None = None
    last_error: str | None = None
    last_at: float | None = None

    def note(self, outcome: str, seconds: float | None, now: float) -> None:
        self.calls += 1
        self.last_at = now
        if seconds is not None:
            self.latencies.append(seconds)
        if outcome == "ok":
            self.last_success = now
        else:
            self.failures += 1
            self.last_error = outcome

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] if ordered else None
        mean = sum(ordered) / len(ordered) if ordered else None
        return {"calls": self.calls, "failures": self.failures,
                "p95Seconds": p95, "meanSeconds": mean, "lastSuccess": self.last_success,
                "lastError": self.last_error, "lastCall": self.last_at}


def _count_notification(channel: str, outcome: str) -> None:
    metrics.ALERT_NOTIFICATIONS.labels(channel=channel, outcome=outcome).inc()


def _disk_free(dirs: list[Path]) -> dict[str, float]:
    """Free fraction of each directory's disk (a directory not there is skipped)."""
    found = {}
    for path in dirs:
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        found[str(path)] = usage.free / usage.total if usage.total else 1.0
    return found
