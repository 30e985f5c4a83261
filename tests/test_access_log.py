"""The access log and request ids, on an embedded daemon with the real logging set-up.

Every request the app answers gets exactly one ``easel.access`` line (method, path,
status, duration, remote address, request id), error answers included; every line
logged while handling a request carries its ``request_id``, which the response
echoes in ``X-Request-Id``; a cancel is logged.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from quart import Blueprint

from daemon import logs
from daemon.api import create_app
from tests.conftest import free_port

#: A sandbox whose calls take long enough that a job is still in flight when cancelled.
SLOW_SANDBOX = "[providers.sandbox]\ndelay = 30\n"
HEX_ID = re.compile(r"[0-9a-f]{16}")


class Lines:
    """The JSON lines logged while the test runs, read once logging is stopped."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handle = logs.configure_logging("INFO", None, stream=self.stream)

    def read(self) -> list[dict[str, Any]]:
        self.handle.stop()
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines()
    yield captured
    captured.handle.stop()


def access_lines(found: list[dict[str, Any]],
                 where: Callable[[dict[str, Any]], bool] = lambda _: True) -> list[dict[str, Any]]:
    return [line for line in found if line["logger"] == "easel.access" and where(line)]


async def test_every_request_gets_one_access_line_errors_included(easel_daemon: Any,
                                                                  lines: Lines) -> None:
    easel = await easel_daemon(SLOW_SANDBOX)
    client = easel.client
    answers = [
        await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x"}),
        await client.get("/api/nothing"),
        await client.post("/api/external/generation", content=b"{}",
                          headers={"content-type": "text/plain"}),
        await client.post("/api/external/generation", content=b"x" * 1_100_000,
                          headers={"content-type": "application/json"}),
        await client.get("/api/external/generation/gen_nope"),
    ]
    assert [a.status_code for a in answers] == [202, 404, 415, 413, 404]
    found = lines.read()
    for answer in answers:
        request_id = answer.headers["x-request-id"]
        assert HEX_ID.fullmatch(request_id)
        [line] = access_lines(found, lambda line, r=request_id: line.get("request_id") == r)
        assert line["method"] == answer.request.method
        assert line["path"] == answer.request.url.path
        assert line["status"] == answer.status_code
        assert line["msg"] == f"{answer.request.method} {answer.request.url.path} {answer.status_code}"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["remote"] == "127.0.0.1"
    assert len({a.headers["x-request-id"] for a in answers}) == len(answers)


async def test_request_id_is_on_every_line_inside_the_request(easel_daemon: Any,
                                                              lines: Lines) -> None:
    easel = await easel_daemon(SLOW_SANDBOX)
    submitted = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x"},
                                   headers={"X-Request-Id": "client-chosen-1"})
    assert submitted.headers["x-request-id"] == "client-chosen-1"
    job_id = submitted.json()["id"]
    cancelled = await easel.client.post(f"/api/external/generation/{job_id}/cancel",
                                        headers={"X-Request-Id": "client-chosen-2"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    found = lines.read()
    [accepted] = [line for line in found if line["msg"] == "job accepted"]
    assert accepted["request_id"] == "client-chosen-1" and accepted["job_id"] == job_id
    [cancel] = [line for line in found if line["msg"] == "job cancelled"]
    assert cancel["request_id"] == "client-chosen-2" and cancel["job_id"] == job_id
    assert cancel["provider"] == "sandbox"
    for request_id in ("client-chosen-1", "client-chosen-2"):
        assert len(access_lines(found, lambda line, r=request_id: line.get("request_id") == r)) == 1


@pytest.mark.parametrize("sent", ["has space", "x" * 65, "quote\"d", "", "a/b", "k=v",
                                  "user:pass", "a@b", "x" * 8000])
async def test_an_unusable_client_request_id_is_replaced(easel_daemon: Any, lines: Lines,
                                                         sent: str) -> None:
    easel = await easel_daemon(SLOW_SANDBOX)
    answer = await easel.client.get("/api/health", headers={"X-Request-Id": sent})
    assert HEX_ID.fullmatch(answer.headers["x-request-id"])
    [line] = access_lines(lines.read())
    assert line["request_id"] == answer.headers["x-request-id"]


async def test_an_unexpected_error_is_500_with_one_access_line(easel_daemon: Any, lines: Lines,
                                                               nursery: trio.Nursery) -> None:
    """A family whose route fails: the envelope, the error logged with the request id."""
    easel = await easel_daemon(SLOW_SANDBOX)
    app = create_app(easel.runtime, media_dir=easel.state_dir / "media")
    broken = Blueprint("broken", __name__)

    async def fail() -> str:
        raise RuntimeError("a bug")

    broken.add_url_rule("/api/broken", view_func=fail)
    app.register_blueprint(broken)
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{free_port()}"]
    [bind] = await nursery.start(hypercorn.trio.serve, app, config)
    async with httpx.AsyncClient(base_url=bind) as client:
        answer = await client.get("/api/broken")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "INTERNAL_ERROR"
    assert "a bug" not in answer.text
    request_id = answer.headers["x-request-id"]
    found = lines.read()
    [line] = access_lines(found)
    assert (line["status"], line["path"], line["request_id"]) == (500, "/api/broken", request_id)
    [error] = [line for line in found if line["level"] == "ERROR"]
    assert error["request_id"] == request_id and "RuntimeError: a bug" in error["exc"]
