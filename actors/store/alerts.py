"""SQLite repository of alerts (``alerts``) and their notifications
(``alert_deliveries``).

An alert's change and the notifications it owes are written in one transaction
(``record``), so a crash cannot leave a firing alert nobody was told of, nor a
notification of a change that was not stored. At most one row per fingerprint is
firing (a partial unique index): a restarted monitor finds it and goes on with it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

import attrs

from actors.alerts.records import (
    DELIVERY_PENDING,
    Alert,
    AlertState,
    Delivery,
    Severity,
)

_FIELDS = ("fingerprint", "type", "subject", "severity", "message", "details", "state",
           "starts_at", "ends_at", "channel", "sent_at", "acknowledged", "acknowledged_at",
           "acknowledged_by")


def _alert(row: sqlite3.Row) -> Alert:
    return Alert(
        id=row["id"], fingerprint=row["fingerprint"], type=row["type"],
        subject=row["subject"], severity=Severity(row["severity"]), message=row["message"],
        details=json.loads(row["details"]), state=AlertState(row["state"]),
        starts_at=row["starts_at"], ends_at=row["ends_at"], channel=row["channel"],
        sent_at=row["sent_at"], acknowledged=bool(row["acknowledged"]),
        acknowledged_at=row["acknowledged_at"], acknowledged_by=row["acknowledged_by"],
    )


def _values(alert: Alert) -> list[object]:
    return [alert.fingerprint, alert.type, alert.subject, alert.severity.value, alert.message,
            json.dumps(alert.details, default=str), alert.state.value, alert.starts_at,
            alert.ends_at, alert.channel, alert.sent_at, int(alert.acknowledged),
            alert.acknowledged_at, alert.acknowledged_by]


def get(conn: sqlite3.Connection, alert_id: int) -> Alert | None:
    row = conn.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
    return _alert(row) if row else None


def record(
    conn: sqlite3.Connection, alert: Alert, channels: Sequence[str], now: float
) -> Alert:
    """Insert (``id`` None) or update ``alert``, and queue one notification of its
    state on each of ``channels`` (stamping ``sent_at``). Returns the alert as
    stored: a copy, so a write that rolls back leaves the caller's as it was."""
    alert = attrs.evolve(alert)
    if channels:
        alert.sent_at = now
        alert.channel = ",".join(channels)
    if alert.id is None:
        try:
            cursor = conn.execute(
                f"INSERT INTO alerts ({', '.join(_FIELDS)}, updated_at)"
                f" VALUES ({', '.join('?' * (len(_FIELDS) + 1))})", [*_values(alert), now],
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"alert {alert.fingerprint} is firing already") from None
        alert.id = cursor.lastrowid
    else:
        conn.execute(
            f"UPDATE alerts SET {', '.join(f'{f}=?' for f in _FIELDS)}, updated_at=? WHERE id=?",
            [*_values(alert), now, alert.id],
        )
    count = conn.execute(
        "SELECT COUNT(*) FROM alert_deliveries WHERE alert_id=?", (alert.id,)).fetchone()[0]
    conn.executemany(
        "INSERT INTO alert_deliveries (id, alert_id, channel, status, next_attempt_at,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [(f"{alert.id}.{count + n}.{channel}", alert.id, channel, alert.state.value, now, now)
         for n, channel in enumerate(channels)],
    )
    return alert


def select(
    conn: sqlite3.Connection, state: AlertState | None, limit: int
) -> list[Alert]:
    """Newest first; firing ones only, or resolved ones only, or all."""
    where, args = ("WHERE state=?", [state.value]) if state else ("", [])
    rows = conn.execute(
        f"SELECT * FROM alerts {where} ORDER BY starts_at DESC, id DESC LIMIT ?", [*args, limit])
    return [_alert(r) for r in rows]


def acknowledge(conn: sqlite3.Connection, alert_id: int, by: str, at: float) -> Alert | None:
    conn.execute(
        "UPDATE alerts SET acknowledged=1, acknowledged_at=?, acknowledged_by=?, updated_at=?"
        " WHERE id=? AND acknowledged=0", (at, by, at, alert_id),
    )
    return get(conn, alert_id)


def due(conn: sqlite3.Connection, channel: str, now: float, limit: int) -> list[Delivery]:
    rows = conn.execute(
        "SELECT d.id AS d_id, d.channel AS d_channel, d.status AS d_status, d.state AS d_state,"
        " d.attempts AS d_attempts, d.next_attempt_at AS d_next, d.last_error AS d_error,"
        " a.* FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id"
        " WHERE d.state=? AND d.channel=? AND d.next_attempt_at<=?"
        " ORDER BY d.next_attempt_at, d.created_at LIMIT ?",
        (DELIVERY_PENDING, channel, now, limit),
    )
    return [Delivery(id=r["d_id"], channel=r["d_channel"], status=AlertState(r["d_status"]),
                     state=r["d_state"], attempts=r["d_attempts"], next_attempt_at=r["d_next"],
                     last_error=r["d_error"], alert=_alert(r)) for r in rows]


def next_due(conn: sqlite3.Connection, channel: str) -> float | None:
    value = conn.execute(
        "SELECT MIN(next_attempt_at) FROM alert_deliveries WHERE state=? AND channel=?",
        (DELIVERY_PENDING, channel),
    ).fetchone()[0]
    return float(value) if value is not None else None


def record_attempt(
    conn: sqlite3.Connection, delivery_id: str, state: str, error: str | None,
    next_attempt_at: float | None, now: float,
) -> None:
    finished = None if state == DELIVERY_PENDING else now
    conn.execute(
        "UPDATE alert_deliveries SET state=?, attempts=attempts+1, last_error=?,"
        " next_attempt_at=COALESCE(?, next_attempt_at), finished_at=?"
        " WHERE id=? AND state=?",
        (state, error, next_attempt_at, finished, delivery_id, DELIVERY_PENDING),
    )


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Resolved alerts that ended before ``before``, with their notifications (a
    firing alert is kept however old)."""
    conn.execute(
        "DELETE FROM alert_deliveries WHERE alert_id IN"
        " (SELECT id FROM alerts WHERE state='resolved' AND ends_at<?)", (before,))
    return conn.execute(
        "DELETE FROM alerts WHERE state='resolved' AND ends_at<?", (before,)).rowcount
