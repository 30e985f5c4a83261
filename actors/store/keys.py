"""SQLite repository of API keys (``api_keys``) and the job figures their limits read.

Functions of a ``sqlite3.Connection``, run on the store's worker threads. A key's
row holds its hash, never the key (``actors/keys.py``); its limits are NULL where
the configured defaults apply.
"""

from __future__ import annotations

import sqlite3

from actors.keys import ApiKey, KeyLimits, Scope

_LIMITS = ("rate", "burst", "max_active_jobs", "daily_spend")
#: Word for word the condition of the partial index ``generation_requests_active``,
#: so SQLite counts on that index.
_UNFINISHED = "state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'WAITING')"


def _from_row(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"], name=row["name"], hash=row["hash"],
        scopes=frozenset(Scope(s) for s in row["scopes"].split(",")),
        created_at=row["created_at"], revoked_at=row["revoked_at"],
        limits=KeyLimits(*(row[name] for name in _LIMITS)),
    )


def insert(conn: sqlite3.Connection, key: ApiKey) -> None:
    limits = key.limits
    conn.execute(
        "INSERT INTO api_keys (id, name, hash, scopes, created_at, revoked_at, rate, burst,"
        " max_active_jobs, daily_spend) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key.id, key.name, key.hash, ",".join(sorted(s.value for s in key.scopes)),
         key.created_at, key.revoked_at, limits.rate, limits.burst, limits.max_active_jobs,
         limits.daily_spend),
    )


def get(conn: sqlite3.Connection, key_id: str) -> ApiKey | None:
    row = conn.execute("SELECT * FROM api_keys WHERE id=?", (key_id,)).fetchone()
    return _from_row(row) if row else None


def every(conn: sqlite3.Connection) -> list[ApiKey]:
    return [_from_row(r) for r in conn.execute("SELECT * FROM api_keys ORDER BY created_at, id")]


def revoke(conn: sqlite3.Connection, key_id: str, now: float) -> ApiKey | None:
    """Revoke ``key_id`` (a revoked key keeps its first revocation time)."""
    conn.execute("UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                 (now, key_id))
    return get(conn, key_id)


def exist(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None


def unfinished_by_owner(conn: sqlite3.Connection) -> dict[str | None, int]:
    """Jobs not finished yet per owner (None: jobs made without a key).

    Two index-only counts: every unfinished job on the partial index of active jobs,
    and those with an owner on the owner index; the difference is the ownerless. A
    batch item WAITING to be released is not counted (nor in that index): it is in
    no queue yet."""
    total = conn.execute(f"SELECT COUNT(*) FROM generation_requests WHERE {_UNFINISHED}"
                         ).fetchone()[0]
    owned = {
        row[0]: row[1] for row in conn.execute(
            "SELECT owner, COUNT(*) FROM generation_requests"
            f" WHERE owner IS NOT NULL AND {_UNFINISHED} GROUP BY owner")
    }
    ownerless = total - sum(owned.values())
    return {**owned, None: ownerless} if ownerless else owned


def spend_since(conn: sqlite3.Connection, owner: str, since: float) -> float:
    row = conn.execute(
        "SELECT COALESCE(SUM(cost), 0) FROM generation_requests WHERE owner=? AND created_at>=?",
        (owner, since),
    ).fetchone()
    return float(row[0])
