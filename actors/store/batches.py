"""SQLite repository of batches (``generation_batches``), their items' edges
(``batch_edges``) and the batch queries over their items (``generation_requests``).

An item's *current* job is its row with ``replaced_by`` NULL (a re-run is a new
row; the old one keeps its history). What the batch actor needs is read from
indexes, a page at a time, never the whole batch:

- the releasable items: WAITING with ``waiting_on`` 0, by ``batch_index``
  (``generation_requests_releasable``). ``waiting_on`` is counted down here, in the
  transaction of a dependency's SUCCEEDED transition (``dependency_succeeded``), so
  it can never drift from the dependencies' states;
- how many items are released and open (the concurrency), from the index of open
  batch items;
- an item's dependencies and a dependency's dependents, from ``batch_edges``.

Functions of a ``sqlite3.Connection``, run on the store's worker threads.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from actors.batches.model import Batch, BatchCounts, BatchOptions, BatchState
from actors.errors import ErrorCode, ErrorInfo
from actors.jobs import AT_PROVIDER, Job, JobState
from actors.store import jobs, outbox
from actors.store.policy import Delivery

_BATCH_COLUMNS = ("id", "owner", "state", "options", "total", "repairs", "estimated_cost",
                  "metadata", "stopped_reason", "cancelled_at", "created_at", "updated_at",
                  "completed_at")
#: Item columns as an insert names them: every job column but ``seq``.
_ITEM_COLUMNS = tuple(name for name in jobs.COLUMNS if name != "seq")
_INSERT_ITEMS = (f"INSERT INTO generation_requests ({', '.join(_ITEM_COLUMNS)})"
                 f" VALUES ({', '.join('?' for _ in _ITEM_COLUMNS)})")
#: A released item that is not finished (it counts against the batch's
#: concurrency): the condition of ``generation_requests_batch_open``, word for
#: word, so SQLite reads that index.
RELEASED = "state IN ('QUEUED', 'SUBMITTING', 'RESOLVING', 'RUNNING', 'FINALIZING')"


def _to_row(batch: Batch) -> tuple[Any, ...]:
    return (batch.id, batch.owner, batch.state.value, json.dumps(attrs.asdict(batch.options)),
            batch.total,
            batch.repairs, batch.estimated_cost, json.dumps(batch.metadata),
            batch.stopped_reason, batch.cancelled_at, batch.created_at, batch.updated_at,
            batch.completed_at)


def _from_row(row: sqlite3.Row) -> Batch:
    data = dict(zip(row.keys(), row, strict=True))
    data["state"] = BatchState(data["state"])
    data["options"] = BatchOptions(**json.loads(data["options"]))
    data["metadata"] = json.loads(data["metadata"])
    return Batch(**data)


def get(conn: sqlite3.Connection, batch_id: str) -> Batch | None:
    row = conn.execute("SELECT * FROM generation_batches WHERE id=?", (batch_id,)).fetchone()
    return _from_row(row) if row else None


def open_ids(conn: sqlite3.Connection) -> list[str]:
    """The PROCESSING batches, oldest first."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM generation_batches WHERE state='PROCESSING' ORDER BY created_at")]


_values = operator.attrgetter(*_ITEM_COLUMNS)
#: The columns whose value is encoded (JSON, the state, the error), by position.
_ENCODED = [(i, name) for i, name in enumerate(_ITEM_COLUMNS)
            if name in jobs.JSON_COLUMNS or name in ("state", "error")]


def _item_rows(items: Sequence[Job]) -> list[list[Any]]:
    """Each item's values, in ``_ITEM_COLUMNS`` order, as their columns hold them:
    read in one C call per item, and only the encoded ones touched (10,000 items
    in a fraction of the time ``jobs.encode`` per column would take)."""
    encode = jobs.encode
    rows = []
    for job in items:
        row = list(_values(job))
        for i, name in _ENCODED:
            row[i] = encode(name, row[i])
        rows.append(row)
    return rows


def insert(conn: sqlite3.Connection, batch: Batch, items: Sequence[Job]) -> Batch:
    """Insert ``batch`` and its ``items`` (timestamps set, ``waiting_on`` counted),
    and the edges from each item's ``depends_on``."""
    conn.execute(f"INSERT INTO generation_batches ({', '.join(_BATCH_COLUMNS)})"
                 f" VALUES ({', '.join('?' for _ in _BATCH_COLUMNS)})", _to_row(batch))
    conn.executemany(_INSERT_ITEMS, _item_rows(items))
    index_of = {job.custom_id: job.batch_index for job in items}
    conn.executemany(
        "INSERT OR IGNORE INTO batch_edges (batch_id, dep, item) VALUES (?, ?, ?)",
        [(batch.id, index_of[dep], job.batch_index) for job in items for dep in job.depends_on])
    return batch


