"""The batch engine (actors/batches/): the actor that releases items, and the service.

A real runtime with the sandbox provider on a real store in tmp_path. What a
batch did is asserted from the store's committed changes (``Store.subscribe``),
which carry every transition in commit order: the items open at any moment are
counted from them, not sampled. Timers run on a ``MockClock`` that jumps only
after real idleness (the store's worker threads and the sandbox's drawing are
real).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from actors.batches.model import (
    Batch,
    BatchCounts,
    BatchOptions,
    BatchState,
    item_ref,
    item_status,
    new_batch_id,
    output_ref,
)
from actors.catalog import ModelSpec, PollingSpec, PollingStrategy
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode
from actors.jobs import AT_PROVIDER, Job, JobState, new_job_id
from actors.keys import KeyLimits, Scope, new_key
from actors.providers.sandbox import SandboxSettings
from actors.quotas import QuotaSettings
from actors.runtime import Runtime
from actors.store import Store, open_store
from tests.test_outbox import SECRET, settings, start_receiver, verify

CATALOG = {
    "image": ModelSpec(provider="sandbox", provider_model="sandbox-image"),
    "video": ModelSpec(provider="sandbox", provider_model="sandbox-video", max_duration=3600,
                       polling=PollingSpec(strategy=PollingStrategy.FIXED, interval=5)),
}
OPEN_STATES = frozenset({JobState.QUEUED, *AT_PROVIDER})


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.1)


def make_runtime(store: Store, tmp_path: Path, **options: Any) -> Runtime:
    sandbox = {"delay": 0.5, "video_duration": 30, "rate": 100, "burst": 100,
               "max_in_flight": 8, **options.pop("sandbox", {})}
    return Runtime(store, providers={"sandbox": SandboxSettings(**sandbox)}, catalog=CATALOG,
                   media_dir=tmp_path / "media", **options)


def item(index: int, prompt: str = "", *, model: str = "image", depends_on: list[str] | None = None,
         input_images: list[str] | None = None, priority: int = 0) -> Job:
    """An item as the batch front door builds it."""
    spec = CATALOG[model]
    return Job(id=new_job_id(), model=model, provider=spec.provider,
               provider_model=spec.provider_model, prompt=prompt or f"item {index}",
               state=JobState.WAITING, batch_index=index, custom_id=f"item-{index}",
               depends_on=list(depends_on or []), input_images=list(input_images or []),
               priority=priority)


def batch_of(**options: Any) -> Batch:
    return Batch(id=new_batch_id(), options=BatchOptions(**options), total=0)


@attrs.define
class Watcher:
    """Every committed change of the test's jobs, and the batch's items open at once."""

    changes: list[Job] = attrs.field(factory=list)
    most_open: int = 0
    _state: dict[str, JobState] = attrs.field(factory=dict)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def next_change(self, within: float = 10) -> None:
        """Return at the next change, or after ``within`` seconds: a test waits on
        the store rather than polling on a short timer, which a ``MockClock``
        jumping after real idleness would make slow."""
        with trio.move_on_after(within):
            await self._changed.wait()

    async def follow(self, feed: trio.MemoryReceiveChannel[Job]) -> None:
        async for job in feed:
            self.changes.append(job)
            self._changed.set()
            self._changed = trio.Event()
            self._state[job.id] = job.state
            if job.batch_id is not None:
                now_open = sum(1 for state in self._state.values() if state in OPEN_STATES)
                self.most_open = max(self.most_open, now_open)

    def states(self) -> list[JobState]:
        return list(self._state.values())

    def released(self) -> list[Job]:
        """Items as released (WAITING -> QUEUED), in order."""
        return [job for job in self.changes
                if job.state is JobState.QUEUED and job.released_at is not None
                and job.attempts == 0 and job.submitting_at is None]


@asynccontextmanager
async def running(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Runtime, Watcher]]:
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        watcher = Watcher()
        nursery.start_soon(watcher.follow, store.subscribe())
        runtime = make_runtime(store, tmp_path, **options)
        await nursery.start(runtime.run)
        yield runtime, watcher
        nursery.cancel_scope.cancel()


async def ended(runtime: Runtime, batch_id: str, watcher: Watcher,
                within: float = 7200) -> tuple[Batch, BatchCounts]:
    with trio.fail_after(within):
        while True:
            batch, counts = await runtime.batches.get(batch_id, None)
            if batch.state.terminal:
                return batch, counts
            await watcher.next_change()


async def until(check: Callable[[], Any], watcher: Watcher, within: float = 7200) -> None:
    with trio.fail_after(within):
        while not await check():
            await watcher.next_change()


async def states(runtime: Runtime, batch_id: str) -> list[str]:
    return [item_status(job) for job in await runtime.batches.items(batch_id, None, limit=1000)]


# -- concurrency and order ------------------------------------------------------


async def test_max_concurrency_is_never_exceeded(tmp_path: Path, clock: MockClock) -> None:
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(max_concurrency=3),
                                             [item(i) for i in range(20)])
        assert batch.total == 20 and batch.state is BatchState.PROCESSING
        done, counts = await ended(runtime, batch.id, watcher)
    assert done.state is BatchState.COMPLETED and done.completed_at is not None
    assert (counts.total, counts.succeeded, counts.open) == (20, 20, 0)
    # The provider had room for 8: the batch's cap held, and was used.
    assert watcher.most_open == 3


async def test_parallel_false_runs_one_at_a_time_in_order(
    tmp_path: Path, clock: MockClock
) -> None:
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(parallel=False, max_concurrency=5),
                                             [item(i) for i in range(6)])
        done, _ = await ended(runtime, batch.id, watcher)
    assert done.state is BatchState.COMPLETED
    assert [job.batch_index for job in watcher.released()] == list(range(6))
    assert watcher.most_open == 1


async def test_stop_on_error_cancels_what_had_not_started_after_the_third_item_fails(
    tmp_path: Path, clock: MockClock
) -> None:
    jobs = [item(i, "a [fail] item" if i == 2 else "") for i in range(8)]
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(
            batch_of(parallel=False, stop_on_error=True), jobs)
        done, counts = await ended(runtime, batch.id, watcher)
        shown = await states(runtime, batch.id)
    assert shown == ["SUCCESS", "SUCCESS", "FAILED", *["CANCELLED"] * 5]
    assert done.state is BatchState.PARTIAL_FAILED
    assert done.stopped_reason is not None and "stopOnError" in done.stopped_reason
    assert (counts.succeeded, counts.failed, counts.cancelled) == (2, 1, 5)


async def test_without_stop_on_error_a_failure_does_not_stop_the_others(
    tmp_path: Path, clock: MockClock
) -> None:
    jobs = [item(i, "a [fail] item" if i in (0, 3) else "") for i in range(6)]
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(max_concurrency=2), jobs)
        done, counts = await ended(runtime, batch.id, watcher)
    assert done.state is BatchState.PARTIAL_FAILED and done.stopped_reason is None
    assert (counts.succeeded, counts.failed) == (4, 2)


# -- schedule ---------------------------------------------------------------------


async def test_nothing_starts_before_not_before(tmp_path: Path, clock: MockClock) -> None:
    async with running(tmp_path) as (runtime, watcher):
        start = wall_now() + 120
        batch = await runtime.batches.create(batch_of(not_before=start),
                                             [item(i) for i in range(3)])
        await trio.sleep(100)
        assert watcher.released() == []
        assert await states(runtime, batch.id) == ["WAITING"] * 3
        done, _ = await ended(runtime, batch.id, watcher)
    assert done.state is BatchState.COMPLETED
    assert min(job.released_at or 0 for job in watcher.released()) >= start


async def test_items_not_started_by_the_deadline_expire(tmp_path: Path, clock: MockClock) -> None:
    """One video runs (30 s) at a time; the deadline comes at 10 s: the running one
    finishes, the others end EXPIRED, and the batch is PARTIAL_FAILED."""
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(
            batch_of(max_concurrency=1, deadline=wall_now() + 10),
            [item(i, model="video") for i in range(4)])
        done, counts = await ended(runtime, batch.id, watcher)
        shown = await states(runtime, batch.id)
        expired = (await runtime.batches.items(batch.id, None))[1]
    assert shown == ["SUCCESS", "EXPIRED", "EXPIRED", "EXPIRED"]
    assert (counts.expired, counts.failed, counts.succeeded) == (3, 3, 1)
    assert done.state is BatchState.PARTIAL_FAILED
    assert expired.error is not None and expired.error.code is ErrorCode.EXPIRED
    assert not expired.error.is_retryable


# -- dependencies -------------------------------------------------------------------


async def test_a_dependency_failing_fails_its_dependents_and_the_rest_go_on(
    tmp_path: Path, clock: MockClock
) -> None:
    """c fails; d (on c) and e (on d) end UPSTREAM_FAILED without running; b waits
    for a and runs; f, on nothing, succeeds."""
    jobs = [item(0), item(1, depends_on=["item-0"]), item(2, "[fail]"),
            item(3, depends_on=["item-2"]), item(4, depends_on=["item-3", "item-0"]), item(5)]
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(max_concurrency=6), jobs)
        done, counts = await ended(runtime, batch.id, watcher)
        shown = await states(runtime, batch.id)
        items = await runtime.batches.items(batch.id, None)
    assert shown == ["SUCCESS", "SUCCESS", "FAILED", "UPSTREAM_FAILED", "UPSTREAM_FAILED",
                     "SUCCESS"]
    assert (counts.upstream_failed, counts.failed, counts.succeeded) == (2, 3, 3)
    assert done.state is BatchState.PARTIAL_FAILED
    assert items[3].error is not None and items[3].error.details == {"dependency": "item-2"}
    assert items[4].error is not None and items[4].error.details == {"dependency": "item-3"}
    released = {job.batch_index for job in watcher.released()}
    assert released == {0, 1, 2, 5}  # the upstream-failed never entered a queue
    # b was released only after a had succeeded.
    order = [(job.batch_index, job.state) for job in watcher.changes]
    assert order.index((0, JobState.SUCCEEDED)) < order.index((1, JobState.QUEUED))


async def test_a_chain_takes_its_dependency_output_by_reference(
    tmp_path: Path, clock: MockClock
) -> None:
    """An input image naming a dependency's output is released as a reference to
    that dependency's current job (the provider side reads it from storage)."""
    jobs = [item(0), item(1, input_images=[item_ref("item-0", 0)])]
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(), jobs)
        await ended(runtime, batch.id, watcher)
    first, second = watcher.released()
    assert first.batch_index == 0 and second.batch_index == 1
    assert second.input_images == [output_ref(jobs[0].id, 0)]
    assert second.depends_on == ["item-0"]  # the image made it a dependency


