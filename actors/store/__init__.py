"""Durable job state behind a seam.

- ``protocol``: ``Store``, the Protocol the actors and the HTTP layer use, and the
  data it speaks (``OutboxRow``, ``StoreStatistics``); the contract every backend
  passes is ``tests/store_contract.py``.
- ``policy``: the domain decisions a store applies inside its transactions
  (idempotency: same key and body is the same job, another body is CONFLICT;
  which client webhooks a state change owes), given to a store as data.
- ``changes``: the change feed (``Store.subscribe``) and watchers; shared by every
  backend.
- The SQLite backend: ``sqlite`` (``SQLiteStore``, ``open_store``) on ``engine``
  (owner threads, group commit, poll notes), ``migrations``, and one repository per
  table family: ``jobs`` (with events), ``listing`` (``JobQuery``: the job list),
  ``idempotency``, ``outbox``, ``durations``, ``keys`` (API keys, and the job
  figures their limits read), and for the monitor ``errorlog``, ``alerts`` (with
  their notifications) and ``gauges`` (figures its rules read).

Where the domain policy went, and why: the outbox row owed by a terminal job and the
idempotency answer are decided in ``policy`` and only *applied* by a backend, inside
the transaction of the write they follow, because that is what makes them safe (no
webhook lost to a crash between two transactions; no key claimed twice by
concurrent requests). The decisions arrive as data (``StorePolicy`` given to
``open_store``; ``policy.replay`` and ``policy.key_expired`` for idempotency), so a
second backend applies the same ones and none is written into SQL.
"""

from actors.store.listing import JobQuery
from actors.store.migrations import MIGRATIONS, migrate
from actors.store.policy import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_POLICY,
    Delivery,
    StorePolicy,
    outbox_id,
)
from actors.store.protocol import (
    OUTBOX_DELIVERED,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    POLL_FLUSH_SECONDS,
    OutboxRow,
    Store,
    StoreStatistics,
)
from actors.store.sqlite import SQLiteStore, open_store

__all__ = [
    "DEFAULT_IDEMPOTENCY_WINDOW",
    "DEFAULT_POLICY",
    "MIGRATIONS",
    "OUTBOX_DELIVERED",
    "OUTBOX_FAILED",
    "OUTBOX_PENDING",
    "POLL_FLUSH_SECONDS",
    "Delivery",
    "JobQuery",
    "OutboxRow",
    "SQLiteStore",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "migrate",
    "open_store",
    "outbox_id",
]
