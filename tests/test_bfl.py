"""The BFL adapter against the BFL simulator over loopback HTTP, and end to end.

Request mapping and answer parsing are also checked sans-IO (they are pure
functions); everything about the wire (auth, errors, polling_url, webhooks) goes
through real HTTP to ``tests/simulators/bfl.py``. The last test runs ``easel run``
as a process against the simulator as a subprocess.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest
import trio
from PIL import Image

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.providers.base import JobRequest, ProviderSettings, TaskLister, TaskState
from actors.providers.bfl import (
    BflAdapter,
    TaskHandle,
    handle_from_submit,
    request_body,
    status_of,
)
from tests.conftest import free_port, write_config
from tests.fakes import FakeClock
from tests.process import DaemonProcess
from tests.simulators.base import Knobs, fetch_stats, serve_simulator, start_simulator_process
from tests.simulators.bfl import BflSimulator

KEY = "bfl-adapter-key"
SECRET = "hook-secret-123"


def job(prompt: str = "a red fox", model: str = "flux-pro-1.1", **fields: Any) -> JobRequest:
    return JobRequest(job_id="job-1", model=f"bfl-{model}", spec=ModelSpec(provider="bfl", provider_model=model),
                      prompt=prompt, **fields)


Pair = tuple[BflSimulator, BflAdapter]


@pytest.fixture
async def connect(nursery: trio.Nursery) -> AsyncIterator[Callable[..., Awaitable[Pair]]]:
    """Factory: a simulator served in the test's nursery and an adapter pointed at it."""
    adapters: list[BflAdapter] = []

    async def start(knobs: Knobs | None = None, *, key: str = KEY, webhook_secret: str = "",
                    request_timeout: float = 5.0, **sim_args: Any) -> Pair:
        sim = BflSimulator(knobs or Knobs(token=KEY, duration=1.0), **sim_args)
        url = await nursery.start(serve_simulator, sim)
        settings = ProviderSettings(base_url=url, api_key=key, webhook_secret=webhook_secret,
                                    request_timeout=request_timeout, connect_timeout=2.0)
        adapter = BflAdapter(settings, "bfl")
        adapters.append(adapter)
        return sim, adapter

    yield start
    for adapter in adapters:
        await adapter.aclose()


async def raised(call: Awaitable[Any]) -> EaselError:
    with pytest.raises(EaselError) as info:
        await call
    return info.value


# -- request body (sans-IO) -----------------------------------------------------------


def test_body_maps_size_seed_and_passthrough_fields() -> None:
    body = request_body(job(parameters={"size_or_ratio": "1024x768", "seed": 7, "prompt_upsampling": True,
                                        "safety_tolerance": 4, "output_format": "png", "bogus": 1}))
    assert body == {"prompt": "a red fox", "width": 1024, "height": 768, "seed": 7,
                    "prompt_upsampling": True, "safety_tolerance": 4, "output_format": "png"}
    by_ratio = request_body(job(parameters={"size_or_ratio": "16:9"}))
    assert by_ratio["width"] % 32 == 0 and by_ratio["height"] % 32 == 0
    assert by_ratio["width"] > by_ratio["height"] and 256 <= by_ratio["height"] <= 1440


def test_body_for_kontext_uses_aspect_ratio_and_input_image() -> None:
    body = request_body(job(model="flux-kontext-pro", parameters={"size_or_ratio": "1920x1080"},
                            input_images=("data:image/png;base64,QUJD", "https://example.com/b.png")))
    assert body == {"prompt": "a red fox", "aspect_ratio": "16:9", "input_image": "QUJD",
                    "input_image_2": "https://example.com/b.png"}


def test_body_refuses_what_bfl_cannot_do() -> None:
    for bad in (job(number_of_outputs=2), job(parameters={"size_or_ratio": "big"}),
                job(input_images=("https://example.com/a.png",))):
        with pytest.raises(EaselError) as info:
            request_body(bad)
        assert info.value.code is ErrorCode.INVALID_PARAMETERS