def counts(conn: sqlite3.Connection, batch_id: str) -> BatchCounts:
    """The batch's current items by outcome."""
    result = BatchCounts()
    rows = conn.execute(
        "SELECT state, CASE WHEN state='FAILED' THEN json_extract(error, '$.code') END,"
        " COUNT(*) FROM generation_requests WHERE batch_id=? AND replaced_by IS NULL"
        " GROUP BY 1, 2", (batch_id,))
    for state_name, code, n in rows:
        state = JobState(state_name)
        result.total += n
        if state is JobState.WAITING:
            result.waiting += n
        elif state is JobState.QUEUED:
            result.queued += n
        elif state in AT_PROVIDER:
            result.running += n
        elif state is JobState.SUCCEEDED:
            result.succeeded += n
        elif state is JobState.CANCELLED:
            result.cancelled += n
        else:
            result.failed += n
            if code == ErrorCode.UPSTREAM_FAILED.value:
                result.upstream_failed += n
            elif code == ErrorCode.EXPIRED.value:
                result.expired += n
    return result


def items(conn: sqlite3.Connection, batch_id: str, after: int, limit: int) -> list[Job]:
    """The current job of each index above ``after``, by index."""
    return [jobs.from_row(r) for r in conn.execute(
        "SELECT * FROM generation_requests WHERE batch_id=? AND batch_index>?"
        " AND replaced_by IS NULL ORDER BY batch_index LIMIT ?", (batch_id, after, limit))]


def finished(
    conn: sqlite3.Connection, batch_id: str, after: tuple[float, int] | None, limit: int
) -> list[Job]:
    """Current items that have finished, by ``(completed_at, seq)``, past ``after``."""
    done, seq = after if after is not None else (-1.0, -1)
    return [jobs.from_row(r) for r in conn.execute(
        "SELECT * FROM generation_requests WHERE batch_id=? AND completed_at IS NOT NULL"
        " AND (completed_at>? OR (completed_at=? AND seq>?)) AND replaced_by IS NULL"
        " ORDER BY completed_at, seq LIMIT ?", (batch_id, done, done, seq, limit))]


def activity(conn: sqlite3.Connection, batch_id: str) -> tuple[int, bool]:
    """``(released, waiting)``: how many items are released and not finished (the
    batch's concurrency in use), and whether any is WAITING."""
    released = conn.execute(
        f"SELECT COUNT(*) FROM generation_requests WHERE batch_id=? AND {RELEASED}",
        (batch_id,)).fetchone()[0]
    waiting = conn.execute(
        "SELECT 1 FROM generation_requests WHERE batch_id=? AND state='WAITING' LIMIT 1",
        (batch_id,)).fetchone() is not None
    return released, waiting


def releasable(conn: sqlite3.Connection, batch_id: str, limit: int) -> list[Job]:
    """Up to ``limit`` WAITING items whose dependencies have all succeeded, lowest
    index first."""
    return [jobs.from_row(r) for r in conn.execute(
        "SELECT * FROM generation_requests WHERE batch_id=? AND state='WAITING'"
        " AND waiting_on=0 ORDER BY batch_index LIMIT ?", (batch_id, limit))]


def dependencies(conn: sqlite3.Connection, batch_id: str, index: int) -> list[Job]:
    """The current jobs of item ``index``'s dependencies."""
    return [jobs.from_row(r) for r in conn.execute(
        "SELECT d.* FROM batch_edges e JOIN generation_requests d ON d.batch_id=e.batch_id"
        " AND d.batch_index=e.dep AND d.replaced_by IS NULL WHERE e.batch_id=? AND e.item=?"
        " ORDER BY d.batch_index", (batch_id, index))]


def dependency_succeeded(conn: sqlite3.Connection, job: Job) -> None:
    """``job``, an item, has just SUCCEEDED: its WAITING dependents wait on one
    dependency less."""
    conn.execute(
        "UPDATE generation_requests SET waiting_on=waiting_on-1 WHERE batch_id=?"
        " AND state='WAITING' AND batch_index IN"
        " (SELECT item FROM batch_edges WHERE batch_id=? AND dep=?)",
        (job.batch_id, job.batch_id, job.batch_index))


