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

Two more things are made to hold, with a warning rather than a refusal:

- Files are for the daemon's user alone, with or without systemd:
  ``private_files`` sets the umask to 077 (the process's, so files made by worker
  threads too: the database with its WAL and SHM, logs, stored media, the webhook
  secret are 0600, directories 0700), and ``StateDirLock.acquire`` takes group
  and other bits off a state directory made by an earlier version.
- There are file descriptors for every connection the daemon accepts:
  ``connection_budget`` raises the soft ``RLIMIT_NOFILE`` to
  ``max_connections + RESERVED_DESCRIPTORS`` (up to the hard limit) or, when the
  hard limit is lower, lowers the connection cap to fit and says so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

import hypercorn.config

from daemon.config import parse_bind

log = logging.getLogger(__name__)

#: The lock file under ``state_dir``.
LOCK_FILE = "easel.lock"

#: The umask of the daemon: what it creates is readable by its own user only.
PRIVATE_UMASK = 0o077

#: File descriptors the daemon needs besides its API connections: provider calls
#: (at most the sum of every section's ``max_in_flight``, 166 with the shipped
#: config), output downloads, client webhooks, SQLite (database, WAL, SHM), log
#: files, media being written or served, listening sockets, stdio; 512 covers
#: the shipped defaults with room to spare.
RESERVED_DESCRIPTORS = 512


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
            _make_private(state_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def private_files() -> None:
    """Make every file and directory the process creates from now on its user's
    alone (0600 / 0700). Called first thing, before the log file is opened."""
    os.umask(PRIVATE_UMASK)


def _make_private(state_dir: Path) -> None:
    """Take group and other bits off ``state_dir`` (made by an earlier version, or
    by hand): nothing under it is reachable by other users then."""
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o077:
        try:
            state_dir.chmod(mode & 0o700)
        except OSError as exc:  # not its owner: it still works, say what is open
            log.warning("state directory %s stays mode %o: %s", state_dir, mode, describe(exc))


def connection_budget(max_connections: int) -> int:
    """The number of connections the daemon may hold open at once: ``max_connections``
    once the soft ``RLIMIT_NOFILE`` has room for them and ``RESERVED_DESCRIPTORS``
    (raised up to the hard limit when needed), else as many as the limit leaves,
    with a warning naming the limit: refused connections beat EMFILE in the store,
    the logs or a finalizing download."""
    need = max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if raised > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit to %d: %s", raised, exc)
    if soft >= need:
        return max_connections
    budget = max(soft - RESERVED_DESCRIPTORS, soft // 2, 1)
    log.warning(
        "the open files limit (RLIMIT_NOFILE %d, hard %s) is too low for"
        " daemon.max_connections = %d plus the daemon's own %d: at most %d connections"
        " are accepted at once (raise LimitNOFILE / ulimit -n to %d)",
        soft, "unlimited" if hard == resource.RLIM_INFINITY else hard,
        max_connections, RESERVED_DESCRIPTORS, budget, need,
    )
    return budget


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
