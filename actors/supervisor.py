"""Supervision trees for actors, in triotp's vocabulary (child specs, restart kinds,
strategies, intensity).

A ``Supervisor`` runs its children, each in a task of its own nursery, started in
order with ``await nursery.start(spec.start)``: a child calls
``task_status.started()`` once it has loaded its state, and the next child starts
only then. The supervisor itself calls ``started()`` only after every child has,
so a tree of supervisors is started when every actor in it is: that is what lets
READY=1 and ``/api/health`` wait until every actor has reloaded its state.

When a child ends, its ``Restart`` kind says whether it comes back (a permanent
child always, a transient one only after a crash, a temporary one never). A crash
is logged with its stack and reported to ``on_crash(path, exc)``. The child is
restarted after a wait drawn from the supervisor's ``Backoff``, which starts over
once the child has run for a whole ``Intensity.max_seconds``: one crash a day
should not wait the longest backoff. A child that crashes before calling
``started()`` is a crash like any other and is retried too; the supervisor's own
``started()`` waits for it.

``Strategy.ONE_FOR_ONE`` restarts the crashed child alone. ``Strategy.REST_FOR_ONE``
is for children that depend on the ones before them (a provider and its poller):
when child ``i`` ends and is restarted, children ``i+1..`` are cancelled (last
first) and all of ``i..`` start again in order. Temporary children cancelled that
way do not come back.

More than ``Intensity.max_restarts`` restarts within ``max_seconds`` means
something is wrong beyond one child: the supervisor cancels its children and
raises ``EscalationError``. A supervisor is itself a valid child
(``ChildSpec("provider:bfl", sub.run)``), so its parent sees that as the child
crashing, counted against the parent's own intensity; out of the top supervisor
it ends the process non-zero, so that systemd restarts it whole.

Children are named by path from the supervisor ``statistics()`` is asked of
(``providers/provider:bfl/poller``); ``on_crash`` gets the path from the top of
the tree. ``trio.Cancelled`` is never caught here: cancelling the supervisor's
scope stops every child, which is how the daemon shuts down.
"""

from __future__ import annotations

import collections
import contextvars
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence

import attrs
import trio

from actors.retry import Backoff

log = logging.getLogger(__name__)

#: The daemon's restart waits: 0.1 s, doubling up to 5 s. No jitter: restarts are
#: few and local, nothing to spread out.
RESTART_BACKOFF = Backoff(base=0.1, cap=5.0, jitter=0.0)

#: The path of the child whose task this is, plus "/": a supervisor run as a
#: child reads it to name its own children from the top of the tree.
_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("supervisor_prefix", default="")


class Restart(enum.Enum):
    PERMANENT = "permanent"  # restarted whenever it ends
    TRANSIENT = "transient"  # restarted only when it crashes
    TEMPORARY = "temporary"  # never restarted


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"  # the crashed child alone restarts
    REST_FOR_ONE = "rest_for_one"  # it and every child started after it restart


@attrs.frozen
class Intensity:
    """More than ``max_restarts`` restarts within ``max_seconds``: escalate."""

    max_restarts: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    max_seconds: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))


@attrs.frozen
class ChildSpec:
    """A child: run as ``await nursery.start(start)``, so ``start`` takes a
    ``task_status`` keyword and calls ``task_status.started()`` once its state is
    loaded."""

    name: str
    start: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT


