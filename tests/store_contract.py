"""The store contract: what every ``Store`` backend must do, whatever it runs on.

Written against ``actors.store.protocol.Store`` only. A backend's test module
subclasses ``StoreContract`` (pytest collects the subclass, not this class) and
gives an ``open_backend`` fixture: a callable that opens a store, as an async
context manager, on the same storage each time it is called (so a test can close
and reopen it), taking an optional ``policy`` keyword. SQLite runs it in
``tests/test_store_sqlite_contract.py``.

Timers use ``MockClock`` throughout: stored timestamps follow trio's clock
(``actors/clock.py``), so a test moves them without sleeping.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors.alerts.records import (
    DELIVERY_PENDING,
    DELIVERY_SENT,
    Alert,
    AlertState,
    ErrorEntry,
    Level,
    Severity,
)
from actors.batches.model import Batch, BatchOptions, BatchState
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.experiments.model import (
    Allocation,
    Assignment,
    BanditSettings,
    Experiment,
    ExperimentState,
    Goal,
    Metric,
    MetricName,
    Role,
    Variant,
    new_experiment_id,
)
from actors.jobs import Job, JobState, new_job_id
from actors.keys import KeyLimits, Scope, new_key
from actors.store.listing import JobQuery
from actors.store.policy import Delivery, StorePolicy, outbox_id
from actors.store.protocol import (
    OUTBOX_DELIVERED,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    POLL_FLUSH_SECONDS,
    Store,
)

#: ``open_backend(policy=...)``: a store on the test's storage.
OpenBackend = Callable[..., AbstractAsyncContextManager[Store]]

HOOK = "https://hooks.example.com/x"


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
        stage_reason="the create's answer was lost",
        owner="key_full",
        preprocess={"preset": "fast", "maxWidth": 512},
        custom_id="item-7",
        batch_index=7,
        depends_on=["item-1", "item-2"],
        waiting_on=1,
        released_at=1_700_000_000.5,
        replaced_by="gen_newer",
    )


def batch_of(deps: dict[int, list[int]], n: int, **fields: Any) -> tuple[Batch, list[Job]]:
    """A batch of ``n`` WAITING items, item ``i`` depending on the items ``deps[i]``."""
    batch = Batch(id=f"batch_{new_job_id()}", options=BatchOptions(webhook_url=HOOK), total=n,
                  owner="k")
    items = [make_job(state=JobState.WAITING, batch_id=batch.id, batch_index=i,
                      custom_id=f"c{i}", depends_on=[f"c{d}" for d in deps.get(i, [])],
                      owner="k", cost=1.0, **fields) for i in range(n)]
    return batch, items


async def inserted(store: Store, **fields: Any) -> Job:
    job, created = await store.insert_job(make_job(**fields))
    assert created
    return job


class StoreContract:
    """The contract suite; subclass it with an ``open_backend`` fixture."""

    async def test_backend_has_every_method_of_the_protocol(
        self, open_backend: OpenBackend
    ) -> None:
        # Parameters as the Protocol names them (kinds and defaults too), so callers
        # may pass any by name.
        def shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
            return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()
                    if p.name != "self"]

        names = [n for n in vars(Store) if not n.startswith("_") and callable(vars(Store)[n])]
        async with open_backend() as store:
            for name in names:
                assert shape(getattr(store, name)) == shape(getattr(Store, name)), name
                assert inspect.iscoroutinefunction(getattr(store, name)) == (
                    inspect.iscoroutinefunction(getattr(Store, name))), name
        assert {"insert_job", "transition", "subscribe", "watch", "statistics"} <= set(names)

    # -- the job row --------------------------------------------------------

    async def test_every_job_field_round_trips(self, open_backend: OpenBackend) -> None:
        job = full_job()
        defaults = make_job(id=job.id)
        for field in attrs.fields(Job):
            if field.name not in ("id", "seq"):
                assert getattr(job, field.name) != getattr(defaults, field.name), field.name

        async with open_backend() as store:
            stored, created = await store.insert_job(attrs.evolve(job))
            loaded = await store.get_job(job.id)

        assert created is True
        assert loaded is not None
        assert isinstance(loaded.seq, int) and loaded.seq == stored.seq
        assert loaded.updated_at > 1.0  # stamped at insert
        assert loaded.created_at == job.created_at  # a given created_at is kept
        assert isinstance(loaded.error, ErrorInfo) and loaded.error.code is ErrorCode.PROVIDER_ERROR
        expected = attrs.evolve(job, seq=loaded.seq, updated_at=loaded.updated_at)
        assert attrs.asdict(loaded) == attrs.asdict(expected)

    async def test_insert_stamps_created_at_and_unknown_is_none(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            assert job.created_at > 0 and job.updated_at >= job.created_at
            assert await store.get_job("gen_missing") is None
            await store.ping()

    async def test_reopen_keeps_everything(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            job = await inserted(store, webhook_url=HOOK)
            await store.add_event(job.id, "note", {"n": 1})
            await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
            await store.add_duration("m", 3.0, None)
        async with open_backend() as store:
            again = await store.get_job(job.id)
            kinds = [e["kind"] for e in await store.events(job.id)]
            rows = await store.webhooks_of(job.id)
            counts = await store.count_by_state()
            durations = await store.recent_durations(["m"], 5)
        assert again is not None and again.state is JobState.CANCELLED
        assert kinds == ["note", "state"]
        assert [row.state for row in rows] == [OUTBOX_PENDING]
        assert counts == {"CANCELLED": 1}
        assert durations == {"m": [(3.0, None)]}

    # -- idempotency --------------------------------------------------------

    async def test_same_key_same_body_is_the_same_job(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            first = await inserted(store, idempotency_key="k", request_hash="h")
            second, created = await store.insert_job(
                make_job(idempotency_key="k", request_hash="h", prompt="ignored")
            )
            counts = await store.count_by_state()
        assert created is False
        assert second.id == first.id and second.prompt == "a cat"
        assert counts == {"QUEUED": 1}

    async def test_same_key_other_body_is_conflict(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            first = await inserted(store, idempotency_key="k", request_hash="h1")
            with pytest.raises(EaselError) as caught:
                await store.insert_job(make_job(idempotency_key="k", request_hash="h2"))
            counts = await store.count_by_state()
        assert caught.value.code is ErrorCode.CONFLICT
        assert caught.value.info.details == {"id": first.id}
        assert counts == {"QUEUED": 1}

    async def test_key_expires_after_its_window(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            first, _ = await store.insert_job(make_job(idempotency_key="k", request_hash="h1"),
                                              idempotency_window=3600)
            await trio.sleep(1800)
            again, created = await store.insert_job(
                make_job(idempotency_key="k", request_hash="h1"), idempotency_window=3600)
            assert (again.id, created) == (first.id, False)
            await trio.sleep(3600)
            # Past the window the key is free again: a new job, even with another body.
            fresh, created = await store.insert_job(
                make_job(idempotency_key="k", request_hash="h2"), idempotency_window=3600)
            old = await store.get_job(first.id)
        assert created is True and fresh.id != first.id
        assert old is not None and old.idempotency_key is None

    async def test_concurrent_inserts_with_one_key_make_one_job(
        self, open_backend: OpenBackend
    ) -> None:
        results: list[tuple[Job, bool]] = []
        async with open_backend() as store:

            async def insert() -> None:
                job = make_job(idempotency_key="k", request_hash="h")
                results.append(await store.insert_job(job))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(insert)
            counts = await store.count_by_state()
        assert counts == {"QUEUED": 1}
        assert sum(created for _, created in results) == 1
        assert len({job.id for job, _ in results}) == 1

    # -- conditional transitions ----------------------------------------------

    async def test_transition_moves_state_sets_fields_and_records_event(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            moved = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                                           event={"attempt": 1}, attempts=1, submitting_at=123.0)
            loaded = await store.get_job(job.id)
            stale = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            events = await store.events(job.id)
        assert moved is not None and moved.state is JobState.SUBMITTING
        assert moved.attempts == 1 and moved.submitting_at == 123.0
        assert moved.completed_at is None
        assert loaded == moved
        assert stale is None  # a second, stale actor loses
        assert [(e["kind"], e["state"], e.get("attempt")) for e in events] == [
            ("state", "SUBMITTING", 1)
        ]

    async def test_stale_from_state_changes_nothing(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            before = await store.get_job(job.id)
            result = await store.transition(job.id, JobState.RUNNING, JobState.FINALIZING,
                                            provider_task_id="t", attempts=5)
            after = await store.get_job(job.id)
            events = await store.events(job.id)
            missing = await store.transition("gen_nope", JobState.QUEUED, JobState.SUBMITTING)
        assert result is None and missing is None
        assert after == before
        assert events == []

    async def test_where_guards_other_columns(self, open_backend: OpenBackend) -> None:
        # A job rerouted to another provider meanwhile must not be taken by the first.
        async with open_backend() as store:
            job = await inserted(store)
            await store.update(job.id, JobState.QUEUED, provider="fallback", served_model="other")
            stale = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                                           where={"provider": job.provider, "served_model": None})
            fresh = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                                           where={"provider": "fallback", "served_model": "other"})
        assert stale is None
        assert fresh is not None and fresh.state is JobState.SUBMITTING

    async def test_transition_from_any_of_several_states(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            cancelled = await store.transition(
                job.id, [JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING],
                JobState.CANCELLED,
            )
        assert cancelled is not None and cancelled.state is JobState.CANCELLED

    async def test_terminal_transition_stamps_completed_at_and_clears_next_poll(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store, state=JobState.RUNNING, next_poll_at=99.0)
            error = ErrorInfo(ErrorCode.TASK_TIMEOUT, "too slow", retryable=False)
            failed = await store.transition(job.id, JobState.RUNNING, JobState.FAILED, error=error)
            again = await store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
            loaded = await store.get_job(job.id)
            events = await store.events(job.id)
            other = await inserted(store)
            kept = await store.transition(other.id, JobState.QUEUED, JobState.CANCELLED,
                                          completed_at=42.0)
        assert failed is not None and failed.next_poll_at is None
        assert failed.completed_at is not None and failed.completed_at >= job.created_at
        assert again is None
        assert loaded is not None and loaded.state is JobState.FAILED and loaded.error == error
        assert [e["state"] for e in events] == ["FAILED"]
        assert kept is not None and kept.completed_at == 42.0

    async def test_update_sets_fields_only_in_the_given_state(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store, state=JobState.RUNNING)
            updated = await store.update(job.id, JobState.RUNNING, progress=0.25, poll_count=3)
            wrong = await store.update(job.id, JobState.QUEUED, progress=0.9)
            loaded = await store.get_job(job.id)
            plain_events = await store.events(job.id)
            await store.update(job.id, JobState.RUNNING, progress=0.5,
                               event={"kind": "progress", "p": 0.5})
            events = await store.events(job.id)
        assert updated is not None and updated.state is JobState.RUNNING
        assert updated.progress == 0.25 and updated.poll_count == 3
        assert wrong is None
        assert loaded is not None and loaded.progress == 0.25
        assert plain_events == []  # no state change, no event
        assert [(e["kind"], e["p"]) for e in events] == [("progress", 0.5)]

    # -- events ---------------------------------------------------------------

    async def test_events_in_order(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            await store.add_event(job.id, "note", {"n": 1})
            await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            await store.add_event(job.id, "note", {"n": 2})
            events = await store.events(job.id)
            none = await store.events("gen_missing")
        assert [(e["kind"], e.get("n"), e.get("state")) for e in events] == [
            ("note", 1, None),
            ("state", None, "SUBMITTING"),
            ("note", 2, None),
        ]
        assert none == []

    async def test_timestamps_follow_trio_clock(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            start = wall_now()
            await trio.sleep(3600)
            job = await inserted(store)
            moved = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            await trio.sleep(3600)
            ended = await store.transition(job.id, JobState.SUBMITTING, JobState.CANCELLED)
            events = await store.events(job.id)
        assert moved is not None and ended is not None and ended.completed_at is not None
        assert job.created_at == pytest.approx(start + 3600, abs=60)
        assert moved.updated_at == pytest.approx(job.created_at, abs=60)
        assert ended.completed_at == pytest.approx(start + 7200, abs=60)
        assert [e["at"] for e in events] == pytest.approx(
            [moved.updated_at, ended.completed_at], abs=60)

    # -- poll notes -----------------------------------------------------------

    async def test_note_poll_is_written_on_close_last_note_wins(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            running = await inserted(store, state=JobState.RUNNING)
            ended = await inserted(store, state=JobState.RUNNING)
            store.note_poll(running.id, 100.0, 1, 0.1)
            store.note_poll(running.id, 200.0, 2, 0.2)
            store.note_poll(ended.id, 300.0, 5, 0.9)
            await store.transition(ended.id, JobState.RUNNING, JobState.FAILED)
        async with open_backend() as store:
            noted = await store.get_job(running.id)
            untouched = await store.get_job(ended.id)
        assert noted is not None
        assert (noted.next_poll_at, noted.poll_count, noted.progress) == (200.0, 2, 0.2)
        assert untouched is not None and untouched.state is JobState.FAILED
        assert (untouched.next_poll_at, untouched.poll_count) == (None, 0)

    async def test_note_poll_is_written_within_the_flush_period(
        self, open_backend: OpenBackend, mock_clock: trio.testing.MockClock
    ) -> None:
        # The clock stands still but for the jump below, so only the flush period
        # passing can write the note; the loop then waits for the write itself.
        async with open_backend() as store:
            job = await inserted(store, state=JobState.RUNNING)
            store.note_poll(job.id, 100.0, 3, 0.5)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(POLL_FLUSH_SECONDS)
            for _ in range(100_000):
                loaded = await store.get_job(job.id)
                assert loaded is not None
                if loaded.poll_count == 3:
                    break
            events = await store.events(job.id)
        assert (loaded.next_poll_at, loaded.poll_count, loaded.progress) == (100.0, 3, 0.5)
        assert events == []  # bookkeeping, not history

    # -- queries --------------------------------------------------------------

    async def test_jobs_in_orders_by_priority_then_age(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            ids = [(await inserted(store, priority=p)).id for p in [0, 5, -1, 5, 0]]
            other = await inserted(store, provider="other", priority=100)
            running = await inserted(store, priority=50, state=JobState.RUNNING)
            queued = await store.jobs_in([JobState.QUEUED], provider="p")
            everything = await store.jobs_in([JobState.QUEUED, JobState.RUNNING])
            nothing = await store.jobs_in([JobState.FAILED])
        assert [j.id for j in queued] == [ids[1], ids[3], ids[0], ids[4], ids[2]]
        assert [j.id for j in everything] == [
            other.id, running.id, ids[1], ids[3], ids[0], ids[4], ids[2]
        ]
        assert nothing == []

    async def test_queued_page_gives_priority_seq_and_batch_by_seq_a_page_at_a_time(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            jobs = [await inserted(store, priority=p, batch_id="b" if p == 5 else None)
                    for p in [0, 5, -1, 5, 0]]
            await inserted(store, provider="other")
            await inserted(store, state=JobState.RUNNING)
            first = await store.queued_page("p", 0, 3)
            rest = await store.queued_page("p", first[-1][1], 3)
            none = await store.queued_page("nobody", 0, 3)
        assert first + rest == [(job.priority, job.seq, int(job.batch_id is not None))
                                for job in jobs]
        assert len(first) == 3 and none == []

    async def test_jobs_by_seq_reads_the_jobs_as_stored(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            a, b, c = [await inserted(store) for _ in range(3)]
            moved = await store.transition(b.id, JobState.QUEUED, JobState.CANCELLED)
            assert a.seq is not None and b.seq is not None and c.seq is not None
            found = await store.jobs_by_seq([c.seq, b.seq, a.seq, 10**9])
            empty = await store.jobs_by_seq([])
        assert [job.id for job in found] == [a.id, b.id, c.id]
        assert moved is not None and found[1] == moved
        assert empty == []

    async def test_job_ids_in_and_count_by_state(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            queued = await inserted(store)
            running = await inserted(store, state=JobState.RUNNING)
            await inserted(store, provider="other", state=JobState.RUNNING)
            ids = await store.job_ids_in([JobState.QUEUED, JobState.RUNNING], "p")
            only_running = await store.job_ids_in([JobState.RUNNING], "p")
            counts = await store.count_by_state()
        assert sorted(ids) == sorted([queued.id, running.id])
        assert only_running == [running.id]
        assert counts == {"QUEUED": 1, "RUNNING": 2}

    async def test_list_jobs_filters_each_field(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            plain = await inserted(store, created_at=100.0)
            mine = await inserted(store, owner="key_a", created_at=200.0)
            other_model = await inserted(store, model="n", created_at=300.0)
            other_provider = await inserted(store, provider="q", created_at=400.0)
            failed = await inserted(store, state=JobState.FAILED, created_at=500.0)
            user = await inserted(store, user_id="u1", created_at=600.0)

            async def ids(**fields: Any) -> list[str]:
                return [job.id for job in await store.list_jobs(JobQuery(**fields))]

            everything = await ids()
            owned = await ids(owner="key_a")
            states = await ids(states=frozenset({JobState.FAILED, JobState.RUNNING}))
            models = await ids(models=frozenset({"n"}))
            provider = await ids(provider="q")
            users = await ids(user_id="u1")
            created = await ids(created_after=200.0, created_before=400.0)
            none = await ids(owner="key_b")
        newest_first = [user, failed, other_provider, other_model, mine, plain]
        assert everything == [job.id for job in newest_first]
        assert owned == [mine.id]
        assert states == [failed.id]
        assert models == [other_model.id]
        assert provider == [other_provider.id]
        assert users == [user.id]
        assert created == [other_model.id, mine.id]  # after is inclusive, before is not
        assert none == []

    async def test_list_jobs_pages_stay_stable_under_inserts(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            first = [await inserted(store) for _ in range(5)]
            page1 = await store.list_jobs(JobQuery(limit=2))
            late = await inserted(store)  # a job arriving while the client pages
            page2 = await store.list_jobs(JobQuery(limit=2, after_seq=page1[-1].seq))
            page3 = await store.list_jobs(JobQuery(limit=2, after_seq=page2[-1].seq))
            oldest = await store.list_jobs(JobQuery(limit=3, ascending=True))
            rest = await store.list_jobs(JobQuery(after_seq=oldest[-1].seq, ascending=True))
        seen = [job.id for job in page1 + page2 + page3]
        assert seen == [job.id for job in reversed(first)]
        assert [job.id for job in oldest + rest] == [job.id for job in [*first, late]]

    async def test_has_twin_matches_request_provider_and_state(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store, request_hash="h")
            alone = await store.has_twin(job, [JobState.QUEUED])
            await inserted(store, request_hash="h", provider="q")  # another provider
            await inserted(store, request_hash="g")  # another request
            unrelated = await store.has_twin(job, [JobState.QUEUED])
            await inserted(store, request_hash="h")  # the twin
            queued = await store.has_twin(job, [JobState.QUEUED])
            elsewhere = await store.has_twin(job, [JobState.SUBMITTING])
        assert (alone, unrelated, queued, elsewhere) == (False, False, True, False)

    async def test_jobs_submitted_since_are_the_providers_in_any_state(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            await inserted(store, submitting_at=99.0)  # before
            ended = await inserted(store, state=JobState.FAILED, submitting_at=100.0)
            running = await inserted(store, state=JobState.RUNNING, submitting_at=150.0)
            await inserted(store, provider="q", submitting_at=150.0)  # another provider
            await inserted(store)  # never submitted
            found = await store.jobs_submitted_since("p", 100.0)
        assert [job.id for job in found] == [ended.id, running.id]

    async def test_job_by_task_matches_the_handle_by_its_id(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            plain = await inserted(store, state=JobState.RUNNING, provider_task_id="task-1")
            extra = await inserted(store, state=JobState.RUNNING,
                                   provider_task_id="task-2 https://status.example/2")
            found = await store.job_by_task("p", "task-1")
            by_id = await store.job_by_task("p", "task-2")
            wrong_provider = await store.job_by_task("q", "task-1")
            prefix = await store.job_by_task("p", "task")
            whole = await store.job_by_task("p", "task-2 https://status.example/2")
        assert found is not None and found.id == plain.id
        assert by_id is not None and by_id.id == extra.id
        assert whole is not None and whole.id == extra.id
        assert wrong_provider is None and prefix is None

    # -- the outbox -----------------------------------------------------------

    async def test_terminal_transition_with_webhook_url_queues_a_delivery(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store, webhook_url=HOOK)
            moved = await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            before = await store.webhooks_of(job.id)
            failed = await store.transition(job.id, JobState.SUBMITTING, JobState.FAILED)
            stale = await store.transition(job.id, JobState.SUBMITTING, JobState.CANCELLED)
            rows = await store.webhooks_of(job.id)
            quiet = await inserted(store)
            await store.transition(quiet.id, JobState.QUEUED, JobState.SUCCEEDED)
            none = await store.webhooks_of(quiet.id)
        assert moved is not None and before == []  # not terminal yet
        assert failed is not None and stale is None
        [row] = rows
        assert row.id == outbox_id(job.id, JobState.FAILED)
        assert (row.job_id, row.url, row.state, row.attempts) == (job.id, HOOK, OUTBOX_PENDING, 0)
        assert json.loads(row.payload) == failed.to_api()
        assert row.next_attempt_at == pytest.approx(failed.completed_at)
        assert row.last_status is None and row.last_error is None and row.finished_at is None
        assert none == []  # no webhook_url, no delivery

    async def test_delivery_retry_bookkeeping(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            first = await inserted(store, webhook_url=HOOK)
            await store.transition(first.id, JobState.QUEUED, JobState.SUCCEEDED)
            await trio.sleep(10)
            second = await inserted(store, webhook_url=HOOK)
            await store.transition(second.id, JobState.QUEUED, JobState.CANCELLED)
            a = outbox_id(first.id, JobState.SUCCEEDED)
            b = outbox_id(second.id, JobState.CANCELLED)
            now = wall_now()

            due = [row.id for row in await store.due_webhooks(now, 10)]
            limited = [row.id for row in await store.due_webhooks(now, 1)]
            excluded = [row.id for row in await store.due_webhooks(now, 10, exclude=[a])]
            earliest = await store.next_webhook_at()
            earliest_but_a = await store.next_webhook_at(exclude=[a])

            await store.record_webhook_attempt(a, OUTBOX_PENDING, status=500, error="HTTP 500",
                                               next_attempt_at=now + 60)
            [retrying] = await store.webhooks_of(first.id)
            due_now = [row.id for row in await store.due_webhooks(now, 10)]
            due_later = [row.id for row in await store.due_webhooks(now + 60, 10)]
            next_at = await store.next_webhook_at(exclude=[b])

            await store.record_webhook_attempt(a, OUTBOX_DELIVERED, status=204, error=None)
            await store.record_webhook_attempt(b, OUTBOX_FAILED, status=None, error="refused")
            await store.record_webhook_attempt(a, OUTBOX_FAILED, status=None, error="late")
            [delivered] = await store.webhooks_of(first.id)
            [gave_up] = await store.webhooks_of(second.id)
            after = await store.due_webhooks(now + 3600, 10)
            idle = await store.next_webhook_at()

        assert due == [a, b] and limited == [a] and excluded == [b]  # oldest due first
        assert earliest is not None and earliest < now - 5
        assert earliest_but_a == pytest.approx(now, abs=1)
        assert (retrying.state, retrying.attempts, retrying.last_status) == (OUTBOX_PENDING, 1, 500)
        assert retrying.last_error == "HTTP 500" and retrying.finished_at is None
        assert retrying.next_attempt_at == pytest.approx(now + 60)
        assert due_now == [b] and due_later == [b, a]
        assert next_at == pytest.approx(now + 60)
        # Finished deliveries are never due again; a late attempt changes nothing.
        assert (delivered.state, delivered.attempts, delivered.last_status) == (
            OUTBOX_DELIVERED, 2, 204)
        assert delivered.finished_at is not None and delivered.last_error is None
        assert (gave_up.state, gave_up.attempts, gave_up.last_error) == (
            OUTBOX_FAILED, 1, "refused")
        assert after == [] and idle is None

    async def test_the_policy_decides_deliveries_in_the_same_transaction(
        self, open_backend: OpenBackend
    ) -> None:
        def deliveries(job: Job) -> list[Delivery]:
            if job.state is JobState.FAILED:
                raise RuntimeError("policy refuses")
            return [Delivery(f"{job.id}:{job.state.value}", "https://elsewhere/", job.state.value)]

        async with open_backend(policy=StorePolicy(deliveries=deliveries)) as store:
            job = await inserted(store)  # no webhook_url: this policy does not care
            await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            await store.update(job.id, JobState.SUBMITTING, attempts=1)  # no move, no row
            with pytest.raises(RuntimeError):
                await store.transition(job.id, JobState.SUBMITTING, JobState.FAILED)
            loaded = await store.get_job(job.id)
            events = await store.events(job.id)
            rows = await store.webhooks_of(job.id)
        # The failing decision undid its transition: no state, no event, no row.
        assert loaded is not None and loaded.state is JobState.SUBMITTING
        assert [e["state"] for e in events] == ["SUBMITTING"]
        assert [(r.id, r.url, r.payload) for r in rows] == [
            (f"{job.id}:SUBMITTING", "https://elsewhere/", "SUBMITTING")
        ]

    # -- task durations -------------------------------------------------------

    async def test_recent_durations_oldest_first_per_model(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            for seconds in [1.0, 2.0, 3.0, 4.0]:
                await store.add_duration("a", seconds, None)
            await store.add_duration("b", 9.0, 7.5)
            recent = await store.recent_durations(["a", "b", "c"], 3)
        assert recent == {"a": [(2.0, None), (3.0, None), (4.0, None)], "b": [(9.0, 7.5)], "c": []}

    # -- committed changes ------------------------------------------------------

    async def test_change_feed_sends_each_move_in_commit_order(
        self, open_backend: OpenBackend
    ) -> None:
        path = [JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING, JobState.SUCCEEDED]
        async with open_backend() as store:
            changes = store.subscribe()
            jobs = [await inserted(store) for _ in range(30)]

            async def walk(job: Job) -> None:
                for before, after in zip(path, path[1:], strict=False):
                    assert await store.transition(job.id, before, after) is not None
                    # Losing, same-state and plain writes are not changes.
                    assert await store.transition(job.id, before, after) is None
                    await store.update(job.id, after, progress=0.5)
                    await store.add_event(job.id, "note", {})

            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(walk, job)
            seen: list[Job] = []
            while len(seen) < 3 * len(jobs):
                seen.append(await changes.receive())
            with pytest.raises(trio.WouldBlock):
                changes.receive_nowait()
        per_job: dict[str, list[JobState]] = {}
        for job in seen:
            per_job.setdefault(job.id, []).append(job.state)
        assert per_job == {job.id: path[1:] for job in jobs}

    async def test_change_feed_is_sent_after_commit_and_ends_at_close(
        self, open_backend: OpenBackend
    ) -> None:
        received: list[tuple[JobState, JobState | None]] = []
        handled = trio.Event()
        async with trio.open_nursery() as nursery:
            async with open_backend() as store:
                ignored = store.subscribe()
                changes = store.subscribe()

                async def consume() -> None:
                    async for job in changes:  # ends when the store closes
                        committed = await store.get_job(job.id)
                        received.append((job.state, committed.state if committed else None))
                        handled.set()

                nursery.start_soon(consume)
                await ignored.aclose()  # unsubscribes; nothing breaks for the others
                job = await inserted(store)
                await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
                await handled.wait()
            late = store.subscribe()
        assert received == [(JobState.CANCELLED, JobState.CANCELLED)]
        with pytest.raises(trio.EndOfChannel):
            late.receive_nowait()

    async def test_barrier_waits_for_writes_whose_senders_gave_up(
        self, open_backend: OpenBackend
    ) -> None:
        """A restarted actor reloads after ``barrier``: the writes its previous run
        sent before being cancelled have committed by then."""
        async with open_backend() as store:
            jobs = [await inserted(store) for _ in range(20)]
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(store.transition, job.id, JobState.QUEUED,
                                       JobState.SUBMITTING)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()  # the senders give up waiting
            await store.barrier()
            moved = await store.jobs_in([JobState.SUBMITTING])
        assert {job.id for job in moved} == {job.id for job in jobs}

    async def test_watch_wakes_at_the_next_committed_move(
        self, open_backend: OpenBackend
    ) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            event = store.watch(job.id)
            assert store.watch(job.id) is event  # one event per job until it fires
            await store.update(job.id, JobState.QUEUED, progress=0.1)
            assert not event.is_set()  # not a state change
            await store.transition(job.id, JobState.RUNNING, JobState.FAILED)
            assert not event.is_set()  # a losing transition changes nothing
            await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING)
            assert event.is_set()
            assert (await event.wait()).state is JobState.SUBMITTING  # as committed
            fresh = store.watch(job.id)
            assert fresh is not event and not fresh.is_set()

    async def test_a_waiting_watcher_is_woken(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            job = await inserted(store)
            woken: list[JobState | None] = []

            async def wait() -> None:
                await store.watch(job.id).wait()
                loaded = await store.get_job(job.id)
                woken.append(loaded.state if loaded else None)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
        assert woken == [JobState.CANCELLED]

    # -- API keys -------------------------------------------------------------

    async def test_keys_round_trip_and_revoke_once(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        limits = KeyLimits(rate=2.5, burst=3, max_active_jobs=4, daily_spend=9.5)
        first, _ = new_key("ci", frozenset({Scope.SUBMIT, Scope.READ}), limits, 100.0)
        second, _ = new_key("admin", frozenset({Scope.ADMIN}), KeyLimits(), 200.0)
        async with open_backend() as store:
            assert not await store.has_keys()
            await store.create_key(second)
            await store.create_key(first)
            assert await store.has_keys()
            assert await store.get_key(first.id) == first
            assert await store.get_key("0" * 12) is None
            assert await store.list_keys() == [first, second]
            revoked = await store.revoke_key(first.id)
            assert revoked is not None and revoked.revoked_at == pytest.approx(wall_now())
            await trio.sleep(10)
            again = await store.revoke_key(first.id)
            assert again == revoked  # the first revocation's time is kept
            assert await store.revoke_key("0" * 12) is None
        async with open_backend() as store:
            assert await store.get_key(first.id) == revoked
            assert await store.has_keys()

    async def test_unfinished_jobs_by_owner_and_spend(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            assert await store.unfinished_by_owner() == {}
            await inserted(store, owner="a", cost=1.5)
            done = await inserted(store, owner="a", cost=2.0)
            await store.transition(done.id, JobState.QUEUED, JobState.CANCELLED)
            await inserted(store, owner="b", state=JobState.RUNNING)
            await inserted(store)
            await inserted(store)
            assert await store.unfinished_by_owner() == {"a": 1, "b": 1, None: 2}
            since = wall_now()
            await trio.sleep(5)
            await inserted(store, owner="a", cost=4.0)
            await inserted(store, owner="b", cost=8.0)
            # Finished jobs spent too; another owner's do not count.
            assert await store.spend_since("a", 0) == 7.5
            assert await store.spend_since("a", since + 1) == 4.0
            assert await store.spend_since("c", 0) == 0.0

    # -- batches --------------------------------------------------------------

    async def test_a_batch_and_its_items_go_in_together_and_read_back(
        self, open_backend: OpenBackend
    ) -> None:
        batch, items = batch_of({1: [0], 2: [0, 1, 1]}, 4)
        async with open_backend() as store:
            assert await store.get_batch(batch.id) is None
            await store.insert_batch(batch, items)
        async with open_backend() as store:
            stored = await store.get_batch(batch.id)
            assert stored is not None and stored.created_at > 0
            assert stored == batch  # stamped by the insert
            assert await store.open_batches() == [batch.id]
            listed = await store.batch_items(batch.id, -1, 10)
            assert [(j.batch_index, j.custom_id, j.waiting_on) for j in listed] == [
                (0, "c0", 0), (1, "c1", 1), (2, "c2", 2), (3, "c3", 0)]
            assert [j.batch_index for j in await store.batch_items(batch.id, 1, 1)] == [2]
            counts = await store.batch_counts(batch.id)
            assert (counts.total, counts.waiting, counts.open) == (4, 4, 4)
            assert await store.batch_activity(batch.id) == (0, True)
            # A WAITING item is in no queue: not an unfinished job of its owner.
            assert await store.unfinished_by_owner() == {}
            deps = await store.batch_dependencies(batch.id, 2)
            assert [j.custom_id for j in deps] == ["c0", "c1"]

    async def test_an_item_is_releasable_once_every_dependency_succeeded(
        self, open_backend: OpenBackend
    ) -> None:
        batch, items = batch_of({1: [0], 2: [0, 1]}, 3)
        async with open_backend() as store:
            await store.insert_batch(batch, items)
            assert [j.batch_index for j in await store.releasable(batch.id, 10)] == [0]
            first = items[0].id
            assert await store.transition(first, JobState.WAITING, JobState.QUEUED)
            assert await store.batch_activity(batch.id) == (1, True)
            assert await store.unfinished_by_owner() == {"k": 1}
            assert await store.releasable(batch.id, 10) == []
            await store.transition(first, JobState.QUEUED, JobState.SUCCEEDED)
            assert [j.batch_index for j in await store.releasable(batch.id, 10)] == [1]
            await store.transition(items[1].id, JobState.WAITING, JobState.QUEUED)
            await store.transition(items[1].id, JobState.QUEUED, JobState.SUCCEEDED)
            ready = await store.releasable(batch.id, 10)
            assert [(j.batch_index, j.waiting_on) for j in ready] == [(2, 0)]

    async def test_ending_items_by_state_or_as_a_failures_dependents(
        self, open_backend: OpenBackend
    ) -> None:
        batch, items = batch_of({1: [0], 2: [1], 3: [0]}, 5)
        error = ErrorInfo(ErrorCode.UPSTREAM_FAILED, "c0 did not succeed")
        async with open_backend() as store:
            await store.insert_batch(batch, items)
            changes = store.subscribe()
            await store.transition(items[0].id, JobState.WAITING, JobState.QUEUED)
            await store.transition(items[0].id, JobState.QUEUED, JobState.FAILED)
            assert await store.failed_dependencies(batch.id) == [(0, "c0")]
            assert await store.failed_dependencies(batch.id, [0, 4]) == [(0, "c0")]
            assert await store.failed_dependencies(batch.id, [4]) == []
            n = await store.end_batch_items(batch.id, [JobState.WAITING], JobState.FAILED,
                                            error, dependents_of=0, limit=1)
            assert n == 1  # a page at a time
            assert await store.end_batch_items(batch.id, [JobState.WAITING], JobState.FAILED,
                                               error, dependents_of=0) == 1
            ended = [changes.receive_nowait() for _ in range(4)][2:]
            assert sorted((j.batch_index, j.state, j.error and j.error.code) for j in ended) == [
                (1, JobState.FAILED, error.code), (3, JobState.FAILED, error.code)]
            assert all(job.completed_at is not None for job in ended)
            events = await store.events(items[1].id)
            assert events[-1]["kind"] == "state" and events[-1]["state"] == "FAILED"
            assert await store.failed_dependencies(batch.id) == [(1, "c1")]
            cancel = ErrorInfo(ErrorCode.TASK_CANCELLED, "the batch was cancelled")
            assert await store.end_batch_items(
                batch.id, [JobState.WAITING, JobState.QUEUED], JobState.CANCELLED, cancel) == 2
            counts = await store.batch_counts(batch.id)
            assert (counts.failed, counts.upstream_failed, counts.cancelled, counts.open) == (
                3, 2, 2, 0)

    async def test_a_batch_ends_once_with_its_webhook_when_nothing_is_open(
        self, open_backend: OpenBackend
    ) -> None:
        batch, items = batch_of({}, 2)
        owed = [Delivery(f"msg_{batch.id}", HOOK, '{"ended": true}')]
        async with open_backend() as store:
            await store.insert_batch(batch, items)
            ended = attrs.evolve(batch, state=BatchState.COMPLETED, completed_at=5.0)
            assert await store.end_batch(ended, owed) is None  # items are open
            assert await store.update_batch(batch.id, BatchState.PROCESSING,
                                            stopped_reason="why") is not None
            assert await store.update_batch(batch.id, BatchState.FAILED, repairs=3) is None
            for job in items:
                await store.transition(job.id, JobState.WAITING, JobState.CANCELLED)
            stored = await store.end_batch(ended, owed)
            assert stored is not None and stored.state is BatchState.COMPLETED
            assert (stored.completed_at, stored.stopped_reason) == (5.0, "why")
            assert await store.end_batch(ended, owed) is None  # once
            assert [row.payload for row in await store.webhooks_of(batch.id)] == [
                '{"ended": true}']
            assert await store.open_batches() == []

    async def test_finished_items_in_completion_order(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        batch, items = batch_of({}, 4)
        async with open_backend() as store:
            await store.insert_batch(batch, items)
            for index in (2, 0, 3):
                await trio.sleep(1)
                await store.transition(items[index].id, JobState.WAITING, JobState.CANCELLED)
            first = await store.batch_finished(batch.id, None, 2)
            assert [j.batch_index for j in first] == [2, 0]
            last = first[-1]
            assert last.completed_at is not None and last.seq is not None
            rest = await store.batch_finished(batch.id, (last.completed_at, last.seq), 2)
            assert [j.batch_index for j in rest] == [3]

    async def test_a_rerun_replaces_what_did_not_succeed_and_reopens_the_batch(
        self, open_backend: OpenBackend
    ) -> None:
        batch, items = batch_of({1: [0], 2: [1]}, 4)

        def remake(old: Job, name_of: Callable[[str], str | None]) -> Job:
            return attrs.evolve(old, id=new_job_id(), state=JobState.WAITING, error=None,
                                seq=None, completed_at=None, released_at=None,
                                metadata={"from": name_of(old.id)})

        async with open_backend() as store:
            await store.insert_batch(batch, items)
            assert await store.rerun_batch(batch.id, [], remake) is None  # still open
            await store.transition(items[0].id, JobState.WAITING, JobState.SUCCEEDED)
            await store.transition(items[1].id, JobState.WAITING, JobState.FAILED)
            await store.transition(items[2].id, JobState.WAITING, JobState.FAILED)
            await store.transition(items[3].id, JobState.WAITING, JobState.SUCCEEDED)
            await store.end_batch(attrs.evolve(batch, state=BatchState.PARTIAL_FAILED), [])
            assert await store.rerun_plan(batch.id, ["c3", "nope"]) == (3, 3.0, ["nope"])
            assert await store.rerun_plan(batch.id, []) == (2, 2.0, [])
            result = await store.rerun_batch(batch.id, ["c3"], remake)
            assert result is not None
            reopened, count = result
            assert count == 3
            assert (reopened.state, reopened.repairs, reopened.completed_at) == (
                BatchState.PROCESSING, 1, None)
            now = await store.batch_items(batch.id, -1, 10)
            assert now[0].id == items[0].id  # kept, with its outputs
            assert [j.state for j in now[1:]] == [JobState.WAITING] * 3
            assert [j.metadata["from"] for j in now[1:]] == ["c1", "c2", "c3"]
            assert [j.waiting_on for j in now] == [0, 0, 1, 0]
            old = await store.get_job(items[1].id)
            assert old is not None and old.state is JobState.FAILED
            assert old.replaced_by == now[1].id
            counts = await store.batch_counts(batch.id)
            assert (counts.total, counts.succeeded, counts.waiting) == (4, 1, 3)
            assert await store.released_items(batch.id) == []

    # -- monitoring: the error log and alerts --------------------------------

    async def test_error_log_batches_filter_and_resolve(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        start = wall_now()
        async with open_backend() as store:
            await store.add_errors([
                ErrorEntry(Level.ERROR, "provider:fal", "boom", start, stack="Traceback...",
                           context={"code": "PROVIDER_ERROR"}, job_id="gen_1",
                           provider_task_id="t1"),
                ErrorEntry(Level.WARN, "actor:scheduler", "slow", start + 10),
                ErrorEntry(Level.CRITICAL, "component:database", "gone", start + 20),
            ])
            every = await store.list_errors()
            assert [e.message for e in every] == ["gone", "slow", "boom"]
            boom = every[-1]
            assert (boom.stack, boom.context, boom.job_id, boom.provider_task_id) == (
                "Traceback...", {"code": "PROVIDER_ERROR"}, "gen_1", "t1")
            assert [e.message for e in await store.list_errors({"level": "WARN"})] == ["slow"]
            assert [e.message for e in await store.list_errors({"source": "provider"})] == ["boom"]
            window = {"since": start + 5, "until": start + 20}
            assert [e.message for e in await store.list_errors(window)] == ["slow"]
            assert len(await store.list_errors(limit=2)) == 2

            assert boom.id is not None
            autojump_clock.jump(5)
            resolved = await store.resolve_error(boom.id, "ops")
            assert resolved is not None and resolved.resolved and resolved.resolved_by == "ops"
            again = await store.resolve_error(boom.id, "someone else")
            assert again is not None and again.resolved_by == "ops"
            assert again.resolved_at == resolved.resolved_at
            assert await store.resolve_error(10_000, "ops") is None
            assert [e.message for e in await store.list_errors({"resolved": False})] == [
                "gone", "slow"]

    async def test_an_alert_and_its_notifications_are_written_together(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        now = wall_now()
        alert = Alert("failure_rate:fal", "failure_rate", "fal", Severity.HIGH,
                      "fal fails 60 %", now, details={"rate": 0.6})
        async with open_backend() as store:
            stored = await store.record_alert(alert, ["email", "slack"])
            assert alert.id is None and stored.id is not None  # the caller's copy is kept
            assert (stored.sent_at, stored.channel) == (now, "email,slack")
            with pytest.raises(ValueError):  # one firing row per fingerprint
                await store.record_alert(alert)
            due = await store.due_alert_deliveries("email", now, 10)
            assert [(d.status, d.state, d.alert.id) for d in due] == [
                (AlertState.FIRING, DELIVERY_PENDING, stored.id)]
            assert await store.next_alert_delivery_at("slack") == now

            await store.record_alert_delivery(due[0].id, DELIVERY_PENDING, error="refused",
                                              next_attempt_at=now + 30)
            assert await store.due_alert_deliveries("email", now, 10) == []
            assert await store.next_alert_delivery_at("email") == now + 30
            later = await store.due_alert_deliveries("email", now + 30, 10)
            assert (later[0].attempts, later[0].last_error) == (1, "refused")
            await store.record_alert_delivery(later[0].id, DELIVERY_SENT, error=None)
            await store.record_alert_delivery(later[0].id, DELIVERY_PENDING, error="late")
            assert await store.next_alert_delivery_at("email") is None  # sent stays sent

            autojump_clock.jump(60)
            ended = attrs.evolve(stored, state=AlertState.RESOLVED, ends_at=wall_now())
            await store.record_alert(ended, ["email"])
            notices = await store.due_alert_deliveries("email", wall_now(), 10)
            assert [(d.status, d.alert.ends_at) for d in notices] == [
                (AlertState.RESOLVED, ended.ends_at)]
            fresh = await store.record_alert(alert)  # resolved: it may fire anew
            assert fresh.id != stored.id
            assert [a.id for a in await store.list_alerts(AlertState.FIRING)] == [fresh.id]
            assert [a.id for a in await store.list_alerts()] == [fresh.id, stored.id]

            assert fresh.id is not None
            acked = await store.acknowledge_alert(fresh.id, "ops")
            assert acked is not None and acked.acknowledged and acked.acknowledged_by == "ops"
            loaded = await store.get_alert(fresh.id)
            assert loaded is not None and loaded.acknowledged_at == acked.acknowledged_at
            assert await store.acknowledge_alert(10_000, "ops") is None

    async def test_prune_keeps_what_is_recent_and_what_still_fires(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        old = wall_now()
        async with open_backend() as store:
            await store.add_errors([ErrorEntry(Level.ERROR, "actor:x", "old", old)])
            firing = await store.record_alert(
                Alert("a:1", "a", "1", Severity.LOW, "still", old), ["webhook"])
            gone = await store.record_alert(
                Alert("a:2", "a", "2", Severity.LOW, "over", old, state=AlertState.RESOLVED,
                      ends_at=old), ["webhook"])
            autojump_clock.jump(100)
            await store.add_errors([ErrorEntry(Level.ERROR, "actor:x", "new", wall_now())])
            assert await store.prune_monitoring(wall_now() - 50) == 2
            assert [e.message for e in await store.list_errors()] == ["new"]
            assert [a.id for a in await store.list_alerts()] == [firing.id]
            assert gone.id is not None and await store.get_alert(gone.id) is None
            pending = await store.due_alert_deliveries("webhook", wall_now(), 10)
            assert [d.alert.id for d in pending] == [firing.id]

    async def test_oldest_queued_job(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            assert await store.oldest_queued_at() is None
            first = await inserted(store)
            autojump_clock.jump(10)
            await inserted(store)
            assert await store.oldest_queued_at() == first.created_at
            await store.transition(first.id, JobState.QUEUED, JobState.CANCELLED)
            assert await store.oldest_queued_at() == first.created_at + 10

    async def test_job_totals_in_a_time_range(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            start = wall_now()
            ran = await inserted(store, started_at=start)
            autojump_clock.jump(30)
            await store.transition(ran.id, JobState.QUEUED, JobState.SUCCEEDED)
            await inserted(store)
            totals = await store.job_totals(start, wall_now() + 1)
            assert totals == {"byState": {"SUCCEEDED": 1, "QUEUED": 1}, "meanRunSeconds": 30}
            assert await store.job_totals(start + 1, wall_now() + 1) == {
                "byState": {"QUEUED": 1}, "meanRunSeconds": None}

    # -- experiments ------------------------------------------------------------

    async def test_an_experiment_reads_back_whole_and_is_replaced_whole(
        self, open_backend: OpenBackend
    ) -> None:
        experiment = Experiment(
            id=new_experiment_id(), name="e", description="d",
            variants=[Variant("A", "m"),
                      Variant("B", "m2", "bee", "{prompt}!", {"seed": 2}, 3.0, {"f": "x"}, True)],
            metrics=[Metric(MetricName.SUCCESS_RATE),
                     Metric(MetricName.COST, Role.SECONDARY, Goal.MINIMIZE)],
            match_model="m", coverage=0.5, namespace="n", namespace_range=(0.25, 0.5),
            allocation=Allocation.BANDIT, bandit=BanditSettings(floor=0.05, pause_below=0.1),
            budget=9.5, segment_attribute="plan", sequential=True, created_at=1.0,
            updated_at=1.0)
        async with open_backend() as store:
            await store.save_experiment(experiment)
            assert await store.get_experiment(experiment.id) == experiment
            experiment.state = ExperimentState.RUNNING
            experiment.variants = experiment.variants[:1] + [Variant("C", "m")]
            experiment.phase = 2
            await store.save_experiment(experiment)
            assert await store.list_experiments() == [experiment]
            assert await store.get_experiment("exp_none") is None

    async def test_the_first_stored_assignment_wins(self, open_backend: OpenBackend) -> None:
        async with open_backend() as store:
            first = Assignment("exp_1", "u", "A", 0, 1.0)
            assert await store.assign(first) == first
            assert await store.assign(Assignment("exp_1", "u", "B", 1, 2.0)) == first
            assert await store.assignment_of("exp_1", "u") == first
            assert await store.assignment_of("exp_1", "v") is None

    async def test_observations_spend_and_recent_jobs_come_from_the_job_rows(
        self, open_backend: OpenBackend, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_backend() as store:
            won, _ = await store.insert_job(make_job(
                experiment_id="exp_1", variant_id="A", user_id="u1", cost=2.0,
                metadata={"plan": "pro"}))
            lost, _ = await store.insert_job(make_job(experiment_id="exp_1", variant_id="B",
                                                      owner="key1", cost=1.5))
            waiting, _ = await store.insert_job(make_job(experiment_id="exp_1", variant_id="B"))
            await store.insert_job(make_job(experiment_id="exp_2", variant_id="A", cost=7.0))
            autojump_clock.jump(3)
            await store.transition(won.id, JobState.QUEUED, JobState.SUBMITTING,
                                   submitting_at=wall_now())
            autojump_clock.jump(5)
            await store.transition(won.id, JobState.SUBMITTING, JobState.SUCCEEDED)
            await store.update(won.id, JobState.SUCCEEDED, rating=4, feedback="ok")
            await store.transition(lost.id, JobState.QUEUED, JobState.FAILED)
            await store.assign(Assignment("exp_1", "u1", "A", 2, 0.0))
            found = await store.observations("exp_1", "plan")
            assert [o.phase for o in found] == [2, None, None]
            assert [(o.variant_id, o.unit, o.succeeded, o.cost, o.rating, o.segment)
                    for o in found] == [("A", "u1", True, 2.0, 4, "pro"),
                                        ("B", "key:key1", False, 1.5, None, None),
                                        ("B", f"job:{waiting.id}", None, None, None, None)]
            assert (found[0].queue_wait, found[0].run_time) == (pytest.approx(3),
                                                                pytest.approx(5))
            assert await store.experiment_spend("exp_1") == 3.5
            assert [job.id for job in await store.experiment_jobs("exp_1", "A", 5)] == [won.id]
            assert await store.experiment_jobs("exp_1", "B", 5) == []
