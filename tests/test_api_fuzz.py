"""Property tests: nothing a client sends makes the API answer 5xx.

One embedded daemon per test (tests/conftest.py) in the test's trio run; the
hypothesis examples run in a worker thread with a synchronous httpx client over
loopback, so each example is one real HTTP request and the daemon is started once
per property, not once per example. Every 4xx must be in the standard shape.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.test_api_input import CONFIG

PATH = "/api/external/generation"
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MODELS = ["sandbox-image", "sandbox-video", "flux-pro", "flux-kontext-pro", "kling-v2-1-master",
          "tuzi-kling-v2-1-master", "pollo-v1-6", "gpt-image-1", "dall-e-3",
          "replicate-flux-schnell", "fal-flux-dev", "no-such-model", ""]
PARAMETER_NAMES = ["size_or_ratio", "seed", "prompt_upsampling", "safety_tolerance", "output_format",
                   "steps", "guidance", "n", "size", "quality", "style", "background", "duration",
                   "mode", "aspect_ratio", "negative_prompt", "cfg_scale", "camera_control",
                   "generateAudio", "generate_audio", "negativePrompt", "resolution", "num_outputs",
                   "num_inference_steps", "go_fast", "megapixels", "image_size", "num_images",
                   "guidance_scale", "enable_safety_checker"]
FIELDS = ["modelIdentifier", "prompt", "input_images", "number_of_outputs", "parameters", "priority",
          "webhook_url", "user_id", "metadata"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-20, 20)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
           | st.sampled_from(["5", "10", "16:9", "1:1", "1024x768", "std", "pro", "auto", "png",
                              "https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=",
                              "landscape_4_3", "720p", "x" * 2001]))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                      max_size=4),
    max_leaves=12,
)
parameters = st.dictionaries(st.sampled_from(PARAMETER_NAMES) | st.text(max_size=8), json_values,
                             max_size=5) | json_values
field_values: dict[str, st.SearchStrategy[Any]] = {
    "modelIdentifier": st.sampled_from(MODELS) | json_values,
    "prompt": st.text(max_size=60) | json_values,
    "input_images": st.lists(scalars, max_size=3) | json_values,
    "number_of_outputs": st.integers(-2, 12) | json_values,
    "parameters": parameters,
    "priority": st.integers(-2000, 2000) | json_values,
    "webhook_url": st.sampled_from(["http://127.0.0.1:1/hook", "ftp://x"]) | json_values,
    "user_id": st.text(max_size=10) | json_values,
    "metadata": json_values,
}


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A plausible submission with some fields left out, some set to anything, plus junk keys."""
    body: dict[str, Any] = {"modelIdentifier": draw(st.sampled_from(MODELS)), "prompt": "a fox"}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=5)):
        body[name] = draw(field_values[name])
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=2)):
        body.pop(name, None)
    body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return body