async def test_an_output_a_dependency_does_not_have_fails_the_item(
    tmp_path: Path, clock: MockClock
) -> None:
    jobs = [item(0), item(1, input_images=[item_ref("item-0", 3)])]
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(), jobs)
        await ended(runtime, batch.id, watcher)
        assert await states(runtime, batch.id) == ["SUCCESS", "UPSTREAM_FAILED"]


# -- cancel and retry -----------------------------------------------------------------


async def test_cancel_ends_waiting_queued_and_running_items(
    tmp_path: Path, clock: MockClock
) -> None:
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(max_concurrency=2),
                                             [item(i, model="video") for i in range(5)])

        async def two_running() -> bool:
            return (await runtime.batches.get(batch.id, None))[1].running == 2

        await until(two_running, watcher)
        cancelled, counts = await runtime.batches.cancel(batch.id, None)
        assert cancelled.state is BatchState.CANCELLED
        assert (counts.cancelled, counts.open) == (5, 0)
        assert cancelled.stopped_reason == "cancelled by the client"
        with pytest.raises(EaselError) as again:
            await runtime.batches.cancel(batch.id, None)
        assert again.value.code is ErrorCode.CONFLICT


async def test_retry_re_runs_only_what_did_not_succeed(tmp_path: Path, clock: MockClock) -> None:
    jobs = [item(i, "[fail]" if i == 1 else "") for i in range(5)]
    async with running(tmp_path) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(parallel=False, stop_on_error=True), jobs)
        with pytest.raises(EaselError) as busy:
            await runtime.batches.retry(batch.id, None)
        assert busy.value.code is ErrorCode.CONFLICT
        await ended(runtime, batch.id, watcher)
        before = await runtime.batches.items(batch.id, None)
        assert [item_status(job) for job in before] == ["SUCCESS", "FAILED", *["CANCELLED"] * 3]

        again, counts = await runtime.batches.retry(batch.id, None)
        assert again.state is BatchState.PROCESSING and again.repairs == 1
        assert again.stopped_reason is None and again.completed_at is None
        assert (counts.succeeded, counts.waiting) == (1, 4)
        done, counts = await ended(runtime, batch.id, watcher)
        after = await runtime.batches.items(batch.id, None)
        # Item 1 failed again and stopped the batch again; nothing else ran twice.
        assert [item_status(job) for job in after] == ["SUCCESS", "FAILED", *["CANCELLED"] * 3]
        assert after[0] == before[0]  # the succeeded item and its outputs, untouched
        assert all(new.id != old.id for new, old in zip(after[1:], before[1:], strict=True))
        replaced = await runtime.store.get_job(before[1].id)
        assert replaced is not None and replaced.replaced_by == after[1].id
        assert replaced.state is JobState.FAILED  # a terminal job stays terminal
        assert done.repairs == 1
        ran = collections.Counter(job.custom_id for job in watcher.released())
        assert ran == {"item-0": 1, "item-1": 2}

        # Named items run again too, succeeded or not; unknown names are refused.
        with pytest.raises(EaselError) as unknown:
            await runtime.batches.retry(batch.id, None, ["item-0", "nope"])
        assert unknown.value.code is ErrorCode.INVALID_REQUEST
        assert unknown.value.info.details == {"customIds": ["nope"]}
        again, _ = await runtime.batches.retry(batch.id, None, ["item-0"])
        assert again.repairs == 2
        await ended(runtime, batch.id, watcher)
        latest = await runtime.batches.items(batch.id, None)
        assert latest[0].id != before[0].id and latest[0].state is JobState.SUCCEEDED


