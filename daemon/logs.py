"""Logging set-up: JSON lines to a rotating file and stderr, written off the trio thread.

Writing a log line is blocking I/O (a disk write, a full pipe to journald), and a
blocking call on the trio thread stalls every actor. So the root logger gets only a
handler that captures the record's fields and appends them to an in-memory queue;
a writer thread behind it turns them into text and writes them.

Everything that depends on *when and where* a record was made is captured on the
calling thread: the message is formatted with its arguments (they may change
later), the traceback is rendered, and the job / request / provider context
variables (``actors.context``) are read. Read in the writer thread they would
always be ``None``: context variables belong to the task and thread that set them.
Secrets are masked at the same point, so no later queue or thread ever holds them;
the writer masks every configured secret (``actors.redaction.SECRETS``) once more
in the very text it writes.

The writer does the rest, off the request path: the timestamp's text, the JSON (made
once per line, for the file and for stderr alike), and the writes: it takes every
line queued so far and writes them with one call per destination, then lets the
next ones gather for ``GATHER_SECONDS`` (50 ms), so a burst of requests costs a few
writes and a few wake-ups of the thread, not two of each per line. The file is rotated by size
(``LineFile``, the same rotation as the stdlib's ``RotatingFileHandler``).

Shape: ``configure_logging(...)`` installs the set-up at once and returns a
``LoggingHandle``; ``handle.stop()`` (idempotent) flushes the queue, joins the
writer thread and removes the handler. The handle is also a context manager, so
both ``with configure_logging(...):`` and a plain call followed by ``stop()`` work,
like ``open()`` and its file. A second ``configure_logging`` stops the first one, so
handlers never stack, and an ``atexit`` hook stops the last one, so a crash's final
lines reach the file instead of dying with the (daemon) writer thread.

Environment overrides (``LOG_LEVEL``, ``LOG_FORMAT``, ``LOG_FILE_PATH``,
``LOG_FILE_MAX_SIZE``, ``LOG_FILE_MAX_FILES``) are applied by the caller with the pure
``logging_settings_from_env`` helper, so this module never reads ``os.environ``.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import json
import logging
import math
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import attrs

from actors import context
from actors.redaction import MASK, SECRETS, is_secret_field, redact, redact_text

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "LoggingHandle",
    "LoggingOptions",
    "PrettyFormatter",
    "LineFile",
    "capture_fields",
    "configure_logging",
    "json_line",
    "logging_settings_from_env",
    "parse_level",
    "parse_size",
    "pretty_line",
    "redact",
    "redact_text",
]

#: Output formats for stderr. The file is always JSON lines: machines read it.
FORMATS = ("json", "pretty")

_LEVELS = {
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}

#: The core fields of every JSON line; an ``extra`` of the same name is kept as
#: ``extra_<name>`` rather than silently overwriting them.
_CORE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})

#: The context variables copied into each line, when set.
_CONTEXT_VARS = (
    ("job_id", context.job_id),
    ("request_id", context.request_id),
    ("provider", context.provider),
)

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

#: Types of extras that are written as they are: ``redact`` would return them.
_PLAIN = frozenset({int, float, bool, type(None)})

# --------------------------------------------------------------------------- records


@functools.lru_cache(maxsize=8)
def _second(whole: int) -> str:
    """``2025-01-01T12:00:00``: the part of a timestamp that lines of one second share."""
    when = datetime.datetime.fromtimestamp(whole, tz=datetime.UTC)
    return when.replace(tzinfo=None).isoformat(timespec="seconds")


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds, ``Z`` suffix: sorts as text, parses anywhere.

    The text of ``datetime.fromtimestamp(created).isoformat(timespec="milliseconds")``
    (microseconds rounded as it rounds them, then truncated to milliseconds), with
    the date and time of the second made once per second.
    """
    fraction, whole = math.modf(created)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return f"{_second(int(whole))}.{micros // 1000:03d}Z"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # a bad format string must not lose the line
        return f"{record.msg!r} % {record.args!r} (could not format: {exc!r})"


#: Redacted messages of records logged without arguments ("job accepted"): the same
#: few texts come back on every request, and scanning one again finds what it found.
_CONSTANT_MESSAGES: dict[str, str] = {}
_CONSTANT_MESSAGES_MAX = 1024
#: ``SECRETS.generation`` the cache was filled under: a secret registered since
#: may be in a message cached as clean, so the cache is dropped then.
_constant_generation = -1


