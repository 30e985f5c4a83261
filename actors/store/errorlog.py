"""SQLite repository of the error log (``error_log``), written in batches by the
monitor actor and read (filtered, newest first) by the admin pages."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from actors.alerts.records import ErrorEntry, Level

_COLUMNS = ("level", "source", "message", "at", "stack", "context", "job_id",
            "provider_task_id")


def _entry(row: sqlite3.Row) -> ErrorEntry:
    return ErrorEntry(
        id=row["id"], level=Level(row["level"]), source=row["source"],
        message=row["message"], at=row["at"], stack=row["stack"],
        context=json.loads(row["context"]), job_id=row["job_id"],
        provider_task_id=row["provider_task_id"], resolved=bool(row["resolved"]),
        resolved_at=row["resolved_at"], resolved_by=row["resolved_by"],
    )


def add(conn: sqlite3.Connection, entries: Sequence[ErrorEntry]) -> None:
    conn.executemany(
        f"INSERT INTO error_log ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        [(e.level.value, e.source, e.message, e.at, e.stack, json.dumps(e.context, default=str),
          e.job_id, e.provider_task_id) for e in entries],
    )


def select(
    conn: sqlite3.Connection, filters: dict[str, Any], limit: int
) -> list[ErrorEntry]:
    """Newest first. ``filters``: ``level``, ``source`` (a prefix), ``since``,
    ``until``, ``resolved`` (each optional)."""
    where, args = ["1=1"], []
    if filters.get("level"):
        where.append("level=?")
        args.append(filters["level"])
    if filters.get("source"):
        where.append("source LIKE ? ESCAPE '\\'")
        prefix = filters["source"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(prefix + "%")
    if filters.get("since") is not None:
        where.append("at>=?")
        args.append(filters["since"])
    if filters.get("until") is not None:
        where.append("at<?")
        args.append(filters["until"])
    if filters.get("resolved") is not None:
        where.append("resolved=?")
        args.append(int(filters["resolved"]))
    rows = conn.execute(
        f"SELECT * FROM error_log WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT ?",
        [*args, limit],
    )
    return [_entry(r) for r in rows]


def resolve(conn: sqlite3.Connection, error_id: int, by: str, at: float) -> ErrorEntry | None:
    """Mark one entry resolved (once: an entry already resolved keeps its who and
    when); the entry, or None when there is no such entry."""
    conn.execute(
        "UPDATE error_log SET resolved=1, resolved_at=?, resolved_by=? WHERE id=? AND resolved=0",
        (at, by, error_id),
    )
    row = conn.execute("SELECT * FROM error_log WHERE id=?", (error_id,)).fetchone()
    return _entry(row) if row else None


def prune(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM error_log WHERE at<?", (before,)).rowcount
