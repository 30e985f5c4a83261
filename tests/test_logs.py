"""Logging set-up: JSON lines, context captured on the caller's thread, redaction,
rotation, no stacked handlers, flush on stop, and the environment overrides."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

from actors import context
from daemon import logs
from daemon.logs import (
    LoggingHandle,
    LoggingOptions,
    configure_logging,
    logging_settings_from_env,
)

log = logging.getLogger("easel.test")


@pytest.fixture(autouse=True)
def _stop_logging() -> Iterator[None]:
    yield
    logs._stop_active()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def start(tmp_path: Path, **kwargs: Any) -> tuple[LoggingHandle, Path, io.StringIO]:
    path = tmp_path / "logs" / "nested" / "easel.log"
    stream = io.StringIO()
    handle = configure_logging(kwargs.pop("level", "DEBUG"), str(path), stream=stream, **kwargs)
    return handle, path, stream


def test_json_line_has_the_core_fields(tmp_path: Path) -> None:
    handle, path, stream = start(tmp_path)
    log.info("hello %s", "world")
    handle.stop()

    (line,) = read_lines(path)
    assert line["msg"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == "easel.test"
    ts = datetime.datetime.fromisoformat(line["ts"])
    assert ts.utcoffset() == datetime.timedelta(0)
    assert line["ts"].endswith("Z")
    assert abs((datetime.datetime.now(datetime.UTC) - ts).total_seconds()) < 60
    assert "job_id" not in line and "exc" not in line
    assert json.loads(stream.getvalue()) == line  # stderr gets the same JSON


def test_parent_directories_are_created(tmp_path: Path) -> None:
    handle, path, _ = start(tmp_path)
    handle.stop()
    assert path.parent.is_dir()


def test_context_is_captured_at_call_time_on_the_calling_thread(tmp_path: Path) -> None:
    handle, path, _ = start(tmp_path)
    tokens = [context.job_id.set("job-1"), context.request_id.set("req-1"), context.provider.set("kling")]
    log.info("with context")
    for var, token in zip((context.job_id, context.request_id, context.provider), tokens):
        var.reset(token)
    log.info("without context")

    def in_thread() -> None:
        context.job_id.set("job-thread")
        log.info("from a thread")

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    handle.stop()

    first, second, third = read_lines(path)
    assert (first["job_id"], first["request_id"], first["provider"]) == ("job-1", "req-1", "kling")
    assert not {"job_id", "request_id", "provider"} & second.keys()
    assert third["job_id"] == "job-thread"


async def test_context_follows_trio_tasks_and_worker_threads(tmp_path: Path) -> None:
    handle, path, _ = start(tmp_path)

    async def work(job: str) -> None:
        context.job_id.set(job)
        await trio.lowlevel.checkpoint()
        log.info("in task")
        await trio.to_thread.run_sync(lambda: log.info("in worker thread"))

    async with trio.open_nursery() as nursery:
        for job in ("a", "b", "c"):
            nursery.start_soon(work, job)
    handle.stop()

    lines = read_lines(path)
    assert sorted(line["job_id"] for line in lines if line["msg"] == "in task") == ["a", "b", "c"]
    assert sorted(line["job_id"] for line in lines if line["msg"] == "in worker thread") == [
        "a",
        "b",
        "c",
    ]


def test_exception_goes_in_exc(tmp_path: Path) -> None:
    handle, path, _ = start(tmp_path)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("division failed")
    handle.stop()

    (line,) = read_lines(path)
    assert line["msg"] == "division failed"
    assert line["level"] == "ERROR"
    assert line["exc"].startswith("Traceback (most recent call last)")
    assert "ZeroDivisionError: division by zero" in line["exc"]


def test_extra_fields_appear_and_are_frozen_at_call_time(tmp_path: Path) -> None:
    handle, path, _ = start(tmp_path)
    attempts = [1]
    log.info(
        "submitted",
        extra={"attempts": attempts, "cost": 0.5, "obj": object(), "level": "mine", "job_id": "explicit"},
    )
    attempts.append(2)  # mutated after the call: the line must not see it
    handle.stop()

    (line,) = read_lines(path)
    assert line["attempts"] == [1]
    assert line["cost"] == 0.5
    assert line["obj"].startswith("<object object")
    assert line["level"] == "INFO" and line["extra_level"] == "mine"
    assert line["job_id"] == "explicit"


def test_secrets_are_redacted(tmp_path: Path) -> None:
    handle, path, stream = start(tmp_path)
    log.info(
        "calling with Authorization: Bearer abcdef123456 and r8_SeCrEt123 and whsec_c2VjcmV0 done",
        extra={
            "api_key": "k-123",
            "api_token": "t-123",
            "headers": {"Authorization": "Token xyz", "X-Request-Id": "r1"},
            "config": {"password": "hunter2", "nested": [{"secret": "s"}]},
            "url": "https://api.example/v1?token=abc&x=1",
            "note": "key is r8_AnotherOne",
            "token": None,
        },
    )
    try:
        raise RuntimeError("upstream said: invalid token whsec_dGVzdA== for Bearer zzzzzzzzzz")
    except RuntimeError:
        log.exception("failed")
    handle.stop()

    text = path.read_text() + stream.getvalue()
    for secret in ("abcdef123456", "SeCrEt123", "c2VjcmV0", "k-123", "t-123", "xyz", "hunter2",
                   "AnotherOne", "dGVzdA", "zzzzzzzzzz", "token=abc"):
        assert secret not in text
    first, second = read_lines(path)
    assert first["msg"] == (
        "calling with Authorization: *** and r8_*** and whsec_*** done"
    )
    assert first["api_key"] == first["api_token"] == "***"
    assert first["headers"] == {"Authorization": "***", "X-Request-Id": "r1"}
    assert first["config"] == {"password": "***", "nested": [{"secret": "***"}]}
    assert first["url"] == "https://api.example/v1?token=***&x=1"
    assert first["token"] is None  # "not set" is worth seeing and reveals nothing
    assert "whsec_***" in second["exc"] and "Bearer ***" in second["exc"]


@pytest.mark.parametrize("text", [
    "AUTHORIZATION: abc", "Api-Key=abc", "ACCESS_TOKEN: abc", "Client_Secret=abc",
    "PassWD: abc", "GET /x?X-Amz-Signature=abc", "/x?X-Amz-Credential=abc",
    "BEARER abcdefgh", "whsec_abc", "r8_abc", "eyJa.b.c", "Key id:secret",
    "sk-aaaaaaaaaaaaaaaaaaaa",
])
def test_the_quick_check_lets_every_secret_through_to_the_patterns(text: str) -> None:
    # redact_text returns text unchanged when a cheap search finds no word any
    # pattern needs; each generic pattern and each provider's must still mask.
    assert logs.MASK in logs.redact_text(f"before {text} after")


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "max_tokens=512 idempotency_key=abc bearer of news, basic usage"
    assert logs.redact_text(text) == text
    assert logs.redact({"max_tokens": 5, "idempotency_key": "k"}) == {
        "max_tokens": 5,
        "idempotency_key": "k",
    }


def test_configuring_twice_does_not_stack_handlers(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    first, path, _ = start(tmp_path)
    second, _, _ = start(tmp_path)
    assert first.stopped and not second.stopped
    added = [h for h in root.handlers if h not in before]
    assert len(added) == 1
    log.info("once")
    second.stop()

    assert [line["msg"] for line in read_lines(path)] == ["once"]
    assert root.handlers == before


def test_stop_flushes_everything_and_joins_the_listener(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    handle, path, _ = start(tmp_path)
    assert len(set(threading.enumerate()) - threads_before) == 1  # the listener
    for i in range(2000):
        log.info("line %d", i)
    handle.stop()
    handle.stop()  # idempotent

    assert set(threading.enumerate()) <= threads_before
    lines = read_lines(path)
    assert [line["msg"] for line in lines] == [f"line {i}" for i in range(2000)]


def test_context_manager_shape(tmp_path: Path) -> None:
    path = tmp_path / "easel.log"
    with configure_logging("INFO", str(path), stream=io.StringIO()) as handle:
        log.warning("inside")
    assert handle.stopped
    assert read_lines(path)[0]["msg"] == "inside"


def test_level_filters_and_root_level_is_restored(tmp_path: Path) -> None:
    root = logging.getLogger()
    previous = root.level
    handle, path, _ = start(tmp_path, level="warning")
    log.info("dropped")
    log.warning("kept")
    handle.stop()
    assert [line["msg"] for line in read_lines(path)] == ["kept"]
    assert root.level == previous


def test_pretty_stderr_and_json_file(tmp_path: Path) -> None:
    handle, path, stream = start(tmp_path, fmt="pretty")
    token = context.job_id.set("job-9")
    try:
        log.info("queued", extra={"priority": 5})
    finally:
        context.job_id.reset(token)
    try:
        raise ValueError("bad")
    except ValueError:
        log.error("oops", exc_info=True)
    handle.stop()

    out = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO     easel\.test: queued job_id=job-9 priority=5",
        out[0],
    )
    assert "ERROR" in out[1] and "oops" in out[1]
    assert out[-1] == "ValueError: bad"
    assert read_lines(path)[0]["job_id"] == "job-9"  # the file stays JSON


def test_stderr_only_when_no_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    handle = configure_logging("INFO", None, stream=stream)
    assert len(handle.destinations) == 1
    log.info("only stderr")
    handle.stop()
    assert json.loads(stream.getvalue())["msg"] == "only stderr"


def test_rotation_by_size(tmp_path: Path) -> None:
    handle, path, _ = start(tmp_path, max_bytes=2000, backup_count=2)
    for i in range(200):
        log.info("padding line %03d %s", i, "x" * 40)
    handle.stop()

    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["easel.log", "easel.log.1", "easel.log.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 2000
        read_lines(p)  # every file holds whole JSON lines
    assert read_lines(path)[-1]["msg"].startswith("padding line 199")


def test_rotation_counts_what_the_file_already_holds(tmp_path: Path) -> None:
    # The writer counts its own bytes; after a restart it starts from the file's size.
    for _ in range(2):
        handle, path, _ = start(tmp_path, max_bytes=2000, backup_count=3)
        for i in range(10):  # about 1400 bytes: the second run's lines rotate the file
            log.info("padding line %03d %s", i, "x" * 40)
        handle.stop()

    sizes = [p.stat().st_size for p in path.parent.iterdir()]
    assert len(sizes) == 2 and max(sizes) <= 2000
    lines = read_lines(path.with_name("easel.log.1")) + read_lines(path)
    assert [line["msg"][:16] for line in lines] == [f"padding line {i:03d}" for i in range(10)] * 2


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", None)
    with pytest.raises(ValueError, match="json, pretty"):
        configure_logging("INFO", None, fmt="xml")
    with pytest.raises(ValueError, match="backup_count"):
        configure_logging("INFO", str(tmp_path / "x.log"), max_bytes=10, backup_count=0)


def test_a_bad_format_string_still_gives_a_line() -> None:
    # Checked on capture_fields directly: pytest's own capture handler on the root
    # logger re-raises formatting errors, so a real log call would fail in it first.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    fields = logs.capture_fields(record)
    assert fields["msg"].startswith("'%d items' % ('many',) (could not format")


DEFAULTS = ("INFO", "/var/lib/easel/logs/easel.log", "json", 10 * 1024 * 1024, 5)


def test_env_overrides_nothing_when_unset() -> None:
    assert logging_settings_from_env(*DEFAULTS, {}) == LoggingOptions(*DEFAULTS)


def test_env_overrides_apply() -> None:
    env = {
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "PRETTY",
        "LOG_FILE_PATH": "/var/log/easel/easel.log",
        "LOG_FILE_MAX_SIZE": "5M",
        "LOG_FILE_MAX_FILES": "3",
    }
    options = logging_settings_from_env(*DEFAULTS, env)
    assert options == LoggingOptions("DEBUG", "/var/log/easel/easel.log", "pretty", 5 * 1024**2, 3)
    assert set(attrs.asdict(options)) <= set(configure_logging.__code__.co_varnames)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1048576", 1048576), ("512k", 512 * 1024), ("10MB", 10 * 1024**2), ("1GiB", 1024**3), ("0", 0)],
)
def test_env_size_units(value: str, expected: int) -> None:
    assert logging_settings_from_env(*DEFAULTS, {"LOG_FILE_MAX_SIZE": value}).max_bytes == expected


def test_env_empty_values() -> None:
    options = logging_settings_from_env(*DEFAULTS, {"LOG_LEVEL": "", "LOG_FILE_PATH": ""})
    assert options.level == "INFO"  # empty counts as unset
    assert options.file is None  # except for the path: "" means stderr only


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_LEVEL", "chatty"),
        ("LOG_FORMAT", "xml"),
        ("LOG_FILE_MAX_SIZE", "ten"),
        ("LOG_FILE_MAX_FILES", "-1"),
        ("LOG_FILE_MAX_FILES", "many"),
    ],
)
def test_env_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: "):
        logging_settings_from_env(*DEFAULTS, {name: value})