def test_webhook_fields_only_with_a_url() -> None:
    assert "webhook_url" not in request_body(job())
    body = request_body(job(), "https://easel.example/api/providers/bfl/webhook", SECRET)
    assert (body["webhook_url"], body["webhook_secret"]) == (
        "https://easel.example/api/providers/bfl/webhook", SECRET)


# -- answers (sans-IO) ----------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    [], "Ready", None, {"status": "Ready"}, {"status": "Ready", "result": {"sample": 5}},
    {"status": "Ready", "result": "x"}, {"status": "Exploded"}, {},
])
def test_malformed_status_answers_are_retryable_provider_errors(payload: Any) -> None:
    with pytest.raises(EaselError) as info:
        status_of(payload)
    assert info.value.code is ErrorCode.PROVIDER_ERROR and info.value.info.is_retryable


@pytest.mark.parametrize("answer", [[], {}, {"id": 5, "polling_url": "https://x"}, {"id": ""},
                                    {"id": "a b"}, {"id": "t", "polling_url": "ftp://x/y"}])
def test_malformed_submit_answers_are_provider_errors(answer: Any) -> None:
    with pytest.raises(EaselError) as info:
        handle_from_submit(answer, "bfl")
    assert info.value.code is ErrorCode.PROVIDER_ERROR


def test_handles_round_trip_and_progress_scales() -> None:
    handle = handle_from_submit({"id": "t1", "polling_url": "https://api.eu.bfl.ai/v1/get_result?id=t1"}, "bfl")
    assert TaskHandle.decode(handle.encode()) == handle
    assert handle.encode() == "t1 https://api.eu.bfl.ai/v1/get_result?id=t1"
    webhook_form = handle_from_submit({"id": "t2", "status": "Pending", "webhook_url": "https://h"}, "bfl")
    assert webhook_form.encode() == "t2"
    assert status_of({"status": "Pending", "progress": 40}).progress == pytest.approx(0.4)
    assert status_of({"status": "Pending", "progress": 0.25}).progress == pytest.approx(0.25)
    assert status_of({"status": "Pending", "progress": "soon"}).progress is None


# -- over HTTP ---------------------------------------------------------------------------


async def test_submit_follows_polling_url_to_ready(connect: Callable[..., Awaitable[Pair]]) -> None:
    clock = FakeClock()
    sim, adapter = await connect(clock=clock, region="eu")
    submitted = await adapter.submit(job(parameters={"size_or_ratio": "512x512", "seed": 3}))
    task_id, _, polling_url = submitted.task_id.partition(" ")
    assert polling_url == f"{sim.url}/_region/eu/v1/get_result?id={task_id}"
    assert sim.tasks[task_id].input == {"prompt": "a red fox", "width": 512, "height": 512, "seed": 3}

    assert (await adapter.check(submitted.task_id)).state is TaskState.RUNNING
    clock.advance(0.55)
    running = await adapter.check(submitted.task_id)
    assert running.state is TaskState.RUNNING and running.progress == pytest.approx(0.5, abs=0.05)
    clock.advance(0.5)
    done = await adapter.check(submitted.task_id)
    assert done.state is TaskState.SUCCEEDED and len(done.outputs) == 1
    async with httpx.AsyncClient() as client:
        image = await client.get(done.outputs[0])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).format == "JPEG"
    # Every check went to the regional URL, none to a rebuilt /v1/get_result.
    assert sim.regional_checks == sim.stats().status_checks == 3


async def test_a_bare_id_is_polled_at_get_result(connect: Callable[..., Awaitable[Pair]]) -> None:
    clock = FakeClock()
    _sim, adapter = await connect(clock=clock)
    task_id = (await adapter.submit(job())).task_id.split(" ")[0]
    clock.advance(2)
    assert (await adapter.check(task_id)).state is TaskState.SUCCEEDED


