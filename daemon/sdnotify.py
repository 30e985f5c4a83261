"""A dependency-free ``sd_notify`` client: readiness, status, stopping and watchdog.

Under ``Type=notify`` systemd considers the service started only when it receives
``READY=1`` on the datagram socket named by ``NOTIFY_SOCKET``, and with
``WatchdogSec=`` it kills the service when ``WATCHDOG=1`` stops arriving. The
protocol is one ``AF_UNIX`` datagram of newline-separated ``KEY=value`` lines, small
enough that a library (or libsystemd through ctypes) would cost more than it saves.

Two rules shape this module:

- Outside systemd (a terminal, the tests, a container) ``NOTIFY_SOCKET`` is unset and
  every call is a cheap no-op, so the daemon calls it unconditionally.
- Telling systemd is never worth crashing for: a send that fails is logged once as a
  warning and reported by returning ``False``, never raised. The socket is
  non-blocking, so the trio thread never waits on systemd either.

The watchdog is a trio task, ``run_watchdog``, that pings at half the interval
systemd asked for (``watchdog_interval``), as ``sd_watchdog_enabled(3)`` advises.
Because it runs on the trio loop, a loop stalled by blocking code stops the pings and
systemd restarts the process, which is the point.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Mapping

import trio

__all__ = ["SystemdNotifier", "run_watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, ``None`` when unusable.

    ``@name`` is a Linux abstract socket (a leading NUL byte on the wire); other
    values must be absolute paths. systemd ≥ 254 also offers ``vsock:`` addresses,
    which only matter inside VMs and are not supported here.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class SystemdNotifier:
    """Sends ``sd_notify`` messages to the socket in ``NOTIFY_SOCKET``, if any.

    ``environ`` defaults to ``os.environ`` read once, at construction. Every method
    returns ``True`` when a datagram went out and ``False`` otherwise (no socket, or
    a failure already logged), and none of them raises.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._raw = env.get("NOTIFY_SOCKET") or None
        self._address = _address(self._raw) if self._raw else None
        self._sock: socket.socket | None = None
        self._warned = False
        self._lock = threading.Lock()
        if self._raw and self._address is None:
            self._warn_once("NOTIFY_SOCKET=%r is not an absolute path or @abstract name", self._raw)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (``NOTIFY_SOCKET`` is set and usable)."""
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` fields in one datagram: ``notify(READY=1, STATUS="up")``.

        Keys are upper-cased (``status=`` works too); ``True``/``False`` become
        ``1``/``0``; newlines in values become spaces, since a newline would start a
        new field.
        """
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            name = key.upper()
            if not _KEY.match(name):
                self._warn_once("sd_notify: ignoring invalid field name %r", key)
                return False
            if isinstance(value, bool):
                value = int(value)
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{name}={text}")
        return self._send("\n".join(lines).encode())

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete: systemd moves the unit from *activating* to *active*."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (sent when draining starts)."""
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """A one-line status, shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Tell systemd the process is alive (``WATCHDOG=1``)."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start or stop timeout kills the unit.

        For a recovery or a drain that runs long on purpose (``EXTEND_TIMEOUT_USEC``,
        systemd ≥ 236).
        """
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def close(self) -> None:
        """Close the socket; a later call opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, payload: bytes) -> bool:
        assert self._address is not None
        try:
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
        except OSError as exc:  # includes BlockingIOError when systemd's queue is full
            self._warn_once("sd_notify to %s failed: %s", self._raw, exc)
            return False
        return True

    def _warn_once(self, message: str, *args: object) -> None:
        # A broken socket fails every few seconds (watchdog); one line says it all.
        if not self._warned:
            self._warned = True
            log.warning(message, *args)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """systemd's watchdog timeout in seconds, or ``None`` when no watchdog is asked for.

    From ``WATCHDOG_USEC``; when ``WATCHDOG_PID`` is set it must be this process's
    pid, since a child that inherited the environment is not the one watched.
    Unparsable values mean no watchdog (as in ``sd_watchdog_enabled``).
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000


async def run_watchdog(
    notifier: SystemdNotifier,
    interval: float | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping the watchdog now and then every ``interval / 2`` seconds, until cancelled.

    ``interval`` is ``watchdog_interval(os.environ)``; with ``None`` this returns at
    once, so the caller need not check. ``await nursery.start(run_watchdog, ...)``
    returns after the first ping.
    """
    if interval is None or interval <= 0:
        task_status.started()
        return
    period = interval / 2
    notifier.watchdog()
    task_status.started()
    while True:
        await trio.sleep(period)
        notifier.watchdog()
