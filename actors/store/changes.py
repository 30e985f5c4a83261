"""The change feed: who hears of committed job state changes, and how.

A backend calls ``Changes.publish`` once a transaction has committed, with the
jobs it changed in commit order; this module hands each job to

- **subscribers** (``subscribe``): one unbounded memory channel each, the way an
  actor takes them, as messages in its own task;
- **watchers** (``watch``): one ``Watch`` per job, for long-polling requests: an
  event that also carries the job as the change left it, so a waiter needs no
  read of its own to learn the new state.

Nothing here knows a database, so every backend shares it. The subscribers' buffers
are unbounded on purpose: a change is never dropped (an actor that missed "this job
ended" would hold its slot for good), and the rate of changes is bounded by the
rate of committed writes, which the writer's batches already limit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import attrs
import trio

from actors.jobs import Job

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Watch:
    """A job's next committed state change: ``wait`` returns the job as committed."""

    _event: trio.Event = attrs.field(factory=trio.Event, init=False)
    _job: Job | None = attrs.field(default=None, init=False)

    def is_set(self) -> bool:
        return self._event.is_set()

    def fire(self, job: Job) -> None:
        self._job = job
        self._event.set()

    async def wait(self) -> Job:
        await self._event.wait()
        assert self._job is not None
        return self._job


class Changes:
    def __init__(self) -> None:
        self._watchers: dict[str, Watch] = {}
        self._subscribers: list[trio.MemorySendChannel[Job]] = []
        self._closed = False

    def subscribe(self) -> trio.MemoryReceiveChannel[Job]:
        """A new channel of every change published from now on (see
        ``Store.subscribe``). After ``close`` it is already at its end."""
        send, receive = trio.open_memory_channel[Job](math.inf)
        if self._closed:
            send.close()
        else:
            self._subscribers.append(send)
        return receive

    def watch(self, job_id: str) -> Watch:
        watch = self._watchers.get(job_id)
        if watch is None:
            watch = self._watchers[job_id] = Watch()
        return watch

    def publish(self, jobs: Iterable[Job]) -> None:
        """Hand committed changes on, in the order given (commit order)."""
        for job in jobs:
            watch = self._watchers.pop(job.id, None)
            if watch is not None:
                watch.fire(job)
            for send in list(self._subscribers):
                try:
                    send.send_nowait(job)
                except trio.BrokenResourceError:  # the subscriber closed its end
                    self._subscribers.remove(send)

    def close(self) -> None:
        """End every subscriber's channel (the store is closing)."""
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
