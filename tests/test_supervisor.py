"""actors/supervisor.py: one_for_one restarts, restart kinds, escalation, shutdown.

Everything runs on trio's MockClock (autojump): backoffs and windows cost no real time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.supervisor import ChildSpec, EscalationError, Restart, Supervisor


class Boom(Exception):
    pass


async def test_crashing_child_is_restarted_and_siblings_keep_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts = {"flaky": 0, "steady": 0}
    ticks = []
    crashes: list[tuple[str, BaseException]] = []

    async def flaky() -> None:
        starts["flaky"] += 1
        await trio.sleep(1)
        if starts["flaky"] <= 3:
            raise Boom(starts["flaky"])
        await trio.sleep_forever()

    async def steady() -> None:
        starts["steady"] += 1
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(0.5)

    supervisor = Supervisor(
        [ChildSpec("flaky", flaky), ChildSpec("steady", steady)],
        max_restarts=10,
        on_crash=lambda name, exc: crashes.append((name, exc)),
    )
    with trio.move_on_after(100):
        await supervisor.run()

    assert starts == {"flaky": 4, "steady": 1}
    assert supervisor.restart_counts["flaky"] == 3
    assert supervisor.restart_counts["steady"] == 0
    assert [(name, exc.args) for name, exc in crashes] == [
        ("flaky", (1,)),
        ("flaky", (2,)),
        ("flaky", (3,)),
    ]
    assert len(ticks) == 200  # never interrupted by its sibling's crashes


async def test_backoff_doubles_and_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def crasher() -> None:
        starts.append(trio.current_time())
        raise Boom

    supervisor = Supervisor(
        [ChildSpec("c", crasher)], max_restarts=100, backoff=0.1, max_backoff=1.0
    )
    with trio.move_on_after(5):
        await supervisor.run()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


async def test_backoff_starts_over_after_a_long_healthy_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    lifetimes = iter([0, 0, 0, 120, 0])  # three quick crashes, a long run, then one

    async def crasher() -> None:
        starts.append(trio.current_time())
        await trio.sleep(next(lifetimes, 1000))
        raise Boom

    supervisor = Supervisor(
        [ChildSpec("c", crasher)], max_restarts=100, max_seconds=60, backoff=0.1, max_backoff=10
    )
    with trio.move_on_after(200):
        await supervisor.run()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # 0.1, 0.2, 0.4 back off; the crash after 120 s of health waits 0.1 again,
    # and the quick crash after it 0.2.
    assert gaps[:5] == pytest.approx([0.1, 0.2, 0.4, 120.1, 0.2])


async def test_started_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    async def idle() -> None:
        await trio.sleep_forever()

    supervisor = Supervisor([ChildSpec("idle", idle)])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        nursery.cancel_scope.cancel()


async def test_permanent_child_that_returns_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def short() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(10)

    supervisor = Supervisor([ChildSpec("short", short)], max_restarts=100)
    with trio.move_on_after(35):
        await supervisor.run()
    assert runs == 4
    assert supervisor.restart_counts["short"] == 3


async def test_transient_child_restarted_only_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def transient() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(1)
        if runs == 1:
            raise Boom
        # second run ends normally: not restarted

    supervisor = Supervisor([ChildSpec("t", transient, Restart.TRANSIENT)])
    with trio.fail_after(100):
        await supervisor.run()  # returns once its only child is done for good
    assert runs == 2
    assert supervisor.restart_counts["t"] == 1


async def test_temporary_child_is_never_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = {"crash": 0, "ok": 0}
    crashes: list[str] = []

    async def crash() -> None:
        runs["crash"] += 1
        raise Boom

    async def ok() -> None:
        runs["ok"] += 1

    supervisor = Supervisor(
        [ChildSpec("crash", crash, Restart.TEMPORARY), ChildSpec("ok", ok, Restart.TEMPORARY)],
        on_crash=lambda name, exc: crashes.append(name),
    )
    with trio.fail_after(100):
        await supervisor.run()
    assert runs == {"crash": 1, "ok": 1}
    assert crashes == ["crash"]  # the crash is still reported
    assert sum(supervisor.restart_counts.values()) == 0


async def test_too_many_restarts_escalate(autojump_clock: trio.testing.MockClock) -> None:
    sibling_cancelled = trio.Event()

    async def crasher() -> None:
        raise Boom

    async def sibling() -> None:
        try:
            await trio.sleep_forever()
        finally:
            sibling_cancelled.set()

    supervisor = Supervisor(
        [ChildSpec("c", crasher), ChildSpec("s", sibling)], max_restarts=3, max_seconds=60
    )
    with pytest.RaisesGroup(EscalationError):
        with trio.fail_after(100):
            await supervisor.run()
    assert supervisor.restart_counts["c"] == 3  # the fourth restart escalated
    assert sibling_cancelled.is_set()


async def test_restarts_spread_over_time_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_crasher() -> None:
        await trio.sleep(100)
        raise Boom

    supervisor = Supervisor(
        [ChildSpec("c", slow_crasher)], max_restarts=2, max_seconds=60, max_backoff=1
    )
    with trio.move_on_after(2000):
        await supervisor.run()
    assert supervisor.restart_counts["c"] >= 15


async def test_restarts_of_all_children_count_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def crash_once_a_second() -> None:
        await trio.sleep(1)
        raise Boom

    children = [ChildSpec(name, crash_once_a_second) for name in ("a", "b", "c")]
    supervisor = Supervisor(children, max_restarts=5, max_seconds=60)
    with pytest.RaisesGroup(EscalationError):
        with trio.fail_after(100):
            await supervisor.run()
    # Each child alone stayed under the limit; together they passed it.
    assert all(count < 5 for count in supervisor.restart_counts.values())
    assert sum(supervisor.restart_counts.values()) == 5


async def test_cancellation_stops_children_and_is_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped: list[str] = []
    crashes: list[str] = []

    def child(name: str, nested: bool) -> ChildSpec:
        async def run() -> None:
            try:
                if nested:  # an actor with a nursery of its own
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(trio.sleep_forever)
                        await trio.sleep_forever()
                else:
                    await trio.sleep_forever()
            finally:
                stopped.append(name)

        return ChildSpec(name, run)

    supervisor = Supervisor(
        [child("plain", False), child("nested", True)],
        on_crash=lambda name, exc: crashes.append(name),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert sorted(stopped) == ["nested", "plain"]
    assert crashes == []
    assert sum(supervisor.restart_counts.values()) == 0
