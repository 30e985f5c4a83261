"""actors/scheduler.py: the persistent priority queue in front of each provider,
and the routing it decides.

A real store in tmp_path; the test plays the provider actors: it reads their
mailboxes (``Submit``) and sends what a provider would (``ProviderReady``,
``Demand``, ``CircuitChanged``, ``Returned``, ``Unaccepted``). No test here
depends on time: circuits change by message.
"""

from __future__ import annotations

import functools
import gc
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actors.scheduler as scheduler_module
from actors.breaker import CircuitState, CircuitView
from actors.catalog import ModelSpec
from actors.errors import ErrorCode, ErrorInfo
from actors.jobs import Job, JobState
from actors.lifecycle import Lifecycle
from actors.messages import (
    Announce,
    CircuitChanged,
    Demand,
    Enqueue,
    ProviderMessage,
    ProviderReady,
    Returned,
    SchedulerMessage,
    Submit,
    Unaccepted,
)
from actors.monitor import Monitor
from actors.routing import Router
from actors.scheduler import Scheduler, queue_key, seq_of
from actors.store import Store, open_store
from tests.store_contract import make_job

CLOSED = CircuitView(CircuitState.CLOSED)
OPEN = CircuitView(CircuitState.OPEN)

CATALOG = {
    "m": ModelSpec(provider="p", provider_model="pm", fallbacks=["f"]),
    "lonely": ModelSpec(provider="p", provider_model="pm"),
    "f": ModelSpec(provider="q", provider_model="qm"),
    # One model through both sections (tests/test_batch_spread.py).
    "shared": ModelSpec(provider="p", provider_model="pm", served_by=["shared-q"]),
    "shared-q": ModelSpec(provider="q", provider_model="qm"),
}


@attrs.define
class Harness:
    store: Store
    scheduler: Scheduler
    lifecycle: Lifecycle
    tell: trio.MemorySendChannel[SchedulerMessage]
    out: dict[str, trio.MemoryReceiveChannel[ProviderMessage]]
    nursery: trio.Nursery

    async def start(self, ready: dict[str, int] | None = None) -> None:
        """Run the scheduler, then say each provider is ready with its free slots."""
        await self.nursery.start(self.scheduler.run)
        for name, free in ({"p": 1} if ready is None else ready).items():
            await self.tell.send(ProviderReady(name, free, CLOSED))

    async def insert(self, **fields: Any) -> Job:
        job, _ = await self.store.insert_job(make_job(**fields))
        return job

    async def enqueue(self, **fields: Any) -> Job:
        job = await self.insert(**fields)
        await self.tell.send(Enqueue(job))
        return job

    async def next(self, provider: str = "p") -> Job:
        """The next job handed to ``provider`` (the ``Announce`` a starting
        scheduler sends is skipped: the test says ``ProviderReady`` itself)."""
        with trio.fail_after(60):
            message = await self.out[provider].receive()
            while isinstance(message, Announce):
                message = await self.out[provider].receive()
        assert isinstance(message, Submit)
        return message.job

    async def nothing_more(self, provider: str = "p") -> None:
        """Nothing is handed to ``provider`` now (the store's threads are real)."""
        await trio.testing.wait_all_tasks_blocked(0.02)
        while True:
            try:
                message = self.out[provider].receive_nowait()
            except trio.WouldBlock:
                return
            assert isinstance(message, Announce), message

    async def finish(self, provider: str = "p") -> None:
        """A job of ``provider``'s ended: its slot is free."""
        await self.tell.send(Demand(provider))

    async def events(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in await self.store.events(job_id) if e["kind"] == kind]


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


@asynccontextmanager
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_store(tmp_path / "easel.db") as store:
        lifecycle = Lifecycle()
        tell, mailbox = trio.open_memory_channel[SchedulerMessage](100)
        sends, out = {}, {}
        for name in ("p", "q"):
            sends[name], out[name] = trio.open_memory_channel[ProviderMessage](100)
        scheduler = Scheduler(
            store=store, lifecycle=lifecycle, monitor=Monitor(),
            router=Router(CATALOG, lambda job, model: True), catalog=CATALOG,
            providers=sends, mailbox=mailbox,
        )
        async with trio.open_nursery() as nursery:
            yield Harness(store, scheduler, lifecycle, tell, out, nursery)
            nursery.cancel_scope.cancel()


