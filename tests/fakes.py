"""Small stand-ins shared by tests: things a test controls that the real world
does not let it control."""

from __future__ import annotations


class FakeClock:
    """A Unix clock that moves only when told, so simulator lifecycles are exact."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
