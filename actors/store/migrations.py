"""The SQLite schema, as numbered migrations, and how a connection is opened.

``schema_version`` holds the number of migrations applied; ``migrate`` applies the
rest, each in a transaction of its own, so a crash mid-upgrade leaves the database
at the last whole version. Never edit a released migration: append one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

MIGRATIONS: list[str] = [
    # 1: jobs, their events, and the schema version itself.
    """
    CREATE TABLE generation_requests (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        number_of_outputs INTEGER NOT NULL DEFAULT 1,
        input_images TEXT NOT NULL DEFAULT '[]',
        parameters TEXT NOT NULL DEFAULT '{}',
        priority INTEGER NOT NULL DEFAULT 0,
        webhook_url TEXT,
        user_id TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        idempotency_key TEXT,
        request_hash TEXT,
        batch_id TEXT,
        experiment_id TEXT,
        variant_id TEXT,
        served_model TEXT,
        provider_task_id TEXT,
        provider_outputs TEXT NOT NULL DEFAULT '[]',
        results TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        progress REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        cost REAL,
        rating INTEGER,
        feedback TEXT,
        next_poll_at REAL,
        poll_count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        submitting_at REAL,
        started_at REAL,
        completed_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX generation_requests_idempotency
        ON generation_requests(idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX generation_requests_active
        ON generation_requests(provider, state)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
    CREATE INDEX generation_requests_task ON generation_requests(provider, provider_task_id)
        WHERE provider_task_id IS NOT NULL;
    CREATE INDEX generation_requests_batch ON generation_requests(batch_id)
        WHERE batch_id IS NOT NULL;
    CREATE INDEX generation_requests_experiment ON generation_requests(experiment_id)
        WHERE experiment_id IS NOT NULL;
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    """,
    # 2: how long each model's tasks took, for adaptive polling (actors/adaptive.py).
    # seconds: from the job's start to when its end was seen; seen_running: to the
    # last check that still saw it running (NULL when the end time is exact).
    """
    CREATE TABLE task_durations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        seconds REAL NOT NULL,
        seen_running REAL,
        at REAL NOT NULL
    );
    CREATE INDEX task_durations_model ON task_durations(model, id);
    """,
    # 3: the client webhook outbox (actors/outbox.py). One row per delivery, written
    # in the same transaction as the job's terminal state so a crash cannot lose
    # it. id is the stable webhook-id; payload the job JSON (relative media URLs);
    # state PENDING -> DELIVERED | FAILED.
    """
    CREATE TABLE webhook_outbox (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'PENDING',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at)
        WHERE state = 'PENDING';
    CREATE INDEX webhook_outbox_job ON webhook_outbox(job_id);
    """,
    # 4: why a job is in its stage (RESOLVING: the create's answer that was lost).
    """
    ALTER TABLE generation_requests ADD COLUMN stage_reason TEXT;
    """,
    # 5: who a job belongs to: the id of the API key that created it (NULL when the
    # daemon runs without keys). Another key's job is "no such job".
    """
    ALTER TABLE generation_requests ADD COLUMN owner TEXT;
    CREATE INDEX generation_requests_owner ON generation_requests(owner, state)
        WHERE owner IS NOT NULL;
    """,
    # 6: API keys (actors/keys.py): the SHA-256 of each key, never the key; its
    # scopes (comma-separated); its own limits, NULL where the configured defaults
    # apply; revoked_at set once revoked (the row stays: its jobs still name it).
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL,
        rate REAL,
        burst INTEGER,
        max_active_jobs INTEGER,
        daily_spend REAL
    );
    """,
    # 7: a job's input-image preprocessing as submitted (JSON: a preset name or an
    # object); NULL: the serving provider's default preset.
    """
    ALTER TABLE generation_requests ADD COLUMN preprocess TEXT;
    """,
    # 8: the scheduler's queue, as it reloads it at start (a provider's QUEUED
    # jobs by seq, with their priority): covered by the first index, so a restart
    # with a million queued jobs reads the index alone, never the rows. The
    # second finds unfinished jobs by state alone (the finalizer's FINALIZING
    # jobs of every provider) without a scan past the queued ones; the third, a
    # queued twin of a request being resolved (``has_twin``), likewise.
    """
    CREATE INDEX generation_requests_queue
        ON generation_requests(provider, state, seq, priority)
        WHERE state = 'QUEUED';
    CREATE INDEX generation_requests_unfinished ON generation_requests(state, provider)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
    CREATE INDEX generation_requests_twins ON generation_requests(provider, request_hash)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
    """,
    # 9: monitoring: the error log and alerts (actors/monitor.py, actors/alerts/).
    # error_log: level WARN|ERROR|CRITICAL, source "kind:name", context JSON,
    # resolved by an operator. alerts: one row per episode of a condition
    # (fingerprint = type + subject), state firing -> resolved; at most one firing
    # row per fingerprint. alert_deliveries: one notification of an alert on one
    # channel, PENDING -> SENT | FAILED, written with the alert's change.
    """
    CREATE TABLE error_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        level TEXT NOT NULL,
        source TEXT NOT NULL,
        message TEXT NOT NULL,
        stack TEXT,
        context TEXT NOT NULL DEFAULT '{}',
        job_id TEXT,
        provider_task_id TEXT,
        resolved INTEGER NOT NULL DEFAULT 0,
        resolved_at REAL,
        resolved_by TEXT
    );
    CREATE INDEX error_log_at ON error_log(at);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint TEXT NOT NULL,
        type TEXT NOT NULL,
        subject TEXT NOT NULL,
        severity TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL,
        channel TEXT NOT NULL DEFAULT '',
        sent_at REAL,
        acknowledged INTEGER NOT NULL DEFAULT 0,
        acknowledged_at REAL,
        acknowledged_by TEXT,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX alerts_firing ON alerts(fingerprint) WHERE state = 'firing';
    CREATE INDEX alerts_starts ON alerts(starts_at);
    CREATE TABLE alert_deliveries (
        id TEXT PRIMARY KEY,
        alert_id INTEGER NOT NULL,
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'PENDING',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries(channel, next_attempt_at)
        WHERE state = 'PENDING';
    CREATE INDEX alert_deliveries_alert ON alert_deliveries(alert_id);
    CREATE INDEX generation_requests_queued_age ON generation_requests(created_at)
        WHERE state = 'QUEUED';
    """,
    # 10: batches (actors/batches/). generation_batches: one row per batch, its
    # options as JSON, PROCESSING until no item is open, then its end state. An
    # item is a generation_requests row with batch_id, custom_id, batch_index and
    # depends_on (custom_ids, JSON); waiting_on counts its dependencies not yet
    # SUCCEEDED (the store counts it down in the dependency's transition), so the
    # releasable items (WAITING, waiting_on 0, by index) are read from one index;
    # released_at: when it left WAITING; replaced_by: the job that re-runs it
    # (retry), NULL on an item's current job. batch_edges: item -> dependency by
    # index, looked up both ways (a dependency's dependents; an item's
    # dependencies). Then: a batch's released open items by state (its
    # concurrency), its finished items in completion order (the results); and the
    # three partial indexes over unfinished jobs made again without WAITING items
    # (in no queue; a 50,000-item batch would grow each as it is inserted), their
    # condition word for word jobs.UNFINISHED.
    """
    ALTER TABLE generation_requests ADD COLUMN custom_id TEXT;
    ALTER TABLE generation_requests ADD COLUMN batch_index INTEGER;
    ALTER TABLE generation_requests ADD COLUMN depends_on TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE generation_requests ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE generation_requests ADD COLUMN released_at REAL;
    ALTER TABLE generation_requests ADD COLUMN replaced_by TEXT;
    CREATE TABLE generation_batches (
        id TEXT PRIMARY KEY,
        owner TEXT,
        state TEXT NOT NULL,
        options TEXT NOT NULL,
        total INTEGER NOT NULL,
        repairs INTEGER NOT NULL DEFAULT 0,
        estimated_cost REAL NOT NULL DEFAULT 0,
        metadata TEXT NOT NULL DEFAULT '{}',
        stopped_reason TEXT,
        cancelled_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        completed_at REAL
    );
    CREATE INDEX generation_batches_open ON generation_batches(created_at)
        WHERE state = 'PROCESSING';
    CREATE TABLE batch_edges (
        batch_id TEXT NOT NULL,
        dep INTEGER NOT NULL,
        item INTEGER NOT NULL,
        PRIMARY KEY (batch_id, dep, item)
    ) WITHOUT ROWID;
    CREATE INDEX batch_edges_item ON batch_edges(batch_id, item);
    CREATE INDEX generation_requests_items ON generation_requests(batch_id, batch_index)
        WHERE batch_id IS NOT NULL;
    CREATE INDEX generation_requests_releasable
        ON generation_requests(batch_id, waiting_on, batch_index)
        WHERE state = 'WAITING';
    CREATE INDEX generation_requests_batch_open ON generation_requests(batch_id, state)
        WHERE batch_id IS NOT NULL
        AND state IN ('QUEUED', 'SUBMITTING', 'RESOLVING', 'RUNNING', 'FINALIZING');
    CREATE INDEX generation_requests_batch_done
        ON generation_requests(batch_id, completed_at, seq)
        WHERE batch_id IS NOT NULL AND completed_at IS NOT NULL;
    DROP INDEX generation_requests_batch;
    DROP INDEX generation_requests_active;
    CREATE INDEX generation_requests_active
        ON generation_requests(provider, state)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'WAITING');
    DROP INDEX generation_requests_unfinished;
    CREATE INDEX generation_requests_unfinished ON generation_requests(state, provider)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'WAITING');
    DROP INDEX generation_requests_twins;
    CREATE INDEX generation_requests_twins ON generation_requests(provider, request_hash)
        WHERE state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'WAITING');
    """,
    # 11: experiments (actors/experiments/). experiments: one row each, its bandit
    # settings as JSON; experiment_variants and experiment_metrics in the order they
    # were given (position 0 is the control); experiment_assignments: each unit's
    # variant, written once and never moved (sticky across restarts, weight changes
    # and bandit re-weighting). The jobs already carry experiment_id, variant_id,
    # rating, feedback and cost (migration 1); a segment is read from their metadata.
    """
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        match_model TEXT,
        coverage REAL NOT NULL DEFAULT 1.0,
        seed TEXT NOT NULL DEFAULT '',
        namespace TEXT,
        namespace_start REAL NOT NULL DEFAULT 0.0,
        namespace_end REAL NOT NULL DEFAULT 1.0,
        phase INTEGER NOT NULL DEFAULT 0,
        allocation TEXT NOT NULL DEFAULT 'fixed',
        bandit TEXT NOT NULL DEFAULT '{}',
        budget REAL,
        segment_attribute TEXT,
        min_sample INTEGER NOT NULL DEFAULT 100,
        sequential INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL
    );
    CREATE TABLE experiment_variants (
        experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        prompt_template TEXT,
        parameters TEXT NOT NULL DEFAULT '{}',
        weight REAL NOT NULL DEFAULT 1.0,
        factors TEXT NOT NULL DEFAULT '{}',
        paused INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (experiment_id, id)
    );
    CREATE TABLE experiment_metrics (
        experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        role TEXT NOT NULL,
        goal TEXT NOT NULL,
        PRIMARY KEY (experiment_id, name)
    );
    CREATE TABLE experiment_assignments (
        experiment_id TEXT NOT NULL,
        unit TEXT NOT NULL,
        variant_id TEXT NOT NULL,
        phase INTEGER NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (experiment_id, unit)
    ) WITHOUT ROWID;
    CREATE INDEX generation_requests_experiment_variant
        ON generation_requests(experiment_id, variant_id, seq)
        WHERE experiment_id IS NOT NULL;
    """,
    # 12: the scheduler's queue knows a batch item from a single submission at
    # reload (``queued_page``): singles go first at equal priority, so a big batch
    # cannot starve them. Still covered by the index alone, with batch_id in it.
    """
    DROP INDEX generation_requests_queue;
    CREATE INDEX generation_requests_queue
        ON generation_requests(provider, state, seq, priority, batch_id)
        WHERE state = 'QUEUED';
    """,
]


def connect(path: Path) -> sqlite3.Connection:
    """A connection for worker threads (one call at a time, through a limiter): WAL
    lets the read connection work beside the writer, and ``synchronous=FULL`` makes
    a committed write survive a power cut."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row else 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version