def _redacted_message(record: logging.LogRecord) -> str:
    global _constant_generation
    msg = record.msg
    if record.args or type(msg) is not str:
        return redact_text(_message(record))
    if _constant_generation != SECRETS.generation:
        _CONSTANT_MESSAGES.clear()
        _constant_generation = SECRETS.generation
    redacted = _CONSTANT_MESSAGES.get(msg)
    if redacted is None:
        if len(_CONSTANT_MESSAGES) >= _CONSTANT_MESSAGES_MAX:
            _CONSTANT_MESSAGES.clear()  # an f-string logger would grow it without end
        redacted = _CONSTANT_MESSAGES[msg] = redact_text(msg)
    return redacted


def _capture(record: logging.LogRecord) -> dict[str, Any]:
    """``capture_fields`` with ``ts`` left as the record's ``created`` (a float).

    Turning it into text is left to the writing thread: it does not depend on when
    or where it is done, and it is the dearest part of a line's fields.
    """
    fields: dict[str, Any] = {
        "ts": record.created,
        "level": record.levelname,
        "logger": record.name,
        "msg": _redacted_message(record),
    }
    for name, var in _CONTEXT_VARS:
        value = var.get()
        if value is not None:
            fields[name] = value
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key[:1] == "_":
            continue
        name = f"extra_{key}" if key in _CORE_KEYS else key
        if is_secret_field(key, value):
            fields[name] = MASK
        elif type(value) in _PLAIN:  # nothing to mask or copy (the common extras)
            fields[name] = value
        else:
            fields[name] = redact(value)
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = redact_text("".join(traceback.format_exception(*record.exc_info)))
    elif record.exc_text:
        fields["exc"] = redact_text(record.exc_text)
    if record.stack_info:
        fields["stack"] = redact_text(record.stack_info)
    return fields


def capture_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The redacted fields of one JSON line, read *now*, on the current thread.

    The queue's handler captures the same fields on the logging call's thread (its
    ``ts`` made text later, by the writer); the formatters call this for records
    that did not come through the queue.
    """
    fields = _capture(record)
    fields["ts"] = _timestamp(record.created)
    return fields


def json_line(fields: Mapping[str, Any]) -> str:
    """The JSON line of captured fields (without its newline)."""
    return json.dumps(fields, ensure_ascii=False, default=repr)


def pretty_line(fields: Mapping[str, Any]) -> str:
    """The line (and traceback lines) a person reads for captured fields."""
    rest_fields = dict(fields)
    head = "{} {:<8} {}: {}".format(
        rest_fields.pop("ts"), rest_fields.pop("level"), rest_fields.pop("logger"),
        rest_fields.pop("msg"),
    )
    exc = rest_fields.pop("exc", None)
    stack = rest_fields.pop("stack", None)
    rest = " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, default=repr)}"
        for key, value in rest_fields.items()
    )
    line = f"{head} {rest}" if rest else head
    for block in (exc, stack):
        if block:
            line += "\n" + block.rstrip("\n")
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        return json_line(capture_fields(record))


class PrettyFormatter(logging.Formatter):
    """A line a person reads in a terminal: time, level, logger, message, then fields.

    ``2025-01-01T12:00:00.000Z INFO     actors.scheduler: job queued job_id=j1 prio=5``,
    with a traceback, if any, on the lines below.
    """

    def format(self, record: logging.LogRecord) -> str:
        return pretty_line(capture_fields(record))


class _CapturingHandler(logging.Handler):
    """The root logger's one handler: captures a record's fields and queues them.

    Only the fields dict is queued (no record, no copy of one), so the queue holds
    no frames or caller-owned objects. ``handle`` takes no lock: the queue is
    thread-safe and the capture touches nothing shared.
    """

    def __init__(self, records: queue.SimpleQueue[Any]) -> None:
        super().__init__()
        self._records = records

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._records.put(_capture(record))
        except Exception:
            self.handleError(record)


# --------------------------------------------------------------------------- writing


class LineFile:
    """A log file written a batch of lines at a time, rotated by size.

    Rotation is ``RotatingFileHandler``'s: when a line would take the file past
    ``max_bytes`` (0: never), ``name.N`` becomes ``name.N+1`` (the oldest,
    ``name.<backup_count>``, is dropped), the file becomes ``name.1`` and a new one
    is started; so every file holds whole lines and at most ``max_bytes``, unless a
    single line is longer. Unlike the stdlib handler, which formats each record
    twice and asks the file its size twice per record, it counts the bytes it
    writes and writes each batch with one call.
    """

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backup_count = backup_count
        self._file = path.open("ab")
        self._size = self._file.tell()

    def write_lines(self, lines: list[bytes]) -> None:
        pending: list[bytes] = []
        for line in lines:
            if self._max_bytes and self._size and self._size + len(line) > self._max_bytes:
                self._write(pending)
                pending = []
                self._rotate()
            pending.append(line)
            self._size += len(line)
        self._write(pending)

    def _write(self, lines: list[bytes]) -> None:
        if lines:
            self._file.write(b"".join(lines))
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self._backup_count - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self._backup_count > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("wb")
        self._size = 0

    def close(self) -> None:
        self._file.close()


_STOP = object()

#: How long the writer lets lines gather after each write, in seconds.
GATHER_SECONDS = 0.05


class _Writer:
    """The logging thread: takes every line queued so far, makes each text once, and
    writes the batch with one write to the file and one to stderr."""

    def __init__(self, records: queue.SimpleQueue[Any], file: LineFile | None,
                 stream: TextIO, pretty: bool) -> None:
        self._records = records
        self.file = file
        self.stream = stream
        self._pretty = pretty
        self._thread = threading.Thread(target=self._run, name="easel-logging", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write out everything queued, then end the thread and close the file."""
        self._records.put(_STOP)
        self._thread.join()
        if self.file is not None:
            self.file.close()

    def _run(self) -> None:
        while True:
            batch = [self._records.get()]
            while True:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            stop = any(fields is _STOP for fields in batch)
            self._write([fields for fields in batch if fields is not _STOP])
            if stop:
                return
            # Let the next lines gather: under load this thread then wakes a few
            # times a second, not once a line, and each wake-up takes the GIL
            # from the trio thread. A line waits at most this long to be written.
            time.sleep(GATHER_SECONDS)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        json_lines = []
        for fields in batch:
            fields["ts"] = _timestamp(fields["ts"])
            # The fields were redacted when captured; this last pass over the text
            # written is what guarantees no configured secret reaches a file, in
            # whatever field or encoding it came (a context variable, a repr).
            json_lines.append(SECRETS.mask(json_line(fields)) + "\n")
        if self.file is not None:
            try:
                self.file.write_lines([line.encode("utf-8", "backslashreplace")
                                       for line in json_lines])
            except Exception:  # a full disk must not end the thread that writes stderr
                _report_failure("log file")
        text = (SECRETS.mask("".join(pretty_line(f) + "\n" for f in batch)) if self._pretty
                else "".join(json_lines))
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            _report_failure("stderr")