def failed_dependencies(
    conn: sqlite3.Connection, batch_id: str, among: Sequence[int] | None
) -> list[tuple[int, str]]:
    """``(index, custom_id)`` of the items (of ``among``, else any) whose current
    job ended without succeeding and that still have WAITING dependents (a
    failure not passed on yet)."""
    if among is not None:
        marks = ", ".join("?" for _ in among)
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT DISTINCT e.dep, d.custom_id FROM batch_edges e"
            " JOIN generation_requests w ON w.batch_id=e.batch_id AND w.batch_index=e.item"
            " AND w.state='WAITING'"
            " JOIN generation_requests d ON d.batch_id=e.batch_id AND d.batch_index=e.dep"
            " AND d.replaced_by IS NULL AND d.state IN ('FAILED', 'CANCELLED')"
            f" WHERE e.batch_id=? AND e.dep IN ({marks}) ORDER BY e.dep",
            (batch_id, *among))]
    return [(r[0], r[1]) for r in conn.execute(
        # Edges first (CROSS JOIN fixes the order): from the WAITING items, SQLite
        # joined every one with every failed item, quadratic in the batch's size.
        "SELECT DISTINCT e.dep, d.custom_id FROM batch_edges e"
        " CROSS JOIN generation_requests w ON e.batch_id=w.batch_id AND e.item=w.batch_index"
        " JOIN generation_requests d ON d.batch_id=e.batch_id AND d.batch_index=e.dep"
        " AND d.replaced_by IS NULL"
        " WHERE w.batch_id=? AND w.state='WAITING' AND d.state IN ('FAILED', 'CANCELLED')"
        " ORDER BY e.dep", (batch_id,))]


def end_items(
    conn: sqlite3.Connection,
    batch_id: str,
    from_states: Sequence[JobState],
    to_state: JobState,
    error: ErrorInfo,
    dependents_of: int | None,
    limit: int,
    now: float,
    deliveries: Callable[[Job], Sequence[Delivery]],
) -> list[Job]:
    """End up to ``limit`` of the batch's current items in ``from_states`` (only
    the dependents of item ``dependents_of`` when it is set; read from the index of
    each state, in no particular order), with ``to_state`` and ``error``, each with its ``state`` event and the webhooks
    it owes; the jobs as committed."""
    ended: list[Job] = []
    for state in from_states:  # one state at a time: each is read from an index
        if len(ended) >= limit:
            break
        which = "state='WAITING'" if state is JobState.WAITING else f"{RELEASED} AND state=?"
        chosen = f"SELECT id FROM generation_requests WHERE batch_id=? AND {which}"
        args: list[Any] = [batch_id] if state is JobState.WAITING else [batch_id, state.value]
        if dependents_of is not None:
            chosen += (" AND batch_index IN"
                       " (SELECT item FROM batch_edges WHERE batch_id=? AND dep=?)")
            args += [batch_id, dependents_of]
        sql = ("UPDATE generation_requests SET state=?, error=?, completed_at=?, updated_at=?,"
               f" next_poll_at=NULL WHERE id IN ({chosen} LIMIT ?)"
               " RETURNING *")
        args = [to_state.value, jobs.encode("error", error), now, now, *args,
                limit - len(ended)]
        ended += sorted((jobs.from_row(r) for r in conn.execute(sql, args).fetchall()),
                        key=lambda job: job.batch_index or 0)
    event = json.dumps({"state": to_state.value, "by": "batch", "code": error.code.value})
    conn.executemany("INSERT INTO job_events (job_id, at, kind, data) VALUES (?, ?, 'state', ?)",
                     [(job.id, now, event) for job in ended])
    for job in ended:
        owed = deliveries(job)
        if owed:
            outbox.enqueue(conn, job.id, owed, now)
    return ended


def update(conn: sqlite3.Connection, batch_id: str, state: BatchState,
           fields: dict[str, Any]) -> Batch | None:
    """Set ``fields`` of a batch still in ``state``; the batch, or None."""
    assignments = ", ".join(f"{name}=:{name}" for name in fields)
    cursor = conn.execute(
        f"UPDATE generation_batches SET {assignments} WHERE id=:batch_id"
        " AND state=:from_state", {**fields, "batch_id": batch_id, "from_state": state.value})
    return get(conn, batch_id) if cursor.rowcount == 1 else None


def has_open_items(conn: sqlite3.Connection, batch_id: str) -> bool:
    released, waiting = activity(conn, batch_id)
    return bool(released or waiting)


