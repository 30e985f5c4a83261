"""actors/scheduler.py: the persistent priority queue in front of each provider.

A real store in tmp_path; the provider actor is faked by the send end of a memory
channel (any async callable will do), so the test sees each ``Dispatch`` in order.
The tests at the end route around open circuit breakers, under MockClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from actors.breaker import BreakerConfig, CircuitBreaker, CircuitState, Outcome
from actors.catalog import ModelSpec
from actors.jobs import Job, JobState, new_job_id
from actors.lifecycle import Lifecycle
from actors.limits import SlotPool
from actors.scheduler import Dispatch, Enqueue, Resync, Scheduler
from actors.store import Store, open_store


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": new_job_id(),
        "model": "m",
        "provider": "p",
        "provider_model": "pm",
        "prompt": "x",
    }
    values.update(fields)
    return Job(**values)


@attrs.define
class Harness:
    store: Store
    scheduler: Scheduler
    lifecycle: Lifecycle
    pool: SlotPool
    dispatched: trio.MemoryReceiveChannel[Dispatch]
    nursery: trio.Nursery

    async def start(self) -> None:
        self.nursery.start_soon(self.scheduler.run)

    async def insert(self, **fields: Any) -> Job:
        job, _ = await self.store.insert_job(make_job(**fields))
        return job

    async def enqueue(self, **fields: Any) -> Job:
        job = await self.insert(**fields)
        await self.scheduler.send.send(Enqueue(job))
        return job

    async def next(self) -> Dispatch:
        with trio.fail_after(5):
            return await self.dispatched.receive()

    async def nothing_more(self) -> None:
        """Nothing is dispatched now (call only while no store call is in flight)."""
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            self.dispatched.receive_nowait()

    async def finish(self, dispatch: Dispatch) -> None:
        """The provider took the job, and later the job ended: its slot is free."""
        dispatch.ticket.bind(dispatch.job.id)
        self.pool.release(dispatch.job.id)


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


@asynccontextmanager
async def harness(tmp_path: Path, capacity: int = 1) -> AsyncIterator[Harness]:
    async with open_store(tmp_path / "easel.db") as store:
        lifecycle = Lifecycle()
        scheduler = Scheduler(store, lifecycle)
        pool = SlotPool(capacity)
        send, receive = trio.open_memory_channel[Dispatch](100)
        scheduler.add_provider("p", pool, send.send)
        async with trio.open_nursery() as nursery:
            yield Harness(store, scheduler, lifecycle, pool, receive, nursery)
            nursery.cancel_scope.cancel()


async def test_queued_rows_are_loaded_and_dispatched_by_priority_then_age(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        jobs = [await h.insert(priority=p) for p in [0, 5, -1, 5, 0]]
        running = await h.insert(priority=100, state=JobState.RUNNING)
        await h.insert(priority=100, provider="unknown")  # no such provider here
        await h.start()
        order = []
        for _ in range(5):
            dispatch = await h.next()
            order.append(dispatch.job.id)
            assert dispatch.job.state is JobState.QUEUED
            assert h.pool.free == 0
            await h.nothing_more()  # one slot: the next waits for this one
            await h.finish(dispatch)
        await h.nothing_more()
        assert order == [jobs[1].id, jobs[3].id, jobs[0].id, jobs[4].id, jobs[2].id]
        assert running.id not in order
        assert h.scheduler.queued() == 0


async def test_second_job_waits_until_the_first_slot_is_released(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        first = await h.enqueue()
        d1 = await h.next()
        assert d1.job.id == first.id
        d1.ticket.bind(first.id)
        second = await h.enqueue()
        await h.nothing_more()
        assert h.scheduler.queued("p") == 1
        assert h.pool.statistics().waiting == 1
        h.pool.release(first.id)
        d2 = await h.next()
        assert d2.job.id == second.id
        assert h.scheduler.queued("p") == 0


async def test_slots_bound_how_many_jobs_are_out(tmp_path: Path) -> None:
    async with harness(tmp_path, capacity=3) as h:
        for _ in range(5):
            await h.insert()
        await h.start()
        out = [await h.next() for _ in range(3)]
        await h.nothing_more()
        await h.finish(out[0])
        await h.next()
        await h.nothing_more()
        assert h.scheduler.queued("p") == 1


async def test_the_best_job_queued_when_a_slot_frees_goes_first(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        await h.enqueue()
        d1 = await h.next()
        low = await h.enqueue(priority=0)
        high = await h.enqueue(priority=9)
        await h.nothing_more()
        await h.finish(d1)
        d2 = await h.next()
        await h.finish(d2)
        d3 = await h.next()
        assert [d2.job.id, d3.job.id] == [high.id, low.id]


async def test_enqueueing_a_job_twice_dispatches_it_once(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        await h.enqueue()
        d1 = await h.next()
        job = await h.enqueue()
        await h.scheduler.send.send(Enqueue(job))
        await h.nothing_more()
        assert h.scheduler.queued("p") == 1
        await h.finish(d1)
        d2 = await h.next()
        assert d2.job.id == job.id
        await h.finish(d2)
        await h.nothing_more()


async def test_nothing_is_dispatched_while_draining(tmp_path: Path) -> None:
    async with harness(tmp_path, capacity=4) as h:
        for _ in range(3):
            await h.insert()
        h.lifecycle.start_drain()
        await h.start()
        await wait_until(lambda: h.scheduler.queued("p") == 3)
        await h.nothing_more()
        await h.enqueue()
        await h.nothing_more()
        assert h.scheduler.queued("p") == 4
        assert h.pool.free == 4


async def test_drain_while_waiting_for_a_slot_gives_the_slot_back(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        await h.enqueue()
        d1 = await h.next()
        waiting = await h.enqueue()
        await h.nothing_more()
        h.lifecycle.start_drain()
        await h.finish(d1)  # a slot frees up, but we are draining
        await h.nothing_more()
        assert h.scheduler.queued("p") == 1  # the job went back in the queue
        assert h.pool.free == 1  # and the slot back to the pool
        stored = await h.store.get_job(waiting.id)
        assert stored is not None and stored.state is JobState.QUEUED


async def test_resync_reloads_queued_rows_of_a_provider(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start()
        await h.nothing_more()
        job = await h.insert()  # in the store, but never enqueued
        await h.nothing_more()
        await h.scheduler.send.send(Resync("p"))
        dispatch = await h.next()
        assert dispatch.job.id == job.id


async def test_a_restarted_scheduler_reloads_from_the_store(tmp_path: Path) -> None:
    async with harness(tmp_path, capacity=2) as h:
        jobs = [await h.insert(priority=p) for p in (1, 2, 3)]
        first_run = trio.CancelScope()
        h.nursery.start_soon(run_in, first_run, h.scheduler)
        d1 = await h.next()
        d2 = await h.next()
        first_run.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert [d1.job.id, d2.job.id] == [jobs[2].id, jobs[1].id]
        # The provider actor moved the first job on; the second was lost in its
        # mailbox when it restarted (still QUEUED in the store).
        await h.store.transition(d1.job.id, JobState.QUEUED, JobState.SUBMITTING)
        d1.ticket.bind(d1.job.id)
        d2.ticket.give_back()
        await h.start()
        again = [await h.next()]
        assert again[0].job.id == jobs[1].id
        await h.finish(again[0])
        assert (await h.next()).job.id == jobs[0].id
        await h.nothing_more()


async def run_in(scope: trio.CancelScope, scheduler: Scheduler) -> None:
    with scope:
        await scheduler.run()


# -- circuit breakers and fallbacks -------------------------------------------------------


@pytest.fixture
def clock() -> MockClock:
    """Requested only by the tests below; the store's threads are real, so jump only
    after 10 ms of real idleness."""
    return MockClock(autojump_threshold=0.01)


@attrs.define
class Routed:
    """Two providers, ``p`` (model ``m``, falling back to ``f``) and ``q`` (model
    ``f``), each with its breaker; ``p``'s opens at its first failure."""

    store: Store
    scheduler: Scheduler
    breakers: dict[str, CircuitBreaker]
    out: dict[str, trio.MemoryReceiveChannel[Dispatch]]
    pools: dict[str, SlotPool]

    async def enqueue(self, **fields: Any) -> Job:
        job, _ = await self.store.insert_job(make_job(**fields))
        await self.scheduler.send.send(Enqueue(job))
        return job

    async def next(self, provider: str) -> Dispatch:
        with trio.fail_after(60):
            dispatch = await self.out[provider].receive()
        dispatch.ticket.bind(dispatch.job.id)
        return dispatch

    async def nothing_on(self, provider: str) -> None:
        await trio.testing.wait_all_tasks_blocked(0.02)
        with pytest.raises(trio.WouldBlock):
            self.out[provider].receive_nowait()

    async def events(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in await self.store.events(job_id) if e["kind"] == kind]


