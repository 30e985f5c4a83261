"""Listing jobs: the query a client's job list asks (``JobQuery``) and its SQL.

A list is read newest first (or oldest first) by ``seq``, the insertion order every
backend stamps, and a page continues from the ``seq`` the previous page ended at.
That makes paging stable under concurrent inserts: a job inserted while a client
pages through is newer than every page it has seen (so never shows up inside them
and shifts nothing), where an offset would repeat or skip rows.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import attrs

from actors.jobs import Job, JobState
from actors.store.jobs import from_row


@attrs.frozen
class JobQuery:
    """Which jobs to list, in what order, from where, and how many."""

    #: Only this key's jobs; None lists every owner's (and ownerless) jobs.
    owner: str | None = None
    #: Only jobs in one of these states (empty: any state).
    states: frozenset[JobState] = frozenset()
    #: Only jobs of one of these catalog models, as submitted (empty: any model).
    models: frozenset[str] = frozenset()
    provider: str | None = None
    user_id: str | None = None
    #: ``created_at`` at or after this (Unix seconds).
    created_after: float | None = None
    #: ``created_at`` strictly before this (Unix seconds).
    created_before: float | None = None
    #: Continue after the job with this ``seq`` (in the list's order).
    after_seq: int | None = None
    #: Oldest first instead of newest first.
    ascending: bool = False
    limit: int = 20


def where(query: JobQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (``1`` when nothing filters) and its arguments."""
    clauses: list[str] = []
    args: list[Any] = []

    def one_of(column: str, values: frozenset[str]) -> None:
        ordered = sorted(values)
        clauses.append(f"{column} IN ({', '.join('?' for _ in ordered)})")
        args.extend(ordered)

    if query.owner is not None:
        clauses.append("owner=?")
        args.append(query.owner)
    if query.states:
        one_of("state", frozenset(s.value for s in query.states))
    if query.models:
        one_of("model", query.models)
    for column, value, op in (
        ("provider", query.provider, "="),
        ("user_id", query.user_id, "="),
        ("created_at", query.created_after, ">="),
        ("created_at", query.created_before, "<"),
        ("seq", query.after_seq, ">" if query.ascending else "<"),
    ):
        if value is not None:
            clauses.append(f"{column}{op}?")
            args.append(value)
    return " AND ".join(clauses) or "1", args


def select(conn: sqlite3.Connection, query: JobQuery) -> list[Job]:
    clause, args = where(query)
    order = "ASC" if query.ascending else "DESC"
    sql = f"SELECT * FROM generation_requests WHERE {clause} ORDER BY seq {order} LIMIT ?"
    return [from_row(r) for r in conn.execute(sql, [*args, query.limit])]