def _report_failure(where: str) -> None:
    """What ``logging.Handler.handleError`` does: say so on the real stderr, if any."""
    if logging.raiseExceptions and sys.__stderr__ is not None:
        try:
            sys.__stderr__.write(f"--- logging error writing to {where} ---\n")
            traceback.print_exc(file=sys.__stderr__)
        except Exception:  # stderr itself is gone: nowhere left to say it
            return


# --------------------------------------------------------------------------- settings


def parse_level(value: str) -> int:
    """``"info"`` → ``logging.INFO``; anything else is a ValueError naming the choices."""
    try:
        return _LEVELS[value.strip().upper()]
    except (KeyError, AttributeError):
        choices = ", ".join(name for name in _LEVELS if name not in ("FATAL", "WARN"))
        raise ValueError(f"unknown log level {value!r} (expected one of {choices})") from None


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: str) -> int:
    """Bytes from ``"10485760"``, ``"10M"``, ``"10MB"`` or ``"10MiB"`` (units are 1024-based)."""
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"expected a size in bytes such as 10485760 or 10M, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


@attrs.frozen
class LoggingOptions:
    """The logging settings after environment overrides; the fields are the keyword
    arguments of ``configure_logging``: ``configure_logging(**attrs.asdict(opts))``."""

    level: str
    file: str | None
    fmt: str
    max_bytes: int
    backup_count: int


def logging_settings_from_env(
    level: str,
    file: str | None,
    fmt: str,
    max_bytes: int,
    backup_count: int,
    environ: Mapping[str, str],
) -> LoggingOptions:
    """Apply ``LOG_LEVEL``, ``LOG_FORMAT``, ``LOG_FILE_PATH``, ``LOG_FILE_MAX_SIZE`` and
    ``LOG_FILE_MAX_FILES`` from ``environ`` over the configured values.

    Pure (the caller passes ``os.environ``) so it is tested without touching the
    process. An empty variable counts as unset (an ``EnvironmentFile`` template
    often leaves ``LOG_LEVEL=``), except ``LOG_FILE_PATH=""``, which means "stderr
    only", as ``logging.file = ""`` does in the config file. A path from the
    environment is used as given (relative to the working directory). Bad values
    raise ValueError naming the variable.
    """

    def get(name: str) -> str | None:
        value = environ.get(name)
        return value if value else None

    def checked(name: str, parse: Any, value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    if (value := get("LOG_LEVEL")) is not None:
        checked("LOG_LEVEL", parse_level, value)
        level = value.strip().upper()
    if (value := get("LOG_FORMAT")) is not None:
        fmt = checked("LOG_FORMAT", _parse_format, value)
    if "LOG_FILE_PATH" in environ:
        file = environ["LOG_FILE_PATH"] or None
    if (value := get("LOG_FILE_MAX_SIZE")) is not None:
        max_bytes = checked("LOG_FILE_MAX_SIZE", parse_size, value)
    if (value := get("LOG_FILE_MAX_FILES")) is not None:
        backup_count = checked("LOG_FILE_MAX_FILES", _parse_count, value)
    return LoggingOptions(
        level=level, file=file, fmt=fmt, max_bytes=max_bytes, backup_count=backup_count
    )


def _parse_format(value: str) -> str:
    fmt = value.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"expected one of {', '.join(FORMATS)}, got {value!r}")
    return fmt


