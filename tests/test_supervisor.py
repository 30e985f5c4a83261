"""actors/supervisor.py: restart kinds and strategies, backoff, intensity and
escalation through a tree, started() ordering, statistics, shutdown.

Everything runs on trio's MockClock (autojump): backoffs and windows cost no real time.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from actors.retry import Backoff
from actors.supervisor import (
    ChildSpec,
    ChildState,
    EscalationError,
    Intensity,
    Restart,
    Strategy,
    Supervisor,
    SupervisorState,
)

#: Waits of 0.1, 0.2, 0.4 ... up to 5 s, without jitter so gaps can be asserted.
BACKOFF = Backoff(base=0.1, cap=5.0, jitter=0.0)

Start = Callable[..., Awaitable[None]]


class Boom(Exception):
    pass


def supervisor(
    children: list[ChildSpec],
    crashes: list[tuple[str, BaseException]] | None = None,
    *,
    name: str = "top",
    max_restarts: int = 5,
    max_seconds: float = 60.0,
    backoff: Backoff = BACKOFF,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
) -> Supervisor:
    seen = crashes if crashes is not None else []
    return Supervisor(
        name, children, strategy=strategy, intensity=Intensity(max_restarts, max_seconds),
        backoff=backoff, on_crash=lambda path, exc: seen.append((path, exc)),
    )


def idle(log: list[str] | None = None, name: str = "", load: float = 0.0) -> Start:
    """A child that loads for ``load`` seconds, reports started, then idles;
    ``log`` gets "<name> loading", "<name> started", "<name> stopped"."""

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if log is not None:
            log.append(f"{name} loading")
        try:
            await trio.sleep(load)
            task_status.started()
            if log is not None:
                log.append(f"{name} started")
            await trio.sleep_forever()
        finally:
            if log is not None:
                log.append(f"{name} stopped")

    return run


class CrashOnce:
    """A child that crashes a second into its first run; later runs end after a
    second (``idle=False``) or idle."""

    def __init__(self, *, idle: bool) -> None:
        self.idle = idle
        self.runs = 0

    async def __call__(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.runs += 1
        task_status.started()
        await trio.sleep(1)
        if self.runs == 1:
            raise Boom
        if self.idle:
            await trio.sleep_forever()


def restarts(sup: Supervisor) -> dict[str, int]:
    return sup.statistics().restarts


# -- one_for_one ----------------------------------------------------------------------


async def test_crashing_child_is_restarted_and_siblings_keep_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts = {"flaky": 0, "steady": 0}
    ticks = []
    crashes: list[tuple[str, BaseException]] = []

    async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
        starts["flaky"] += 1
        task_status.started()
        await trio.sleep(1)
        if starts["flaky"] <= 3:
            raise Boom(starts["flaky"])
        await trio.sleep_forever()

    async def steady(*, task_status: trio.TaskStatus[None]) -> None:
        starts["steady"] += 1
        task_status.started()
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(0.5)

    sup = supervisor([ChildSpec("flaky", flaky), ChildSpec("steady", steady)], crashes,
                     max_restarts=10)
    with trio.move_on_after(100):
        await sup.run()

    assert starts == {"flaky": 4, "steady": 1}
    assert restarts(sup) == {"flaky": 3, "steady": 0}
    assert [(path, exc.args) for path, exc in crashes] == [
        ("flaky", (1,)),
        ("flaky", (2,)),
        ("flaky", (3,)),
    ]
    assert len(ticks) == 200  # never interrupted by its sibling's crashes


async def test_backoff_doubles_and_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def crasher(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        raise Boom  # before started(): a crash, retried like any other

    sup = supervisor([ChildSpec("c", crasher)], max_restarts=100,
                     backoff=Backoff(base=0.1, cap=1.0, jitter=0.0))
    with trio.move_on_after(5):
        await sup.run()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


async def test_backoff_starts_over_after_a_long_healthy_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    lifetimes = iter([0, 0, 0, 120, 0])  # three quick crashes, a long run, then one

    async def crasher(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        await trio.sleep(next(lifetimes, 1000))
        raise Boom

    sup = supervisor([ChildSpec("c", crasher)], max_restarts=100, max_seconds=60,
                     backoff=Backoff(base=0.1, cap=10.0, jitter=0.0))
    with trio.move_on_after(200):
        await sup.run()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # 0.1, 0.2, 0.4 back off; the crash after 120 s of health waits 0.1 again,
    # and the quick crash after it 0.2.
    assert gaps[:5] == pytest.approx([0.1, 0.2, 0.4, 120.1, 0.2])


async def test_permanent_child_that_returns_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def short(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        await trio.sleep(10)

    sup = supervisor([ChildSpec("short", short)], max_restarts=100)
    with trio.move_on_after(35):
        await sup.run()
    assert runs == 4
    assert restarts(sup) == {"short": 3}


async def test_transient_child_restarted_only_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transient = CrashOnce(idle=False)  # its second run ends normally: not restarted
    sup = supervisor([ChildSpec("t", transient, Restart.TRANSIENT)])
    with trio.fail_after(100):
        await sup.run()  # returns once its only child is done for good
    assert transient.runs == 2
    assert restarts(sup) == {"t": 1}
    assert sup.statistics().state is SupervisorState.STOPPED


async def test_temporary_child_is_never_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = {"crash": 0, "ok": 0}
    crashes: list[tuple[str, BaseException]] = []

    async def crash(*, task_status: trio.TaskStatus[None]) -> None:
        runs["crash"] += 1
        raise Boom

    async def ok(*, task_status: trio.TaskStatus[None]) -> None:
        runs["ok"] += 1
        task_status.started()

    sup = supervisor(
        [ChildSpec("crash", crash, Restart.TEMPORARY), ChildSpec("ok", ok, Restart.TEMPORARY)],
        crashes,
    )
    with trio.fail_after(100):
        await sup.run()
    assert runs == {"crash": 1, "ok": 1}
    assert [path for path, _ in crashes] == ["crash"]  # the crash is still reported
    assert restarts(sup) == {"crash": 0, "ok": 0}


# -- started() ----------------------------------------------------------------------


async def test_children_start_in_order_and_the_supervisor_after_all_of_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    inner = supervisor([ChildSpec("c", idle(log, "c", load=3))], name="inner")
    sup = supervisor([
        ChildSpec("a", idle(log, "a", load=2)),
        ChildSpec("inner", inner.run),
        ChildSpec("b", idle(log, "b", load=1)),
    ])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        log.append("top started")
        assert trio.current_time() == 6  # 2 + 3 + 1 s of loading, one after the other
        nursery.cancel_scope.cancel()
    assert log[:7] == [
        "a loading", "a started",
        "c loading", "c started",  # the nested supervisor's child, before b begins
        "b loading", "b started",
        "top started",
    ]


async def test_a_child_that_crashes_before_started_is_retried_and_started_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts = 0
    crashes: list[tuple[str, BaseException]] = []
    log: list[str] = []

    async def loads_on_third_try(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise Boom("state not loadable yet")
        task_status.started()
        await trio.sleep_forever()

    sup = supervisor(
        [ChildSpec("store", loads_on_third_try), ChildSpec("after", idle(log, "after"))],
        crashes,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert attempts == 3 and log == ["after loading", "after started"]
        assert trio.current_time() == pytest.approx(0.1 + 0.2)
        assert [path for path, _ in crashes] == ["store", "store"]
        assert sup.statistics().state is SupervisorState.RUNNING
        nursery.cancel_scope.cancel()


# -- rest_for_one ----------------------------------------------------------------------


async def test_rest_for_one_restarts_the_later_siblings_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    crashes: list[tuple[str, BaseException]] = []
    provider_runs = 0

    async def provider(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal provider_runs
        provider_runs += 1
        log.append("provider loading")
        await trio.sleep(1)
        task_status.started()
        log.append("provider started")
        if provider_runs == 1:
            await trio.sleep(10)
            log.append("provider crashes")
            raise Boom
        await trio.sleep_forever()

    sup = supervisor(
        [
            ChildSpec("before", idle(log, "before")),
            ChildSpec("provider", provider),
            ChildSpec("poller", idle(log, "poller", load=1)),
            ChildSpec("once", idle(log, "once"), Restart.TEMPORARY),
        ],
        crashes,
        strategy=Strategy.REST_FOR_ONE,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        log.clear()
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert log[:7] == [
        "provider crashes",
        "once stopped",  # the later siblings are stopped, last first ...
        "poller stopped",
        "provider loading",  # ... and start again in order, each once the one before has
        "provider started",
        "poller loading",
        "poller started",
    ]
    assert "before loading" not in log  # the earlier sibling ran on
    assert [path for path, _ in crashes] == ["provider"]
    assert restarts(sup) == {"before": 0, "provider": 1, "poller": 1, "once": 0}


async def test_a_sibling_failing_while_stopped_does_not_break_the_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes: list[tuple[str, BaseException]] = []
    poller_runs = 0

    async def poller(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal poller_runs
        poller_runs += 1
        async with trio.open_nursery() as nursery:  # its own tasks: errors come as groups
            nursery.start_soon(trio.sleep_forever)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                if poller_runs == 1:
                    raise Boom("cleanup failed")

    provider = CrashOnce(idle=True)
    sup = supervisor([ChildSpec("provider", provider), ChildSpec("poller", poller)], crashes,
                     strategy=Strategy.REST_FOR_ONE)
    with trio.move_on_after(10):
        await sup.run()
    assert (provider.runs, poller_runs) == (2, 2)
    assert [path for path, _ in crashes] == ["provider"]  # the stop was ours, not a crash
    assert restarts(sup) == {"provider": 1, "poller": 1}


async def test_a_restart_falling_due_while_siblings_stop_does_not_cut_the_stop_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = {"b": 0, "slow": 0, "c": 0}

    def child(name: str, crash_at: float) -> Start:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            runs[name] += 1
            task_status.started()
            try:
                if runs[name] == 1:
                    await trio.sleep_until(crash_at)
                    raise Boom(name)
                await trio.sleep_forever()
            finally:
                if name == "slow":
                    with trio.CancelScope(shield=True):
                        await trio.sleep(1)  # stopping takes a second

        return run

    sup = supervisor(
        [ChildSpec("b", child("b", 10)), ChildSpec("slow", child("slow", math.inf)),
         ChildSpec("c", child("c", 9.8))],
        strategy=Strategy.REST_FOR_ONE, backoff=Backoff(base=0.5, cap=0.5, jitter=0.0),
    )
    # c crashes at 9.8 and is due again at 10.3, in the middle of stopping "slow"
    # after b's crash at 10: b, slow and c must all come back all the same.
    with trio.move_on_after(30):
        await sup.run()
    assert runs == {"b": 2, "slow": 2, "c": 2}
    assert restarts(sup) == {"b": 1, "slow": 1, "c": 1}


async def test_one_for_one_leaves_the_later_siblings_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def crash_once(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        if not log.count("crashed"):
            log.append("crashed")
            raise Boom
        await trio.sleep_forever()

    sup = supervisor([ChildSpec("first", crash_once), ChildSpec("second", idle(log, "second"))])
    with trio.move_on_after(10):
        await sup.run()
    assert log == ["crashed", "second loading", "second started", "second stopped"]
    assert restarts(sup) == {"first": 1, "second": 0}


# -- intensity and escalation ---------------------------------------------------------


async def test_too_many_restarts_escalate(autojump_clock: trio.testing.MockClock) -> None:
    sibling_cancelled = trio.Event()

    async def crasher(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        raise Boom

    async def sibling(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            sibling_cancelled.set()

    sup = supervisor([ChildSpec("c", crasher), ChildSpec("s", sibling)], max_restarts=3)
    with pytest.raises(EscalationError, match="more than 3 restarts in 60 s"):
        with trio.fail_after(100):
            await sup.run()
    assert restarts(sup) == {"c": 3, "s": 0}  # the fourth restart escalated
    assert sibling_cancelled.is_set()
    assert sup.statistics().state is SupervisorState.ESCALATED


async def test_restarts_spread_over_time_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_crasher(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(100)
        raise Boom

    sup = supervisor([ChildSpec("c", slow_crasher)], max_restarts=2, max_seconds=60)
    with trio.move_on_after(2000):
        await sup.run()
    assert restarts(sup)["c"] >= 15


async def test_restarts_of_all_children_count_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes: list[tuple[str, BaseException]] = []

    async def crash_once_a_second(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        raise Boom

    children = [ChildSpec(name, crash_once_a_second) for name in ("a", "b", "c")]
    sup = supervisor(children, crashes, max_restarts=5)
    with pytest.raises(EscalationError):
        with trio.fail_after(100):
            await sup.run()
    # Each child alone stayed under the limit; together they passed it.
    assert len(crashes) == 6
    assert all(count < 5 for count in restarts(sup).values())


async def test_a_nested_supervisor_escalates_to_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes: list[tuple[str, BaseException]] = []
    steady_log: list[str] = []

    async def crasher(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        raise Boom

    def provider(name: str) -> Supervisor:
        return supervisor([ChildSpec("actor", crasher), ChildSpec("poller", idle())],
                          crashes, name=name, max_restarts=1, strategy=Strategy.REST_FOR_ONE)

    bfl = provider("provider:bfl")
    providers = supervisor([ChildSpec("provider:bfl", bfl.run)], crashes, name="providers",
                           max_restarts=1)
    top = supervisor([ChildSpec("steady", idle(steady_log, "steady")),
                      ChildSpec("providers", providers.run)], crashes, max_restarts=1)

    with pytest.raises(EscalationError, match="supervisor top: more than 1 restarts"):
        with trio.fail_after(100):
            await top.run()

    # Each level restarts its child once, then escalates; the crash of a
    # supervisor is its EscalationError, reported under its own path.
    bfl_gives_up = ["providers/provider:bfl/actor"] * 2 + ["providers/provider:bfl"]
    providers_gives_up = bfl_gives_up * 2 + ["providers"]
    assert [path for path, _ in crashes] == providers_gives_up * 2
    assert all(
        isinstance(exc, EscalationError)
        for path, exc in crashes if path in ("providers", "providers/provider:bfl")
    )
    stats = top.statistics()
    assert stats.state is SupervisorState.ESCALATED
    assert set(stats.restarts) == {
        "steady", "providers", "providers/provider:bfl",
        "providers/provider:bfl/actor", "providers/provider:bfl/poller",
    }
    assert stats.restarts["providers"] == 1 and stats.restarts["steady"] == 0
    assert steady_log[-1] == "steady stopped"


async def test_cancellation_stops_children_and_is_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped: list[str] = []
    crashes: list[tuple[str, BaseException]] = []

    def child(name: str, nested: bool) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            try:
                if nested:  # an actor with a nursery of its own, started inside it
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(trio.sleep_forever)
                        task_status.started()
                        await trio.sleep_forever()
                else:
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                stopped.append(name)

        return ChildSpec(name, run)

    sup = supervisor([child("plain", False), child("nested", True)], crashes)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert sorted(stopped) == ["nested", "plain"]
    assert crashes == []
    assert restarts(sup) == {"plain": 0, "nested": 0}
    assert sup.statistics().state is SupervisorState.STOPPED


# -- statistics -----------------------------------------------------------------------


async def test_statistics_name_nested_children_and_change_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes: list[tuple[str, BaseException]] = []
    bfl = supervisor([ChildSpec("actor", CrashOnce(idle=True)), ChildSpec("poller", idle())],
                     crashes, name="provider:bfl", strategy=Strategy.REST_FOR_ONE,
                     backoff=Backoff(base=2.0, cap=2.0, jitter=0.0))
    providers = supervisor([ChildSpec("provider:bfl", bfl.run)], crashes, name="providers")
    top = supervisor([ChildSpec("providers", providers.run)], crashes)

    before = top.statistics()
    assert before.state is SupervisorState.STOPPED
    assert {c.path: c.state for c in before.children} == dict.fromkeys(
        ["providers", "providers/provider:bfl", "providers/provider:bfl/actor",
         "providers/provider:bfl/poller"], ChildState.STOPPED)

    async with trio.open_nursery() as nursery:
        await nursery.start(top.run)
        await trio.sleep(1.5)  # the actor crashed at 1 s; it restarts at 3 s
        during = [top.statistics() for _ in range(3)]
        assert during[0] == during[1] == during[2]  # reading twice changes nothing
        states = {c.path: c.state for c in during[0].children}
        assert states["providers/provider:bfl/actor"] is ChildState.BACKING_OFF
        assert states["providers/provider:bfl/poller"] is ChildState.BACKING_OFF
        assert states["providers/provider:bfl"] is ChildState.RUNNING
        await trio.sleep(2)
        after = top.statistics()
        assert after.state is SupervisorState.RUNNING
        assert after.restarts == {
            "providers": 0, "providers/provider:bfl": 0,
            "providers/provider:bfl/actor": 1, "providers/provider:bfl/poller": 1,
        }
        assert bfl.statistics().restarts == {"actor": 1, "poller": 1}
        nursery.cancel_scope.cancel()
    assert [path for path, _ in crashes] == ["providers/provider:bfl/actor"]


def test_child_names_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        supervisor([ChildSpec("a", idle()), ChildSpec("a", idle())])


async def test_a_running_supervisor_cannot_run_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = supervisor([ChildSpec("a", idle())])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()
        nursery.cancel_scope.cancel()

