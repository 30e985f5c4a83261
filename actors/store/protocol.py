"""The store seam: what the actors and the HTTP layer may ask of durable job state.

``Store`` is a ``typing.Protocol``, so a backend is any class with these methods;
nothing imports a backend but the code that opens one (``open_store`` for SQLite).
``tests/store_contract.py`` is the behaviour every backend must show, written
against this Protocol only.

The rules a backend keeps, whatever it runs on:

- Every write is durable when its ``await`` returns; writes from concurrent tasks
  may share a transaction (group commit), but one that fails undoes only itself.
- A state change is conditional (``transition``): it happens only while the job is
  still in one of the states the caller saw, so a stale actor can never overwrite a
  newer state; it then returns ``None``.
- Domain decisions are not the backend's: whether a request replays an earlier one
  and what a terminal job owes its client come from ``actors.store.policy``, and are
  applied in the same transaction as the write they follow.
- Committed state changes are published in commit order (``subscribe``, ``watch``),
  after the commit, never before.
- Timestamps come from ``actors.clock.wall_now`` on the trio side, so tests under
  ``MockClock`` move them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from actors.alerts.records import Alert, AlertState, Delivery, ErrorEntry
from actors.batches.model import Batch, BatchCounts, BatchState
from actors.errors import ErrorInfo
from actors.experiments.model import Assignment, Experiment, Observation
from actors.jobs import Job, JobState
from actors.keys import ApiKey
from actors.store.changes import Watch
from actors.store.listing import JobQuery
from actors.store.policy import DEFAULT_IDEMPOTENCY_WINDOW, Delivery as WebhookDelivery

#: Seconds within which a ``Store.note_poll`` is written.
POLL_FLUSH_SECONDS = 1.0

#: States of a client webhook delivery (``OutboxRow.state``).
OUTBOX_PENDING, OUTBOX_DELIVERED, OUTBOX_FAILED = "PENDING", "DELIVERED", "FAILED"


@attrs.define
class OutboxRow:
    """One client webhook delivery, as the outbox actor (``actors/outbox.py``) sees it."""

    id: str
    job_id: str
    url: str
    payload: str
    state: str
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None


@attrs.define
class StoreStatistics:
    """Counters of the write path (a snapshot: reading it changes nothing)."""

    writes: int = 0
    transactions: int = 0
    largest_batch: int = 0


class Store(Protocol):
    """Durable job state: jobs and their events, idempotency keys, the client webhook
    outbox, task durations, API keys, and the monitor's error log and alerts."""

    # -- committed changes ------------------------------------------------

    def subscribe(self) -> trio.MemoryReceiveChannel[Job]:
        """A channel of every committed state change of every job, in commit order:
        the job as it was committed, once per ``transition`` that moved it. Inserts
        and writes that keep the state (``update``, ``note_poll``, events) are not
        sent: no consumer needs them, and a submission should not wake every
        subscriber.

        Nothing is ever dropped: the buffer is unbounded, which the write rate
        bounds (each change was one committed write), so a subscriber must keep
        reading, and close the channel when it stops (that unsubscribes). Changes
        committed before the call are not sent: subscribe before the work whose
        changes matter starts, and keep one channel across restarts of the task
        that reads it. The channel ends (``EndOfChannel``) when the store closes.
        """
        ...

    def watch(self, job_id: str) -> Watch:
        """Set at the next committed state change of ``job_id``; its ``wait()``
        returns the job as that change committed it."""
        ...

    def statistics(self) -> StoreStatistics: ...

    async def ping(self) -> None:
        """Raise unless the store answers reads."""
        ...

    async def barrier(self) -> None:
        """Return once every write sent before the call has committed (or failed).

        An actor awaits it before reloading its state at start: a write its
        previous run sent just before being cancelled still commits, and a reload
        that read before that commit would miss it for good."""
        ...

    # -- jobs ---------------------------------------------------------------

    async def insert_job(
        self, job: Job, idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    ) -> tuple[Job, bool]:
        """Insert ``job`` (stamping ``seq``, ``created_at`` unless set, and
        ``updated_at``); returns ``(job, True)``.

        With an ``idempotency_key`` already held, ``policy.replay`` decides within
        the same transaction: ``(original, False)`` for the same request, CONFLICT for
        another; a key held longer than ``idempotency_window`` seconds is released
        from its old job and the insert goes ahead.
        """
        ...

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
        """Move a job from one of ``from_states`` to ``to_state`` and set ``fields``
        (``Job`` attribute names); returns the job as committed.

        Returns ``None`` and changes nothing when the job is not in one of
        ``from_states`` or does not hold ``where`` (more columns compared with
        ``IS``, so ``None`` matches a null: e.g. the provider a job was handed to,
        which a reroute may change): someone else moved it first.

        A real move records a ``state`` event (``event`` merged in), stamps
        ``completed_at`` (unless given) and clears ``next_poll_at`` on a terminal
        state, and writes the outbox rows the store's policy asks for, all in one
        transaction. With ``to_state`` among ``from_states`` nothing moves: that is
        ``update``, and ``event`` (if any) is recorded with its own ``kind``.
        """
        ...

    async def update(self, job_id: str, state: JobState, **fields: Any) -> Job | None:
        """Set ``fields`` of a job that is still in ``state`` (no state change)."""
        ...

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> None: ...

    def note_poll(
        self, job_id: str, next_poll_at: float, poll_count: int, progress: float | None
    ) -> None:
        """Record a status check of a RUNNING job, written within
        ``POLL_FLUSH_SECONDS`` (and when the store closes).

        Not durable at once, on purpose: with 100,000 running tasks the checks are a
        steady stream of writes, and losing the last second of them to a crash only
        means those tasks are checked again a little early after the restart. Only
        the last note of a job counts; a job that has left RUNNING meanwhile is not
        touched.
        """
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def jobs_in(
        self, states: Iterable[JobState], provider: str | None = None
    ) -> list[Job]:
        """Jobs in any of ``states`` (of one provider), by priority (highest first)
        then age."""
        ...

    async def job_ids_in(self, states: Iterable[JobState], provider: str) -> list[str]:
        """Ids of the provider's jobs in any of ``states`` (cheaper than ``jobs_in``)."""
        ...

    async def queued_page(
        self, provider: str, after: int, limit: int
    ) -> list[tuple[int, int, int]]:
        """``(priority, seq, batch)`` of up to ``limit`` of the provider's QUEUED
        jobs whose ``seq`` is above ``after``, by ``seq``; ``batch`` is 1 for a
        batch's item, 0 for a single submission.

        All a queue needs to order its jobs, a page at a time: the scheduler keeps
        these, not the jobs, and reloads a queue of a million jobs by pages, so
        neither the rows nor a million-entry result is ever held at once."""
        ...

    async def jobs_by_seq(self, seqs: Iterable[int]) -> list[Job]:
        """The jobs with these ``seq`` numbers, in any state (those that exist), by
        ``seq``: the scheduler loads the jobs it hands over by the number it kept."""
        ...

    async def jobs_submitted_since(self, provider: str, since: float) -> list[Job]:
        """The provider's jobs, in any state, that entered SUBMITTING at or after
        ``since`` (Unix seconds), oldest first: what the orphan sweep compares the
        provider's recent tasks with."""
        ...

    async def has_twin(self, job: Job, states: Iterable[JobState]) -> bool:
        """Whether another job of ``job``'s provider with the same ``request_hash`` is
        in any of ``states``."""
        ...

    async def job_by_task(self, provider: str, task_id: str) -> Job | None:
        """The provider's job whose ``provider_task_id`` is ``task_id``, or starts
        with ``task_id`` and a space (an adapter may keep private detail after the
        id: ``"<id> <extra>"``)."""
        ...

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """A job's events, oldest first: ``{"at", "kind", **data}``."""
        ...

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (states with none are left out)."""
        ...

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """Up to ``query.limit`` jobs matching ``query``, by ``seq`` (newest first
        unless ``ascending``), after ``query.after_seq`` when it is set."""
        ...

    # -- the client webhook outbox (actors/outbox.py) ----------------------

    async def due_webhooks(
        self, now: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[OutboxRow]:
        """Up to ``limit`` pending deliveries due at ``now``, oldest due first,
        leaving out ``exclude`` (those already being attempted)."""
        ...

    async def next_webhook_at(self, exclude: Iterable[str] = ()) -> float | None:
        """When the next pending delivery (not in ``exclude``) is due, if any."""
        ...

    async def record_webhook_attempt(
        self,
        delivery_id: str,
        state: str,
        *,
        status: int | None,
        error: str | None,
        next_attempt_at: float | None = None,
    ) -> None:
        """Count one attempt of a pending delivery and set its outcome: ``state``
        PENDING again (at ``next_attempt_at``), DELIVERED or FAILED (which set
        ``finished_at``). A delivery no longer pending is left alone."""
        ...

    async def webhooks_of(self, job_id: str) -> list[OutboxRow]:
        """A job's webhook deliveries, oldest first."""
        ...

    # -- task durations (actors/adaptive.py) -------------------------------

    async def add_duration(self, model: str, seconds: float, seen_running: float | None) -> None:
        """Record how long one task of ``model`` took: ``seconds`` from its start to
        when its end was seen; ``seen_running`` to the last check that still saw it
        running (``None`` when the end time is exact)."""
        ...

    async def recent_durations(
        self, models: Iterable[str], limit: int
    ) -> dict[str, list[tuple[float, float | None]]]:
        """The last ``limit`` durations of each model, oldest first:
        ``(seconds, seen_running)`` pairs."""
        ...

    # -- API keys (actors/keys.py) and the figures their limits read -------

    async def create_key(self, key: ApiKey) -> None:
        """Store a new key (its id must be new)."""
        ...

    async def get_key(self, key_id: str) -> ApiKey | None:
        """The key ``key_id``, revoked or not."""
        ...

    async def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        ...

    async def revoke_key(self, key_id: str) -> ApiKey | None:
        """Revoke ``key_id`` now (a key already revoked keeps its time); the key, or
        None when there is no such key."""
        ...

    async def has_keys(self) -> bool:
        """Whether any key was ever made (revoked ones count)."""
        ...

    async def unfinished_by_owner(self) -> dict[str | None, int]:
        """How many jobs are not finished (queued or at a provider: a WAITING batch
        item is not counted) per ``owner`` (``None`` for jobs made without a key);
        owners with none are left out."""
        ...

    async def spend_since(self, owner: str, since: float) -> float:
        """The sum of the ``cost`` of ``owner``'s jobs created at or after ``since``."""
        ...

    # -- monitoring: the error log and alerts (actors/monitor.py) ------------

    async def add_errors(self, entries: Sequence[ErrorEntry]) -> None:
        """Append error log entries (the monitor's batch), in one transaction."""
        ...

    async def list_errors(
        self, filters: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[ErrorEntry]:
        """Error log entries, newest first. ``filters`` (each optional): ``level``,
        ``source`` (a prefix of it), ``since`` and ``until`` (Unix seconds, the
        latter excluded), ``resolved`` (a bool)."""
        ...

    async def resolve_error(self, error_id: int, by: str) -> ErrorEntry | None:
        """Mark an entry resolved by ``by`` now (an entry resolved already keeps who
        and when); the entry, or None for no such entry."""
        ...

    async def record_alert(self, alert: Alert, notify: Sequence[str] = ()) -> Alert:
        """Insert ``alert`` (``id`` None) or store its new state, and in the same
        transaction queue a notification of that state on each channel of
        ``notify`` (stamping ``sent_at`` and ``channel``). Returns it with its id.
        A second firing row for a fingerprint already firing raises ``ValueError``."""
        ...

    async def get_alert(self, alert_id: int) -> Alert | None: ...

    async def list_alerts(
        self, state: AlertState | None = None, limit: int = 100
    ) -> list[Alert]:
        """Alerts in ``state`` (any when None), newest first."""
        ...

    async def acknowledge_alert(self, alert_id: int, by: str) -> Alert | None:
        """Mark an alert acknowledged by ``by`` now (once); None for no such alert."""
        ...

    async def due_alert_deliveries(
        self, channel: str, now: float, limit: int
    ) -> list[Delivery]:
        """Up to ``limit`` pending notifications of ``channel`` due at ``now``,
        oldest due first, each with its alert as stored now."""
        ...

    async def next_alert_delivery_at(self, channel: str) -> float | None:
        """When ``channel``'s next pending notification is due, if any."""
        ...

    async def record_alert_delivery(
        self, delivery_id: str, state: str, *, error: str | None,
        next_attempt_at: float | None = None,
    ) -> None:
        """Count one attempt of a pending notification: PENDING again (at
        ``next_attempt_at``), SENT or FAILED. One no longer pending is left alone."""
        ...

    async def prune_monitoring(self, before: float) -> int:
        """Delete error log entries from before ``before`` and resolved alerts that
        ended before it (with their notifications); how many rows went."""
        ...

    async def oldest_queued_at(self) -> float | None:
        """When the oldest QUEUED job was created, if any is queued."""
        ...

    async def job_totals(self, since: float, until: float) -> dict[str, Any]:
        """Jobs created in ``[since, until)``: ``{"byState": {state: count},
        "meanRunSeconds": mean start-to-end seconds of those that ran, or None}``."""
        ...

    # -- experiments (actors/experiments/) -----------------------------------

    async def save_experiment(self, experiment: Experiment) -> None:
        """Insert or replace ``experiment`` whole (its variants and metrics too)."""
        ...

    async def get_experiment(self, experiment_id: str) -> Experiment | None: ...

    async def list_experiments(self) -> list[Experiment]:
        """Every experiment, oldest first."""
        ...

    async def assign(self, assignment: Assignment) -> Assignment:
        """Store ``assignment`` unless its unit already has one in that experiment;
        returns the stored one, which wins (a unit's variant never moves)."""
        ...

    async def assignment_of(self, experiment_id: str, unit: str) -> Assignment | None: ...

    async def observations(
        self, experiment_id: str, segment_attribute: str | None = None
    ) -> list[Observation]:
        """One observation per job enrolled in the experiment, oldest first, read
        from the job rows (``segment``: the value of ``segment_attribute`` in the
        job's ``metadata``)."""
        ...

    async def experiment_spend(self, experiment_id: str) -> float:
        """The summed ``cost`` of the experiment's enrolled jobs."""
        ...

    async def experiment_jobs(
        self, experiment_id: str, variant_id: str, limit: int
    ) -> list[Job]:
        """Up to ``limit`` of the variant's newest succeeded jobs, newest first."""
        ...

    # -- batches (actors/batches/) -------------------------------------------
    #
    # An item's *current* job is the newest for its ``batch_index`` (``retry``
    # makes a new job; the old one keeps its history with ``replaced_by`` set):
    # every batch read below is of current jobs.

    async def insert_batch(self, batch: Batch, jobs: Sequence[Job]) -> Batch:
        """Insert ``batch`` and its items (WAITING jobs with ``batch_index``
        0..n-1, ``custom_id`` and ``depends_on`` set) in one transaction, stamping
        ``created_at``/``updated_at`` of both (unless set) and each item's
        ``waiting_on`` (its distinct dependencies). Nothing is published: no job
        changed state."""
        ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def open_batches(self) -> list[str]:
        """Ids of the PROCESSING batches, oldest first."""
        ...

    async def batch_counts(self, batch_id: str) -> BatchCounts:
        """The batch's items by outcome (``UPSTREAM_FAILED`` and ``EXPIRED`` among
        the failed counted apart too)."""
        ...

    async def batch_items(self, batch_id: str, after: int, limit: int) -> list[Job]:
        """Up to ``limit`` items with ``batch_index`` above ``after``, by index."""
        ...

    async def batch_finished(
        self, batch_id: str, after: tuple[float, int] | None, limit: int
    ) -> list[Job]:
        """Up to ``limit`` finished items in completion order (``completed_at``,
        then ``seq``), after the item whose ``(completed_at, seq)`` is ``after``."""
        ...

    async def batch_activity(self, batch_id: str) -> tuple[int, bool]:
        """``(released, waiting)``: how many items are QUEUED or at a provider,
        and whether any is WAITING. Read from indexes, a cost of the released
        items, not of the batch."""
        ...

    async def releasable(self, batch_id: str, limit: int) -> list[Job]:
        """Up to ``limit`` WAITING items every dependency of which has SUCCEEDED
        (``waiting_on`` 0), lowest index first."""
        ...

    async def batch_dependencies(self, batch_id: str, index: int) -> list[Job]:
        """The current jobs of the dependencies of item ``index``, by index."""
        ...

    async def failed_dependencies(
        self, batch_id: str, among: Sequence[int] | None = None
    ) -> list[tuple[int, str]]:
        """``(batch_index, custom_id)`` of the items (those of ``among`` when given)
        that ended without succeeding and still have a WAITING dependent: a
        failure not yet passed on to its dependents."""
        ...

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
        """End up to ``limit`` items in ``from_states`` (with ``dependents_of``:
        only the dependents of that item), in no particular order, each as
        ``transition`` would (``to_state`` terminal, ``error``, ``completed_at``, a
        ``state`` event, the webhooks the policy owes, published in the change
        feed) in one transaction; how many."""
        ...

    async def update_batch(
        self, batch_id: str, state: BatchState, **fields: Any
    ) -> Batch | None:
        """Set ``fields`` (``Batch`` attribute names, plain values) of a batch
        still in ``state``, stamping ``updated_at``; the batch, or None."""
        ...

    async def end_batch(
        self, ended: Batch, deliveries: Sequence[WebhookDelivery]
    ) -> Batch | None:
        """Store ``ended``'s state and ``completed_at`` on its batch if that is
        PROCESSING and no item of it is open, and queue ``deliveries`` (its webhook,
        rows of the client webhook outbox keyed by the batch id) in the same
        transaction; the batch as stored, or None (someone else ended it, or an
        item is open)."""
        ...

    async def rerun_batch(
        self,
        batch_id: str,
        custom_ids: Sequence[str],
        remake: Callable[[Job, Callable[[str], str | None]], Job],
    ) -> tuple[Batch, int] | None:
        """Re-run an ended batch in one transaction: every current item that did
        not succeed, and those named in ``custom_ids``, gets a new WAITING job
        ``remake(old, name_of)`` (``name_of(job_id)``: the ``custom_id`` of a job of
        the batch, or None; run on the store's writer, so pure and quick) that
        replaces it; ``waiting_on`` is counted afresh; the batch is PROCESSING with
        ``repairs`` one more and its end cleared. None when the batch is not
        ended; else the batch and how many items re-run. Items are read a page at a
        time: a re-run of 50,000 items does not hold them."""
        ...

    async def rerun_plan(
        self, batch_id: str, custom_ids: Sequence[str]
    ) -> tuple[int, float, list[str]]:
        """What ``rerun_batch`` with ``custom_ids`` would re-run: ``(items, their
        summed cost, the names of custom_ids that are no item of the batch)``."""
        ...

    async def released_items(self, batch_id: str) -> list[Job]:
        """The batch's items QUEUED or at a provider (at most its concurrency), by
        index."""
        ...