async def test_kontext_sends_the_input_image(connect: Callable[..., Awaitable[Pair]]) -> None:
    clock = FakeClock()
    sim, adapter = await connect(clock=clock)
    submitted = await adapter.submit(job(model="flux-kontext-pro", input_images=("https://img.example/a.png",),
                                         parameters={"size_or_ratio": "9:16"}))
    task = sim.tasks[submitted.task_id.split(" ")[0]]
    assert task.input["input_image"] == "https://img.example/a.png"
    assert task.input["aspect_ratio"] == "9:16"
    clock.advance(2)
    done = await adapter.check(submitted.task_id)
    assert done.outputs[0].split("?")[0].endswith(".png")  # Kontext's default output_format


@pytest.mark.parametrize(("prompt", "provider_status", "code"), [
    ("[request-moderated] x", "Request Moderated", ErrorCode.CONTENT_MODERATED),
    ("[content-moderated] x", "Content Moderated", ErrorCode.CONTENT_MODERATED),
    ("[error] x", "Error", ErrorCode.TASK_FAILED),
])
async def test_failed_and_moderated_tasks(connect: Callable[..., Awaitable[Pair]], prompt: str,
                                          provider_status: str, code: ErrorCode) -> None:
    clock = FakeClock()
    _sim, adapter = await connect(clock=clock)
    submitted = await adapter.submit(job(prompt))
    clock.advance(2)
    status = await adapter.check(submitted.task_id)
    assert status.state is TaskState.FAILED
    assert status.error.code is code
    assert status.error.details["provider_status"] == provider_status
    assert provider_status in status.error.message


async def test_task_not_found_in_both_forms(connect: Callable[..., Awaitable[Pair]]) -> None:
    _sim, adapter = await connect()
    status = await adapter.check("missing-id")
    assert status.state is TaskState.FAILED and status.error.code is ErrorCode.TASK_FAILED
    assert status.error.details["provider_status"] == "Task not found"
    _sim404, adapter404 = await connect(not_found_status=404)
    error = await raised(adapter404.check("missing-id"))
    assert error.code is ErrorCode.NOT_FOUND and error.info.details["status"] == 404


async def test_error_statuses_map_to_codes(connect: Callable[..., Awaitable[Pair]]) -> None:
    clock = FakeClock()
    sim, adapter = await connect(Knobs(token=KEY, max_active=1), clock=clock, credits=4.0)

    invalid = await raised(adapter.submit(job(parameters={"width": 500})))
    assert invalid.code is ErrorCode.INVALID_PARAMETERS and "width" in invalid.info.message
    assert invalid.info.details["status"] == 422

    await adapter.submit(job("first"))
    busy = await raised(adapter.submit(job("second")))
    assert busy.code is ErrorCode.RATE_LIMITED and busy.info.details["status"] == 429
    assert "active tasks" in busy.info.details["body"]

    clock.advance(2)
    broke = await raised(adapter.submit(job("third")))
    assert broke.code is ErrorCode.QUOTA_EXCEEDED and broke.info.details["status"] == 402
    assert not broke.info.is_retryable
    assert sim.stats().submissions == 1


async def test_auth_failures(connect: Callable[..., Awaitable[Pair]]) -> None:
    _sim, wrong = await connect(key="wrong-key")
    error = await raised(wrong.submit(job()))
    assert error.code is ErrorCode.AUTHENTICATION_FAILED and error.info.details["status"] == 401
    _sim2, empty = await connect(key="")
    error = await raised(empty.check("t1"))
    assert error.code is ErrorCode.AUTHENTICATION_FAILED and error.info.details["status"] == 403
    assert "wrong-key" not in json.dumps(error.info.details)


async def test_request_faults(connect: Callable[..., Awaitable[Pair]]) -> None:
    sim, adapter = await connect(Knobs(token=KEY, rate_limit_rate=1.0, retry_after=0.5))
    limited = await raised(adapter.submit(job()))
    assert limited.code is ErrorCode.RATE_LIMITED and limited.retry_after == pytest.approx(0.5)

    sim.knobs = Knobs(token=KEY, error_5xx_rate=1.0)
    server = await raised(adapter.check("t1"))
    assert server.code is ErrorCode.PROVIDER_ERROR and server.info.is_retryable

    sim.knobs = Knobs(token=KEY, malformed_rate=1.0)
    for call in (adapter.submit(job()), adapter.check("t1")):
        malformed = await raised(call)
        assert malformed.code is ErrorCode.PROVIDER_ERROR and malformed.info.is_retryable


