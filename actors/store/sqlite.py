"""``SQLiteStore``: the ``Store`` Protocol on one SQLite file.

Each method prepares what it can on the trio side (timestamps from trio's clock,
SQL text, encoded values), then sends one function of a connection to the engine
(``actors/store/engine.py``): writes to the group-committing writer, reads to the
read connection. So a request costs one hop to a worker thread, shared with the
other writes of its batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from actors.alerts.records import Alert, AlertState, Delivery, ErrorEntry
from actors.batches.model import Batch, BatchCounts, BatchState
from actors.clock import wall_now
from actors.errors import ErrorInfo
from actors.experiments.model import Assignment, Experiment, Observation
from actors.jobs import Job, JobState
from actors.keys import ApiKey
from actors.store import (
    alerts,
    batches,
    durations,
    errorlog,
    experiments,
    gauges,
    idempotency,
    jobs,
    keys,
    listing,
    outbox,
)
from actors.store.changes import Changes, Watch
from actors.store.engine import Engine, Write, open_engine
from actors.store.policy import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_POLICY,
    Delivery as WebhookDelivery,
    StorePolicy,
)
from actors.store.protocol import OutboxRow, StoreStatistics


class SQLiteStore:
    """Durable job state in SQLite. Make one with ``open_store``; the methods are
    documented on ``actors.store.protocol.Store``."""

    def __init__(self, engine: Engine, changes: Changes, policy: StorePolicy) -> None:
        self.engine = engine
        self.policy = policy
        self._changes = changes

    # -- committed changes ------------------------------------------------

    def subscribe(self) -> trio.MemoryReceiveChannel[Job]:
        return self._changes.subscribe()

    def watch(self, job_id: str) -> Watch:
        return self._changes.watch(job_id)

    def statistics(self) -> StoreStatistics:
        return self.engine.statistics()

    async def ping(self) -> None:
        await self.engine.read(lambda conn: conn.execute("SELECT 1").fetchone())

    async def barrier(self) -> None:
        # The writer commits in arrival order: an empty write commits after all
        # that were sent before it.
        await self.engine.write(lambda conn, write: None)

    # -- jobs ---------------------------------------------------------------

    async def insert_job(
        self, job: Job, idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    ) -> tuple[Job, bool]:
        now = wall_now()  # here, on trio's clock: the writer thread has none

        def op(conn: sqlite3.Connection, write: Write) -> tuple[Job, bool]:
            holder = idempotency.claim(conn, job, now, idempotency_window)
            if holder is not None:
                return holder, False
            job.created_at = job.created_at or now
            job.updated_at = now
            return jobs.insert(conn, job), True

        return await self.engine.write(op)

    async def transition(
        self,
        job_id: str,
        from_states: JobState | Iterable[JobState],
        to_state: JobState,
        *,
        event: dict[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Job | None:
        froms = [from_states] if isinstance(from_states, JobState) else list(from_states)
        moves = froms != [to_state]
        now = wall_now()
        fields["updated_at"] = now
        if to_state.terminal:
            fields.setdefault("completed_at", now)
            fields.setdefault("next_poll_at", None)
        move = jobs.Move.prepare(job_id, froms, to_state, fields, where or {})
        deliveries = self.policy.deliveries

        def op(conn: sqlite3.Connection, write: Write) -> Job | None:
            job = move.apply(conn)
            if job is None:
                return None
            if moves:
                jobs.add_event(conn, job_id, now, "state", {"state": to_state.value, **(event or {})})
                if job.batch_id is not None and to_state is JobState.SUCCEEDED:
                    batches.dependency_succeeded(conn, job)
                owed = deliveries(job)
                if owed:
                    outbox.enqueue(conn, job_id, owed, now)
                write.changed.append(job)
            elif event:
                jobs.add_event(conn, job_id, now, event.get("kind", "update"), event)
            return job

        return await self.engine.write(op)

    async def update(self, job_id: str, state: JobState, **fields: Any) -> Job | None:
        return await self.transition(job_id, state, state, **fields)

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        at = wall_now()
        await self.engine.write(lambda conn, write: jobs.add_event(conn, job_id, at, kind, data))

    def note_poll(
        self, job_id: str, next_poll_at: float, poll_count: int, progress: float | None
    ) -> None:
        self.engine.note_poll(job_id, (next_poll_at, poll_count, progress, wall_now()))

    async def get_job(self, job_id: str) -> Job | None:
        return await self.engine.read(jobs.get, job_id)

    async def jobs_in(
        self, states: Iterable[JobState], provider: str | None = None
    ) -> list[Job]:
        return await self.engine.read(jobs.select_in, list(states), provider)

    async def job_ids_in(self, states: Iterable[JobState], provider: str) -> list[str]:
        return await self.engine.read(jobs.ids_in, list(states), provider)

    async def queued_page(
        self, provider: str, after: int, limit: int
    ) -> list[tuple[int, int, int]]:
        return await self.engine.read(jobs.queued_page, provider, after, limit)

    async def jobs_by_seq(self, seqs: Iterable[int]) -> list[Job]:
        wanted = list(seqs)
        if not wanted:
            return []
        return await self.engine.read(jobs.by_seq, wanted)

    async def jobs_submitted_since(self, provider: str, since: float) -> list[Job]:
        return await self.engine.read(jobs.submitted_since, provider, since)

    async def has_twin(self, job: Job, states: Iterable[JobState]) -> bool:
        return await self.engine.read(jobs.has_twin, job, list(states))

    async def job_by_task(self, provider: str, task_id: str) -> Job | None:
        return await self.engine.read(jobs.by_task, provider, task_id)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        return await self.engine.read(jobs.events, job_id)

    async def count_by_state(self) -> dict[str, int]:
        return await self.engine.read(jobs.count_by_state)

    async def list_jobs(self, query: listing.JobQuery) -> list[Job]:
        return await self.engine.read(listing.select, query)

    # -- the client webhook outbox ------------------------------------------

    async def due_webhooks(
        self, now: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[OutboxRow]:
        return await self.engine.read(outbox.due, now, limit, list(exclude))

    async def next_webhook_at(self, exclude: Iterable[str] = ()) -> float | None:
        return await self.engine.read(outbox.next_due, list(exclude))

    async def record_webhook_attempt(
        self,
        delivery_id: str,
        state: str,
        *,
        status: int | None,
        error: str | None,
        next_attempt_at: float | None = None,
    ) -> None:
        now = wall_now()
        await self.engine.write(lambda conn, write: outbox.record_attempt(
            conn, delivery_id, state, status, error, next_attempt_at, now))

    async def webhooks_of(self, job_id: str) -> list[OutboxRow]:
        return await self.engine.read(outbox.of_job, job_id)

    # -- task durations -----------------------------------------------------

    async def add_duration(self, model: str, seconds: float, seen_running: float | None) -> None:
        at = wall_now()
        await self.engine.write(
            lambda conn, write: durations.add(conn, model, seconds, seen_running, at))

    async def recent_durations(
        self, models: Iterable[str], limit: int
    ) -> dict[str, list[tuple[float, float | None]]]:
        return await self.engine.read(durations.recent, list(models), limit)

    # -- API keys -----------------------------------------------------------

    async def create_key(self, key: ApiKey) -> None:
        await self.engine.write(lambda conn, write: keys.insert(conn, key))

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await self.engine.read(keys.get, key_id)

    async def list_keys(self) -> list[ApiKey]:
        return await self.engine.read(keys.every)

    async def revoke_key(self, key_id: str) -> ApiKey | None:
        now = wall_now()
        return await self.engine.write(lambda conn, write: keys.revoke(conn, key_id, now))

    async def has_keys(self) -> bool:
        return await self.engine.read(keys.exist)

    async def unfinished_by_owner(self) -> dict[str | None, int]:
        return await self.engine.read(keys.unfinished_by_owner)

    async def spend_since(self, owner: str, since: float) -> float:
        return await self.engine.read(keys.spend_since, owner, since)


    # -- monitoring -----------------------------------------------------------

    async def add_errors(self, entries: Sequence[ErrorEntry]) -> None:
        batch = list(entries)
        await self.engine.write(lambda conn, write: errorlog.add(conn, batch))

    async def list_errors(
        self, filters: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[ErrorEntry]:
        return await self.engine.read(errorlog.select, dict(filters or {}), limit)

    async def resolve_error(self, error_id: int, by: str) -> ErrorEntry | None:
        at = wall_now()
        return await self.engine.write(
            lambda conn, write: errorlog.resolve(conn, error_id, by, at))

    async def record_alert(self, alert: Alert, notify: Sequence[str] = ()) -> Alert:
        now = wall_now()
        channels = list(notify)
        return await self.engine.write(
            lambda conn, write: alerts.record(conn, alert, channels, now))

    async def get_alert(self, alert_id: int) -> Alert | None:
        return await self.engine.read(alerts.get, alert_id)

    async def list_alerts(
        self, state: AlertState | None = None, limit: int = 100
    ) -> list[Alert]:
        return await self.engine.read(alerts.select, state, limit)

    async def acknowledge_alert(self, alert_id: int, by: str) -> Alert | None:
        at = wall_now()
        return await self.engine.write(
            lambda conn, write: alerts.acknowledge(conn, alert_id, by, at))

    async def due_alert_deliveries(
        self, channel: str, now: float, limit: int
    ) -> list[Delivery]:
        return await self.engine.read(alerts.due, channel, now, limit)

    async def next_alert_delivery_at(self, channel: str) -> float | None:
        return await self.engine.read(alerts.next_due, channel)

    async def record_alert_delivery(
        self, delivery_id: str, state: str, *, error: str | None,
        next_attempt_at: float | None = None,
    ) -> None:
        now = wall_now()
        await self.engine.write(lambda conn, write: alerts.record_attempt(
            conn, delivery_id, state, error, next_attempt_at, now))

    async def prune_monitoring(self, before: float) -> int:
        return await self.engine.write(
            lambda conn, write: errorlog.prune(conn, before) + alerts.prune(conn, before))

    async def oldest_queued_at(self) -> float | None:
        return await self.engine.read(gauges.oldest_queued_at)

    async def job_totals(self, since: float, until: float) -> dict[str, Any]:
        return await self.engine.read(gauges.job_totals, since, until)

    # -- experiments ----------------------------------------------------------

    async def save_experiment(self, experiment: Experiment) -> None:
        await self.engine.write(lambda conn, write: experiments.save(conn, experiment))

    async def get_experiment(self, experiment_id: str) -> Experiment | None:
        return await self.engine.read(experiments.get, experiment_id)

    async def list_experiments(self) -> list[Experiment]:
        return await self.engine.read(experiments.every)

    async def assign(self, assignment: Assignment) -> Assignment:
        return await self.engine.write(lambda conn, write: experiments.assign(conn, assignment))

    async def assignment_of(self, experiment_id: str, unit: str) -> Assignment | None:
        return await self.engine.read(experiments.assignment_of, experiment_id, unit)

    async def observations(
        self, experiment_id: str, segment_attribute: str | None = None
    ) -> list[Observation]:
        return await self.engine.read(experiments.observations, experiment_id,
                                      segment_attribute)

    async def experiment_spend(self, experiment_id: str) -> float:
        return await self.engine.read(experiments.spend, experiment_id)

    async def experiment_jobs(
        self, experiment_id: str, variant_id: str, limit: int
    ) -> list[Job]:
        return await self.engine.read(experiments.recent_jobs, experiment_id, variant_id, limit)

    # -- batches --------------------------------------------------------------

    async def insert_batch(self, batch: Batch, jobs: Sequence[Job]) -> Batch:
        now = wall_now()
        items = list(jobs)
        batch.created_at = batch.created_at or now
        batch.updated_at = now
        for job in items:
            job.created_at = job.created_at or now
            job.updated_at = now
            job.waiting_on = len(set(job.depends_on))
        return await self.engine.write(lambda conn, write: batches.insert(conn, batch, items))

    async def get_batch(self, batch_id: str) -> Batch | None:
        return await self.engine.read(batches.get, batch_id)

    async def open_batches(self) -> list[str]:
        return await self.engine.read(batches.open_ids)

    async def batch_counts(self, batch_id: str) -> BatchCounts:
        return await self.engine.read(batches.counts, batch_id)

    async def batch_items(self, batch_id: str, after: int, limit: int) -> list[Job]:
        return await self.engine.read(batches.items, batch_id, after, limit)

    async def batch_finished(
        self, batch_id: str, after: tuple[float, int] | None, limit: int
    ) -> list[Job]:
        return await self.engine.read(batches.finished, batch_id, after, limit)

    async def batch_activity(self, batch_id: str) -> tuple[int, bool]:
        return await self.engine.read(batches.activity, batch_id)

    async def releasable(self, batch_id: str, limit: int) -> list[Job]:
        return await self.engine.read(batches.releasable, batch_id, limit)

    async def batch_dependencies(self, batch_id: str, index: int) -> list[Job]:
        return await self.engine.read(batches.dependencies, batch_id, index)

    async def failed_dependencies(
        self, batch_id: str, among: Sequence[int] | None = None
    ) -> list[tuple[int, str]]:
        wanted = list(among) if among is not None else None
        return await self.engine.read(batches.failed_dependencies, batch_id, wanted)

    async def end_batch_items(
        self,
        batch_id: str,
        from_states: Iterable[JobState],
        to_state: JobState,
        error: ErrorInfo,
        *,
        dependents_of: int | None = None,
        limit: int = 1000,
    ) -> int:
        now = wall_now()
        froms = list(from_states)
        deliveries = self.policy.deliveries

        def op(conn: sqlite3.Connection, write: Write) -> int:
            ended = batches.end_items(conn, batch_id, froms, to_state, error, dependents_of,
                                      limit, now, deliveries)
            write.changed += ended
            return len(ended)

        return await self.engine.write(op)

    async def update_batch(
        self, batch_id: str, state: BatchState, **fields: Any
    ) -> Batch | None:
        fields["updated_at"] = wall_now()
        return await self.engine.write(
            lambda conn, write: batches.update(conn, batch_id, state, fields))

    async def end_batch(
        self, ended: Batch, deliveries: Sequence[WebhookDelivery]
    ) -> Batch | None:
        now = wall_now()
        owed = list(deliveries)
        return await self.engine.write(lambda conn, write: batches.end(conn, ended, owed, now))

    async def rerun_batch(
        self,
        batch_id: str,
        custom_ids: Sequence[str],
        remake: Callable[[Job, Callable[[str], str | None]], Job],
    ) -> tuple[Batch, int] | None:
        now = wall_now()
        names = list(custom_ids)
        return await self.engine.write(
            lambda conn, write: batches.rerun(conn, batch_id, names, remake, now))

    async def rerun_plan(
        self, batch_id: str, custom_ids: Sequence[str]
    ) -> tuple[int, float, list[str]]:
        return await self.engine.read(batches.rerun_plan, batch_id, list(custom_ids))

    async def released_items(self, batch_id: str) -> list[Job]:
        return await self.engine.read(batches.released, batch_id)


@asynccontextmanager
async def open_store(
    path: str | Path, *, policy: StorePolicy = DEFAULT_POLICY
) -> AsyncIterator[SQLiteStore]:
    """Open (and migrate) the SQLite store at ``path`` for the duration of the block,
    applying ``policy``'s decisions in its transactions.

    On exit, writes already sent are committed before the connections close, so a
    draining daemon loses nothing it acknowledged; then every subscriber's channel
    ends.
    """
    changes = Changes()
    try:
        async with open_engine(Path(path), changes.publish, jobs.write_polls) as engine:
            yield SQLiteStore(engine, changes, policy)
    finally:
        changes.close()