def queued(h: Harness, provider: str = "p") -> int:
    return h.scheduler.statistics()[provider]


async def test_queued_rows_are_loaded_and_handed_over_by_priority_then_age(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        jobs = [await h.insert(priority=p) for p in [0, 5, -1, 5, 0]]
        running = await h.insert(priority=100, state=JobState.RUNNING)
        await h.insert(priority=100, provider="unknown")  # no such provider here
        await h.start()
        order = []
        for _ in range(5):
            job = await h.next()
            order.append(job.id)
            assert job.state is JobState.QUEUED
            await h.nothing_more()  # one slot: the next waits for this one
            await h.finish()
        await h.nothing_more()
        assert order == [jobs[1].id, jobs[3].id, jobs[0].id, jobs[4].id, jobs[2].id]
        assert running.id not in order
        assert queued(h) == 0


async def test_a_starting_scheduler_asks_every_provider_to_announce_itself(
    tmp_path: Path,
) -> None:
    """A restarted scheduler has lost every provider's credit and circuit."""
    async with harness(tmp_path) as h:
        await h.start(ready={})
        for name in ("p", "q"):
            with trio.fail_after(5):
                assert isinstance(await h.out[name].receive(), Announce)


async def test_nothing_goes_before_the_provider_says_it_is_ready(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={})
        job = await h.enqueue()
        await h.nothing_more()
        await h.tell.send(ProviderReady("p", 1, CLOSED))
        assert (await h.next()).id == job.id


async def test_credit_bounds_how_many_jobs_are_out(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for _ in range(5):
            await h.insert()
        await h.start(ready={"p": 3})
        for _ in range(3):
            await h.next()
        await h.nothing_more()
        await h.finish()
        await h.next()
        await h.nothing_more()
        assert queued(h) == 1


async def test_the_best_job_queued_when_a_slot_frees_goes_first(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        await h.enqueue()
        await h.next()
        low = await h.enqueue(priority=0)
        high = await h.enqueue(priority=9)
        await h.nothing_more()
        await h.finish()
        second = await h.next()
        await h.finish()
        third = await h.next()
        assert [second.id, third.id] == [high.id, low.id]


async def test_enqueueing_a_job_twice_hands_it_over_once(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        await h.enqueue()
        await h.next()
        job = await h.enqueue()
        await h.tell.send(Enqueue(job))
        await h.nothing_more()
        assert queued(h) == 1
        await h.finish()
        assert (await h.next()).id == job.id
        await h.finish()
        await h.nothing_more()


async def test_a_job_handed_over_is_not_handed_again_by_a_late_enqueue(
    tmp_path: Path,
) -> None:
    """A reload can read a new row before its ``Enqueue`` arrives: the scheduler
    remembers what it handed over, until the provider restarts or gives it back."""
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 2})
        job = await h.insert()
        await h.tell.send(ProviderReady("p", 2, CLOSED))  # the reload finds the row
        assert (await h.next()).id == job.id
        await h.tell.send(Enqueue(job))  # ... and its Enqueue comes after
        await h.nothing_more()
        await h.tell.send(Returned(job, None))  # given back: it may go again
        await h.finish()
        assert (await h.next()).id == job.id


async def test_nothing_is_handed_over_while_draining(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for _ in range(3):
            await h.insert()
        h.lifecycle.start_drain()
        await h.start(ready={"p": 4})
        await wait_until(lambda: queued(h) == 3)
        await h.nothing_more()
        await h.enqueue()
        await h.nothing_more()
        assert queued(h) == 4


async def test_a_full_provider_returns_the_job_and_waits_for_demand(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 2})
        first = await h.enqueue()
        second = await h.enqueue()
        assert (await h.next()).id == first.id
        assert (await h.next()).id == second.id
        # The provider was fuller than the scheduler knew: it gives the job back.
        await h.tell.send(Returned(second, None))
        await h.nothing_more()
        assert queued(h) == 1
        await h.finish()
        assert (await h.next()).id == second.id


async def test_a_restarted_provider_gets_its_queued_rows_again(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        first = await h.enqueue()
        assert (await h.next()).id == first.id
        # The provider crashed with the job in its mailbox: QUEUED in the store.
        other = await h.insert()  # and one row never enqueued
        await h.tell.send(ProviderReady("p", 2, CLOSED))
        assert {(await h.next()).id, (await h.next()).id} == {first.id, other.id}


async def test_a_restarted_scheduler_reloads_from_the_store(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        jobs = [await h.insert(priority=p) for p in (1, 2, 3)]
        first_run = trio.CancelScope()
        h.nursery.start_soon(run_in, first_run, h.scheduler)
        await h.tell.send(ProviderReady("p", 2, CLOSED))
        d1 = await h.next()
        d2 = await h.next()
        first_run.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert [d1.id, d2.id] == [jobs[2].id, jobs[1].id]
        # The provider moved the first job on; the second was lost in its mailbox.
        await h.store.transition(d1.id, JobState.QUEUED, JobState.SUBMITTING)
        await h.start()
        assert (await h.next()).id == jobs[1].id
        await h.finish()
        assert (await h.next()).id == jobs[0].id
        await h.nothing_more()


async def run_in(scope: trio.CancelScope, scheduler: Scheduler) -> None:
    with scope:
        await scheduler.run()


# -- routing -------------------------------------------------------------------------


async def test_an_open_circuit_moves_jobs_to_the_fallback(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 4, "q": 4})
        await h.tell.send(CircuitChanged("p", OPEN))
        job = await h.enqueue(model="m")
        moved = await h.next("q")
        assert moved.id == job.id
        assert (moved.provider, moved.provider_model) == ("q", "qm")
        assert moved.served_model == "f" and moved.model == "m"
        stored = await h.store.get_job(job.id)
        assert stored is not None and (stored.provider, stored.served_model) == ("q", "f")
        [fallback] = await h.events(job.id, "fallback")
        assert (fallback["from"], fallback["to"], fallback["reason"]) == ("m", "f", "circuit_open")
        assert (fallback["provider"], fallback["state"]) == ("p", "open")
        await h.nothing_more("p")


async def test_without_a_fallback_the_job_is_held_until_the_circuit_moves(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 4, "q": 4})
        await h.tell.send(CircuitChanged("p", OPEN))
        first = await h.enqueue(model="lonely")
        second = await h.enqueue(model="lonely")
        await h.nothing_more("p")
        await h.nothing_more("q")
        stored = await h.store.get_job(first.id)
        assert stored is not None and stored.state is JobState.QUEUED
        assert [e["action"] for e in await h.events(first.id, "circuit")] == ["held"]
        # Half-open: both go to the provider, whose breaker lets one probe through
        # and returns the other, to wait until the probe's outcome is known.
        await h.tell.send(CircuitChanged("p", CircuitView(CircuitState.HALF_OPEN)))
        probe = await h.next("p")
        assert probe.id == first.id
        returned = await h.next("p")
        retry_at = trio.current_time() + 3600
        await h.tell.send(Returned(returned, CircuitView(CircuitState.HALF_OPEN, retry_at)))
        await h.nothing_more("p")
        await h.tell.send(CircuitChanged("p", CLOSED))  # the probe worked
        assert (await h.next("p")).id == second.id
        # Told once that it waits, however often the scheduler looked again.
        assert len(await h.events(second.id, "circuit")) == 1


async def test_a_returned_probe_waits_at_most_until_its_retry_time(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 4})
        job = await h.enqueue(model="lonely")
        await h.next("p")
        retry_at = trio.current_time() + 0.3
        await h.tell.send(Returned(job, CircuitView(CircuitState.HALF_OPEN, retry_at)))
        await h.nothing_more("p")
        assert (await h.next("p")).id == job.id
        assert trio.current_time() >= retry_at


async def test_no_fallback_whose_circuit_is_open_too(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 4, "q": 4})
        await h.tell.send(CircuitChanged("p", OPEN))
        await h.tell.send(CircuitChanged("q", OPEN))
        job = await h.enqueue(model="m")
        await h.nothing_more("p")
        await h.nothing_more("q")
        assert [e["action"] for e in await h.events(job.id, "circuit")] == ["held"]
        # p half-opens: the job still on p goes to p (a job moves only to a
        # *closed* fallback).
        await h.tell.send(CircuitChanged("p", CircuitView(CircuitState.HALF_OPEN)))
        moved = await h.next("p")
        assert moved.id == job.id and moved.served_model is None