header_text = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, max_size=40)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "application/json; charset=utf-16", "text/plain", "",
                                 "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                                 "application/*", "APPLICATION/JSON"]) | header_text
#: What Python's json writes but strict JSON is not, or what cannot be stored: NaN and
#: infinities (written out, or numbers too large to read as anything else), lone
#: surrogates (``"\\ud800"``), numbers past Python's 4300 digits.
nasty_scalars = st.floats() | st.text(st.characters(categories=["Cs", "Lu", "Nd"]), max_size=4)
long_numbers = st.builds(
    lambda digits, where: b'{"modelIdentifier": "sandbox-image", "prompt": "x", "%s": %s}'
    % (where.encode(), b"9" * digits),
    st.integers(4200, 5000), st.sampled_from(["priority", "number_of_outputs", "junk"]),
)
#: Numbers past what a double holds, which Python reads as infinities.
huge_numbers = st.builds(
    lambda sign, exponent, where: b'{"modelIdentifier": "sandbox-image", "prompt": "x", '
    b'"parameters": {"%s": %s1e%d}}' % (where.encode(), sign, exponent),
    st.sampled_from([b"", b"-"]), st.integers(309, 100_000), st.sampled_from(["seed", "junk"]),
)


@st.composite
def nasty_bodies(draw: st.DrawFn) -> bytes:
    """A plausible submission with one value anywhere that only Python's json writes."""
    body = draw(mutated_bodies())
    nasty = draw(nasty_scalars)
    where = draw(st.sampled_from(["prompt", "parameters", "metadata", "user_id", "key"]))
    if where == "parameters":
        body["parameters"] = {"seed": nasty}
    elif where == "metadata":
        body["metadata"] = {"deep": [nasty]}
    elif where == "key":
        body[nasty if isinstance(nasty, str) else "k"] = nasty
    else:
        body[where] = nasty
    return json.dumps(body).encode()  # ensure_ascii: a surrogate goes as its \\u escape


raw_bodies = (st.binary(max_size=300) | nasty_bodies() | long_numbers | huge_numbers
              | st.builds(lambda v: json.dumps(v).encode(), json_values)
              | st.builds(lambda b: json.dumps(b).encode("utf-16"), mutated_bodies())
              | st.builds(lambda v, cut: json.dumps(v).encode()[:cut], mutated_bodies(),
                          st.integers(0, 80)))


def refuse(constant: str) -> Any:
    raise AssertionError(f"the answer holds {constant}, which is not JSON")


def assert_well_formed(response: httpx.Response) -> None:
    """Never a 5xx; a 4xx in the standard shape; a 2xx a job."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    body = json.loads(response.content, parse_constant=refuse)  # strict: no NaN comes back
    if response.status_code >= 400:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"code", "message", "details", "isRetryable"}, error
        assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
        assert isinstance(error["details"], dict) and isinstance(error["isRetryable"], bool)
    else:
        assert body["id"].startswith("gen_") and body["status"] in ("PENDING", "PROCESSING", "SUCCESS",
                                                                     "FAILED", "CANCELLED")


async def run_property(easel_daemon: Any, prop: Callable[[httpx.Client], None]) -> None:
    easel = await easel_daemon(CONFIG)

    def run() -> None:
        with httpx.Client(base_url=easel.base_url, timeout=30) as client:
            prop(client)

    await trio.to_thread.run_sync(run)
    health = await easel.client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] in ("healthy", "degraded")


async def test_arbitrary_json_values_never_get_a_5xx(easel_daemon: Any) -> None:
    def prop(client: httpx.Client) -> None:
        @SETTINGS
        @given(json_values)
        def check(value: Any) -> None:
            assert_well_formed(client.post(PATH, json=value))

        check()

    await run_property(easel_daemon, prop)


async def test_mutated_submissions_never_get_a_5xx(easel_daemon: Any) -> None:
    def prop(client: httpx.Client) -> None:
        @SETTINGS
        @given(mutated_bodies(), st.none() | header_text)
        def check(body: dict[str, Any], key: str | None) -> None:
            headers = {"Idempotency-Key": key} if key is not None else {}
            assert_well_formed(client.post(PATH, json=body, headers=headers))

        check()

    await run_property(easel_daemon, prop)


async def test_arbitrary_bytes_and_content_types_never_get_a_5xx(easel_daemon: Any) -> None:
    def prop(client: httpx.Client) -> None:
        @SETTINGS
        @given(raw_bodies, content_types)
        def check(content: bytes, content_type: str) -> None:
            response = client.post(PATH, content=content, headers={"content-type": content_type})
            assert_well_formed(response)

        check()

    await run_property(easel_daemon, prop)


async def test_arbitrary_ids_and_queries_never_get_a_5xx(easel_daemon: Any) -> None:
    def prop(client: httpx.Client) -> None:
        @SETTINGS
        @given(st.text(min_size=1, max_size=40), st.none() | st.text(max_size=12)
               | st.floats().map(str) | st.integers(-10, 10).map(str), st.booleans())
        def check(job_id: str, wait: str | None, cancel: bool) -> None:
            path = f"{PATH}/{quote(job_id, safe='')}"
            # A wait on a job that does not exist answers at once (404); keep waits short.
            params = {"wait": wait} if wait is not None else {}
            if cancel:
                response = client.post(path + "/cancel", params=params)
            else:
                response = client.get(path, params=params)
            assert_well_formed(response)

        check()

    await run_property(easel_daemon, prop)


async def test_values_only_pythons_json_writes_are_refused_not_stored(easel_daemon: Any) -> None:
    def prop(client: httpx.Client) -> None:
        @SETTINGS
        @given(nasty_bodies() | long_numbers | huge_numbers)
        def check(content: bytes) -> None:
            response = client.post(PATH, content=content, headers={"content-type": "application/json"})
            assert_well_formed(response)

        check()

    await run_property(easel_daemon, prop)