async def test_a_hanging_provider_is_a_timeout(connect: Callable[..., Awaitable[Pair]]) -> None:
    _sim, adapter = await connect(Knobs(token=KEY, timeout_rate=1.0, hang_seconds=1.0), request_timeout=0.1)
    error = await raised(adapter.check("t1"))
    assert error.code is ErrorCode.PROVIDER_TIMEOUT


async def test_cancel_does_not_call_bfl_and_nothing_is_listed(connect: Callable[..., Awaitable[Pair]]) -> None:
    sim, adapter = await connect()
    submitted = await adapter.submit(job())
    before = dict(sim.stats().requests)
    await adapter.cancel(submitted.task_id)
    assert not isinstance(adapter, TaskLister)
    assert sim.stats().requests == before


async def test_credits(connect: Callable[..., Awaitable[Pair]]) -> None:
    _sim, adapter = await connect(credits=12.5)
    assert await adapter.credits() == 12.5


# -- webhooks -----------------------------------------------------------------------------


async def test_webhook_from_the_simulator_is_verified_and_read(
    connect: Callable[..., Awaitable[Pair]], nursery: trio.Nursery
) -> None:
    from quart import request as quart_request
    from quart_trio import QuartTrio

    deliveries: list[tuple[dict[str, str], bytes]] = []
    arrived = trio.Event()
    receiver = QuartTrio("easel-stand-in")

    @receiver.post("/api/providers/bfl/webhook")
    async def hook() -> str:
        deliveries.append((dict(quart_request.headers), await quart_request.get_data()))
        arrived.set()
        return "ok"

    hook_base = await nursery.start(serve_simulator, receiver)
    _sim, adapter = await connect(Knobs(token=KEY, duration=0.05), webhook_secret=SECRET)
    callback = f"{hook_base}/api/providers/bfl/webhook"
    submitted = await adapter.submit(job(callback_url=callback))
    assert " " not in submitted.task_id  # the webhook answer carries no polling_url
    with trio.fail_after(5):
        await arrived.wait()
    headers, body = deliveries[0]

    event = adapter.parse_webhook(headers, body)
    assert event.task_id == submitted.task_id
    assert event.status is not None and event.status.state is TaskState.SUCCEEDED
    assert event.status.outputs[0].startswith("http")

    # The same delivery with the secret missing or wrong is refused.
    for forged in ({k: v for k, v in headers.items() if k.lower() != "x-webhook-secret"},
                   {**headers, "X-Webhook-Secret": SECRET + "x"}):
        with pytest.raises(EaselError) as info:
            adapter.parse_webhook(forged, body)
        assert info.value.code is ErrorCode.AUTHENTICATION_FAILED


async def test_webhook_secret_only_sent_when_configured(connect: Callable[..., Awaitable[Pair]]) -> None:
    sim, adapter = await connect()
    submitted = await adapter.submit(job(callback_url="http://127.0.0.1:9/never"))
    task = sim.tasks[submitted.task_id.split(" ")[0]]
    assert task.webhook is None and "webhook_url" not in task.input


async def test_parse_webhook_rejections(connect: Callable[..., Awaitable[Pair]]) -> None:
    _sim, adapter = await connect(webhook_secret=SECRET)
    good = {"x-webhook-secret": SECRET}
    for body in (b"not json", b"[]", b'{"status": "Ready"}'):
        with pytest.raises(EaselError) as info:
            adapter.parse_webhook(good, body)
        assert info.value.code is ErrorCode.INVALID_REQUEST
    # Verified, but a body whose status cannot be read is only a hint to check now.
    hint = adapter.parse_webhook(good, b'{"id": "t9", "status": "Something new"}')
    assert (hint.task_id, hint.status) == ("t9", None)
    _sim2, unconfigured = await connect()
    with pytest.raises(EaselError) as info:
        unconfigured.parse_webhook(good, b'{"id": "t9", "status": "Ready"}')
    assert info.value.code is ErrorCode.AUTHENTICATION_FAILED