async def test_a_closing_fallback_circuit_frees_held_jobs(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 4, "q": 4})
        await h.tell.send(CircuitChanged("p", OPEN))
        await h.tell.send(CircuitChanged("q", OPEN))
        job = await h.enqueue(model="m")
        await h.nothing_more("q")
        await h.tell.send(CircuitChanged("q", CLOSED))
        moved = await h.next("q")
        assert moved.id == job.id and moved.served_model == "f"


async def test_a_cancelled_held_job_is_not_moved(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 4, "q": 4})
        await h.tell.send(CircuitChanged("p", OPEN))
        await h.tell.send(CircuitChanged("q", OPEN))
        job = await h.enqueue(model="m")
        await h.nothing_more("q")
        await h.store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
        await h.tell.send(CircuitChanged("q", CLOSED))
        await h.nothing_more("q")
        stored = await h.store.get_job(job.id)
        assert stored is not None and stored.state is JobState.CANCELLED
        assert stored.served_model is None


async def refused_at_provider(h: Harness, job: Job, attempts: int) -> Job:
    """What a provider does before it says ``Unaccepted``: the job was SUBMITTING,
    every attempt was refused, and it is put back to QUEUED, durably."""
    submitting = await h.store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                                          attempts=1)
    assert submitting is not None
    queued = await h.store.transition(job.id, JobState.SUBMITTING, JobState.QUEUED,
                                      attempts=attempts, submitting_at=None)
    assert queued is not None
    return queued


