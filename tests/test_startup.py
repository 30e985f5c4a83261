"""Start-up failures are one line on stderr and exit 2, and a state directory serves
one daemon at a time (``daemon/startup.py``).

The process tests run ``easel run`` for real. They wait for readiness by polling
``/api/health`` and give every process a generous timeout; nothing here depends on
how fast the machine is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from daemon import config as config_module
from daemon.cli import only
from daemon.service import serve
from daemon.startup import LOCK_FILE, StartupError, StateDirLock, listen
from tests.conftest import free_port, write_config
from tests.process import PROJECT_ROOT, DaemonProcess


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``easel run`` that is expected to give up at start."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(config)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_once(write_config(tmp_path, port=port))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"easel: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    # Nothing was started: no database was created behind the failed bind.
    assert not (tmp_path / "state" / "easel.db").exists()


@pytest.mark.parametrize("log_file", ["logs/easel.log", ""])
def test_an_uncreatable_state_dir_is_one_line_and_exit_2(tmp_path: Path, log_file: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    config = write_config(tmp_path)
    text = config.read_text().replace(f'"{tmp_path / "state"}"', f'"{blocker / "state"}"')
    config.write_text(text.replace('file = "logs/easel.log"', f'file = "{log_file}"'))
    result = run_once(config)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    if log_file:  # the log file, under the state dir, is opened first
        assert line == (f"easel: logging: cannot open the log file "
                        f"{blocker / 'state' / 'logs' / 'easel.log'}: Not a directory: "
                        f"'{blocker / 'state' / 'logs'}'")
    else:
        assert line == (f"easel: cannot start: state directory {blocker / 'state'}: "
                        f"Not a directory: '{blocker / 'state'}'")


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    first_port = free_port()
    config = write_config(tmp_path, port=first_port)
    first = DaemonProcess(config, f"http://127.0.0.1:{first_port}", tmp_path / "first.out")
    second_port = free_port()
    second_config = tmp_path / "second.toml"
    second_config.write_text(
        config.read_text().replace(f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}")
    )
    try:
        first.start(timeout=120)
        assert first.process is not None
        lock = tmp_path / "state" / LOCK_FILE
        assert lock.read_text() == f"{first.process.pid}\n"

        result = run_once(second_config)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"easel: cannot start: state directory {tmp_path / 'state'} is in use: "
            f"{lock} is locked by PID {first.process.pid} (another easel is running on it)"
        ]
        # The first daemon did not notice.
        assert httpx.get(f"{first.base_url}/api/health", timeout=30).status_code == 200

        # A SIGKILLed holder leaves no stale lock: the kernel drops it with the process.
        first.kill()
        second = DaemonProcess(second_config, f"http://127.0.0.1:{second_port}",
                               tmp_path / "second.out")
        try:
            second.start(timeout=120)
            assert second.process is not None
            assert lock.read_text() == f"{second.process.pid}\n"
        finally:
            second.stop()
    finally:
        first.stop()


async def test_an_embedded_second_daemon_raises_startup_error(tmp_path: Path) -> None:
    config = config_module.load(write_config(tmp_path), environ={})
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(config, stop=stop, task_status=task_status))
        with pytest.raises(StartupError, match="is locked by PID"):
            await serve(config)
        stop.set()


def test_the_lock_is_taken_again_after_close(tmp_path: Path) -> None:
    lock = StateDirLock.acquire(tmp_path / "state")
    with pytest.raises(StartupError, match=f"locked by PID {os.getpid()}"):
        StateDirLock.acquire(tmp_path / "state")
    lock.close()
    lock.close()
    StateDirLock.acquire(tmp_path / "state").close()


def test_listen_names_the_address_that_cannot_be_bound(tmp_path: Path) -> None:
    port = free_port()
    # 192.0.2.0/24 is TEST-NET-1: never an address of this host.
    with pytest.raises(StartupError) as caught:
        listen([f"127.0.0.1:{port}", "192.0.2.1:8700"], 16)
    assert str(caught.value).startswith("cannot listen on 192.0.2.1:8700: ")
    # The first address, bound before the failure, was closed again.
    for sock in listen([f"127.0.0.1:{port}"], 16):
        sock.close()


def test_listen_refuses_a_unix_socket_in_use_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = str(tmp_path / "easel.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        with pytest.raises(StartupError) as caught:
            listen([f"unix:{path}"], 16)
        assert str(caught.value) == (
            f"cannot listen on unix:{path}: another process is listening on {path}"
        )
    # The listener is gone, its file is left behind: a new daemon takes the address.
    assert os.path.exists(path)
    for sock in listen([f"unix:{path}"], 16):
        sock.close()


def test_only_takes_a_group_made_of_one_kind_and_nothing_else() -> None:
    startup = StartupError("port in use")
    assert only(startup, StartupError) is startup
    assert only(BaseExceptionGroup("", [ExceptionGroup("", [startup])]), StartupError) is startup
    assert only(ExceptionGroup("", [startup, RuntimeError("crash")]), StartupError) is None
    assert only(RuntimeError("crash"), StartupError) is None
    assert only(BaseExceptionGroup("", [KeyboardInterrupt()]), StartupError) is None
    other = ValueError("another kind")
    assert only(ExceptionGroup("", [ExceptionGroup("", [other])]), ValueError) is other
