"""SQLite repository of idempotency keys: the ``idempotency_key`` column of
``generation_requests`` (unique where set), applied with ``actors.store.policy``.

The key is looked up in the insert's own transaction, so two concurrent requests
with one key cannot both insert (the writer runs one transaction at a time).
"""

from __future__ import annotations

import sqlite3

from actors.jobs import Job
from actors.store import jobs, policy


def claim(conn: sqlite3.Connection, job: Job, now: float, window: float) -> Job | None:
    """The job that answers ``job`` instead of inserting it, or ``None`` when its
    key (if any) is free. A key held past ``window`` is released from its job first;
    another request under a held key raises CONFLICT (``policy.replay``)."""
    if job.idempotency_key is None:
        return None
    row = conn.execute(
        "SELECT * FROM generation_requests WHERE idempotency_key=?", (job.idempotency_key,)
    ).fetchone()
    if row is None:
        return None
    holder = jobs.from_row(row)
    if policy.key_expired(holder, now, window):
        conn.execute("UPDATE generation_requests SET idempotency_key=NULL WHERE id=?",
                     (holder.id,))
        return None
    return policy.replay(holder, job)
