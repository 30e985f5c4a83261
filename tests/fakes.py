"""Small stand-ins shared by tests: things a test controls that the real world
does not let it control."""

from __future__ import annotations

import math

import attrs
import trio
from quart import request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from tests.simulators.base import serve_simulator


class FakeClock:
    """A Unix clock that moves only when told, so simulator lifecycles are exact."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@attrs.define
class WebhookSink:
    """A webhook receiver served in a test's nursery: records each delivery's
    headers (looked up case-insensitively, as the daemon's are) and raw body."""

    url: str = ""
    received: list[tuple[Headers, bytes]] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    async def wait_for(self, count: int, timeout: float = math.inf) -> None:
        """Until ``count`` deliveries arrived. No default timeout: under an
        autojump MockClock any deadline would pass while the network works."""
        with trio.fail_after(timeout):
            while len(self.received) < count:
                await self.changed.wait()


async def start_webhook_sink(nursery: trio.Nursery) -> WebhookSink:
    """A ``WebhookSink`` answering 200 at ``<url>``, until the nursery ends."""
    sink = WebhookSink()
    app = QuartTrio("webhook-sink")

    @app.post("/hook")
    async def hook() -> tuple[str, int]:
        sink.received.append((Headers(request.headers), await request.get_data()))
        sink.changed.set()
        sink.changed = trio.Event()
        return "", 200

    sink.url = await nursery.start(serve_simulator, app) + "/hook"
    return sink
