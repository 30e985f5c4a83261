"""Draining: the one flag every actor consults before starting new work.

On SIGTERM the daemon stops taking submissions, the scheduler stops dispatching and
pollers stop starting checks, while the provider calls already under way are let
finish. ``Lifecycle`` counts that work so the daemon can wait for it (up to
``drain_timeout``) and then exit with nothing half-recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()

    def start_drain(self) -> None:
        self.draining = True

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark a provider call or finalization under way for the block."""
        self._busy += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    @property
    def busy_count(self) -> int:
        return self._busy

    async def wait_idle(self) -> None:
        """Return once no provider call or finalization is under way."""
        while self._busy:
            await self._idle.wait()
