"""SQLite repository of the client webhook outbox (``webhook_outbox``).

Rows are created by ``enqueue`` inside the transaction of the state change that
owes them (what it owes is ``StorePolicy.deliveries``); the outbox actor
(``actors/outbox.py``) then reads the due ones and records each attempt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from actors.store.policy import Delivery
from actors.store.protocol import OUTBOX_PENDING, OutboxRow


def _row(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(**dict(zip(row.keys(), row, strict=True)))


def enqueue(
    conn: sqlite3.Connection, job_id: str, deliveries: Sequence[Delivery], now: float
) -> None:
    """Queue ``deliveries`` of ``job_id``, due at once; an id already queued is kept
    as it is."""
    conn.executemany(
        "INSERT OR IGNORE INTO webhook_outbox (id, job_id, url, payload, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(d.id, job_id, d.url, d.payload, now, now, now) for d in deliveries],
    )


def _not_in(skip: list[str]) -> str:
    return f" AND id NOT IN ({', '.join('?' for _ in skip)})" if skip else ""


def due(
    conn: sqlite3.Connection, now: float, limit: int, exclude: Iterable[str]
) -> list[OutboxRow]:
    skip = list(exclude)
    sql = ("SELECT * FROM webhook_outbox WHERE state='PENDING' AND next_attempt_at<=?"
           f"{_not_in(skip)} ORDER BY next_attempt_at LIMIT ?")
    return [_row(r) for r in conn.execute(sql, [now, *skip, limit])]


def next_due(conn: sqlite3.Connection, exclude: Iterable[str]) -> float | None:
    skip = list(exclude)
    sql = f"SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE state='PENDING'{_not_in(skip)}"
    value = conn.execute(sql, skip).fetchone()[0]
    return float(value) if value is not None else None


def record_attempt(
    conn: sqlite3.Connection,
    delivery_id: str,
    state: str,
    status: int | None,
    error: str | None,
    next_attempt_at: float | None,
    now: float,
) -> None:
    finished = None if state == OUTBOX_PENDING else now
    conn.execute(
        "UPDATE webhook_outbox SET state=?, attempts=attempts+1, last_status=?,"
        " last_error=?, next_attempt_at=COALESCE(?, next_attempt_at), updated_at=?,"
        " finished_at=? WHERE id=? AND state='PENDING'",
        (state, status, error, next_attempt_at, now, finished, delivery_id),
    )


def of_job(conn: sqlite3.Connection, job_id: str) -> list[OutboxRow]:
    rows = conn.execute(
        "SELECT * FROM webhook_outbox WHERE job_id=? ORDER BY created_at", (job_id,)
    )
    return [_row(r) for r in rows]