# -- reading --------------------------------------------------------------------------


async def test_another_keys_batch_is_not_found_and_results_page_in_completion_order(
    tmp_path: Path, clock: MockClock
) -> None:
    async with running(tmp_path) as (runtime, watcher):
        batch = batch_of(max_concurrency=1)
        batch.owner = "key_a"
        jobs = [item(i) for i in range(5)]
        for job in jobs:
            job.owner = "key_a"
        await runtime.batches.create(batch, jobs)
        for call in (runtime.batches.get(batch.id, "key_b"),
                     runtime.batches.items(batch.id, "key_b"),
                     runtime.batches.cancel(batch.id, "key_b")):
            with pytest.raises(EaselError) as missing:
                await call
            assert missing.value.code is ErrorCode.NOT_FOUND
        await ended(runtime, batch.id, watcher)
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = await runtime.batches.finished(batch.id, "key_a", after=cursor,
                                                          limit=2)
            seen += [job.custom_id or "" for job in page]
            if len(page) < 2:
                break
        assert seen == [f"item-{i}" for i in range(5)]  # one at a time: in order
        with pytest.raises(EaselError) as bad:
            await runtime.batches.finished(batch.id, None, after="not-a-cursor")
        assert bad.value.code is ErrorCode.INVALID_REQUEST


