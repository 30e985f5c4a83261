"""The SQLite backend (actors/store/): migrations, listeners seeing committed rows,
group commit with per-write undo, and closing. What every backend must do is the
contract in tests/store_contract.py (run on SQLite by test_store_sqlite_contract.py).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.errors import EaselError, ErrorCode
from actors.jobs import AT_PROVIDER, JobState
from actors.store import MIGRATIONS, jobs, migrate, migrations, open_store
from tests.store_contract import make_job


def schema_versions(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    finally:
        conn.close()


# -- migrations -------------------------------------------------------------


async def test_open_store_migrates_to_newest_version(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "easel.db"  # the parent directory is created too
    async with open_store(db) as store:
        await store.ping()
    assert schema_versions(db) == [len(MIGRATIONS)]
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"generation_requests", "job_events", "schema_version"} <= tables


async def test_reopen_does_not_migrate_again(tmp_path: Path) -> None:
    db = tmp_path / "easel.db"
    for _ in range(3):
        async with open_store(db) as store:
            await store.insert_job(make_job())
    assert schema_versions(db) == [len(MIGRATIONS)]


@pytest.mark.parametrize(("states", "provider"), [
    ([JobState.QUEUED], "p"),
    ([JobState.SUBMITTING], "p"),
    ([JobState.RESOLVING], "p"),
    ([JobState.RUNNING], "p"),
    (sorted(AT_PROVIDER), "p"),
    ([JobState.FINALIZING], None),
])
def test_what_actors_reload_at_start_is_found_by_index(
    tmp_path: Path, states: list[JobState], provider: str | None
) -> None:
    """A restart with a million queued jobs must not scan them for the few jobs
    in other states: each reload query is answered from an index (and so is the
    look for a queued twin, asked again and again while a job is resolved)."""
    conn = migrations.connect(tmp_path / "x.db")
    migrate(conn)
    run: list[str] = []  # the statements as SQLite ran them, arguments inlined
    conn.set_trace_callback(run.append)
    jobs.select_in(conn, states, provider)
    jobs.queued_page(conn, "p", 0, 10)
    jobs.has_twin(conn, make_job(request_hash="h"), [JobState.QUEUED, JobState.SUBMITTING])
    conn.set_trace_callback(None)
    for sql in run:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not any(step.startswith("SCAN generation_requests") for step in plan), plan
    assert len(run) == 3
    conn.close()


def test_a_failing_migration_leaves_the_last_whole_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "x.db"
    broken = [*MIGRATIONS, "CREATE TABLE half (a INTEGER); CREATE TABLE broken (;"]
    monkeypatch.setattr(migrations, "MIGRATIONS", broken)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert schema_versions(db) == [len(MIGRATIONS)]
    assert "half" not in tables  # the failed migration's first statement was undone


def test_migrate_twice_on_one_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        assert migrate(conn) == len(MIGRATIONS)
        assert migrate(conn) == len(MIGRATIONS)
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version")] == [
            len(MIGRATIONS)
        ]
    finally:
        conn.close()


# -- the row ----------------------------------------------------------------


# -- transitions ------------------------------------------------------------


# -- queries ----------------------------------------------------------------


# -- idempotency ------------------------------------------------------------


# -- group commit -----------------------------------------------------------


async def test_concurrent_writes_share_transactions(tmp_path: Path) -> None:
    db = tmp_path / "db"
    n = 200
    async with open_store(db) as store:
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(store.insert_job, make_job())
        stats = store.statistics()
    writes = stats.writes - before.writes
    transactions = stats.transactions - before.transactions
    assert writes == n
    assert transactions < writes
    assert stats.largest_batch > 1
    async with open_store(db) as store:
        assert await store.count_by_state() == {"QUEUED": n}


async def test_failing_write_in_a_batch_does_not_undo_the_others(tmp_path: Path) -> None:
    db = tmp_path / "db"
    outcomes: dict[str, Any] = {}
    async with open_store(db) as store:
        original, _ = await store.insert_job(make_job(idempotency_key="k", request_hash="h1"))
        others = [make_job() for _ in range(10)]

        async def record(name: str, call: Any) -> None:
            try:
                outcomes[name] = await call()
            except Exception as exc:
                outcomes[name] = exc

        def partial_then_fail(conn: sqlite3.Connection, write: Any) -> None:
            conn.execute(
                "INSERT INTO job_events (job_id, at, kind, data) VALUES ('ghost', 0, 'x', '{}')"
            )
            raise ZeroDivisionError("write fails after writing")

        async with trio.open_nursery() as nursery:
            # Hold the writer's thread so that everything sent below queues up
            # behind a first write and lands in one second batch.
            async with store.engine._write_limiter:
                nursery.start_soon(record, "plug", lambda: store.add_event(original.id, "plug", {}))
                await trio.testing.wait_all_tasks_blocked()
                for i, job in enumerate(others[:5]):
                    nursery.start_soon(record, f"job{i}", lambda job=job: store.insert_job(job))
                nursery.start_soon(
                    record,
                    "conflict",
                    lambda: store.insert_job(make_job(idempotency_key="k", request_hash="h2")),
                )
                nursery.start_soon(record, "partial", lambda: store.engine.write(partial_then_fail))
                nursery.start_soon(
                    record,
                    "move",
                    lambda: store.transition(original.id, JobState.QUEUED, JobState.SUBMITTING),
                )
                for i, job in enumerate(others[5:], start=5):
                    nursery.start_soon(record, f"job{i}", lambda job=job: store.insert_job(job))
                await trio.testing.wait_all_tasks_blocked()
        stats = store.statistics()

    assert stats.largest_batch >= 13  # the 13 writes above shared one transaction
    assert isinstance(outcomes["conflict"], EaselError)
    assert outcomes["conflict"].code is ErrorCode.CONFLICT
    assert isinstance(outcomes["partial"], ZeroDivisionError)
    assert outcomes["move"] is not None and outcomes["move"].state is JobState.SUBMITTING
    for i in range(10):
        assert outcomes[f"job{i}"][1] is True

    # Reopen: the batch is durable, and only the failing writes left no trace.
    async with open_store(db) as store:
        for job in others:
            assert await store.get_job(job.id) is not None
        moved = await store.get_job(original.id)
        counts = await store.count_by_state()
        ghost = await store.events("ghost")
    assert moved is not None and moved.state is JobState.SUBMITTING
    assert counts == {"QUEUED": 10, "SUBMITTING": 1}
    assert ghost == []


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await store.insert_job(make_job())


async def test_a_dead_writer_ends_the_store_instead_of_hanging(tmp_path: Path) -> None:
    """The writer task is not restarted: if it dies, ``open_store``'s block ends with
    its error (in the daemon: the process exits non-zero and systemd restarts it),
    rather than leaving every caller waiting. What it had committed is whole."""
    db = tmp_path / "db"

    def broken(jobs: Any) -> None:
        raise RuntimeError("writer bug")

    with pytest.raises(BaseExceptionGroup) as raised:  # noqa: PT012
        async with open_store(db) as store:
            job, _ = await store.insert_job(make_job())
            store.engine._on_commit = broken  # type: ignore[attr-defined]
            with trio.fail_after(60):
                await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
    assert raised.group_contains(RuntimeError, match="writer bug")
    async with open_store(db) as store:
        stored = await store.get_job(job.id)
    assert stored is not None and stored.state is JobState.SUBMITTING


# -- timestamps follow trio's clock (actors/clock.py) -----------------------