CATALOG = {
    "m": ModelSpec(provider="p", provider_model="pm", fallbacks=["f"]),
    "lonely": ModelSpec(provider="p", provider_model="pm"),
    "f": ModelSpec(provider="q", provider_model="qm"),
}


@asynccontextmanager
async def routed(tmp_path: Path) -> AsyncIterator[Routed]:
    async with open_store(tmp_path / "easel.db") as store:
        scheduler = Scheduler(store, Lifecycle(), catalog=CATALOG)
        breakers, out, pools = {}, {}, {}
        for name in ("p", "q"):
            breakers[name] = CircuitBreaker(name, BreakerConfig(min_calls=1, cooldown=30))
            pools[name] = SlotPool(4)
            send, out[name] = trio.open_memory_channel[Dispatch](100)
            scheduler.add_provider(name, pools[name], send.send, breaker=breakers[name])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run)
            yield Routed(store, scheduler, breakers, out, pools)
            nursery.cancel_scope.cancel()


async def test_an_open_circuit_moves_jobs_to_the_fallback(tmp_path: Path, clock) -> None:
    async with routed(tmp_path) as r:
        r.breakers["p"].record(Outcome.FAILURE)
        job = await r.enqueue(model="m")
        dispatch = await r.next("q")
        assert dispatch.job.id == job.id
        assert (dispatch.job.provider, dispatch.job.provider_model) == ("q", "qm")
        assert dispatch.job.served_model == "f" and dispatch.job.model == "m"
        stored = await r.store.get_job(job.id)
        assert stored is not None and (stored.provider, stored.served_model) == ("q", "f")
        [fallback] = await r.events(job.id, "fallback")
        assert (fallback["from"], fallback["to"], fallback["reason"]) == ("m", "f", "circuit open")
        [circuit] = await r.events(job.id, "circuit")
        assert circuit["action"] == "rerouted" and circuit["state"] == "open"
        await r.nothing_on("p")