# -- quotas, fairness, restarts, webhooks -------------------------------------------------


async def test_a_batch_is_refused_at_the_queue_depth_and_counts_only_released_items(
    tmp_path: Path, clock: MockClock
) -> None:
    limits = QuotaSettings(max_queue_depth=5)
    async with running(tmp_path, limits=limits) as (runtime, watcher):
        # 50 items are accepted with room for 5 unfinished jobs: they wait.
        big = await runtime.batches.create(batch_of(max_concurrency=2, not_before=wall_now() + 60),
                                           [item(i) for i in range(50)])
        assert runtime.quotas._total == 0
        blocker = [item(0, model="video"), item(1, model="video"), item(2, model="video"),
                   item(3, model="video"), item(4, model="video")]
        await runtime.batches.create(batch_of(max_concurrency=5), blocker)

        async def full() -> bool:
            return runtime.quotas._total == 5

        await until(full, watcher)
        with pytest.raises(EaselError) as refused:
            await runtime.batches.create(batch_of(), [item(0)])
        assert refused.value.code is ErrorCode.RATE_LIMITED
        assert refused.value.info.details["limit"] == "max_queue_depth"
        await runtime.batches.cancel(big.id, None)


async def test_a_single_submitted_later_is_not_starved_by_a_big_batch(
    tmp_path: Path, clock: MockClock
) -> None:
    """A batch holds at most its concurrency of a provider's slots and queue: a
    single submission at the same priority finds a slot and finishes long before
    the batch does."""
    async with running(tmp_path, sandbox={"max_in_flight": 2}) as (runtime, watcher):
        batch = await runtime.batches.create(batch_of(max_concurrency=1),
                                             [item(i) for i in range(30)])

        async def started() -> bool:
            return bool(watcher.released())

        await until(started, watcher)
        single, _ = await runtime.submit(Job(id=new_job_id(), model="image", provider="sandbox",
                                             provider_model="sandbox-image", prompt="alone"))
        with trio.fail_after(600):
            job = await runtime.wait_for_job(single.id, 600)
        assert job.state is JobState.SUCCEEDED
        assert not (await runtime.batches.get(batch.id, None))[0].state.terminal
        done, _ = await ended(runtime, batch.id, watcher)
        assert job.completed_at is not None and done.completed_at is not None
        assert job.completed_at < done.completed_at


