"""SQLite repository of jobs (``generation_requests``) and their events
(``job_events``).

Functions of a ``sqlite3.Connection``, run on the store's worker threads; what can
be prepared without the database (SQL text, encoded parameters) is prepared on the
trio side by the caller, so the thread does only the database work.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from actors.errors import ErrorInfo
from actors.jobs import Job, JobState

JSON_COLUMNS = frozenset({"input_images", "parameters", "metadata", "provider_outputs", "results",
                          "preprocess", "depends_on"})
COLUMNS = [f.name for f in attrs.fields(Job)]


def encode(name: str, value: Any) -> Any:
    """A ``Job`` attribute as its column holds it."""
    if name in JSON_COLUMNS:
        # Most jobs have no input images, metadata or results yet: skip the encoder.
        if value == []:
            return "[]"
        if value == {}:
            return "{}"
        return json.dumps(value)
    if name == "error":
        return json.dumps(value.to_json()) if value is not None else None
    if isinstance(value, JobState):
        return value.value
    return value


def to_row(job: Job) -> dict[str, Any]:
    return {name: encode(name, getattr(job, name)) for name in COLUMNS}


def _decode_json(text: str | None) -> Any:
    # Most rows hold empty lists and objects; a restart reads every running job.
    if text is None:  # a nullable JSON column (preprocess)
        return None
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return json.loads(text)


def from_row(row: sqlite3.Row) -> Job:
    # zip, not dict(row): a Row looks names up one by one, linearly.
    data = dict(zip(row.keys(), row, strict=True))
    for name in JSON_COLUMNS:
        data[name] = _decode_json(data[name])
    data["state"] = JobState(data["state"])
    data["error"] = ErrorInfo.from_json(json.loads(data["error"])) if data["error"] else None
    return Job(**data)


@functools.lru_cache(maxsize=64)
def _insert_sql(names: tuple[str, ...]) -> str:
    return (f"INSERT INTO generation_requests ({', '.join(names)})"
            f" VALUES ({', '.join('?' for _ in names)})")


def insert(conn: sqlite3.Connection, job: Job) -> Job:
    """Insert ``job`` (its timestamps already set); stamps its ``seq``.

    Only the columns that are set are named: an unset one is NULL, its default.
    """
    names: list[str] = []
    values: list[Any] = []
    for name in COLUMNS:
        value = getattr(job, name)
        if value is None or name == "seq":
            continue
        names.append(name)
        values.append(encode(name, value))
    cursor = conn.execute(_insert_sql(tuple(names)), values)
    job.seq = cursor.lastrowid
    return job


def get(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute("SELECT * FROM generation_requests WHERE id=?", (job_id,)).fetchone()
    return from_row(row) if row else None


@attrs.frozen
class Move:
    """A prepared conditional UPDATE of one job (see ``Store.transition``)."""

    job_id: str
    sql: str
    params: dict[str, Any]

    @classmethod
    def prepare(
        cls,
        job_id: str,
        from_states: list[JobState],
        to_state: JobState,
        fields: Mapping[str, Any],
        where: Mapping[str, Any],
    ) -> Move:
        assignments = "".join(f", {name}=:{name}" for name in fields)
        params = {name: encode(name, value) for name, value in fields.items()}
        params.update(id=job_id, to_state=to_state.value)
        marks = ", ".join(f":from{i}" for i in range(len(from_states)))
        params.update({f"from{i}": s.value for i, s in enumerate(from_states)})
        extra = "".join(f" AND {name} IS :where_{name}" for name in where)
        params.update({f"where_{name}": value for name, value in where.items()})
        sql = (f"UPDATE generation_requests SET state=:to_state{assignments}"
               f" WHERE id=:id AND state IN ({marks}){extra}")
        return cls(job_id, sql, params)

    def apply(self, conn: sqlite3.Connection) -> Job | None:
        """The job after the update, or ``None`` when its conditions did not hold."""
        if conn.execute(self.sql, self.params).rowcount != 1:
            return None
        return get(conn, self.job_id)


def add_event(
    conn: sqlite3.Connection, job_id: str, at: float, kind: str, data: dict[str, Any]
) -> None:
    """Record an event; ``at`` comes from the trio side, as the thread has no clock."""
    conn.execute(
        "INSERT INTO job_events (job_id, at, kind, data) VALUES (?, ?, ?, ?)",
        (job_id, at, kind, json.dumps(data)),
    )


def events(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, kind, data FROM job_events WHERE job_id=? ORDER BY id", (job_id,)
    )
    return [{"at": r[0], "kind": r[1], **json.loads(r[2])} for r in rows]


def write_polls(
    conn: sqlite3.Connection, polls: Mapping[str, tuple[float, int, float | None, float]]
) -> None:
    """Write poll notes (``job id -> (next_poll_at, poll_count, progress, at)``) of
    jobs still RUNNING."""
    conn.executemany(
        "UPDATE generation_requests SET next_poll_at=?, poll_count=?, progress=?,"
        " updated_at=? WHERE id=? AND state='RUNNING'",
        [(due, count, progress, at, job_id)
         for job_id, (due, count, progress, at) in polls.items()],
    )


#: The condition of the partial indexes over unfinished jobs, word for word: SQLite
#: uses such an index only for a query that states its condition, and cannot
#: tell for itself that ``state IN ('RUNNING')`` implies it. Without it, every
#: reload at start scanned the whole table: seconds with a million queued jobs.
#: A WAITING batch item is in none of them (migration 10): it is in no queue, and
#: a 50,000-item batch would otherwise grow three indexes as it is inserted.
UNFINISHED = "state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'WAITING')"


def in_states(states: Iterable[JobState], provider: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) for jobs in ``states``, of ``provider``."""
    states = list(states)
    names = [s.value for s in states]
    clause = f"state IN ({', '.join('?' for _ in names)})"
    if not any(s.terminal or s is JobState.WAITING for s in states):
        clause += f" AND {UNFINISHED}"
    args: list[Any] = list(names)
    if provider is not None:
        clause += " AND provider=?"
        args.append(provider)
    return clause, args


