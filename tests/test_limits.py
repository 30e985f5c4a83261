"""actors/limits.py: the token bucket (on trio's mock clock) and in-flight slots."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.limits import SlotPool, SlotTicket, TokenBucket

# -- TokenBucket ------------------------------------------------------------


def test_bucket_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


async def test_burst_is_available_at_once_then_paced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=2, burst=2)
    start = trio.current_time()
    times = []
    for _ in range(10):
        await bucket.take()
        times.append(trio.current_time() - start)
    assert times[:2] == [0, 0]
    assert times[-1] == pytest.approx(4.0)
    gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]
    assert gaps == pytest.approx([0.5] * 8)


async def test_bucket_refills_up_to_burst_only(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=1, burst=3)
    for _ in range(3):
        assert bucket.take_nowait()
    assert not bucket.take_nowait()
    await trio.sleep(1000)
    assert bucket.available == pytest.approx(3)
    for _ in range(3):
        assert bucket.take_nowait()
    assert not bucket.take_nowait()


async def test_concurrent_takers_are_paced_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=1, burst=1)
    got: list[tuple[int, float]] = []
    start = trio.current_time()

    async def taker(i: int) -> None:
        await bucket.take()
        got.append((i, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(taker, i)
            await trio.testing.wait_all_tasks_blocked()
    assert got == [(0, 0), (1, pytest.approx(1)), (2, pytest.approx(2)), (3, pytest.approx(3))]


async def test_take_nowait_does_not_jump_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take_nowait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bucket.take)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.99)
        assert not bucket.take_nowait()  # a waiter is first in line
    assert not bucket.take_nowait()  # and it got the token


async def test_penalize_empties_the_bucket_for_the_given_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(rate=2, burst=5)
    bucket.penalize(3)
    assert not bucket.take_nowait()
    start = trio.current_time()
    await bucket.take()
    waited = trio.current_time() - start
    assert 3 <= waited <= 3 + 1 / 2 + 1e-9


async def test_penalize_never_adds_tokens(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=1, burst=1)
    bucket.penalize(10)
    bucket.penalize(1)  # a shorter Retry-After does not shorten the first
    start = trio.current_time()
    await bucket.take()
    assert trio.current_time() - start >= 10


# -- SlotPool ---------------------------------------------------------------


async def test_acquire_blocks_when_full_and_release_wakes_a_waiter() -> None:
    pool = SlotPool(2)
    for job in ("a", "b"):
        ticket = await pool.acquire()
        ticket.bind(job)
    assert pool.free == 0
    got: list[SlotTicket] = []

    async def waiter() -> None:
        got.append(await pool.acquire())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert pool.statistics().waiting == 1
        pool.release("a")
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
    assert pool.statistics().waiting == 0
    assert pool.statistics().held == 2
    assert pool.free == 0


async def test_one_release_wakes_only_one_of_two_waiters() -> None:
    pool = SlotPool(1)
    (await pool.acquire()).bind("a")
    got: list[str] = []

    async def waiter(name: str) -> None:
        ticket = await pool.acquire()
        ticket.bind(name)
        got.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "w1")
        nursery.start_soon(waiter, "w2")
        await trio.testing.wait_all_tasks_blocked()
        pool.release("a")
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        assert pool.statistics().waiting == 1
        pool.release(got[0])
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 2
    assert sorted(got) == ["w1", "w2"]


async def test_release_is_idempotent() -> None:
    pool = SlotPool(2)
    (await pool.acquire()).bind("a")
    (await pool.acquire()).bind("b")
    pool.release("a")
    pool.release("a")
    pool.release("never-held")
    assert pool.free == 1
    assert pool.holds("b") and not pool.holds("a")
    assert pool.statistics().held == 1


async def test_retain_holds_exactly_the_jobs_found_even_beyond_capacity() -> None:
    pool = SlotPool(1)
    pool.retain(["stale", "x"])
    pool.retain(["x", "y"])  # the actor restarted: "stale" is no longer at the provider
    assert pool.holds("x") and pool.holds("y") and not pool.holds("stale")
    assert pool.free == -1
    got: list[SlotTicket] = []

    async def waiter() -> None:
        got.append(await pool.acquire())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        pool.release("x")
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # still full: y holds the only slot
        pool.release("y")
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1


async def test_bind_of_an_already_held_job_gives_the_extra_slot_back() -> None:
    pool = SlotPool(2)
    pool.retain(["a"])
    ticket = await pool.acquire()
    assert pool.free == 0
    got: list[SlotTicket] = []

    async def waiter() -> None:
        got.append(await pool.acquire())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        ticket.bind("a")  # "a" already holds a slot: this one is freed
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
    assert pool.holds("a")
    pool.release("a")
    assert pool.free == 1  # the waiter's anonymous ticket holds the other


async def test_bind_twice_is_a_no_op() -> None:
    pool = SlotPool(2)
    ticket = await pool.acquire()
    ticket.bind("a")
    ticket.bind("b")
    assert pool.holds("a") and not pool.holds("b")
    assert pool.free == 1


async def test_give_back_frees_an_unbound_ticket_once() -> None:
    pool = SlotPool(1)
    ticket = await pool.acquire()
    assert pool.free == 0
    got: list[SlotTicket] = []

    async def waiter() -> None:
        got.append(await pool.acquire())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        ticket.give_back()
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
    ticket.give_back()  # idempotent
    assert pool.free == 0  # the waiter's ticket holds the slot
    got[0].give_back()
    assert pool.free == 1
    ticket2 = await pool.acquire()
    ticket2.bind("z")
    ticket2.give_back()  # bound: giving back does nothing
    assert pool.holds("z") and pool.free == 0


async def test_cancelled_waiter_is_not_counted(autojump_clock: trio.testing.MockClock) -> None:
    pool = SlotPool(1)
    (await pool.acquire()).bind("a")
    with trio.move_on_after(5):
        await pool.acquire()
    assert pool.statistics().waiting == 0
    assert pool.statistics().held == 1
    pool.release("a")
    assert pool.free == 1
