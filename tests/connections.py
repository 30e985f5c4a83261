"""Raw HTTP/1.1 connections to a daemon, for the connection tests and the bench.

A client here is one TCP connection driven with h11, so a test can keep it open
idle, reuse it, dribble bytes into it, or wait for the server to close it, which
httpx's pool hides.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import h11
import httpx
import trio

from tests.conftest import write_config
from tests.process import DaemonProcess


class RawConnection:
    """One keep-alive connection: requests one after another, then idle."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        #: Chunks ``dribble`` has sent.
        self.dribbled = 0

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def get(self, path: str = "/api/health") -> tuple[int, bytes]:
        """Send ``GET path`` and read the whole answer: its status and body."""
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        request = h11.Request(method="GET", target=path,
                              headers=[("Host", "127.0.0.1"), ("Connection", "keep-alive")])
        await self.stream.send_all(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        return await self.read_answer()

    async def try_get(self, path: str = "/api/health") -> tuple[int, bytes]:
        """``get``, or status 0 when the server closes or resets the connection
        instead of answering (a refused connection)."""
        try:
            return await self.get(path)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return 0, b""

    async def read_answer(self) -> tuple[int, bytes]:
        status, body = 0, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body

    async def dribble(self, chunks: list[bytes], pause: float = 0.05) -> None:
        """Send ``chunks`` one by one, ``pause`` seconds apart, as a slow client
        does, counting them in ``dribbled``; stop once the server has closed."""
        for chunk in chunks:
            await trio.sleep(pause)
            try:
                await self.stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self.dribbled += 1

    async def closed_by_server(self) -> bool:
        """Wait until the server closes the connection: True, or False when it sends
        anything else instead."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset: closed too
            return True
        return data == b""

    async def aclose(self) -> None:
        await self.stream.aclose()


class IdleCrowd:
    """Many keep-alive connections, each made idle after one answered request, each
    watched until the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        #: Per closed connection: True when the server closed it (EOF or reset),
        #: False when it sent something instead.
        self.outcomes: list[bool] = []
        #: Per closed connection: seconds from its answer to its close.
        self.idle_for: list[float] = []

    @property
    def open_now(self) -> int:
        return self.opened - len(self.outcomes)

    async def gather(self, count: int, watchers: trio.Nursery, concurrency: int = 64) -> None:
        """Open ``count`` connections, ``concurrency`` at a time; return once each
        has had its answer (the watchers go on in ``watchers``)."""
        limiter = trio.CapacityLimiter(concurrency)

        async def one() -> None:
            async with limiter:
                conn = await RawConnection.open(self.port)
                status, body = await conn.get()
                if status != 200:
                    raise AssertionError(f"health answered {status}: {body[:200]!r}")
                self.opened += 1
                watchers.start_soon(self._watch, conn, time.monotonic())

        async with trio.open_nursery() as openers:
            for _ in range(count):
                openers.start_soon(one)

    async def _watch(self, conn: RawConnection, answered: float) -> None:
        try:
            self.outcomes.append(await conn.closed_by_server())
            self.idle_for.append(time.monotonic() - answered)
        finally:
            await conn.aclose()

    async def all_closed(self) -> None:
        while len(self.outcomes) < self.opened:
            await trio.sleep(0.05)


async def health_latency(port: int) -> tuple[int, float]:
    """``GET /api/health`` on a fresh connection, as a monitor does: the status and
    the milliseconds until the whole answer is in."""
    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        response = await client.get(f"http://127.0.0.1:{port}/api/health")
        return response.status_code, (time.perf_counter() - started) * 1000


def raise_open_files_limit(need: int) -> str | None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; a reason to skip
    when even the hard limit is below ``need``, else None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        return f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors needed"
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return None


def start_daemon(directory: Path, settings: str = "") -> tuple[DaemonProcess, int]:
    """``easel run`` on a free loopback port with its state under ``directory`` and
    ``settings`` (TOML lines) added to its ``[daemon]`` table; the process, healthy,
    and its port."""
    config = write_config(directory)
    text = config.read_text().replace("drain_timeout = 5", f"drain_timeout = 5\n{settings}")
    config.write_text(text)
    port = int(text.split('bind = ["127.0.0.1:')[1].split('"')[0])
    daemon = DaemonProcess(config, f"http://127.0.0.1:{port}", directory / "easel.out")
    return daemon.start(timeout=60), port
