"""Pollo AI: the simulator speaks the documented protocol in each of its variants,
the adapter reads every variant over real loopback HTTP, and ``easel run`` finishes
a Pollo video job through a signed webhook.

The simulator's answer shapes (``PolloStyle``) cover the points where Pollo's docs
disagree (envelope or not, ``taskId``/``task_id``, status case, ``waiting`` or
``pending``, webhook bodies with or without generations, how the secret keys the
HMAC); the adapter must read them all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from quart_trio import QuartTrio

from actors.catalog import MediaKind, ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.providers.base import JobRequest, ProviderSettings, Submitted, TaskLister, TaskState
from actors.providers.pollo import PolloAdapter, error_for_response, status_of, unwrap
from tests.conftest import free_port, write_config
from tests.fakes import FakeClock, WebhookSink, start_webhook_sink
from tests.process import DaemonProcess
from tests.simulators.base import Knobs, fetch_stats, serve_simulator, start_simulator_process
from tests.simulators.pollo import (
    CREDITS_PER_TASK,
    MODERATION_MARKER,
    Generation,
    PolloSimulator,
    PolloStyle,
    mp4_bytes,
)

KEY = "pollo_test_key"
MODEL = "pollo/pollo-v1-6"
CREATE = f"/api/platform/generation/{MODEL}"
SECRET = base64.b64encode(b"pollo webhook secret, 32 bytes!!").decode()

Started = tuple[PolloSimulator, str]


@pytest.fixture
async def start_sim(nursery: trio.Nursery) -> Callable[..., Awaitable[Started]]:
    async def start(**kwargs: Any) -> Started:
        kwargs.setdefault("knobs", Knobs(token=KEY))
        sim = PolloSimulator(**kwargs)
        url = await nursery.start(serve_simulator, sim)
        return sim, url

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, headers={"x-api-key": KEY}) as session:
        yield session


@pytest.fixture
async def adapters() -> AsyncIterator[Callable[..., PolloAdapter]]:
    made: list[PolloAdapter] = []

    def make(url: str, **settings: Any) -> PolloAdapter:
        settings.setdefault("api_key", KEY)
        adapter = PolloAdapter(
            ProviderSettings(
                base_url=f"{url}/api/platform", **{"request_timeout": 2, "connect_timeout": 1, **settings}
            )
        )
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


def job(prompt: str = "a fox in the snow", **fields: Any) -> JobRequest:
    spec = ModelSpec(provider="pollo", provider_model=MODEL, kind=MediaKind.VIDEO)
    return JobRequest(job_id="job-1", model="pollo-v1-6", spec=spec, prompt=prompt, **fields)


async def raises(code: ErrorCode, call: Awaitable[Any]) -> EaselError:
    with pytest.raises(EaselError) as raised:
        await call
    assert raised.value.code is code, raised.value.info
    return raised.value


# -- the simulator's protocol ------------------------------------------------------------


async def test_lifecycle_files_and_stats(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim, url = await start_sim(knobs=Knobs(token=KEY, duration=10.0), clock=clock)
    created = await http.post(url + CREATE, json={"input": {"prompt": "p", "duration": 5}})
    assert created.status_code == 200
    assert created.json()["status"] == "waiting"
    task_id = created.json()["taskId"]
    status_url = f"{url}/api/platform/generation/{task_id}/status"
    file_url = f"{url}/_sim/pollo/files/{task_id}/0.mp4"

    first = (await http.get(status_url)).json()
    assert first["taskId"] == task_id and first["credit"] == CREDITS_PER_TASK
    assert [g["status"] for g in first["generations"]] == ["waiting"]
    clock.advance(1.0)
    assert (await http.get(status_url)).json()["generations"][0]["status"] == "processing"
    assert (await http.get(file_url)).status_code == 404
    assert sim.stats().active == 1

    clock.advance(9.0)
    done = (await http.get(status_url)).json()["generations"][0]
    assert done["status"] == "succeed" and done["url"] == file_url and done["mediaType"] == "video"
    download = await http.get(file_url)
    assert download.headers["content-type"] == "video/mp4"
    assert download.content == mp4_bytes(f"{task_id}/0") and download.content[4:8] == b"ftyp"

    await http.post(url + CREATE, json={"input": {"duration": 5, "prompt": "p"}})  # same input
    stats = (await http.get(f"{url}/_sim/stats")).json()
    assert (stats["submissions"], stats["status_checks"], stats["max_submissions_per_input"]) == (2, 3, 2)
    assert stats["active"] == 1


async def test_auth_and_bad_bodies_use_pollo_errors(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_sim()
    async with httpx.AsyncClient(timeout=10) as anonymous:
        for headers in ({}, {"x-api-key": "wrong"}, {"Authorization": f"Bearer {KEY}"}):
            refused = await anonymous.post(url + CREATE, json={"input": {"prompt": "p"}}, headers=headers)
            assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHORIZED"
    for body in ({"prompt": "no input"}, {"input": {}}, {"input": {"prompt": "p", "duration": 99}}):
        bad = await http.post(url + CREATE, json=body)
        assert bad.status_code == 400 and bad.json()["code"] == "BAD_REQUEST" and bad.json()["message"]
    missing = await http.get(f"{url}/api/platform/generation/nope/status")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    assert sim.stats().submissions == 0


async def test_credits_run_out_with_403_forbidden(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_sim(credits=CREDITS_PER_TASK * 1.5)
    assert (await http.post(url + CREATE, json={"input": {"prompt": "a"}})).status_code == 200
    broke = await http.post(url + CREATE, json={"input": {"prompt": "b"}})
    assert broke.status_code == 403
    assert broke.json()["code"] == "FORBIDDEN" and "credits" in broke.json()["message"]
    assert sim.stats().submissions == 1


async def test_styles_and_the_older_path(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    style = PolloStyle(envelope=True, id_field="task_id", status_case="upper", queued_status="pending")
    sim, url = await start_sim(style=style)
    created = (
        await http.post(
            f"{url}/api/platform/v1/generation/kling-ai/kling-v1-5/video", json={"input": {"prompt": "p"}}
        )
    ).json()
    assert created["code"] == "SUCCESS" and created["data"]["status"] == "PENDING"
    task_id = created["data"]["task_id"]
    assert isinstance(sim.tasks[task_id], Generation) and sim.tasks[task_id].model == "kling-ai/kling-v1-5"
    status = (await http.get(f"{url}/api/platform/generation/{task_id}/status")).json()
    assert status["data"]["task_id"] == task_id and "taskId" not in status["data"]

    changed = await http.post(f"{url}/_sim/pollo/style", json={"envelope": False})
    assert changed.json()["envelope"] is False and sim.style.status_case == "upper"
    assert (await http.post(f"{url}/_sim/pollo/style", json={"id_field": "x"})).status_code == 422


async def test_faults_answer_in_pollo_shapes(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_sim(knobs=Knobs(token=KEY, rate_limit_rate=1.0, retry_after=7))
    limited = await http.post(url + CREATE, json={"input": {"prompt": "p"}})
    assert limited.status_code == 429 and limited.json()["code"] == "TOO_MANY_REQUESTS"
    assert limited.headers["Retry-After"] == "7"
    sim.knobs = Knobs(token=KEY, error_5xx_rate=1.0)
    failed = await http.post(url + CREATE, json={"input": {"prompt": "p"}})
    assert failed.status_code in (500, 502, 503) and failed.json()["code"] and failed.json()["message"]
    sim.knobs = Knobs(token=KEY, max_active=1, duration=60)
    assert (await http.post(url + CREATE, json={"input": {"prompt": "1"}})).status_code == 200
    busy = await http.post(url + CREATE, json={"input": {"prompt": "2"}})
    assert busy.status_code == 429 and busy.json()["code"] == "TOO_MANY_REQUESTS"
    assert sim.stats().submissions == 1


# -- the adapter against the simulator ------------------------------------------------------

STYLES = [
    PolloStyle(),
    PolloStyle(envelope=True),
    PolloStyle(id_field="task_id", status_case="upper", queued_status="pending"),
    PolloStyle(envelope=True, id_field="task_id", status_case="upper"),
]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: f"env={s.envelope},{s.id_field},{s.status_case}")
async def test_adapter_submits_and_checks_every_documented_shape(
    start_sim: Callable[..., Awaitable[Started]],
    adapters: Callable[..., PolloAdapter],
    http: httpx.AsyncClient,
    style: PolloStyle,
) -> None:
    clock = FakeClock()
    sim, url = await start_sim(knobs=Knobs(token=KEY, duration=10.0), clock=clock, style=style)
    adapter = adapters(url)
    submitted = await adapter.submit(job())
    assert isinstance(submitted, Submitted) and submitted.task_id in sim.tasks

    assert (await adapter.check(submitted.task_id)).state is TaskState.RUNNING
    clock.advance(5.0)
    assert (await adapter.check(submitted.task_id)).state is TaskState.RUNNING
    clock.advance(5.0)
    done = await adapter.check(submitted.task_id)
    assert done.state is TaskState.SUCCEEDED
    assert done.outputs == (f"{url}/_sim/pollo/files/{submitted.task_id}/0.mp4",)
    assert (await http.get(done.outputs[0])).content == mp4_bytes(f"{submitted.task_id}/0")


async def test_submit_body_parameters_images_and_webhook_url(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., PolloAdapter]
) -> None:
    sim, url = await start_sim()
    request_job = job(
        input_images=("https://example.com/first.png", "https://example.com/last.png"),
        parameters={"duration": 5, "negative_prompt": "blur", "seed": 7, "aspect_ratio": "16:9",
                    "resolution": "720p", "generateAudio": True},
        callback_url="https://easel.example/api/providers/pollo/webhook",
    )
    without_secret = await adapters(url).submit(request_job)
    with_secret = await adapters(url, webhook_secret=SECRET).submit(request_job)

    first = sim.tasks[without_secret.task_id]
    assert isinstance(first, Generation)
    assert first.input == {
        "prompt": "a fox in the snow", "image": "https://example.com/first.png",
        "imageTail": "https://example.com/last.png", "duration": 5, "negativePrompt": "blur",
        "seed": 7, "aspectRatio": "16:9", "resolution": "720p", "generateAudio": True,
    }
    assert first.webhook is None
    assert sim.tasks[with_secret.task_id].webhook == request_job.callback_url
    assert first.model == "pollo/pollo-v1-6"


async def test_adapter_maps_pollo_errors(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., PolloAdapter]
) -> None:
    sim, url = await start_sim(credits=0.0)
    wrong_key = await raises(ErrorCode.AUTHENTICATION_FAILED, adapters(url, api_key="wrong").submit(job()))
    assert wrong_key.info.details["status"] == 401 and wrong_key.info.details["code"] == "UNAUTHORIZED"

    adapter = adapters(url)
    broke = await raises(ErrorCode.QUOTA_EXCEEDED, adapter.submit(job()))
    assert broke.info.details["status"] == 403 and "credits" in broke.info.message
    assert not broke.info.is_retryable

    sim.credits = None
    invalid = await raises(ErrorCode.INVALID_PARAMETERS, adapter.submit(job(parameters={"duration": 99})))
    assert "duration" in invalid.info.details["body"]
    await raises(ErrorCode.INVALID_PARAMETERS, adapter.submit(job(number_of_outputs=2)))
    await raises(ErrorCode.NOT_FOUND, adapter.check("no-such-task"))

    sim.knobs = Knobs(token=KEY, rate_limit_rate=1.0, retry_after=3)
    limited = await raises(ErrorCode.RATE_LIMITED, adapter.submit(job()))
    assert limited.retry_after == 3 and limited.info.is_retryable
    sim.knobs = Knobs(token=KEY, error_5xx_rate=1.0)
    server = await raises(ErrorCode.PROVIDER_ERROR, adapter.check("whatever"))
    assert server.info.details["status"] in (500, 502, 503)
    sim.knobs = Knobs(token=KEY, malformed_rate=1.0)
    assert (await raises(ErrorCode.PROVIDER_ERROR, adapter.submit(job()))).info.is_retryable
    sim.knobs = Knobs(token=KEY, timeout_rate=1.0, hang_seconds=5)
    await raises(ErrorCode.PROVIDER_TIMEOUT, adapters(url, request_timeout=0.2).check("whatever"))
    assert sim.stats().submissions == 1  # only the malformed answer's task was recorded


async def test_moderation_and_failure_statuses(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., PolloAdapter]
) -> None:
    clock = FakeClock()
    sim, url = await start_sim(knobs=Knobs(token=KEY, duration=1.0), clock=clock)
    adapter = adapters(url)
    moderated = await adapter.submit(job(f"something {MODERATION_MARKER}"))
    sim.knobs = Knobs(token=KEY, duration=1.0, fail_rate=1.0)
    failing = await adapter.submit(job("plain failure"))
    clock.advance(1.0)

    blocked = await adapter.check(moderated.task_id)
    assert blocked.state is TaskState.FAILED and blocked.error.code is ErrorCode.CONTENT_MODERATED
    failed = await adapter.check(failing.task_id)
    assert failed.state is TaskState.FAILED and failed.error.code is ErrorCode.TASK_FAILED
    assert "simulated" in failed.error.message


async def test_cancel_is_a_noop_and_nothing_is_listed(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., PolloAdapter]
) -> None:
    sim, url = await start_sim()
    adapter = adapters(url)
    submitted = await adapter.submit(job())
    await adapter.cancel(submitted.task_id)
    assert not isinstance(adapter, TaskLister)
    assert sim.stats().requests == {"create": 1}  # neither called the provider


# -- malformed answers, read without a server -------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"taskId": "t", "generations": "nope"},
        {"taskId": "t", "generations": [1, 2]},
        {"taskId": "t", "generations": [{"status": "exploded"}]},
        {"taskId": "t", "status": "mystery"},
        {"taskId": "t"},
    ],
)
def test_malformed_status_payloads_are_retryable_provider_errors(payload: dict[str, Any]) -> None:
    with pytest.raises(EaselError) as raised:
        status_of(payload)
    assert raised.value.code is ErrorCode.PROVIDER_ERROR and raised.value.info.is_retryable


def test_status_payload_variants() -> None:
    assert status_of({"taskId": "t", "generations": []}).state is TaskState.RUNNING
    assert status_of({"taskId": "t", "status": "Pending"}).state is TaskState.RUNNING
    no_url = status_of({"generations": [{"status": "succeed", "url": None}]})
    assert no_url.state is TaskState.FAILED and no_url.error.code is ErrorCode.TASK_FAILED
    mixed = status_of({"generations": [{"status": "succeed", "url": "u"}, {"status": "processing"}]})
    assert mixed.state is TaskState.RUNNING
    failed = status_of({"generations": [{"status": "FAILED", "failMsg": "NSFW content detected"}]})
    assert failed.error.code is ErrorCode.CONTENT_MODERATED
    assert status_of({"generations": [{"status": "processing", "progress": 40}]}).progress == 0.4


def test_envelopes_and_error_bodies() -> None:
    assert unwrap({"code": "SUCCESS", "message": "ok", "data": {"taskId": "t"}}, "pollo") == {"taskId": "t"}
    with pytest.raises(EaselError) as in_200:
        unwrap({"code": "FORBIDDEN", "message": "Not enough credits", "data": None}, "pollo")
    assert in_200.value.code is ErrorCode.QUOTA_EXCEEDED
    with pytest.raises(EaselError) as not_object:
        unwrap(["t"], "pollo")
    assert not_object.value.code is ErrorCode.PROVIDER_ERROR

    def mapped(status: int, body: Any) -> ErrorCode:
        request = httpx.Request("POST", "https://pollo.ai/api/platform/generation/a/b")
        return error_for_response(httpx.Response(status, json=body, request=request), "pollo").code

    assert mapped(402, {"code": "PAYMENT_REQUIRED", "message": "pay up"}) is ErrorCode.QUOTA_EXCEEDED
    assert mapped(403, {"code": "FORBIDDEN", "message": "Not enough credits"}) is ErrorCode.QUOTA_EXCEEDED
    assert mapped(403, {"code": "FORBIDDEN", "message": "key disabled"}) is ErrorCode.AUTHENTICATION_FAILED
    assert mapped(422, {"code": "BAD_REQUEST", "message": "bad"}) is ErrorCode.INVALID_PARAMETERS
    assert mapped(503, {"code": "SERVICE_UNAVAILABLE", "message": "x"}) is ErrorCode.PROVIDER_ERROR


async def test_submit_answer_without_task_id_is_not_retried() -> None:
    """A 2xx that names no task: Pollo has the job, so resending could pay twice."""
    app = QuartTrio("pollo-no-id")

    @app.post("/api/platform/generation/<brand>/<model>")
    async def create(brand: str, model: str) -> dict[str, Any]:
        return {"code": "SUCCESS", "message": "ok", "data": {"status": "waiting"}}

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_simulator, app)
        adapter = PolloAdapter(ProviderSettings(base_url=f"{url}/api/platform", api_key=KEY))
        try:
            error = await raises(ErrorCode.PROVIDER_ERROR, adapter.submit(job()))
            assert error.info.is_retryable is False
        finally:
            await adapter.aclose()
        nursery.cancel_scope.cancel()


# -- webhooks ------------------------------------------------------------------------------------


@pytest.fixture
async def hooks(nursery: trio.Nursery) -> WebhookSink:
    return await start_webhook_sink(nursery)


def signed(
    secret_key: bytes, body: bytes, webhook_id: str = "wh_1", timestamp: int | None = None
) -> dict[str, str]:
    """Pollo's signature written out by hand, independently of adapter and simulator."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret_key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"X-Webhook-Id": webhook_id, "X-Webhook-Timestamp": stamp,
            "X-Webhook-Signature": base64.b64encode(digest).decode()}


