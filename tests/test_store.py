"""actors/store/: migrations, the job row, conditional transitions, idempotency,
watchers and listeners, and group commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import Job, JobState, new_job_id
from actors.store import MIGRATIONS, migrate, open_store


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": new_job_id(),
        "model": "m",
        "provider": "p",
        "provider_model": "pm",
        "prompt": "a cat",
    }
    values.update(fields)
    return Job(**values)


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


async def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "easel.db"
    async with open_store(db) as store:
        job, _ = await store.insert_job(make_job())
    async with open_store(db) as store:
        again = await store.get_job(job.id)
    async with open_store(db) as store:
        assert await store.count_by_state() == {"QUEUED": 1}
    assert again is not None and again.id == job.id
    assert schema_versions(db) == [len(MIGRATIONS)]


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


def full_job() -> Job:
    """A job with every field set to something other than its default."""
    return Job(
        id="gen_roundtrip",
        model="flux",
        provider="replicate",
        provider_model="bfl/flux",
        prompt="a lighthouse, ünïcode ✓",
        state=JobState.RUNNING,
        number_of_outputs=3,
        input_images=["https://example.com/a.png", "data:image/png;base64,AAAA"],
        parameters={"seed": 7, "nested": {"a": [1, 2.5, None, True]}},
        priority=9,
        webhook_url="https://hook.example/x",
        user_id="user-1",
        metadata={"team": "art", "n": 1},
        idempotency_key="idem-1",
        request_hash="abc123",
        batch_id="batch-1",
        experiment_id="exp-1",
        variant_id="var-b",
        served_model="flux-pro",
        provider_task_id="task-42",
        provider_outputs=["https://cdn/1.png"],
        results=[{"type": "image", "url": "http://x/1.png"}],
        error=ErrorInfo(ErrorCode.PROVIDER_ERROR, "boom", {"status": 502}, retryable=True),
        progress=0.5,
        attempts=2,
        cost=0.03,
        rating=4,
        feedback="nice",
        next_poll_at=1_700_000_100.5,
        poll_count=6,
        created_at=1_700_000_000.25,
        submitting_at=1_700_000_001.0,
        started_at=1_700_000_002.0,
        completed_at=1_700_000_003.0,
        updated_at=1.0,  # overwritten by insert_job
        seq=None,
    )


async def test_every_job_field_round_trips(tmp_path: Path) -> None:
    job = full_job()
    defaults = make_job(id=job.id)
    for field in attrs.fields(Job):
        if field.name in ("id", "seq"):
            continue
        assert getattr(job, field.name) != getattr(defaults, field.name), field.name

    async with open_store(tmp_path / "db") as store:
        inserted, created = await store.insert_job(attrs.evolve(job))
        loaded = await store.get_job(job.id)

    assert created is True
    assert loaded is not None
    assert isinstance(loaded.seq, int)
    assert loaded.seq == inserted.seq
    assert loaded.updated_at > 1.0  # stamped at insert
    assert loaded.created_at == job.created_at  # a given created_at is kept
    assert loaded.state is JobState.RUNNING
    assert isinstance(loaded.error, ErrorInfo) and loaded.error.code is ErrorCode.PROVIDER_ERROR
    expected = attrs.evolve(job, seq=loaded.seq, updated_at=loaded.updated_at)
    assert attrs.asdict(loaded) == attrs.asdict(expected)


async def test_insert_stamps_created_at_and_get_unknown_is_none(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, created = await store.insert_job(make_job())
        assert created
        assert job.created_at > 0 and job.updated_at >= job.created_at
        assert await store.get_job("gen_missing") is None


# -- transitions ------------------------------------------------------------


async def test_transition_wrong_from_state_changes_nothing(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        before = await store.get_job(job.id)
        result = await store.transition(
            job.id, JobState.RUNNING, JobState.FINALIZING, provider_task_id="t", attempts=5
        )
        after = await store.get_job(job.id)
        events = await store.events(job.id)
        missing = await store.transition("gen_nope", JobState.QUEUED, JobState.SUBMITTING)
    assert result is None
    assert missing is None
    assert after == before
    assert events == []


async def test_transition_where_guards_other_columns(tmp_path: Path) -> None:
    # A job rerouted to another provider meanwhile must not be taken by the first.
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        await store.update(job.id, JobState.QUEUED, provider="fallback", served_model="other")
        stale = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                                       where={"provider": job.provider, "served_model": None})
        fresh = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                                       where={"provider": "fallback", "served_model": "other"})
    assert stale is None
    assert fresh is not None and fresh.state is JobState.SUBMITTING


async def test_has_twin_matches_request_provider_and_state(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job(request_hash="h"))
        alone = await store.has_twin(job, [JobState.QUEUED])
        await store.insert_job(make_job(request_hash="h", provider="q"))  # another provider
        await store.insert_job(make_job(request_hash="g"))  # another request
        unrelated = await store.has_twin(job, [JobState.QUEUED])
        await store.insert_job(make_job(request_hash="h"))  # the twin
        queued = await store.has_twin(job, [JobState.QUEUED])
        elsewhere = await store.has_twin(job, [JobState.SUBMITTING])
    assert (alone, unrelated, queued, elsewhere) == (False, False, True, False)


async def test_transition_moves_state_sets_fields_and_writes_event(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        moved = await store.transition(
            job.id,
            JobState.QUEUED,
            JobState.SUBMITTING,
            event={"attempt": 1},
            attempts=1,
            submitting_at=123.0,
        )
        loaded = await store.get_job(job.id)
        stale = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
        events = await store.events(job.id)
    assert moved is not None
    assert moved.state is JobState.SUBMITTING
    assert moved.attempts == 1 and moved.submitting_at == 123.0
    assert moved.completed_at is None
    assert loaded == moved
    assert stale is None  # a second, stale actor loses
    assert [(e["kind"], e["state"], e.get("attempt")) for e in events] == [
        ("state", "SUBMITTING", 1)
    ]


async def test_transition_from_any_of_several_states(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
        cancelled = await store.transition(
            job.id, [JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING], JobState.CANCELLED
        )
    assert cancelled is not None and cancelled.state is JobState.CANCELLED


async def test_terminal_transition_sets_completed_at_and_clears_next_poll(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job(state=JobState.RUNNING, next_poll_at=99.0))
        error = ErrorInfo(ErrorCode.TASK_TIMEOUT, "too slow", retryable=False)
        failed = await store.transition(job.id, JobState.RUNNING, JobState.FAILED, error=error)
        again = await store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
        loaded = await store.get_job(job.id)
        events = await store.events(job.id)
    assert failed is not None
    assert failed.completed_at is not None and failed.completed_at >= job.created_at
    assert failed.next_poll_at is None
    assert again is None
    assert loaded is not None and loaded.state is JobState.FAILED
    assert loaded.error == error
    assert [e["state"] for e in events] == ["FAILED"]


async def test_terminal_transition_keeps_explicit_completed_at(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        done = await store.transition(
            job.id, JobState.QUEUED, JobState.CANCELLED, completed_at=42.0
        )
    assert done is not None and done.completed_at == 42.0


async def test_update_sets_fields_only_in_the_given_state(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job(state=JobState.RUNNING))
        updated = await store.update(job.id, JobState.RUNNING, progress=0.25, poll_count=3)
        wrong = await store.update(job.id, JobState.QUEUED, progress=0.9)
        loaded = await store.get_job(job.id)
        plain_events = await store.events(job.id)
        await store.update(
            job.id, JobState.RUNNING, progress=0.5, event={"kind": "progress", "p": 0.5}
        )
        events = await store.events(job.id)
    assert updated is not None and updated.state is JobState.RUNNING
    assert updated.progress == 0.25 and updated.poll_count == 3
    assert wrong is None
    assert loaded is not None and loaded.progress == 0.25
    assert plain_events == []  # no state change, no event
    assert [(e["kind"], e["p"]) for e in events] == [("progress", 0.5)]


async def test_add_event_and_events_in_order(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        await store.add_event(job.id, "note", {"n": 1})
        await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
        await store.add_event(job.id, "note", {"n": 2})
        events = await store.events(job.id)
    assert [(e["kind"], e.get("n"), e.get("state")) for e in events] == [
        ("note", 1, None),
        ("state", None, "SUBMITTING"),
        ("note", 2, None),
    ]


# -- queries ----------------------------------------------------------------


async def test_jobs_in_orders_by_priority_then_age(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        ids = []
        for priority in [0, 5, -1, 5, 0]:
            job, _ = await store.insert_job(make_job(priority=priority))
            ids.append(job.id)
        other, _ = await store.insert_job(make_job(provider="other", priority=100))
        running, _ = await store.insert_job(make_job(priority=50, state=JobState.RUNNING))
        queued = await store.jobs_in([JobState.QUEUED], provider="p")
        everything = await store.jobs_in([JobState.QUEUED, JobState.RUNNING])
        by_task = await store.job_by_task("p", "nope")
    assert [j.id for j in queued] == [ids[1], ids[3], ids[0], ids[4], ids[2]]
    assert [j.id for j in everything] == [
        other.id, running.id, ids[1], ids[3], ids[0], ids[4], ids[2]
    ]
    assert by_task is None


async def test_job_by_task(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        job, _ = await store.insert_job(make_job())
        await store.transition(
            job.id, JobState.QUEUED, JobState.RUNNING, provider_task_id="task-1"
        )
        found = await store.job_by_task("p", "task-1")
        wrong_provider = await store.job_by_task("q", "task-1")
    assert found is not None and found.id == job.id
    assert wrong_provider is None


# -- idempotency ------------------------------------------------------------


async def test_idempotency_same_key_same_hash_returns_original(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        first, created1 = await store.insert_job(make_job(idempotency_key="k", request_hash="h"))
        second, created2 = await store.insert_job(
            make_job(idempotency_key="k", request_hash="h", prompt="ignored")
        )
        counts = await store.count_by_state()
    assert created1 is True and created2 is False
    assert second.id == first.id and second.prompt == "a cat"
    assert counts == {"QUEUED": 1}


async def test_idempotency_same_key_other_hash_is_conflict(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db") as store:
        first, _ = await store.insert_job(make_job(idempotency_key="k", request_hash="h1"))
        with pytest.raises(EaselError) as caught:
            await store.insert_job(make_job(idempotency_key="k", request_hash="h2"))
        counts = await store.count_by_state()
    assert caught.value.code is ErrorCode.CONFLICT
    assert caught.value.info.details == {"id": first.id}
    assert counts == {"QUEUED": 1}


async def test_idempotency_key_expires_after_its_window(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path / "db") as store:
        first, _ = await store.insert_job(make_job(idempotency_key="k", request_hash="h1"),
                                          idempotency_window=3600)
        await trio.sleep(1800)
        again, created = await store.insert_job(make_job(idempotency_key="k", request_hash="h1"),
                                                idempotency_window=3600)
        assert (again.id, created) == (first.id, False)
        await trio.sleep(3600)
        # Past the window the key is free again: a new job, even with another body.
        fresh, created = await store.insert_job(make_job(idempotency_key="k", request_hash="h2"),
                                                idempotency_window=3600)
        old = await store.get_job(first.id)
    assert created is True and fresh.id != first.id
    assert old is not None and old.idempotency_key is None


async def test_concurrent_inserts_with_one_key_make_one_row(tmp_path: Path) -> None:
    results: list[tuple[Job, bool]] = []

    async with open_store(tmp_path / "db") as store:

        async def insert() -> None:
            results.append(await store.insert_job(make_job(idempotency_key="k", request_hash="h")))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(insert)
        counts = await store.count_by_state()
    assert counts == {"QUEUED": 1}
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


# -- watchers and listeners -------------------------------------------------


async def test_watch_is_set_after_a_committed_state_change(tmp_path: Path) -> None:
    db = tmp_path / "db"
    async with open_store(db) as store:
        job, _ = await store.insert_job(make_job())
        event = store.watch(job.id)
        assert store.watch(job.id) is event  # one event per job until it fires
        await store.update(job.id, JobState.QUEUED, progress=0.1)
        assert not event.is_set()  # not a state change
        await store.transition(job.id, JobState.RUNNING, JobState.FAILED)
        assert not event.is_set()  # a losing transition changes nothing
        await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
        assert event.is_set()
        fresh = store.watch(job.id)
        assert fresh is not event and not fresh.is_set()


async def test_listeners_see_committed_changes_and_a_failing_one_is_contained(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    seen: list[tuple[str, str, str]] = []

    def good(job: Job) -> None:
        # A separate connection sees the new state: the change was committed first.
        conn = sqlite3.connect(db)
        try:
            (state,) = conn.execute(
                "SELECT state FROM generation_requests WHERE id=?", (job.id,)
            ).fetchone()
        finally:
            conn.close()
        seen.append((job.id, job.state.value, state))

    def bad(job: Job) -> None:
        raise RuntimeError("listener bug")

    async with open_store(db) as store:
        store.add_listener(bad)
        store.add_listener(good)
        job, _ = await store.insert_job(make_job())
        await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
        await store.transition(job.id, JobState.SUBMITTING, JobState.RUNNING)
        later = await store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
    assert later is not None
    assert seen == [
        (job.id, "SUBMITTING", "SUBMITTING"),
        (job.id, "RUNNING", "RUNNING"),
        (job.id, "SUCCEEDED", "SUCCEEDED"),
    ]


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


# -- timestamps follow trio's clock (actors/clock.py) -----------------------


async def test_insert_timestamps_follow_trio_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path / "db") as store:
        start = wall_now()
        await trio.sleep(3600)
        job, _ = await store.insert_job(make_job())
        moved = await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
    assert moved is not None
    assert moved.completed_at is not None
    assert moved.completed_at == pytest.approx(start + 3600, abs=60)
    # Nothing happened on trio's clock between insert and cancel.
    assert moved.completed_at - job.created_at == pytest.approx(0, abs=60)


async def test_event_timestamps_follow_trio_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path / "db") as store:
        wall_now()  # fixes the run's offset between trio's clock and wall time
        job, _ = await store.insert_job(make_job())
        await trio.sleep(3600)
        moved = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
        events = await store.events(job.id)
    assert moved is not None
    assert events[0]["at"] == pytest.approx(moved.updated_at, abs=60)