def started_on_entry(run: Callable[[], Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A ``ChildSpec.start`` for a child with no state to load: it counts as
    started as soon as it runs."""

    async def start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await run()

    return start


class EscalationError(Exception):
    """Children were restarted too often: the supervisor above, or the process,
    must restart."""


class ChildState(enum.Enum):
    STARTING = "starting"  # running, has not called started() yet
    RUNNING = "running"
    BACKING_OFF = "backing_off"  # waiting to be (re)started
    STOPPED = "stopped"  # not running, and will not be unless its supervisor restarts


class SupervisorState(enum.Enum):
    STARTING = "starting"  # some child has not called started() yet
    RUNNING = "running"
    ESCALATED = "escalated"
    STOPPED = "stopped"


@attrs.frozen
class ChildStatistics:
    path: str
    state: ChildState
    restarts: int


@attrs.frozen
class SupervisorStatistics:
    """A snapshot: every child and descendant, depth first, by path."""

    name: str
    state: SupervisorState
    children: tuple[ChildStatistics, ...]

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts by path (``{"providers/provider:bfl": 1, ...}``)."""
        return {child.path: child.restarts for child in self.children}


@attrs.define(eq=False)
class _Launch:
    """One run of a child: what stops it, and what says it has stopped."""

    slot: _Slot
    at: float
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _Slot:
    """A child and what its supervisor knows about it (touched by the supervisor's
    task only)."""

    index: int
    spec: ChildSpec
    nested: Supervisor | None
    state: ChildState = ChildState.STOPPED
    restarts: int = 0
    starts: int = 0
    #: Crashes in a row, each without a healthy window between: the backoff step.
    failures: int = 0
    #: It has called started() since its supervisor's run began.
    up: bool = False
    due: float = 0.0
    launch: _Launch | None = None


@attrs.frozen
class _Ended:
    launch: _Launch
    error: Exception | None  # None: it returned


class _Started:
    """The ``task_status`` a child gets: remembers whether it called ``started()``."""

    def __init__(self, status: trio.TaskStatus[_Ended | None]) -> None:
        self._status = status
        self.called = False

    def started(self, value: object = None) -> None:
        self.called = True
        self._status.started(None)


class Supervisor:
    """Runs ``children`` per ``strategy``; ``run`` is what its parent (or the
    daemon) awaits."""

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity = Intensity(),
        backoff: Backoff,
        on_crash: Callable[[str, BaseException], None],
    ) -> None:
        names = [child.name for child in children]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name}: child names must differ: {names}")
        self.name = name
        self.strategy = strategy
        self.intensity = intensity
        self.backoff = backoff
        self.on_crash = on_crash
        self._slots = [
            _Slot(index, spec, _supervisor_of(spec)) for index, spec in enumerate(children)
        ]
        self._state = SupervisorState.STOPPED
        self._prefix = ""
        self._running = False
        self._restarts: collections.deque[float] = collections.deque()
        self._send, self._receive = trio.open_memory_channel[_Ended](math.inf)

    def statistics(self) -> SupervisorStatistics:
        """Where every child is and how often it was restarted; changes nothing."""
        return SupervisorStatistics(self.name, self._state, tuple(self._children("")))

    def _children(self, prefix: str) -> Iterator[ChildStatistics]:
        for slot in self._slots:
            path = prefix + slot.spec.name
            yield ChildStatistics(path, slot.state, slot.restarts)
            if slot.nested is not None:
                yield from slot.nested._children(path + "/")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, then keep them per the strategy until
        cancelled (or until none is left to run); raises ``EscalationError``."""
        if self._running:
            raise RuntimeError(f"supervisor {self.name} is already running")
        self._running = True
        self._prefix = _PREFIX.get()
        self._state = SupervisorState.STARTING
        self._restarts.clear()
        now = trio.current_time()
        for slot in self._slots:
            slot.state, slot.due, slot.failures, slot.up = ChildState.BACKING_OFF, now, 0, False
        escalation: EscalationError | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._supervise(nursery, task_status)
                except EscalationError as exc:
                    escalation = exc
                nursery.cancel_scope.cancel()
        finally:
            self._running = False
            for slot in self._slots:
                slot.state, slot.launch = ChildState.STOPPED, None
            self._state = (
                SupervisorState.STOPPED if escalation is None else SupervisorState.ESCALATED
            )
        if escalation is not None:
            raise escalation

    async def _supervise(
        self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]
    ) -> None:
        while True:
            await self._start_due(nursery)
            if self._state is SupervisorState.STARTING and all(
                slot.up or slot.state is ChildState.STOPPED for slot in self._slots
            ):
                self._state = SupervisorState.RUNNING
                task_status.started()
            if all(slot.state is ChildState.STOPPED for slot in self._slots):
                return
            due = min(
                (s.due for s in self._slots if s.state is ChildState.BACKING_OFF),
                default=math.inf,
            )
            ended: _Ended | None = None
            with trio.move_on_at(due):  # around the wait only: handling it must not be cut short
                ended = await self._receive.receive()
            if ended is None:
                continue
            slot = ended.launch.slot
            # An end already dealt with (a rest_for_one sibling stopped on purpose
            # that failed while stopping) is not handled twice.
            if slot.launch is ended.launch and slot.state is ChildState.RUNNING:
                await self._ended(slot, ended.error)

    async def _start_due(self, nursery: trio.Nursery) -> None:
        """(Re)start, in order, the children whose backoff is over."""
        for slot in self._slots:
            if slot.state is not ChildState.BACKING_OFF:
                continue
            if slot.due > trio.current_time():
                if self.strategy is Strategy.REST_FOR_ONE:
                    return  # the later ones start after this one
                continue
            early = await self._start(nursery, slot)
            if early is not None:
                await self._ended(slot, early.error)
                if self.strategy is Strategy.REST_FOR_ONE:
                    return

    async def _start(self, nursery: trio.Nursery, slot: _Slot) -> _Ended | None:
        """Start ``slot``'s child and wait until it has called ``started()``; its
        end instead, when it ended before that."""
        if slot.starts:
            slot.restarts += 1
            log.info("restarting %s", self._path(slot))
        slot.starts += 1
        slot.launch = launch = _Launch(slot, trio.current_time())
        slot.state = ChildState.STARTING
        early: _Ended | None = await nursery.start(
            self._child, launch, name=f"actor:{self._path(slot)}"
        )
        if early is None:
            slot.state, slot.up = ChildState.RUNNING, True
        return early

    async def _child(self, launch: _Launch, *, task_status: trio.TaskStatus[_Ended | None]) -> None:
        """The task of one run of a child: reports how it ended."""
        _PREFIX.set(self._path(launch.slot) + "/")
        status = _Started(task_status)
        error: Exception | None = None
        try:
            # The scope absorbs only its own cancellation (a rest_for_one stop); an
            # error the child raises, even while being stopped, is caught below.
            with launch.scope:
                await launch.slot.spec.start(task_status=status)
        except Exception as exc:  # trio.Cancelled is a BaseException: not caught
            error = exc
        finally:
            launch.done.set()
        ended = _Ended(launch, error)
        if not status.called:
            task_status.started(ended)  # the starter deals with it
        elif not launch.scope.cancelled_caught:  # else: stopped on purpose
            self._send.send_nowait(ended)

    async def _ended(self, slot: _Slot, error: Exception | None) -> None:
        """Child ``slot`` ended: report a crash, then schedule its restart (and, for
        rest_for_one, stop and schedule the children after it)."""
        assert slot.launch is not None
        path = self._path(slot)
        slot.state = ChildState.STOPPED
        if error is not None:
            log.error("%s crashed", path, exc_info=error)
            self.on_crash(path, error)
        restart = slot.spec.restart is Restart.PERMANENT or (
            slot.spec.restart is Restart.TRANSIENT and error is not None
        )
        if not restart:
            return
        if error is None:
            log.warning("%s returned; restarting it", path)
        now = trio.current_time()
        if now - slot.launch.at >= self.intensity.max_seconds:
            slot.failures = 0  # healthy for a whole window: the backoff starts over
        slot.failures = slot.failures + 1 if error is not None else 0
        self._count_restart(now)
        due = now + self.backoff.delay(max(slot.failures, 1))
        group = [slot]
        if self.strategy is Strategy.REST_FOR_ONE:
            group += await self._stop_after(slot)
        for member in group:
            member.state, member.due = ChildState.BACKING_OFF, due

    async def _stop_after(self, slot: _Slot) -> list[_Slot]:
        """Cancel the children after ``slot``, last first, and wait until each has
        ended; those that will start again after it."""
        again = []
        for later in reversed(self._slots[slot.index + 1:]):
            if later.state is ChildState.STOPPED:
                continue
            if later.state is ChildState.RUNNING and later.launch is not None:
                later.launch.scope.cancel()
                await later.launch.done.wait()
                log.info("%s stopped, to start again after %s", self._path(later), slot.spec.name)
            if later.spec.restart is Restart.TEMPORARY:
                later.state = ChildState.STOPPED
            else:
                again.append(later)
        return again[::-1]

    def _count_restart(self, now: float) -> None:
        restarts = self._restarts
        restarts.append(now)
        while restarts[0] < now - self.intensity.max_seconds:
            restarts.popleft()
        if len(restarts) > self.intensity.max_restarts:
            message = (
                f"supervisor {self.name}: more than {self.intensity.max_restarts} "
                f"restarts in {self.intensity.max_seconds:g} s"
            )
            log.critical("%s; escalating", message)
            raise EscalationError(message)

    def _path(self, slot: _Slot) -> str:
        return self._prefix + slot.spec.name


def _supervisor_of(spec: ChildSpec) -> Supervisor | None:
    """The supervisor whose ``run`` is ``spec.start``, if it is one (so its parent
    can include its children in ``statistics()``)."""
    owner = getattr(spec.start, "__self__", None)
    return owner if isinstance(owner, Supervisor) else None