@pytest.mark.parametrize(
    "style",
    [PolloStyle(), PolloStyle(webhook_generations=True, webhook_key="base64", status_case="upper")],
    ids=["bare-raw-key", "generations-base64-key"],
)
async def test_simulator_webhooks_verify_in_the_adapter(
    start_sim: Callable[..., Awaitable[Started]],
    adapters: Callable[..., PolloAdapter],
    hooks: WebhookSink,
    style: PolloStyle,
) -> None:
    sim, url = await start_sim(knobs=Knobs(token=KEY, duration=0.05, webhook_secret=SECRET), style=style)
    adapter = adapters(url, webhook_secret=SECRET)
    ok = await adapter.submit(job(callback_url=hooks.url))
    await hooks.wait_for(1, timeout=10)
    sim.knobs = Knobs(token=KEY, duration=0.05, webhook_secret=SECRET, fail_rate=1.0)
    bad = await adapter.submit(job("fails", callback_url=hooks.url))
    await hooks.wait_for(2, timeout=10)
    with trio.fail_after(5):  # the simulator counts a delivery once our 200 reaches it
        while sim.stats().webhooks_delivered < 2:
            await trio.sleep(0.01)

    (headers, raw), (failed_headers, failed_raw) = hooks.received
    key = base64.b64decode(SECRET) if style.webhook_key == "base64" else SECRET.encode()
    assert signed(key, raw, headers["X-Webhook-Id"], int(headers["X-Webhook-Timestamp"])) == {
        name: headers[name] for name in ("X-Webhook-Id", "X-Webhook-Timestamp", "X-Webhook-Signature")
    }
    event = adapter.parse_webhook(headers, raw)
    assert event.task_id == ok.task_id
    if style.webhook_generations:
        assert event.status is not None and event.status.state is TaskState.SUCCEEDED
        assert event.status.outputs == (f"{url}/_sim/pollo/files/{ok.task_id}/0.mp4",)
    else:
        assert event.status is None  # succeed without URLs: a hint to check now
    failed = adapter.parse_webhook(failed_headers, failed_raw)
    assert failed.task_id == bad.task_id
    assert failed.status is not None and failed.status.error.code is ErrorCode.TASK_FAILED

    tampered = raw.replace(b"succeed", b"failed").replace(b"SUCCEED", b"FAILED")
    assert tampered != raw
    with pytest.raises(EaselError) as forged:
        adapter.parse_webhook(headers, tampered)
    assert forged.value.code is ErrorCode.AUTHENTICATION_FAILED


