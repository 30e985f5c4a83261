"""Connections are bounded in number and in time, against a real ``easel run``.

The daemon runs as its own process on loopback (``tests/process.py``); the clients
here are raw HTTP/1.1 connections (``tests/connections.py``). Timeouts are set short
(1 to 2 s) and every wait has a generous bound: a slow machine makes these tests
slower, never red. Nothing asserts how fast anything is; the health latency under
2,000 idle connections is printed here and measured by ``bench/connections.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trio.testing

from daemon.connections import CAPACITY_WARNING_INTERVAL, CapacityWarning, accept_loop
from daemon.startup import RESERVED_DESCRIPTORS
from tests.connections import (
    IdleCrowd,
    RawConnection,
    health_latency,
    raise_open_files_limit,
    start_daemon,
)
from tests.process import PROJECT_ROOT, DaemonProcess

IDLE_CONNECTIONS = 2000
KEEP_ALIVE = 2
READ_TIMEOUT = 1
#: Generous bounds: far above what any machine needs, so only a hang fails them.
HEALTH_BOUND = 5
CLOSE_BOUND = 60


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, int]]:
    """A daemon with short keep-alive and read timeouts and room for 2,000 clients."""
    max_connections = IDLE_CONNECTIONS + 100
    reason = raise_open_files_limit(max(IDLE_CONNECTIONS + 200,
                                        max_connections + RESERVED_DESCRIPTORS))
    if reason:
        pytest.skip(reason)
    daemon, port = start_daemon(
        tmp_path_factory.mktemp("guarded"),
        f"keep_alive_timeout = {KEEP_ALIVE}\nread_timeout = {READ_TIMEOUT}\n"
        f"max_connections = {max_connections}",
    )
    yield daemon, port
    daemon.stop()


async def test_idle_keep_alive_connections_are_closed_and_health_answers_meanwhile(
    guarded: tuple[DaemonProcess, int],
) -> None:
    _, port = guarded
    crowd = IdleCrowd(port)
    probes: list[tuple[int, float, int]] = []  # status, latency in ms, connections open

    async def probe_health() -> None:
        while True:
            open_now = crowd.open_now
            with trio.fail_after(HEALTH_BOUND):
                status, latency = await health_latency(port)
            probes.append((status, latency, open_now))
            await trio.sleep(0.2)

    with trio.fail_after(CLOSE_BOUND * 3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_health)
            await crowd.gather(IDLE_CONNECTIONS, nursery)
            with trio.fail_after(CLOSE_BOUND):
                await crowd.all_closed()
            nursery.cancel_scope.cancel()
    worst = max(probes, key=lambda probe: probe[1])
    print(f"\nhealth answered {len(probes)} times while {IDLE_CONNECTIONS} idle keep-alive"
          f" connections came and went (up to {max(p[2] for p in probes)} open at a probe);"
          f" slowest {worst[1]:.1f} ms with {worst[2]} open")
    assert all(status == 200 for status, _, _ in probes), probes
    assert crowd.opened == IDLE_CONNECTIONS
    # Every connection was closed by the server (EOF or reset), none answered twice.
    assert crowd.outcomes == [True] * IDLE_CONNECTIONS
    # Closed by the keep-alive timer, not at once (the margin is for the client's
    # answered-at stamp being taken after the server's timer started).
    assert min(crowd.idle_for) >= KEEP_ALIVE / 2, min(crowd.idle_for)


async def test_slow_headers_after_an_answer_are_cut_off(guarded: tuple[DaemonProcess, int]) -> None:
    _, port = guarded
    conn = await RawConnection.open(port)
    assert (await conn.get())[0] == 200
    head = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400
    chunks = [head[i:i + 1] for i in range(len(head))]
    with trio.fail_after(CLOSE_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.dribble, chunks)
            assert await conn.closed_by_server()
            nursery.cancel_scope.cancel()
    # Cut off by the server while the client was still sending its headers.
    assert conn.dribbled < len(chunks)
    await conn.aclose()


async def test_a_slow_body_is_cut_off(guarded: tuple[DaemonProcess, int]) -> None:
    daemon, port = guarded
    conn = await RawConnection.open(port)
    length = 300
    request = h11.Request(
        method="POST", target="/api/external/generation",
        headers=[("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                 ("Content-Length", str(length))],
    )
    await conn.stream.send_all(conn.h11.send(request))
    chunks = [conn.h11.send(h11.Data(data=b" ")) for _ in range(length)]
    with trio.fail_after(CLOSE_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.dribble, chunks)
            status, body = await conn.read_answer()
            assert await conn.closed_by_server()
            nursery.cancel_scope.cancel()
    assert status == 408, body
    assert b"request body not received within 1 seconds" in body
    # Cut off by the server while the client was still sending its body.
    assert conn.dribbled < length
    await conn.aclose()
    # The access log tells it as it was (the log is written off the request path).
    with trio.fail_after(CLOSE_BOUND):
        while "POST /api/external/generation 408" not in daemon.log_text():
            await trio.sleep(0.1)


async def test_connections_past_the_cap_are_refused_and_the_others_still_work(
    tmp_path: Path,
) -> None:
    cap = 20
    daemon, port = start_daemon(tmp_path, f"keep_alive_timeout = 300\nmax_connections = {cap}")
    try:
        with trio.fail_after(CLOSE_BOUND):
            # The daemon's own readiness probe may still hold a slot for a moment.
            held: list[RawConnection] = []
            while len(held) < cap:
                conn = await RawConnection.open(port)
                status, _ = await conn.try_get()
                if status == 200:
                    held.append(conn)
                else:
                    await conn.aclose()
                    await trio.sleep(0.1)

            extra = await RawConnection.open(port)
            status, body = await extra.try_get()
            assert status in (503, 0), body
            assert await extra.closed_by_server()
            await extra.aclose()

            # The established ones are untouched.
            for conn in held:
                assert (await conn.get())[0] == 200

            # One leaves: its slot is free again as soon as the server sees it go
            # (not when its 300 s keep-alive would have run out).
            await held.pop().aclose()
            while True:
                conn = await RawConnection.open(port)
                status, _ = await conn.try_get()
                await conn.aclose()
                if status == 200:
                    break
                await trio.sleep(0.1)
        for conn in held:
            await conn.aclose()
    finally:
        daemon.stop()


def test_state_files_are_private(tmp_path: Path) -> None:
    """Outside systemd, started with a umask of 022: directories 0700, files 0600."""
    previous = os.umask(0o022)
    try:
        daemon, port = start_daemon(tmp_path, "")
    finally:
        os.umask(previous)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            response = client.post("/api/external/generation",
                                   json={"modelIdentifier": "sandbox-image", "prompt": "a moth"})
            assert response.status_code == 202, response.text
            job = client.get(f"/api/external/generation/{response.json()['id']}",
                             params={"wait": 30}).json()
            assert job["status"] == "SUCCESS", job
        state = tmp_path / "state"
        files = [p for p in state.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        # What the daemon writes: the database with its WAL and SHM, the log, the
        # stored output (written by a worker thread), the lock, the webhook secret.
        assert {"easel.db", "easel.db-wal", "easel.db-shm", "easel.log"} <= names, names
        assert any(p.suffix == ".png" for p in files), names
        for path in [state, *state.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {mode:o}"
    finally:
        daemon.stop()


def test_an_old_state_dir_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    daemon, _ = start_daemon(tmp_path, "")
    daemon.stop()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


class FailingListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands out ``streams``, then fails with EMFILE, as accept does when the
    process is out of descriptors."""

    def __init__(self, streams: list[trio.abc.Stream]) -> None:
        self.streams = streams
        self.failures = 0

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self.streams:
            return self.streams.pop()
        self.failures += 1
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def echo(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def test_running_out_of_descriptors_is_one_warning_a_minute_and_serving_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    listener = FailingListener([server])
    caplog.set_level(logging.WARNING, logger="daemon.connections")
    minutes = 5
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, echo, trio.CapacityLimiter(10), nursery,
                           CapacityWarning())
        # The connection accepted before the descriptors ran out is served all along.
        for _ in range(minutes * 60):
            await client.send_all(b"ping")
            assert await client.receive_some(4) == b"ping"
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert listener.failures > 100 * minutes
    assert minutes * 60 / CAPACITY_WARNING_INTERVAL <= len(warnings) <= minutes + 1
    assert all(r.exc_info is None for r in warnings)  # no tracebacks


def test_a_low_open_files_limit_is_raised_or_lowers_the_cap() -> None:
    """In a child process (a lowered hard limit cannot be raised again): a soft limit
    under the need is raised to it; a hard limit under it lowers the cap, loudly."""
    script = """
import logging, resource, sys
from daemon.startup import connection_budget
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (600, 2000))
print("budget", connection_budget(512), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
resource.setrlimit(resource.RLIMIT_NOFILE, (700, 700))
print("budget", connection_budget(512), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "budget 512 1024"
    assert "too low for daemon.max_connections = 512" in lines[1]
    assert "raise LimitNOFILE / ulimit -n to 1024" in lines[1]
    assert lines[2] == "budget 350 700"