async def test_without_a_fallback_the_job_is_held_until_a_probe_may_go(
    tmp_path: Path, clock
) -> None:
    async with routed(tmp_path) as r:
        r.breakers["p"].record(Outcome.FAILURE)
        opened = trio.current_time()
        first = await r.enqueue(model="lonely")
        second = await r.enqueue(model="lonely")
        await r.nothing_on("p")
        await r.nothing_on("q")
        stored = await r.store.get_job(first.id)
        assert stored is not None and stored.state is JobState.QUEUED
        assert [e["action"] for e in await r.events(first.id, "circuit")] == ["held"]
        # After the cool-down exactly one probe goes (autojump moves the clock).
        probe = await r.next("p")
        assert trio.current_time() - opened >= 30
        assert probe.job.id == first.id
        await r.nothing_on("p")
        r.breakers["p"].record(Outcome.SUCCESS)  # the probe worked: closed
        assert (await r.next("p")).job.id == second.id
        # Told once that it waits, however often the scheduler looked again.
        assert len(await r.events(second.id, "circuit")) == 1


async def test_no_fallback_whose_circuit_is_open_too(tmp_path: Path, clock) -> None:
    async with routed(tmp_path) as r:
        r.breakers["p"].record(Outcome.FAILURE)
        r.breakers["q"].record(Outcome.FAILURE)
        job = await r.enqueue(model="m")
        await r.nothing_on("p")
        await r.nothing_on("q")
        assert [e["action"] for e in await r.events(job.id, "circuit")] == ["held"]
        # q half-opens first? Both have the same cool-down; p's probe wins for the
        # job still on p (a job moves only to a *closed* fallback).
        dispatch = await r.next("p")
        assert dispatch.job.id == job.id and dispatch.job.served_model is None


async def test_a_closing_fallback_circuit_frees_held_jobs(tmp_path: Path, clock) -> None:
    async with routed(tmp_path) as r:
        r.breakers["q"].config = BreakerConfig(min_calls=1, cooldown=5)
        r.breakers["p"].record(Outcome.FAILURE)
        r.breakers["q"].record(Outcome.FAILURE)
        job = await r.enqueue(model="m")
        await r.nothing_on("q")
        with trio.fail_after(10):
            while r.breakers["q"].state is not CircuitState.HALF_OPEN:
                await trio.sleep(1)
        r.breakers["q"].record(Outcome.SUCCESS)  # e.g. a status check went well
        dispatch = await r.next("q")
        assert dispatch.job.id == job.id and dispatch.job.served_model == "f"
        assert trio.current_time() < 30  # well before p's cool-down ended


async def test_a_cancelled_held_job_is_not_moved(tmp_path: Path, clock) -> None:
    async with routed(tmp_path) as r:
        r.breakers["p"].record(Outcome.FAILURE)
        r.breakers["q"].record(Outcome.FAILURE)
        job = await r.enqueue(model="m")
        await r.nothing_on("q")
        await r.store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
        r.breakers["q"].config = BreakerConfig(min_calls=1, cooldown=1)
        with trio.fail_after(10):
            while r.breakers["q"].state is not CircuitState.HALF_OPEN:
                await trio.sleep(1)
        r.breakers["q"].record(Outcome.SUCCESS)
        await r.nothing_on("q")
        stored = await r.store.get_job(job.id)
        assert stored is not None and stored.state is JobState.CANCELLED
        assert stored.served_model is None