async def test_an_unaccepted_submission_moves_to_a_closed_fallback(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 1, "q": 1})
        job = await h.enqueue(model="m")
        handed = await h.next("p")
        error = ErrorInfo(ErrorCode.PROVIDER_UNAVAILABLE, "connection refused", {"attempts": 3})
        await h.tell.send(Unaccepted(await refused_at_provider(h, handed, 3), error))
        moved = await h.next("q")
        assert moved.id == job.id and moved.state is JobState.QUEUED
        assert moved.served_model == "f" and moved.attempts == 3
        [fallback] = await h.events(job.id, "fallback")
        assert (fallback["reason"], fallback["code"], fallback["provider"]) == (
            "not_accepted", "PROVIDER_UNAVAILABLE", "p")
        # The slot the job held at p is free: p may take the next one.
        other = await h.enqueue(model="lonely")
        assert (await h.next("p")).id == other.id


async def test_an_unaccepted_submission_without_a_fallback_fails(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 1, "q": 1})
        await h.tell.send(CircuitChanged("q", OPEN))
        job = await h.enqueue(model="m")  # its fallback's circuit is open
        await h.next("p")
        error = ErrorInfo(ErrorCode.RATE_LIMITED, "429", {"attempts": 4})
        await h.tell.send(Unaccepted(await refused_at_provider(h, job, 4), error))
        with trio.fail_after(5):
            while (stored := await h.store.get_job(job.id)) is None or not stored.state.terminal:
                await trio.sleep(0.01)
        assert stored.state is JobState.FAILED and stored.error is not None
        assert stored.error.code is ErrorCode.RATE_LIMITED


# -- memory: the queue keeps keys, never jobs ------------------------------------------


