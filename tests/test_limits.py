"""actors/limits.py: the token bucket (on trio's mock clock) and in-flight slots."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.limits import SlotPool, SlotStatistics, TokenBucket

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


def test_hold_takes_a_free_slot_and_refuses_when_full() -> None:
    pool = SlotPool(2)
    assert pool.hold("a") and pool.hold("b")
    assert not pool.hold("c")
    assert pool.free == 0 and pool.statistics() == SlotStatistics(2, 2)
    assert pool.release("a")
    assert pool.hold("c")
    assert pool.holds("c") and not pool.holds("a")


def test_release_is_idempotent() -> None:
    pool = SlotPool(2)
    pool.hold("a")
    assert pool.release("a")
    assert not pool.release("a")
    assert pool.free == 2


def test_retain_holds_exactly_the_jobs_found_even_beyond_capacity() -> None:
    pool = SlotPool(1)
    pool.hold("gone")
    pool.retain(["a", "b"])  # found at the provider after a restart
    assert not pool.holds("gone")
    assert pool.free == 0 and pool.statistics().held == 2
    assert not pool.hold("c")
    pool.release("a")
    assert not pool.hold("c")  # still one over capacity
    pool.release("b")
    assert pool.hold("c")
