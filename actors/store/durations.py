"""SQLite repository of task durations (``task_durations``), which adaptive polling
(``actors/adaptive.py``) learns each model's timing from."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable


def add(
    conn: sqlite3.Connection, model: str, seconds: float, seen_running: float | None, at: float
) -> None:
    conn.execute(
        "INSERT INTO task_durations (model, seconds, seen_running, at) VALUES (?, ?, ?, ?)",
        (model, seconds, seen_running, at),
    )


def recent(
    conn: sqlite3.Connection, models: Iterable[str], limit: int
) -> dict[str, list[tuple[float, float | None]]]:
    found: dict[str, list[tuple[float, float | None]]] = {}
    for model in models:
        rows = conn.execute(
            "SELECT seconds, seen_running FROM task_durations WHERE model=?"
            " ORDER BY id DESC LIMIT ?", (model, limit),
        ).fetchall()
        found[model] = [(r[0], r[1]) for r in reversed(rows)]
    return found