# -- end to end ---------------------------------------------------------------------------


@attrs.frozen
class Running:
    base_url: str
    sim_url: str
    daemon: DaemonProcess


@pytest.fixture(scope="module")
def easel_with_bfl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``easel run`` and a BFL simulator process, shared by the end-to-end tests.

    Two provider sections use the bfl adapter: ``bfl`` polls (no webhook secret, so
    no webhook_url is sent); ``bfl-hooks`` has a secret and the daemon a public URL,
    so BFL's webhook finishes its jobs. Its model polls only every 60 s.
    """
    tmp_path = tmp_path_factory.mktemp("easel-bfl")
    with start_simulator_process("bfl", "--duration", "0.3", "--token", KEY) as (_process, sim_url):
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        config = write_config(tmp_path, f"""
[providers.bfl]
base_url = "{sim_url}"
api_key = "{KEY}"
rate = 20
burst = 5
max_in_flight = 24

[providers.bfl-hooks]
adapter = "bfl"
base_url = "{sim_url}"
api_key = "{KEY}"
webhook_secret = "{SECRET}"

[models.bfl-flux-pro]
provider = "bfl"
provider_model = "flux-pro-1.1"
expected_duration = 0.3
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.1 }}

[models.bfl-hooks-flux-dev]
provider = "bfl-hooks"
provider_model = "flux-dev"
max_duration = 120
polling = {{ strategy = "fixed", interval = 60 }}
""", port=port)
        # write_config owns the [daemon] table: add the public URL to it.
        config.write_text(config.read_text().replace(
            "drain_timeout = 5", f'drain_timeout = 5\npublic_base_url = "{base_url}"'))
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            yield Running(base_url, sim_url, daemon)
        finally:
            daemon.stop()


def run_job(running: Running, body: dict[str, Any]) -> tuple[dict[str, Any], httpx.Response]:
    """Submit ``body`` to the daemon, wait for the job, fetch its first stored output."""
    with httpx.Client(base_url=running.base_url, timeout=30) as client:
        submitted = client.post("/api/external/generation", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        finished = client.get(f"/api/external/generation/{job_id}", params={"wait": 20}).json()
        assert finished["status"] == "SUCCESS", (finished, running.daemon.log_text())
        url = finished["results"][0]["url"]
        assert url.startswith(f"{running.base_url}/media/")
        return finished, client.get(url)


def test_easel_run_finishes_a_bfl_job_and_stores_its_output(easel_with_bfl: Running) -> None:
    before = fetch_stats(easel_with_bfl.sim_url)
    _job, stored = run_job(easel_with_bfl, {
        "modelIdentifier": "bfl-flux-pro", "prompt": "a lighthouse",
        "parameters": {"size_or_ratio": "1024x768", "output_format": "png"}})
    after = fetch_stats(easel_with_bfl.sim_url)
    assert stored.status_code == 200 and Image.open(io.BytesIO(stored.content)).format == "PNG"
    assert after.submissions - before.submissions == 1 and after.max_submissions_per_input == 1
    assert after.status_checks > before.status_checks
    assert after.webhooks_delivered == before.webhooks_delivered  # no secret: no webhook asked for


def test_easel_run_takes_bfl_webhooks_verified_by_the_echoed_secret(easel_with_bfl: Running) -> None:
    before = fetch_stats(easel_with_bfl.sim_url)
    _job, stored = run_job(easel_with_bfl, {
        "modelIdentifier": "bfl-hooks-flux-dev", "prompt": "a harbour at night"})
    after = fetch_stats(easel_with_bfl.sim_url)
    assert stored.status_code == 200 and Image.open(io.BytesIO(stored.content)).format == "JPEG"
    assert after.webhooks_delivered - before.webhooks_delivered == 1 and after.webhooks_failed == 0
    assert after.status_checks == before.status_checks  # the 60 s poll never came due
