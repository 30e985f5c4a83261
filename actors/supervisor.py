"""A one_for_one supervisor for actors, in triotp's vocabulary.

Each child runs in a task of the supervisor's nursery. When one crashes, the crash
is logged with its stack and the child alone is restarted after a backoff; its
durable state is in SQLite and it reloads it when it starts again. More than
``max_restarts`` restarts (of all children together) within ``max_seconds`` means
something is wrong beyond one actor: the supervisor raises ``EscalationError``,
which ends the process non-zero so that systemd restarts it whole.

``trio.Cancelled`` is never caught here: cancelling the supervisor's scope stops
every child, which is how the daemon shuts down.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

log = logging.getLogger(__name__)


class Restart(enum.Enum):
    PERMANENT = "permanent"  # restarted whenever it ends
    TRANSIENT = "transient"  # restarted only when it crashes
    TEMPORARY = "temporary"  # never restarted


@attrs.frozen
class ChildSpec:
    name: str
    run: Callable[[], Awaitable[None]]
    restart: Restart = Restart.PERMANENT


class EscalationError(Exception):
    """Children crashed too often: the process must restart."""


class Supervisor:
    def __init__(
        self,
        children: list[ChildSpec],
        *,
        max_restarts: int = 5,
        max_seconds: float = 60.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.children = children
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_crash = on_crash
        self._restarts: collections.deque[float] = collections.deque()
        self.restart_counts: collections.Counter[str] = collections.Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for child in self.children:
                nursery.start_soon(self._keep, child, name=f"actor:{child.name}")
            task_status.started()

    def _note_restart(self) -> None:
        now = trio.current_time()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self.max_seconds:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            raise EscalationError(
                f"more than {self.max_restarts} actor restarts in {self.max_seconds:g} s"
            )

    async def _keep(self, child: ChildSpec) -> None:
        failures = 0
        while True:
            started = trio.current_time()
            try:
                await child.run()
            except Exception as exc:  # trio.Cancelled is a BaseException: not caught
                log.error("actor %s crashed", child.name, exc_info=exc)
                if self.on_crash is not None:
                    self.on_crash(child.name, exc)
                if child.restart is Restart.TEMPORARY:
                    return
                # A child that ran well for a whole window before crashing starts
                # its backoff over: one crash a day should not wait max_backoff.
                if trio.current_time() - started >= self.max_seconds:
                    failures = 0
                failures += 1
            else:
                if child.restart is not Restart.PERMANENT:
                    return
                log.warning("actor %s returned; restarting it", child.name)
                failures = 0
            self._note_restart()
            self.restart_counts[child.name] += 1
            await trio.sleep(min(self.backoff * 2 ** max(failures - 1, 0), self.max_backoff))
            log.info("restarting actor %s", child.name)