def live_jobs(ids: set[str]) -> int:
    """How many ``Job`` objects of ``ids`` are alive anywhere in the process."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Job and o.id in ids)


async def test_enqueued_jobs_are_not_kept(tmp_path: Path) -> None:
    """The ``Enqueue`` carries the job; the queue keeps its key and lets it go.
    (Each message carries a copy: the store's writer may still hold the job it
    inserted last.)"""
    async with harness(tmp_path) as h:
        await h.start(ready={})
        refs = []
        for priority in range(50):
            job = attrs.evolve(await h.insert(priority=priority % 3))
            refs.append(weakref.ref(job))
            await h.tell.send(Enqueue(job))
        del job
        await wait_until(lambda: queued(h) == 50)
        gc.collect()
        assert [ref for ref in refs if ref() is not None] == []


async def test_a_job_is_handed_over_as_stored_when_its_turn_comes(tmp_path: Path) -> None:
    """Dispatch reads the job: a change to its row meanwhile is what the provider
    gets, and a job cancelled meanwhile is not handed over at all."""
    async with harness(tmp_path) as h:
        await h.start(ready={})
        cancelled = await h.enqueue(priority=5)
        changed = await h.enqueue(prompt="as submitted")
        await h.store.update(changed.id, JobState.QUEUED, prompt="as stored")
        await h.store.transition(cancelled.id, JobState.QUEUED, JobState.CANCELLED)
        await h.tell.send(ProviderReady("p", 2, CLOSED))
        handed = await h.next()
        assert (handed.id, handed.prompt) == (changed.id, "as stored")
        await h.nothing_more()
        assert queued(h) == 0


async def test_a_restart_reloads_a_large_queue_by_pages_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "RELOAD_PAGE", 64)
    count = 1000
    async with harness(tmp_path) as h:
        async with trio.open_nursery() as inserting:  # concurrent: one commit per batch
            for i in range(count):
                inserting.start_soon(functools.partial(h.insert, priority=i % 7 - 3))
        rows = await h.store.jobs_in([JobState.QUEUED], provider="p")
        expected = [job.id for job in rows]  # by priority, then age
        del rows
        await h.start(ready={})
        assert queued(h) == count
        assert live_jobs(set(expected)) == 0
        await h.tell.send(ProviderReady("p", count, CLOSED))
        handed = [(await h.next()).id for _ in range(count)]
        await h.nothing_more()
        assert handed == expected


async def test_an_open_circuit_moves_a_queue_larger_than_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs are read for routing a batch at a time; every one is looked at."""
    monkeypatch.setattr(scheduler_module, "LOAD_BATCH", 3)
    async with harness(tmp_path) as h:
        lonely = [await h.insert(model="lonely") for _ in range(4)]
        movable = [await h.insert(model="m") for _ in range(7)]
        await h.start(ready={"p": 0, "q": 20})
        await h.tell.send(CircuitChanged("p", OPEN))
        moved = {(await h.next("q")).id for _ in movable}
        assert moved == {job.id for job in movable}
        await wait_until(lambda: queued(h) == len(lonely))
        for job in lonely:
            with trio.fail_after(5):
                while not await h.events(job.id, "circuit"):
                    await trio.sleep(0.01)
        await h.nothing_more("q")


async def test_at_equal_priority_singles_go_before_batch_items_older_than_them(
    tmp_path: Path,
) -> None:
    """A batch's items are inserted when the batch is accepted, so they are older
    than any single submitted while it runs: by age alone a long batch would keep
    going first. Singles go first at equal priority, whether the queue learnt of
    the jobs by ``Enqueue`` or by reloading them from the store; priority still
    comes before everything."""
    async with harness(tmp_path) as h:
        items = [await h.insert(batch_id="batch_1") for _ in range(2)]
        urgent = await h.insert(priority=1, batch_id="batch_1")
        single = await h.insert()
        await h.start()
        order = [(await h.next()).id]  # its one slot is taken now
        later_item = await h.enqueue(batch_id="batch_1")
        later_single = await h.enqueue()
        for _ in range(5):
            await h.finish()
            order.append((await h.next()).id)
        assert order == [urgent.id, single.id, later_single.id, items[0].id, items[1].id,
                         later_item.id]


def test_queue_key_orders_priority_then_singles_then_age() -> None:
    keys = [queue_key(0, 1, batch=True), queue_key(0, 9), queue_key(1, 5, batch=True),
            queue_key(-1, 0), queue_key(0, 2, batch=True)]
    assert sorted(keys) == [keys[2], keys[1], keys[0], keys[4], keys[3]]
    assert [seq_of(key) for key in sorted(keys)] == [5, 9, 1, 2, 0]