def end(conn: sqlite3.Connection, ended: Batch, deliveries: Sequence[Delivery],
        now: float) -> Batch | None:
    """Give a PROCESSING batch with no open item its end (``ended``'s state and
    ``completed_at``) and queue ``deliveries`` in the same transaction."""
    if has_open_items(conn, ended.id):
        return None
    batch = update(conn, ended.id, BatchState.PROCESSING, {
        "state": ended.state.value, "completed_at": ended.completed_at, "updated_at": now})
    if batch is not None and deliveries:
        outbox.enqueue(conn, batch.id, deliveries, now)
    return batch


#: Current items read (and re-made) at once by ``rerun``.
RERUN_PAGE = 1000


def rerun(
    conn: sqlite3.Connection,
    batch_id: str,
    custom_ids: Sequence[str],
    remake: Callable[[Job, Callable[[str], str | None]], Job],
    now: float,
) -> tuple[Batch, int] | None:
    """Re-run an ended batch's items that did not succeed, and those named in
    ``custom_ids``: each gets a new WAITING job (``remake(old, name_of)``, where
    ``name_of`` gives the ``custom_id`` of a job of the batch), its old one is
    marked ``replaced_by`` it, and the batch is PROCESSING again with one more
    repair. Read and written a page at a time, in one transaction. None when the
    batch is not ended; else the batch and how many items re-run."""
    batch = get(conn, batch_id)
    if batch is None or not batch.state.terminal:
        return None

    def name_of(job_id: str) -> str | None:
        row = conn.execute("SELECT custom_id FROM generation_requests WHERE id=? AND batch_id=?",
                           (job_id, batch_id)).fetchone()
        return row[0] if row else None

    named = sorted(set(custom_ids))
    wanted = f" OR custom_id IN ({', '.join('?' for _ in named)})" if named else ""
    after, count = -1, 0
    while True:
        page = [jobs.from_row(r) for r in conn.execute(
            f"SELECT * FROM generation_requests WHERE batch_id=? AND replaced_by IS NULL"
            f" AND batch_index>? AND (state!='SUCCEEDED'{wanted}) ORDER BY batch_index LIMIT ?",
            (batch_id, after, *named, RERUN_PAGE)).fetchall()]
        if not page:
            break
        after = page[-1].batch_index or 0
        fresh = [remake(old, name_of) for old in page]
        for job in fresh:
            job.created_at = job.updated_at = now
        conn.executemany("UPDATE generation_requests SET replaced_by=? WHERE id=?",
                         [(job.id, old.id) for job, old in zip(fresh, page, strict=True)])
        conn.executemany(_INSERT_ITEMS, _item_rows(fresh))
        count += len(fresh)
    conn.execute(
        "UPDATE generation_requests SET waiting_on=(SELECT COUNT(*) FROM batch_edges e"
        " JOIN generation_requests d ON d.batch_id=e.batch_id AND d.batch_index=e.dep"
        " AND d.replaced_by IS NULL WHERE e.batch_id=generation_requests.batch_id"
        " AND e.item=generation_requests.batch_index AND d.state!='SUCCEEDED')"
        " WHERE batch_id=? AND state='WAITING'", (batch_id,))
    reopened = update(conn, batch_id, batch.state, {
        "state": BatchState.PROCESSING.value, "repairs": batch.repairs + 1,
        "completed_at": None, "stopped_reason": None, "cancelled_at": None,
        "updated_at": now})
    assert reopened is not None
    return reopened, count


def rerun_plan(conn: sqlite3.Connection, batch_id: str,
               custom_ids: Sequence[str]) -> tuple[int, float, list[str]]:
    """What ``rerun`` with ``custom_ids`` would re-run: how many items, their summed
    ``cost``, and the names among ``custom_ids`` that are no item of the batch."""
    named = sorted(set(custom_ids))
    marks = ", ".join("?" for _ in named)
    wanted = f" OR custom_id IN ({marks})" if named else ""
    count, cost = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM generation_requests WHERE batch_id=?"
        f" AND replaced_by IS NULL AND (state!='SUCCEEDED'{wanted})",
        (batch_id, *named)).fetchone()
    known = {r[0] for r in conn.execute(
        f"SELECT custom_id FROM generation_requests WHERE batch_id=? AND custom_id IN ({marks})",
        (batch_id, *named))} if named else set()
    return count, float(cost), [name for name in named if name not in known]


def released(conn: sqlite3.Connection, batch_id: str) -> list[Job]:
    """The batch's items QUEUED or at a provider, by index."""
    return [jobs.from_row(r) for r in conn.execute(
        f"SELECT * FROM generation_requests WHERE batch_id=? AND {RELEASED}"
        " ORDER BY batch_index", (batch_id,))]
