"""Figures of the job table the monitor's rules read (``actors/alerts/rules.py``)."""

from __future__ import annotations

import sqlite3
from typing import Any


def oldest_queued_at(conn: sqlite3.Connection) -> float | None:
    """When the oldest QUEUED job was created, if any job is queued."""
    value = conn.execute(
        "SELECT MIN(created_at) FROM generation_requests WHERE state='QUEUED'").fetchone()[0]
    return float(value) if value is not None else None


def job_totals(conn: sqlite3.Connection, since: float, until: float) -> dict[str, Any]:
    """Jobs created in ``[since, until)``: how many by state, and the mean run
    time (start to end) of those that finished after starting."""
    by_state = {row[0]: row[1] for row in conn.execute(
        "SELECT state, COUNT(*) FROM generation_requests WHERE created_at>=? AND created_at<?"
        " GROUP BY state", (since, until))}
    mean = conn.execute(
        "SELECT AVG(completed_at - started_at) FROM generation_requests WHERE created_at>=?"
        " AND created_at<? AND completed_at IS NOT NULL AND started_at IS NOT NULL",
        (since, until)).fetchone()[0]
    return {"byState": by_state, "meanRunSeconds": mean}
