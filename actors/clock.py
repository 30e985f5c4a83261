"""Wall-clock time that follows trio's clock.

Stored timestamps are Unix seconds, but actors sleep on trio's clock. Deriving wall
time from ``trio.current_time()`` plus an offset fixed once per run keeps the two in
step: under ``trio.testing.MockClock`` a test that jumps the clock by an hour also
moves every deadline and stored timestamp by an hour, with no real sleeping, and in
production an NTP step during a run cannot make a poll fire early or late.
"""

from __future__ import annotations

import time

import trio

_offset: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("easel_wall_offset")


def wall_now() -> float:
    """Unix time now, on trio's clock when inside a trio run."""
    try:
        now = trio.current_time()
    except RuntimeError:  # outside trio.run (CLI, thread)
        return time.time()
    try:
        return _offset.get() + now
    except LookupError:
        offset = time.time() - now
        _offset.set(offset)
        return offset + now


def trio_time_of(wall: float) -> float:
    """The ``trio.current_time()`` value at which ``wall_now()`` reaches ``wall``."""
    return trio.current_time() + (wall - wall_now())
