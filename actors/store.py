"""The SQLite store: every job's durable state, and group commit.

``aiosqlite`` cannot run under trio, so the store owns two stdlib ``sqlite3``
connections (one for writes, one for reads; WAL lets them work side by side), each
used from worker threads one call at a time through its own ``CapacityLimiter(1)``.

Writes are functions of a connection, sent to one writer task. While a commit is in
flight, the writes that arrive queue up and go into the next single transaction
(group commit), so ``synchronous=FULL`` durability costs one fsync per batch, not
per job. Each write runs in a savepoint of its own: one that fails is rolled back
alone and its caller gets the exception; the others commit.

Every state change is one conditional UPDATE (``WHERE id=? AND state IN (...)``), so
an actor with a stale view can never overwrite a newer state.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import Job, JobState

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The largest number of writes that share one transaction.
MAX_BATCH = 512
#: How long an ``Idempotency-Key`` stays bound to its job (24 h).
DEFAULT_IDEMPOTENCY_WINDOW = 24 * 3600.0
#: Seconds between flushes of poll bookkeeping (``Store.note_poll``).
POLL_FLUSH_SECONDS = 1.0

MIGRATIONS: list[str] = [
    # 1: jobs, their events, and the schema version itself.
    """
    CREATE TABLE generation_requests (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        number_of_outputs INTEGER NOT NULL DEFAULT 1,
        input_images TEXT NOT NULL DEFAULT '[]',
        parameters TEXT NOT NULL DEFAULT '{}',
        priority INTEGER NOT NULL DEFAULT 0,
        webhook_url TEXT,
        user_id TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        idempotency_key TEXT,
        request_hash TEXT,
        batch_id TEXT,
        experiment_id TEXT,
        variant_id TEXT,
        served_model TEXT,
        provider_task_id TEXT,
        provider_outputs TEXT NOT NULL DEFAULT '[]',
        results TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        progress REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        cost REAL,
        rating INTEGER,
        feedback TEXT,
        next_poll_at REAL,
        poll_count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        submitting_at REAL,
        started_at REAL,
        completed_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX generation_requests_idempotency
        ON generation_requests(idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX generation_requests_active
        ON generation_requests(provider, state)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
    CREATE INDEX generation_requests_task ON generation_requests(provider, provider_task_id)
        WHERE provider_task_id IS NOT NULL;
    CREATE INDEX generation_requests_batch ON generation_requests(batch_id)
        WHERE batch_id IS NOT NULL;
    CREATE INDEX generation_requests_experiment ON generation_requests(experiment_id)
        WHERE experiment_id IS NOT NULL;
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    """,
    # 2: how long each model's tasks took, for adaptive polling (actors/adaptive.py).
    # seconds: from the job's start to when its end was seen; seen_running: to the
    # last check that still saw it running (NULL when the end time is exact).
    """
    CREATE TABLE task_durations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        seconds REAL NOT NULL,
        seen_running REAL,
        at REAL NOT NULL
    );
    CREATE INDEX task_durations_model ON task_durations(model, id);
    """,
    # 3: the client webhook outbox (actors/outbox.py). One row per delivery, written
    # in the same transaction as the job's terminal state so a crash cannot lose
    # it. id is the stable webhook-id; payload the job JSON (relative media URLs);
    # state PENDING -> DELIVERED | FAILED.
    """
    CREATE TABLE webhook_outbox (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'PENDING',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at)
        WHERE state = 'PENDING';
    CREATE INDEX webhook_outbox_job ON webhook_outbox(job_id);
    """,
]

#: States of a ``webhook_outbox`` row.
OUTBOX_PENDING, OUTBOX_DELIVERED, OUTBOX_FAILED = "PENDING", "DELIVERED", "FAILED"


@attrs.define
class OutboxRow:
    """One client webhook delivery (a row of ``webhook_outbox``)."""

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


def _outbox_row(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(**dict(zip(row.keys(), row, strict=True)))


def outbox_id(job_id: str, state: JobState) -> str:
    """The delivery's ``webhook-id``: stable across retries and restarts, so a
    receiver can drop a delivery it has already seen."""
    return f"msg_{job_id}_{state.value}"


def _enqueue_webhook(conn: sqlite3.Connection, job: Job, now: float) -> None:
    """Queue the client webhook of a job that just became terminal (inside the
    transition's transaction: both commit or neither does)."""
    conn.execute(
        "INSERT OR IGNORE INTO webhook_outbox (id, job_id, url, payload, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (outbox_id(job.id, job.state), job.id, job.webhook_url, json.dumps(job.to_api()),
         now, now, now),
    )

_JSON_COLUMNS = {"input_images", "parameters", "metadata", "provider_outputs", "results"}
_COLUMNS = [f.name for f in attrs.fields(Job)]


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS:
        return json.dumps(value)
    if name == "error":
        return json.dumps(value.to_json()) if value is not None else None
    if isinstance(value, JobState):
        return value.value
    return value


def _to_row(job: Job) -> dict[str, Any]:
    return {name: _encode(name, getattr(job, name)) for name in _COLUMNS}


def _decode_json(text: str) -> Any:
    # Most rows hold empty lists and objects; a restart reads every running job.
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return json.loads(text)


def _from_row(row: sqlite3.Row) -> Job:
    # zip, not dict(row): a Row looks names up one by one, linearly.
    data = dict(zip(row.keys(), row, strict=True))
    for name in _JSON_COLUMNS:
        data[name] = _decode_json(data[name])
    data["state"] = JobState(data["state"])
    data["error"] = ErrorInfo.from_json(json.loads(data["error"])) if data["error"] else None
    return Job(**data)


def _in_states(states: Iterable[JobState], provider: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) for jobs in ``states``, of ``provider``."""
    names = [s.value for s in states]
    clause = f"state IN ({', '.join('?' for _ in names)})"
    args: list[Any] = list(names)
    if provider is not None:
        clause += " AND provider=?"
        args.append(provider)
    return clause, args


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version


@attrs.define(eq=False)
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    #: Jobs whose state this write changed, to wake their watchers after commit.
    changed: list[Job] = attrs.field(factory=list)


@attrs.define
class StoreStatistics:
    writes: int = 0
    transactions: int = 0
    largest_batch: int = 0


class Store:
    """Durable job state. Make one with ``open_store``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_conn = _connect(path)
        self._read_conn = _connect(path)
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Write](10_000)
        self._watchers: dict[str, trio.Event] = {}
        self._listeners: list[Callable[[Job], None]] = []
        self._stats = StoreStatistics()
        self._polls: dict[str, tuple[float, int, float | None, float]] = {}
        self._polls_waiting = trio.Event()

    # -- the writer ---------------------------------------------------------

    async def _run_writer(self) -> None:
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await trio.to_thread.run_sync(self._commit, batch, limiter=self._write_limiter)
                self._stats.writes += len(batch)
                self._stats.transactions += 1
                self._stats.largest_batch = max(self._stats.largest_batch, len(batch))
                for write in batch:
                    for job in write.changed:
                        self._wake(job)
                    write.done.set()

    def _commit(self, batch: list[_Write]) -> None:
        """Run ``batch`` in one transaction.

        Optimistically without savepoints (two statements per write saved on the
        hot path); if any write raises, the transaction is rolled back and the batch
        run again with a savepoint per write, so only the failing ones are undone.
        """
        conn = self._write_conn
        try:
            if not self._run_batch(conn, batch, isolated=False):
                self._run_batch(conn, batch, isolated=True)
        except Exception as exc:
            log.exception("store transaction failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for write in batch:
                write.error = write.error or exc
                write.changed.clear()

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[_Write], *, isolated: bool) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        for write in batch:
            write.result, write.error = None, None
            write.changed.clear()
            if isolated:
                conn.execute("SAVEPOINT w")
            try:
                write.result = write.fn(conn)
            except Exception as exc:  # handed to that write's caller
                if not isolated:
                    conn.execute("ROLLBACK")
                    return False
                write.error = exc
                write.changed.clear()
                conn.execute("ROLLBACK TO w")
            if isolated:
                conn.execute("RELEASE w")
        conn.execute("COMMIT")
        return True

    def _wake(self, job: Job) -> None:
        event = self._watchers.pop(job.id, None)
        if event is not None:
            event.set()
        for listener in self._listeners:
            try:
                listener(job)
            except Exception:
                log.exception("store listener failed for %s", job.id)

    async def _write(self, fn: Callable[[sqlite3.Connection, _Write], T]) -> T:
        write = _Write(fn=lambda conn: None)
        write.fn = lambda conn: fn(conn, write)
        await self._send.send(write)
        await write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[no-any-return]

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._read_conn, limiter=self._read_limiter)

    async def _flush_polls(self, *, final: bool = False) -> None:
        """Write the poll notes gathered so far; ``final``: directly, as the writer
        task may already be gone (the daemon is stopping)."""
        polls, self._polls = self._polls, {}
        if not polls:
            return
        rows = [(due, count, progress, at, job_id)
                for job_id, (due, count, progress, at) in polls.items()]

        def op(conn: sqlite3.Connection, write: _Write) -> None:
            conn.executemany(
                "UPDATE generation_requests SET next_poll_at=?, poll_count=?, progress=?,"
                " updated_at=? WHERE id=? AND state='RUNNING'", rows,
            )

        if not final:
            await self._write(op)
            return
        write = _Write(fn=lambda conn: None)
        write.fn = lambda conn: op(conn, write)
        await trio.to_thread.run_sync(self._commit, [write], limiter=self._write_limiter)

    async def _run_poll_flusher(self) -> None:
        # No timer while there is nothing to write: an idle store sleeps for good
        # (and a MockClock test is not moved along by it).
        while True:
            await self._polls_waiting.wait()
            await trio.sleep(POLL_FLUSH_SECONDS)
            self._polls_waiting = trio.Event()
            await self._flush_polls()

    # -- public surface -----------------------------------------------------

    def add_listener(self, listener: Callable[[Job], None]) -> None:
        """Call ``listener(job)`` after each committed state change (not thread-safe
        work: it runs in the writer task and must not block)."""
        self._listeners.append(listener)

    def watch(self, job_id: str) -> trio.Event:
        """An event set at the next committed state change of ``job_id``."""
        event = self._watchers.get(job_id)
        if event is None:
            event = self._watchers[job_id] = trio.Event()
        return event

    def statistics(self) -> StoreStatistics:
        return attrs.evolve(self._stats)

    async def insert_job(
        self, job: Job, idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    ) -> tuple[Job, bool]:
        """Insert ``job``; returns ``(job, True)``.

        With an idempotency key already used by the same request within
        ``idempotency_window`` seconds, returns ``(original, False)``; used by a
        different request, raises CONFLICT. A key older than the window is released
        from its old job and means a new request.
        """
        now = wall_now()  # here, on trio's clock: the writer thread has none

        def op(conn: sqlite3.Connection, write: _Write) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT * FROM generation_requests WHERE idempotency_key=?",
                    (job.idempotency_key,),
                ).fetchone()
                if row is not None and row["created_at"] < now - idempotency_window:
                    conn.execute("UPDATE generation_requests SET idempotency_key=NULL WHERE id=?",
                                 (row["id"],))
                    row = None
                if row is not None:
                    existing = _from_row(row)
                    if existing.request_hash != job.request_hash:
                        raise EaselError(
                            ErrorCode.CONFLICT,
                            "Idempotency-Key was already used with a different request",
                            {"id": existing.id},
                        )
                    return existing, False
            job.created_at = job.created_at or now
            job.updated_at = now
            row = _to_row(job)
            row.pop("seq")
            names = ", ".join(row)
            marks = ", ".join(f":{n}" for n in row)
            cursor = conn.execute(
                f"INSERT INTO generation_requests ({names}) VALUES ({marks})", row
            )
            job.seq = cursor.lastrowid
            return job, True

        return await self._write(op)

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
        """Move a job from one of ``from_states`` to ``to_state`` and set ``fields``.

        ``where``: more columns the row must still hold (``IS``, so ``None`` matches
        NULL), e.g. the provider a job was handed to, which a reroute may change.
        Returns the updated job, or ``None`` when the job was not in one of
        ``from_states`` or ``where`` (someone else moved it first: the caller's view
        is stale).
        """
        froms = [from_states] if isinstance(from_states, JobState) else list(from_states)
        now = wall_now()
        fields["updated_at"] = now
        if to_state.terminal:
            fields.setdefault("completed_at", now)
            fields.setdefault("next_poll_at", None)
        assignments = ", ".join(f"{name}=:{name}" for name in fields)
        params = {name: _encode(name, value) for name, value in fields.items()}
        params.update(id=job_id, to_state=to_state.value)
        marks = ", ".join(f":from{i}" for i in range(len(froms)))
        params.update({f"from{i}": s.value for i, s in enumerate(froms)})
        extra = "".join(f" AND {name} IS :where_{name}" for name in (where or {}))
        params.update({f"where_{name}": value for name, value in (where or {}).items()})

        def op(conn: sqlite3.Connection, write: _Write) -> Job | None:
            cursor = conn.execute(
                f"UPDATE generation_requests SET state=:to_state, {assignments} "
                f"WHERE id=:id AND state IN ({marks}){extra}",
                params,
            )
            if cursor.rowcount != 1:
                return None
            row = conn.execute("SELECT * FROM generation_requests WHERE id=?", (job_id,))
            job = _from_row(row.fetchone())
            if froms != [to_state]:
                _event(conn, job_id, now, "state", {"state": to_state.value, **(event or {})})
                if to_state.terminal and job.webhook_url:
                    _enqueue_webhook(conn, job, now)
                write.changed.append(job)
            elif event:
                _event(conn, job_id, now, event.get("kind", "update"), event)
            return job

        return await self._write(op)

    async def update(self, job_id: str, state: JobState, **fields: Any) -> Job | None:
        """Set ``fields`` of a job that is still in ``state`` (no state change)."""
        return await self.transition(job_id, state, state, **fields)

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        at = wall_now()
        await self._write(lambda conn, write: _event(conn, job_id, at, kind, data))

    def note_poll(
        self, job_id: str, next_poll_at: float, poll_count: int, progress: float | None
    ) -> None:
        """Record a status check of a RUNNING job, written within a second.

        Not durable at once, on purpose: with 100,000 running tasks the checks are a
        steady stream of writes, and losing the last second of them to a crash only
        means those tasks are checked again a little early after the restart. A job
        that has left RUNNING meanwhile is not touched.
        """
        self._polls[job_id] = (next_poll_at, poll_count, progress, wall_now())
        self._polls_waiting.set()

    async def job_ids_in(self, states: Iterable[JobState], provider: str) -> list[str]:
        """Ids of the provider's jobs in any of ``states`` (cheaper than ``jobs_in``)."""
        clause, args = _in_states(states, provider)

        def op(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(
                f"SELECT id FROM generation_requests WHERE {clause}", args)]

        return await self._read(op)

    async def has_twin(self, job: Job, states: Iterable[JobState]) -> bool:
        """Whether another job of ``job``'s provider with the same request is in
        any of ``states``."""
        clause, args = _in_states(states, job.provider)

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                f"SELECT 1 FROM generation_requests WHERE {clause}"
                " AND request_hash IS ? AND id != ? LIMIT 1",
                [*args, job.request_hash, job.id],
            ).fetchone() is not None

        return await self._read(op)

    async def add_duration(self, model: str, seconds: float, seen_running: float | None) -> None:
        """Record how long one task of ``model`` took (see ``task_durations``)."""
        at = wall_now()

        def op(conn: sqlite3.Connection, write: _Write) -> None:
            conn.execute(
                "INSERT INTO task_durations (model, seconds, seen_running, at)"
                " VALUES (?, ?, ?, ?)", (model, seconds, seen_running, at),
            )

        await self._write(op)

    async def recent_durations(
        self, models: Iterable[str], limit: int
    ) -> dict[str, list[tuple[float, float | None]]]:
        """The last ``limit`` durations of each model, oldest first:
        ``(seconds, seen_running)`` pairs."""
        names = list(models)

        def op(conn: sqlite3.Connection) -> dict[str, list[tuple[float, float | None]]]:
            found: dict[str, list[tuple[float, float | None]]] = {}
            for model in names:
                rows = conn.execute(
                    "SELECT seconds, seen_running FROM task_durations WHERE model=?"
                    " ORDER BY id DESC LIMIT ?", (model, limit),
                ).fetchall()
                found[model] = [(r[0], r[1]) for r in reversed(rows)]
            return found

        return await self._read(op)

    async def get_job(self, job_id: str) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "SELECT * FROM generation_requests WHERE id=?", (job_id,)
            ).fetchone()
            return _from_row(row) if row else None

        return await self._read(op)

    async def jobs_in(self, states: Iterable[JobState], provider: str | None = None) -> list[Job]:
        """Jobs in any of ``states`` (of one provider), by priority then age."""
        clause, args = _in_states(states, provider)
        sql = f"SELECT * FROM generation_requests WHERE {clause} ORDER BY priority DESC, seq ASC"

        def op(conn: sqlite3.Connection) -> list[Job]:
            return [_from_row(r) for r in conn.execute(sql, args)]

        return await self._read(op)

    async def job_by_task(self, provider: str, task_id: str) -> Job | None:
        """The job that records ``task_id`` as its provider task, if any.

        A stored handle may be ``"<id> <extra>"`` (see ``Adapter.submit``); the
        range below matches it by its id and still uses the index.
        """

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "SELECT * FROM generation_requests WHERE provider=? AND (provider_task_id=?"
                " OR (provider_task_id > ? AND provider_task_id < ?))",
                (provider, task_id, task_id + " ", task_id + "!"),
            ).fetchone()
            return _from_row(row) if row else None

        return await self._read(op)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT at, kind, data FROM job_events WHERE job_id=? ORDER BY id", (job_id,)
            )
            return [{"at": r[0], "kind": r[1], **json.loads(r[2])} for r in rows]

        return await self._read(op)

    async def count_by_state(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, COUNT(*) FROM generation_requests GROUP BY state")
            return {r[0]: r[1] for r in rows}

        return await self._read(op)

    # -- the client webhook outbox (actors/outbox.py) ---------------------

    async def due_webhooks(
        self, now: float, limit: int, exclude: Iterable[str] = ()
    ) -> list[OutboxRow]:
        """Up to ``limit`` pending deliveries due at ``now``, oldest due first,
        leaving out ``exclude`` (those already being attempted)."""
        skip = list(exclude)
        marks = ", ".join("?" for _ in skip)
        sql = "SELECT * FROM webhook_outbox WHERE state='PENDING' AND next_attempt_at<=?"
        if skip:
            sql += f" AND id NOT IN ({marks})"
        sql += " ORDER BY next_attempt_at LIMIT ?"

        def op(conn: sqlite3.Connection) -> list[OutboxRow]:
            return [_outbox_row(r) for r in conn.execute(sql, [now, *skip, limit])]

        return await self._read(op)

    async def next_webhook_at(self, exclude: Iterable[str] = ()) -> float | None:
        """When the next pending delivery (not in ``exclude``) is due, if any."""
        skip = list(exclude)
        marks = ", ".join("?" for _ in skip)
        sql = "SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE state='PENDING'"
        if skip:
            sql += f" AND id NOT IN ({marks})"

        def op(conn: sqlite3.Connection) -> float | None:
            value = conn.execute(sql, skip).fetchone()[0]
            return float(value) if value is not None else None

        return await self._read(op)

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
        PENDING again (with ``next_attempt_at``), DELIVERED or FAILED."""
        now = wall_now()
        finished = None if state == OUTBOX_PENDING else now

        def op(conn: sqlite3.Connection, write: _Write) -> None:
            conn.execute(
                "UPDATE webhook_outbox SET state=?, attempts=attempts+1, last_status=?,"
                " last_error=?, next_attempt_at=COALESCE(?, next_attempt_at), updated_at=?,"
                " finished_at=? WHERE id=? AND state='PENDING'",
                (state, status, error, next_attempt_at, now, finished, delivery_id),
            )

        await self._write(op)

    async def webhooks_of(self, job_id: str) -> list[OutboxRow]:
        """A job's webhook deliveries (for status pages and tests)."""

        def op(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(
                "SELECT * FROM webhook_outbox WHERE job_id=? ORDER BY created_at", (job_id,)
            )
            return [_outbox_row(r) for r in rows]

        return await self._read(op)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())


def _event(
    conn: sqlite3.Connection, job_id: str, at: float, kind: str, data: dict[str, Any]
) -> None:
    """Record an event; ``at`` comes from the trio side, as the thread has no clock."""
    conn.execute(
        "INSERT INTO job_events (job_id, at, kind, data) VALUES (?, ?, ?, ?)",
        (job_id, at, kind, json.dumps(data)),
    )


async def _under(scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()


@asynccontextmanager
async def open_store(path: str | Path) -> AsyncIterator[Store]:
    """Open (and migrate) the database at ``path`` for the duration of the block.

    On exit, writes already sent are committed before the connections close, so a
    draining daemon loses nothing it acknowledged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = await trio.to_thread.run_sync(Store, path)
    try:
        await trio.to_thread.run_sync(migrate, store._write_conn, limiter=store._write_limiter)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._run_writer)
            flusher = trio.CancelScope()
            nursery.start_soon(_under, flusher, store._run_poll_flusher)
            try:
                yield store
            finally:
                # Let the writer drain what was sent, then stop.
                flusher.cancel()
                await store._send.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await store._flush_polls(final=True)
            await trio.to_thread.run_sync(store._write_conn.close, limiter=store._write_limiter)
            await trio.to_thread.run_sync(store._read_conn.close, limiter=store._read_limiter)