def test_parse_webhook_rejections() -> None:
    adapter = PolloAdapter(ProviderSettings(base_url="http://127.0.0.1:9", webhook_secret=SECRET))
    body = json.dumps({"taskId": "t1", "status": "succeed"}).encode()

    def code_of(headers: dict[str, str], payload: bytes = body, on: PolloAdapter = adapter) -> ErrorCode:
        with pytest.raises(EaselError) as raised:
            on.parse_webhook(headers, payload)
        return raised.value.code

    assert adapter.parse_webhook(signed(SECRET.encode(), body), body).task_id == "t1"
    lowercase = {k.lower(): v for k, v in signed(SECRET.encode(), body).items()}
    assert adapter.parse_webhook(lowercase, body).status is None
    millis = signed(SECRET.encode(), body, timestamp=int(time.time() * 1000))
    assert adapter.parse_webhook(millis, body).task_id == "t1"

    auth = ErrorCode.AUTHENTICATION_FAILED
    assert code_of(signed(b"another secret", body)) is auth
    assert code_of(signed(SECRET.encode(), body, timestamp=int(time.time()) - 301)) is auth
    assert code_of(signed(SECRET.encode(), body, timestamp=int(time.time()) + 301)) is auth
    assert code_of({"X-Webhook-Id": "x"}) is auth
    assert code_of({**signed(SECRET.encode(), body), "X-Webhook-Timestamp": "yesterday"}) is auth
    no_secret = PolloAdapter(ProviderSettings(base_url="http://127.0.0.1:9"))
    assert code_of(signed(b"", body), on=no_secret) is auth

    for unreadable in (b"not json", b'{"status": "succeed"}', b"[1]"):
        assert code_of(signed(SECRET.encode(), unreadable), unreadable) is ErrorCode.INVALID_REQUEST


