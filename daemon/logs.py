"""Logging set-up: JSON lines to a rotating file and stderr, written off the trio thread.

Logging handlers do blocking I/O (a disk write, a full pipe to journald), and a
blocking call on the trio thread stalls every actor. So the root logger gets only a
``QueueHandler``, which appends the record to an in-memory queue, and a
``QueueListener`` thread behind it does the formatting and writing.

Everything that depends on *when and where* a record was made is captured on the
calling thread, in ``QueueHandler.prepare``: the message is formatted with its
arguments (they may change later), the traceback is rendered, and the job / request
/ provider context variables (``actors.context``) are read. Read in the listener
thread they would always be ``None``: context variables belong to the task and
thread that set them. Secrets are masked at the same point, so no later handler,
queue or thread ever holds them.

Shape: ``configure_logging(...)`` installs the set-up at once and returns a
``LoggingHandle``; ``handle.stop()`` (idempotent) flushes the queue, joins the
listener thread and removes the handler. The handle is also a context manager, so
both ``with configure_logging(...):`` and a plain call followed by ``stop()`` work,
like ``open()`` and its file. A second ``configure_logging`` stops the first one, so
handlers never stack, and an ``atexit`` hook stops the last one, so a crash's final
lines reach the file instead of dying with the (daemon) listener thread.

Environment overrides (``LOG_LEVEL``, ``LOG_FORMAT``, ``LOG_FILE_PATH``,
``LOG_FILE_MAX_SIZE``, ``LOG_FILE_MAX_FILES``) are applied by the caller with the pure
``logging_settings_from_env`` helper, so this module never reads ``os.environ``.
"""

from __future__ import annotations

import atexit
import copy
import datetime
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import attrs

from actors import context
from actors.redaction import MASK, is_secret_field, redact, redact_text

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "LoggingHandle",
    "LoggingOptions",
    "PrettyFormatter",
    "capture_fields",
    "configure_logging",
    "logging_settings_from_env",
    "parse_level",
    "parse_size",
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

#: The attribute under which ``prepare`` leaves the captured, redacted fields.
_FIELDS_ATTR = "easel_fields"

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
) | {"message", "asctime", "taskName", _FIELDS_ATTR}

# --------------------------------------------------------------------------- records


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds, ``Z`` suffix: sorts as text, parses anywhere."""
    when = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # a bad format string must not lose the line
        return f"{record.msg!r} % {record.args!r} (could not format: {exc!r})"


def capture_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The redacted fields of one JSON line, read *now*, on the current thread.

    Called from ``QueueHandler.prepare`` (the logging call's thread); the
    formatters call it too for records that did not come through the queue.
    """
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname,
        "logger": record.name,
        "msg": redact_text(_message(record)),
    }
    for name, var in _CONTEXT_VARS:
        value = var.get()
        if value is not None:
            fields[name] = value
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key.startswith("_"):
            continue
        name = f"extra_{key}" if key in _CORE_KEYS else key
        secret = is_secret_field(key, value)
        fields[name] = MASK if secret else redact(value)
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = redact_text("".join(traceback.format_exception(*record.exc_info)))
    elif record.exc_text:
        fields["exc"] = redact_text(record.exc_text)
    if record.stack_info:
        fields["stack"] = redact_text(record.stack_info)
    return fields


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, _FIELDS_ATTR, None)
    return fields if isinstance(fields, dict) else capture_fields(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields_of(record), ensure_ascii=False, default=repr)


class PrettyFormatter(logging.Formatter):
    """A line a person reads in a terminal: time, level, logger, message, then fields.

    ``2025-01-01T12:00:00.000Z INFO     actors.scheduler: job queued job_id=j1 prio=5``,
    with a traceback, if any, on the lines below.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(_fields_of(record))
        head = "{} {:<8} {}: {}".format(
            fields.pop("ts"), fields.pop("level"), fields.pop("logger"), fields.pop("msg")
        )
        exc = fields.pop("exc", None)
        stack = fields.pop("stack", None)
        rest = " ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value, default=repr)}"
            for key, value in fields.items()
        )
        line = f"{head} {rest}" if rest else head
        for block in (exc, stack):
            if block:
                line += "\n" + block.rstrip("\n")
        return line


class _CapturingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler whose ``prepare`` captures fields on the logging thread.

    The stdlib ``prepare`` folds the traceback into ``msg``; this one keeps it in its
    own field, and drops ``exc_info`` and ``args`` so the queued copy holds no
    frames or caller-owned objects.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        fields = capture_fields(record)
        prepared = copy.copy(record)
        prepared.msg = prepared.message = fields["msg"]
        prepared.args = None
        prepared.exc_info = None
        prepared.exc_text = None
        prepared.stack_info = None
        setattr(prepared, _FIELDS_ATTR, fields)
        return prepared


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


class LoggingHandle:
    """The installed set-up: ``stop()`` it, or use it as a context manager."""

    def __init__(
        self,
        queue_handler: logging.handlers.QueueHandler,
        listener: logging.handlers.QueueListener,
        handlers: list[logging.Handler],
        previous_level: int,
    ) -> None:
        self._queue_handler = queue_handler
        self._listener = listener
        self._handlers = handlers
        self._previous_level = previous_level
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def handlers(self) -> tuple[logging.Handler, ...]:
        """The handlers behind the queue (file first, if any; stderr last)."""
        return tuple(self._handlers)

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
        root.removeHandler(self._queue_handler)
        self._listener.stop()  # enqueues a sentinel, then joins after the backlog
        for handler in self._handlers:
            try:
                handler.flush()
            finally:
                handler.close()  # a StreamHandler leaves sys.stderr open
        self._queue_handler.close()
        root.setLevel(self._previous_level)
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
        # RotatingFileHandler with backupCount=0 never truncates: it reopens the
        # same file on every record once the size is reached and grows forever.
        raise ValueError("backup_count must be at least 1 when max_bytes is set")

    handlers: list[logging.Handler] = []
    if file is not None:
        path = Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        file_handler.setFormatter(JsonFormatter())
        handlers.append(file_handler)
    stderr_handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    stderr_handler.setFormatter(PrettyFormatter() if fmt == "pretty" else JsonFormatter())
    handlers.append(stderr_handler)

    global _active
    with _active_lock:
        previous = _active
    if previous is not None:
        previous.stop()

    records: queue.SimpleQueue[Any] = queue.SimpleQueue()  # unbounded: never blocks
    queue_handler = _CapturingQueueHandler(records)
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    root = logging.getLogger()
    handle = LoggingHandle(queue_handler, listener, handlers, previous_level=root.level)
    listener.start()
    root.addHandler(queue_handler)
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