def _parse_count(value: str) -> int:
    try:
        count = int(value.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None
    if count < 0:
        raise ValueError(f"expected 0 or more, got {count}")
    return count


# --------------------------------------------------------------------------- set-up


#: What ``configure_logging`` turns off while it is installed: where each call came
#: from (a walk up the stack per record) and the thread and process names, none of
#: which a line shows. The logging HOWTO's "Optimization" section names these.
_RECORD_EXTRAS: dict[str, Any] = {
    "_srcfile": None, "logThreads": False, "logProcesses": False, "logMultiprocessing": False,
}


class LoggingHandle:
    """The installed set-up: ``stop()`` it, or use it as a context manager."""

    def __init__(self, handler: _CapturingHandler, writer: _Writer, previous_level: int,
                 previous_extras: dict[str, Any]) -> None:
        self._handler = handler
        self._writer = writer
        self._previous_level = previous_level
        self._previous_extras = previous_extras
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def destinations(self) -> tuple[LineFile | TextIO, ...]:
        """Where lines go (the file first, if any; stderr last)."""
        writer = self._writer
        return (writer.stream,) if writer.file is None else (writer.file, writer.stream)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Detach from the root logger, write out every queued record, join the thread.

        Idempotent. Records logged after this go to whatever else is on the root
        logger (or ``logging.lastResort`` for warnings and worse).
        """
        global _active
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        root = logging.getLogger()
        root.removeHandler(self._handler)
        self._writer.stop()  # the backlog is written first; the stream stays open
        self._handler.close()
        root.setLevel(self._previous_level)
        for name, value in self._previous_extras.items():
            setattr(logging, name, value)
        with _active_lock:
            if _active is self:
                _active = None

    def __enter__(self) -> LoggingHandle:
        return self

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()


_active: LoggingHandle | None = None
_active_lock = threading.Lock()


def configure_logging(
    level: str,
    file: str | None,
    fmt: str = "json",
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
    *,
    stream: TextIO | None = None,
) -> LoggingHandle:
    """Route the root logger through a queue to a rotating JSON file and stderr.

    ``file`` is the log file (parent directories are created; ``None``: stderr
    only), rotated when it would pass ``max_bytes`` (0: never) keeping
    ``backup_count`` old files. ``fmt`` is stderr's format, ``"json"`` or
    ``"pretty"``. ``stream`` replaces ``sys.stderr`` (tests). Any set-up installed
    by an earlier call is stopped first. Handlers that others put on the root
    logger (pytest's, for one) are left alone.
    """
    numeric_level = parse_level(level)
    fmt = _parse_format(fmt)
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
    if max_bytes > 0 and backup_count < 1:
        # A rotating file that keeps no old file could only be emptied in place,
        # losing every line at each rotation.
        raise ValueError("backup_count must be at least 1 when max_bytes is set")

    line_file: LineFile | None = None
    if file is not None:
        path = Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        line_file = LineFile(path, max_bytes, backup_count)

    global _active
    with _active_lock:
        previous = _active
    if previous is not None:
        previous.stop()

    records: queue.SimpleQueue[Any] = queue.SimpleQueue()  # unbounded: never blocks
    writer = _Writer(records, line_file, stream if stream is not None else sys.stderr,
                     pretty=fmt == "pretty")
    handler = _CapturingHandler(records)
    root = logging.getLogger()
    extras = {name: getattr(logging, name) for name in _RECORD_EXTRAS}
    handle = LoggingHandle(handler, writer, root.level, extras)
    writer.start()
    for name, value in _RECORD_EXTRAS.items():
        setattr(logging, name, value)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    with _active_lock:
        _active = handle
    return handle


def _stop_active() -> None:
    """Stop the current set-up at interpreter exit (registered with ``atexit``)."""
    with _active_lock:
        handle = _active
    if handle is not None:
        handle.stop()


atexit.register(_stop_active)