# -- the daemon as a process ---------------------------------------------------------------------------


def test_easel_run_finishes_a_pollo_video_through_a_signed_webhook(tmp_path: Path) -> None:
    """Polling is set far slower than the test's wait, so only the webhook (a hint:
    the simulator's bodies carry no URLs) can have made the daemon check in time."""
    args = ("--duration", "0.3", "--token", KEY, "--webhook-secret", SECRET, "--envelope")
    with start_simulator_process("pollo", *args) as (_process, sim_url):
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        config = write_config(
            tmp_path,
            f"""
[providers.pollo]
base_url = "{sim_url}/api/platform"
api_key = "{KEY}"
webhook_secret = "{SECRET}"
rate = 5
burst = 5
max_in_flight = 4

[models.pollo-test-video]
provider = "pollo"
provider_model = "{MODEL}"
kind = "video"
expected_duration = 1
max_duration = 120
polling = {{ strategy = "fixed", interval = 60 }}
""",
            port=port,
        )
        text = config.read_text()
        public = f'drain_timeout = 5\npublic_base_url = "{base_url}"'
        config.write_text(text.replace("drain_timeout = 5", public))
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            with httpx.Client(base_url=base_url, timeout=30) as client:
                accepted = client.post(
                    "/api/external/generation",
                    json={"modelIdentifier": "pollo-test-video", "prompt": "a fox",
                          "parameters": {"duration": 5}},
                )
                assert accepted.status_code == 202, accepted.text
                job_id = accepted.json()["id"]
                finished = client.get(f"/api/external/generation/{job_id}", params={"wait": 20}).json()
                assert finished["status"] == "SUCCESS", (finished, daemon.log_text())
                [result] = finished["results"]
                assert result["type"] == "video"
                stored = client.get(result["url"])
                assert "/media/" in result["url"]
                assert stored.content == mp4_bytes(f"{finished['providerTaskId']}/0")
            stats = fetch_stats(sim_url)
            assert (stats.submissions, stats.webhooks_delivered, stats.webhooks_failed) == (1, 1, 0)
        finally:
            daemon.stop()