def select_in(
    conn: sqlite3.Connection, states: Iterable[JobState], provider: str | None
) -> list[Job]:
    clause, args = in_states(states, provider)
    sql = f"SELECT * FROM generation_requests WHERE {clause} ORDER BY priority DESC, seq ASC"
    return [from_row(r) for r in conn.execute(sql, args)]


def queued_page(
    conn: sqlite3.Connection, provider: str, after: int, limit: int
) -> list[tuple[int, int, int]]:
    """``(priority, seq, batch)`` of up to ``limit`` of ``provider``'s QUEUED jobs
    past ``after``, by ``seq`` (``batch``: 1 for a batch's item). Plain tuples, not
    ``sqlite3.Row``: a restart reads a million of them, and the partial index
    ``generation_requests_queue`` covers the query, so no row of the table itself
    is read."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(
        "SELECT priority, seq, batch_id IS NOT NULL FROM generation_requests"
        " WHERE provider=? AND state='QUEUED' AND seq>? ORDER BY seq LIMIT ?",
        (provider, after, limit),
    ).fetchall()


def by_seq(conn: sqlite3.Connection, seqs: list[int]) -> list[Job]:
    marks = ", ".join("?" for _ in seqs)
    sql = f"SELECT * FROM generation_requests WHERE seq IN ({marks}) ORDER BY seq"
    return [from_row(r) for r in conn.execute(sql, seqs)]


def submitted_since(conn: sqlite3.Connection, provider: str, since: float) -> list[Job]:
    sql = "SELECT * FROM generation_requests WHERE provider=? AND submitting_at>=? ORDER BY seq"
    return [from_row(r) for r in conn.execute(sql, (provider, since))]


def ids_in(conn: sqlite3.Connection, states: Iterable[JobState], provider: str) -> list[str]:
    clause, args = in_states(states, provider)
    return [r[0] for r in conn.execute(f"SELECT id FROM generation_requests WHERE {clause}", args)]


def has_twin(conn: sqlite3.Connection, job: Job, states: Iterable[JobState]) -> bool:
    clause, args = in_states(states, job.provider)
    return conn.execute(
        f"SELECT 1 FROM generation_requests WHERE {clause}"
        " AND request_hash IS ? AND id != ? LIMIT 1",
        [*args, job.request_hash, job.id],
    ).fetchone() is not None


def by_task(conn: sqlite3.Connection, provider: str, task_id: str) -> Job | None:
    """The job whose handle is ``task_id`` or ``"<task_id> <extra>"``: the range
    matches the latter by its id and still uses the index."""
    row = conn.execute(
        "SELECT * FROM generation_requests WHERE provider=? AND (provider_task_id=?"
        " OR (provider_task_id > ? AND provider_task_id < ?))",
        (provider, task_id, task_id + " ", task_id + "!"),
    ).fetchone()
    return from_row(row) if row else None


def count_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT state, COUNT(*) FROM generation_requests GROUP BY state")
    return {r[0]: r[1] for r in rows}