async def test_a_restart_mid_batch_resumes_without_resubmitting(
    tmp_path: Path, clock: MockClock
) -> None:
    async with open_store(tmp_path / "db.sqlite") as store:
        watcher = Watcher()
        async with trio.open_nursery() as outer:
            outer.start_soon(watcher.follow, store.subscribe())
            async with trio.open_nursery() as nursery:
                first = make_runtime(store, tmp_path)
                await nursery.start(first.run)
                batch = await first.batches.create(
                    batch_of(max_concurrency=2), [item(i, model="video") for i in range(5)])

                async def some_done() -> bool:
                    # Stopped with two tasks running at the provider and none
                    # being created (a create cut off would end the job
                    # UNCERTAIN_SUBMISSION, by design: never resent).
                    now = watcher.states()
                    return (now.count(JobState.SUCCEEDED) >= 2
                            and now.count(JobState.RUNNING) == 2)

                await until(some_done, watcher)
                nursery.cancel_scope.cancel()  # the daemon stops mid-batch
            async with trio.open_nursery() as nursery:
                second = make_runtime(store, tmp_path)
                await nursery.start(second.run)
                done, counts = await ended(second, batch.id, watcher)
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    assert done.state is BatchState.COMPLETED and counts.succeeded == 5
    submitted = collections.Counter(job.id for job in watcher.changes
                                    if job.state is JobState.SUBMITTING)
    assert sorted(submitted.values()) == [1] * 5
    assert watcher.most_open <= 2


