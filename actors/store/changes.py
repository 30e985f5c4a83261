"""The change feed: who hears of committed job state changes, and how.

A backend calls ``Changes.publish`` once a transaction has committed, with the
jobs it changed in commit order; this module hands each job to

- **subscribers** (``subscribe``): one unbounded memory channel each, the way an
  actor takes them, as messages in its own task;
- **watchers** (``watch``): one ``trio.Event`` per job, for long-polling requests.

Nothing here knows a database, so every backend shares it. The subscribers' buffers
are unbounded on purpose: a change is never dropped (an actor that missed "this job
ended" would hold its slot for good), and the rate of changes is bounded by the
rate of committed writes, which the writer's batches already limit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import trio

from actors.jobs import Job

log = logging.getLogger(__name__)


class Changes:
    def __init__(self) -> None:
        self._watchers: dict[str, trio.Event] = {}
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

    def watch(self, job_id: str) -> trio.Event:
        event = self._watchers.get(job_id)
        if event is None:
            event = self._watchers[job_id] = trio.Event()
        return event

    def publish(self, jobs: Iterable[Job]) -> None:
        """Hand committed changes on, in the order given (commit order)."""
        for job in jobs:
            event = self._watchers.pop(job.id, None)
            if event is not None:
                event.set()
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
