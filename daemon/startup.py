"""What must hold before the daemon takes any work, checked first and reported plainly.

Two things, each a ``StartupError`` with a one-line message naming the cause when it
does not hold (the CLI prints that line and exits 2; a traceback would bury it):

- The state directory is this process's alone. ``StateDirLock`` creates the
  directory and holds an exclusive ``flock`` on ``state_dir/easel.lock`` (which
  holds the PID of its holder) for the life of the daemon. A second daemon on the
  same directory would reload the first one's jobs and submit them again: paid
  twice. The kernel drops the lock when the holder dies, SIGKILL included, so a
  crash never leaves a stale lock behind; the file itself stays.
- Every ``[daemon] bind`` address can be listened on. ``listen`` binds them all
  before the store opens, so a busy port is found before recovery resubmits
  anything, and names the address that failed.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

import hypercorn.config

from daemon.config import parse_bind

#: The lock file under ``state_dir``.
LOCK_FILE = "easel.lock"


class StartupError(Exception):
    """The daemon cannot start; the message is one line naming the cause."""


def describe(exc: OSError) -> str:
    """``Permission denied: '/var/lib/easel'`` rather than ``[Errno 13] ...``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {exc.filename!r}" if exc.filename else reason


class StateDirLock:
    """The exclusive lock on a state directory, held until ``close()`` (use it with
    ``contextlib.closing``). Taking it is a few local file operations; run
    ``acquire`` in a worker thread from trio code."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Create ``state_dir`` if needed and lock it, or raise StartupError naming
        the lock file and the PID of the process that holds it."""
        path = state_dir / LOCK_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StartupError(f"state directory {state_dir}: {describe(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"state directory {state_dir} is in use: {path} is locked by PID {holder}"
                " (another easel is running on it)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StartupError(f"cannot lock {path}: {describe(exc)}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def close(self) -> None:
        """Closing the file drops the lock. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _refuse_live_unix_socket(path: str) -> None:
    """hypercorn removes a socket file in its way, which would silently steal the
    address of a daemon still listening there; refuse when one answers."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # nobody answers: a file left by a process that is gone
    raise OSError(f"another process is listening on {path}")


def listen(binds: Sequence[str], backlog: int) -> list[socket.socket]:
    """A listening socket for every address, in order, made as hypercorn makes them
    (``SO_REUSEADDR``, ``TCP_NODELAY``, a stale unix socket file replaced), or
    StartupError naming the address that failed; none is left open then."""
    sockets: list[socket.socket] = []
    try:
        for bind in binds:
            one = hypercorn.config.Config()
            one.bind = [bind]
            try:
                address = parse_bind(bind)
                if address.path:
                    _refuse_live_unix_socket(address.path)
                sockets.extend(one.create_sockets().insecure_sockets)
                sockets[-1].listen(backlog)
            except (OSError, ValueError, OverflowError) as exc:
                reason = describe(exc) if isinstance(exc, OSError) else str(exc)
                raise StartupError(f"cannot listen on {bind}: {reason}") from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
