"""Bad input at the HTTP API: every refusal is a 4xx in the standard error shape.

An embedded daemon over loopback (tests/conftest.py). The remote provider sections point at a
closed loopback port: jobs for them are accepted (what these tests look at) and
then fail to reach a provider, never the real one.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

#: Every remote provider at a closed loopback port: accepted jobs never leave the host.
#: Each has made-up credentials: a section without them would not be started.
REMOTE_PROVIDERS = ("replicate", "bfl", "kling", "tuzi-kling", "pollo", "openai", "tuzi-openai", "fal")
CREDENTIALS = 'api_key = "k"\napi_token = "k"\naccess_key = "k"\nsecret_key = "k"\n'
CONFIG = "[providers.sandbox]\ndelay = 0.05\n" + "".join(
    f'\n[providers.{name}]\nbase_url = "http://127.0.0.1:1"\nmax_attempts = 1\n{CREDENTIALS}'
    for name in REMOTE_PROVIDERS
)

JSON = {"content-type": "application/json"}
MAX_BODY = 1_048_576  # [daemon] max_body_bytes, as shipped


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "isRetryable"}
    assert error["code"] == code and error["message"] and error["isRetryable"] is False
    assert isinstance(error["details"], dict)
    return error  # type: ignore[no-any-return]


@pytest.fixture
async def easel(easel_daemon: Any) -> Any:
    return await easel_daemon(CONFIG)


async def post(easel: Any, content: bytes | AsyncIterator[bytes], headers: dict[str, str] | None = None) -> Any:
    headers = JSON if headers is None else headers
    return await easel.client.post("/api/external/generation", content=content, headers=headers)


async def post_chunked(base_url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    host, port = base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    received = bytearray()

    async def read() -> None:
        while data := await stream.receive_some(65536):
            received.extend(data)
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            if length and len(rest) >= int(length.group(1)):
                return

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await stream.send_all(b"POST /api/external/generation HTTP/1.1\r\nHost: easel\r\n"
                              b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        with trio.move_on_after(10):
            for start in range(0, len(body), 65536):
                chunk = body[start:start + 65536]
                await stream.send_all(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await stream.send_all(b"0\r\n\r\n")
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest)


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
     {"content-type": "multipart/form-data; boundary=x"}, {}],
)
async def test_wrong_content_type_is_415(easel: Any, headers: dict[str, str]) -> None:
    body = b'{"modelIdentifier": "sandbox-image", "prompt": "x"}'
    error = assert_error(await post(easel, body, headers), 415, "INVALID_REQUEST")
    assert "application/json" in error["message"]


async def test_json_with_charset_is_taken(easel: Any) -> None:
    body = b'{"modelIdentifier": "sandbox-image", "prompt": "x"}'
    response = await post(easel, body, {"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', "not valid"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": "x", "priority": NaN}', "NaN is not JSON"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": "x", "priority": -Infinity}', "not JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        # Past what a double holds: Python would read infinity and write it back as
        # ``Infinity``, which is not JSON.
        (b'{"modelIdentifier": "sandbox-image", "prompt": "x", "parameters": {"a": 1e400}}',
         "1e400 is too large"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": "x", "metadata": [-1.5e309]}',
         "-1.5e309 is too large"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": "\\ud800"}', "not valid UTF-8"),
    ],
)
async def test_body_that_is_not_strict_json_is_400(easel: Any, content: bytes, words: str) -> None:
    error = assert_error(await post(easel, content), 400, "INVALID_REQUEST")
    assert words in error["message"]


@pytest.mark.parametrize("content", [b"[]", b'"text"', b"null", b"3", b"true", b'[{"prompt": "x"}]'])
async def test_body_that_is_not_an_object_is_400(easel: Any, content: bytes) -> None:
    error = assert_error(await post(easel, content), 400, "INVALID_REQUEST")
    assert error["message"] == "the body must be a JSON object"


async def test_too_large_body_is_413_with_or_without_content_length(easel: Any) -> None:
    prompt = b"x" * (MAX_BODY + 10)
    body = b'{"modelIdentifier": "sandbox-image", "prompt": "' + prompt + b'"}'
    error = assert_error(await post(easel, body), 413, "INVALID_REQUEST")
    assert str(MAX_BODY) in error["message"]

    # Chunked transfer: no Content-Length to refuse early. Sent over a raw socket,
    # reading while writing, as httpx only reads the answer after the whole upload.
    status, answer = await post_chunked(easel.base_url, body)
    assert status == 413 and answer["error"]["code"] == "INVALID_REQUEST"
    # Just under the limit is judged on its content instead (here: too long a prompt).
    small = b'{"modelIdentifier": "sandbox-image", "prompt": "' + b"x" * 3000 + b'"}'
    assert_error(await post(easel, small), 422, "INVALID_PARAMETERS")


async def test_unknown_model_is_400_naming_the_known_models(easel: Any) -> None:
    error = assert_error(await easel.submit({"modelIdentifier": "flux-ultra-9", "prompt": "x",
                                             "parameters": {"duration": 99}}), 400, "INVALID_REQUEST")
    assert "flux-ultra-9" in error["message"]
    known = error["details"]["knownModels"]
    assert known == sorted(known) and {"sandbox-image", "kling-v2-1-master", "flux-pro"} <= set(known)


async def test_every_problem_is_listed_with_its_path(easel: Any) -> None:
    response = await easel.submit({
        "modelIdentifier": "kling-v2-1-master",
        "prompt": "",
        "number_of_outputs": 2,
        "input_images": ["ftp://x/a.png", "data:image/png;base64,@@@"],
        "parameters": {"duration": 7, "mode": "turbo", "cfg_scale": "high"},
        "webhook_url": "mailto:me@example.com",
    })
    error = assert_error(response, 422, "INVALID_PARAMETERS")
    problems = error["details"]["problems"]
    assert problems == [
        "prompt: must be 1 to 2000 characters",
        "input_images[0]: must be an http(s) URL or a data:image/(png|jpeg|jpg|webp);base64 URI",
        "input_images[1]: must be an http(s) URL or a data:image/(png|jpeg|jpg|webp);base64 URI",
        "webhook_url: must be an http(s) URL Easel may call: scheme 'mailto' is not http or https",
        "parameters.duration: must be 5 or 10",
        "parameters.mode: must be std or pro",
        "parameters.cfg_scale: expected a number, got a string",
        "number_of_outputs: kling-v2-1-master makes at most 1 per job",
    ]
    assert error["message"] == f"{problems[0]} (and {len(problems) - 1} more in details.problems)"


async def test_a_single_problem_is_the_message(easel: Any) -> None:
    response = await easel.submit({"modelIdentifier": "flux-pro", "prompt": "x",
                                   "parameters": {"safety_tolerance": 9}})
    error = assert_error(response, 422, "INVALID_PARAMETERS")
    assert error["message"] == "parameters.safety_tolerance: must be 0 to 6"
    assert error["details"] == {"problems": ["parameters.safety_tolerance: must be 0 to 6"]}


async def test_family_comes_from_the_sections_adapter(easel: Any) -> None:
    # tuzi-kling is a section named otherwise whose adapter is kling: Kling's rules apply.
    response = await easel.submit({"modelIdentifier": "tuzi-kling-v2-1-master", "prompt": "x",
                                   "parameters": {"duration": 6}})
    assert assert_error(response, 422, "INVALID_PARAMETERS")["details"]["problems"] == [
        "parameters.duration: must be 5 or 10"
    ]


async def test_defaults_are_stored_and_shown(easel: Any) -> None:
    response = await easel.submit({"modelIdentifier": "kling-v2-1-master", "prompt": "a kite",
                                   "parameters": {"duration": 10, "mode": "pro"}})
    assert response.status_code == 202, response.text
    accepted = response.json()
    expected = {"duration": "10", "mode": "pro", "aspect_ratio": "16:9"}
    assert accepted["parameters"] == expected
    shown = (await easel.client.get(f"/api/external/generation/{accepted['id']}")).json()
    assert shown["parameters"] == expected
    stored = await easel.runtime.store.get_job(accepted["id"])
    assert stored is not None and stored.parameters == expected


async def test_output_alias_is_folded_into_number_of_outputs(easel: Any) -> None:
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "pears",
                                   "number_of_outputs": 2})
    assert response.status_code == 202 and response.json()["numberOfOutputs"] == 2
    refused = await easel.submit({"modelIdentifier": "gpt-image-1", "prompt": "x",
                                  "number_of_outputs": 2, "parameters": {"n": 3}})
    assert assert_error(refused, 422, "INVALID_PARAMETERS")["details"]["problems"] == [
        "parameters.n: 3 conflicts with number_of_outputs 2"
    ]


@pytest.mark.parametrize("wait", ["nan", "NaN", "soon", "", "-1", "-5", "-inf", "inf", "120.5", "999"])
async def test_wait_outside_0_to_120_seconds_is_400_naming_the_range(easel: Any, wait: str) -> None:
    job = (await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x"})).json()
    response = await easel.client.get(f"/api/external/generation/{job['id']}", params={"wait": wait})
    error = assert_error(response, 400, "INVALID_REQUEST")
    assert "from 0 to 120" in error["message"]
    assert error["details"] == {"wait": wait, "min": 0, "max": 120}


async def test_waits_from_0_to_120_are_taken(easel: Any) -> None:
    job = (await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x"})).json()
    for wait in ("0", "0.25", "1e-3"):
        response = await easel.client.get(f"/api/external/generation/{job['id']}", params={"wait": wait})
        assert response.status_code == 200, (wait, response.text)
    done = await easel.client.get(f"/api/external/generation/{job['id']}", params={"wait": "120"})
    assert done.status_code == 200 and done.json()["status"] == "SUCCESS"


async def test_unknown_ids_are_404(easel: Any) -> None:
    for path in ("/api/external/generation/gen_nope", "/api/external/generation/%00%ff",
                 "/api/external/generation/" + "x" * 2000):
        assert_error(await easel.client.get(path), 404, "NOT_FOUND")
        assert_error(await easel.client.post(path + "/cancel"), 404, "NOT_FOUND")


async def test_long_idempotency_key_is_400(easel: Any) -> None:
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x"},
                                  headers={"Idempotency-Key": "k" * 256})
    assert_error(response, 400, "INVALID_REQUEST")


async def test_oversized_free_fields_are_refused_naming_field_and_limit(easel: Any) -> None:
    """A user id or metadata as large as the body allows would be stored, shown on
    every read and kept in memory: each free field has its own limit."""
    response = await easel.submit({
        "modelIdentifier": "sandbox-image", "prompt": "x",
        "userId": "u" * 900_000,
        "metadata": {"deep": [[[[[[[[[[1]]]]]]]]]]},
        "inputImages": ["https://img.example/a.png"] * 17,
    })
    error = assert_error(response, 422, "INVALID_PARAMETERS")
    assert error["details"]["problems"] == [
        "input_images: must hold at most 16 images",
        "user_id: must be at most 256 characters",
        "metadata: nested deeper than 8 levels",
    ]
    assert len(response.content) < 2000
