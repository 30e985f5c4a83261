"""Figures of the job table the monitor's rules read (``actors/alerts/rules.py``)."""

from __future__ import annotations

import sqlite3


def oldest_queued_at(conn: sqlite3.Connection) -> float | None:
    """When the oldest QUEUED job was created, if any job is queued."""
    value = conn.execute(
        "SELECT MIN(created_at) FROM generation_requests WHERE state='QUEUED'").fetchone()[0]
    return float(value) if value is not None else None
