"""sd_notify client: real datagrams on a real AF_UNIX socket, and the watchdog task
on trio's mock clock."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from daemon.sdnotify import SystemdNotifier, run_watchdog, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory of our own: AF_UNIX paths are limited to 108 bytes, which a
    # deep pytest tmp_path can exceed.
    directory = tempfile.mkdtemp(prefix="easel-sd-")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory)


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    assert notifier.ready()
    assert receive(sock) == "READY=1"
    assert notifier.status("draining: 3 calls in flight")
    assert receive(sock) == "STATUS=draining: 3 calls in flight"
    assert notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    assert notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert notifier.ready(status="listening on 127.0.0.1:8700")
    assert receive(sock) == "READY=1\nSTATUS=listening on 127.0.0.1:8700"
    assert notifier.extend_timeout(12.5)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=12500000"
    notifier.close()


def test_notify_fields_are_normalised(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.notify(status="two\nlines", reloading=True)
    # A newline in a value would smuggle in a field of its own.
    assert receive(sock) == "STATUS=two lines\nRELOADING=1"


def test_abstract_socket(notify_socket: tuple[socket.socket, str]) -> None:
    name = f"easel-test-{os.getpid()}-{id(notify_socket)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    with sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert receive(sock) == "READY=1"


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (SystemdNotifier({}), SystemdNotifier()):
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False


def test_failures_never_raise_and_warn_once(
    tmp_path: os.PathLike[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="daemon.sdnotify")
    notifier = SystemdNotifier({"NOTIFY_SOCKET": os.path.join(tmp_path, "nobody-listens")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.notify(**{"bad key": 1}) is False
    warnings = [r for r in caplog.records if r.name == "daemon.sdnotify"]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()


def test_unusable_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="daemon.sdnotify")
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "500"}, 0.0005),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


class CountingNotifier(SystemdNotifier):
    def __init__(self) -> None:
        super().__init__({})
        self.pings: list[float] = []

    def watchdog(self) -> bool:
        self.pings.append(trio.current_time())
        return True


async def test_watchdog_pings_at_half_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = CountingNotifier()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(run_watchdog, notifier, 30.0)
        assert len(notifier.pings) == 1  # started() comes after the first ping
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert [round(t - start, 6) for t in notifier.pings] == [0, 15, 30, 45, 60, 75, 90]


async def test_watchdog_without_interval_returns() -> None:
    notifier = CountingNotifier()
    with trio.fail_after(1):
        await run_watchdog(notifier, None)
    assert notifier.pings == []


async def test_watchdog_over_a_real_socket(
    notify_socket: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_watchdog, notifier, 2.0)
        await trio.sleep(2.5)  # pings at 0, 1 and 2
        nursery.cancel_scope.cancel()
    assert [receive(sock) for _ in range(3)] == ["WATCHDOG=1"] * 3
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