async def test_the_batch_webhook_is_sent_when_it_ends_and_each_item_with_item_webhooks(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as servers:
        receiver = await start_receiver(servers)
        async with running(tmp_path, webhooks=settings()) as (runtime, watcher):
            batch = await runtime.batches.create(
                batch_of(webhook_url=receiver.url, item_webhooks=True),
                [item(i) for i in range(3)])
            done, _ = await ended(runtime, batch.id, watcher)
            received = await receiver.wait_for(4)
        servers.cancel_scope.cancel()
    bodies = [verify(request, SECRET) for request in received]
    # The batch's end comes after its items' (written once they had all ended).
    assert {body.get("customId") for body in bodies[:3]} == {"item-0", "item-1", "item-2"}
    last = bodies[3]
    assert last["type"] == "batch.ended" and last["batchId"] == batch.id
    assert last["status"] == "COMPLETED" and last["completedTasks"] == 3
    assert done.state is BatchState.COMPLETED


async def test_a_start_picks_up_what_a_crash_left_half_done(
    tmp_path: Path, clock: MockClock
) -> None:
    """Left by a crash: a failed item whose dependents were never failed, and an
    item released (QUEUED) whose ``Enqueue`` never reached the scheduler. A new
    runtime passes the failure on, runs the released item once, and ends the batch."""
    async with open_store(tmp_path / "db.sqlite") as store:
        batch = batch_of(stop_on_error=False)
        jobs = [item(0, "[fail]"), item(1, depends_on=["item-0"]),
                item(2, depends_on=["item-1"]), item(3), item(4)]
        batch.total = len(jobs)
        for job in jobs:
            job.batch_id = batch.id
        await store.insert_batch(batch, jobs)
        await store.transition(jobs[0].id, JobState.WAITING, JobState.FAILED)
        await store.transition(jobs[3].id, JobState.WAITING, JobState.QUEUED,
                               released_at=wall_now())
        watcher = Watcher()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.follow, store.subscribe())
            runtime = make_runtime(store, tmp_path)
            await nursery.start(runtime.run)
            done, counts = await ended(runtime, batch.id, watcher)
            shown = await states(runtime, batch.id)
            nursery.cancel_scope.cancel()
    assert shown == ["FAILED", "UPSTREAM_FAILED", "UPSTREAM_FAILED", "SUCCESS", "SUCCESS"]
    assert done.state is BatchState.PARTIAL_FAILED
    assert (counts.upstream_failed, counts.succeeded) == (2, 2)
    submitted = collections.Counter(job.id for job in watcher.changes
                                    if job.state is JobState.SUBMITTING)
    assert submitted == {jobs[3].id: 1, jobs[4].id: 1}


async def test_a_batch_costing_more_than_the_day_allows_is_refused_whole(
    tmp_path: Path, clock: MockClock
) -> None:
    async with running(tmp_path) as (runtime, watcher):
        key, _ = new_key("ci", frozenset({Scope.SUBMIT}), KeyLimits(daily_spend=1.0), wall_now())
        await runtime.store.create_key(key)

        def priced(n: int) -> tuple[Batch, list[Job]]:
            batch = batch_of(not_before=wall_now() + 3600)
            batch.owner = key.id
            jobs = [item(i) for i in range(n)]
            for job in jobs:
                job.owner, job.cost = key.id, 0.4
            return batch, jobs

        with pytest.raises(EaselError) as refused:
            await runtime.batches.create(*priced(3))
        assert refused.value.code is ErrorCode.RATE_LIMITED
        assert refused.value.info.details["limit"] == "daily_spend"
        accepted = await runtime.batches.create(*priced(2))
        assert accepted.estimated_cost == pytest.approx(0.8)
        with pytest.raises(EaselError):  # 0.8 spent: another 0.4 is too much
            await runtime.batches.create(*priced(1))
        await runtime.batches.cancel(accepted.id, key.id)


async def test_an_item_taking_an_output_of_no_item_of_the_batch_is_refused(
    tmp_path: Path, clock: MockClock
) -> None:
    async with running(tmp_path) as (runtime, _):
        with pytest.raises(EaselError) as refused:
            await runtime.batches.create(batch_of(), [item(0, input_images=[item_ref("x", 0)])])
        assert refused.value.code is ErrorCode.INVALID_REQUEST
        assert refused.value.info.details == {"customIds": ["x"]}
