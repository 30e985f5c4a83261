"""OpenAI Images: the simulator held to the official SDK, the adapter held to the simulator.

The ``openai`` SDK is the referee: if ``client.images.generate`` / ``.edit`` and the
SDK's error classes behave against the simulator as against api.openai.com, the
adapter tested against the same simulator is tested against the protocol. The SDK
is synchronous here, so it runs in a worker thread while the simulator is served
in the test's own trio run (which keeps the simulator's knobs and tasks at hand).
One process-level test runs ``easel run`` against a simulator subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from PIL import Image

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.finalizer import decode_data_uri
from actors.providers.base import Completed, JobRequest, ProviderSettings, TaskLister
from actors.providers.openai import OpenaiAdapter, code_for, outputs_of
from tests.conftest import free_port, write_config
from tests.process import DaemonProcess
from tests.simulators.base import Knobs, fetch_stats, serve_simulator, start_simulator_process
from tests.simulators.openai import ImageTask, OpenaiSimulator

KEY = "sk-simulated-key-0123456789"

Started = tuple[OpenaiSimulator, str]


def png(colour: tuple[int, int, int] = (10, 20, 30), size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_format(data: bytes) -> str | None:
    return Image.open(io.BytesIO(data)).format


@pytest.fixture
async def start_sim(nursery: trio.Nursery) -> Callable[..., Awaitable[Started]]:
    """Factory serving an ``OpenaiSimulator`` (fast, key required) in the test's nursery."""

    async def start(**knobs: Any) -> Started:
        knobs = {"duration": 0.02, "token": KEY, **knobs}
        sim = OpenaiSimulator(Knobs(**knobs))
        url = await nursery.start(serve_simulator, sim)
        return sim, url

    return start


def sdk(url: str, key: str = KEY) -> openai.OpenAI:
    # A generous timeout: the simulator shares a loaded 2-core machine with the
    # suite, and no test here is about the client giving up.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


# -- the official SDK against the simulator -------------------------------------------


async def test_sdk_generates_gpt_image_as_b64_pngs(start_sim: Callable[..., Awaitable[Started]]) -> None:
    sim, url = await start_sim()
    with sdk(url) as client:
        result = await in_thread(lambda: client.images.generate(model="gpt-image-1", prompt="a fox", n=2))
    assert len(result.data) == 2
    images = [base64.b64decode(item.b64_json) for item in result.data]
    assert all(png_format(data) == "PNG" for data in images)
    assert images[0] != images[1]
    assert all(item.url is None for item in result.data)
    assert result.output_format == "png" and result.usage is not None
    stats = sim.stats()
    assert (stats.submissions, stats.max_submissions_per_input, stats.status_checks, stats.active) == (1, 1, 0, 0)


async def test_sdk_dalle3_url_by_default_and_b64_on_request(
    start_sim: Callable[..., Awaitable[Started]],
) -> None:
    _sim, url = await start_sim()
    with sdk(url) as client:
        by_url = await in_thread(lambda: client.images.generate(model="dall-e-3", prompt="a fox", size="1792x1024"))
        by_b64 = await in_thread(
            lambda: client.images.generate(model="dall-e-3", prompt="a fox", response_format="b64_json")
        )
    item = by_url.data[0]
    assert item.b64_json is None and item.url is not None and item.url.startswith(url)
    assert item.revised_prompt
    async with httpx.AsyncClient() as http:
        download = await http.get(item.url)
    assert download.headers["content-type"] == "image/png" and png_format(download.content) == "PNG"
    assert by_b64.data[0].url is None and png_format(base64.b64decode(by_b64.data[0].b64_json)) == "PNG"


async def test_sdk_edit_single_and_several_images(start_sim: Callable[..., Awaitable[Started]]) -> None:
    sim, url = await start_sim()
    first, second = png((1, 2, 3)), png((200, 100, 50))
    with sdk(url) as client:
        one = await in_thread(
            lambda: client.images.edit(model="gpt-image-1", image=("a.png", first, "image/png"), prompt="add a hat")
        )
        many = await in_thread(lambda: client.images.edit(
            model="gpt-image-1", prompt="combine", n=2,
            image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
        ))
    assert len(one.data) == 1 and png_format(base64.b64decode(one.data[0].b64_json)) == "PNG"
    assert len(many.data) == 2
    digests = [task.input_digests for task in sim.tasks.values() if isinstance(task, ImageTask)]
    sha = [hashlib.sha256(data).hexdigest() for data in (first, second)]
    assert sorted(digests, key=len) == [sha[:1], sha]


async def test_sdk_error_classes(start_sim: Callable[..., Awaitable[Started]]) -> None:
    sim, url = await start_sim()
    with sdk(url) as client, sdk(url, "sk-wrong") as stranger:
        with pytest.raises(openai.AuthenticationError) as auth:
            await in_thread(lambda: stranger.images.generate(model="gpt-image-1", prompt="x"))
        assert auth.value.code == "invalid_api_key"

        with pytest.raises(openai.BadRequestError) as moderated:
            await in_thread(lambda: client.images.generate(model="gpt-image-1", prompt="something forbidden"))
        assert moderated.value.code == "moderation_blocked"
        with pytest.raises(openai.BadRequestError) as policy:
            await in_thread(lambda: client.images.generate(model="dall-e-3", prompt="forbidden"))
        assert policy.value.code == "content_policy_violation"

        with pytest.raises(openai.BadRequestError) as n_for_dalle3:
            await in_thread(lambda: client.images.generate(model="dall-e-3", prompt="x", n=2))
        assert n_for_dalle3.value.param == "n"
        with pytest.raises(openai.BadRequestError) as b64_only:
            await in_thread(lambda: client.images.generate(model="gpt-image-1", prompt="x", response_format="url"))
        assert b64_only.value.param == "response_format"
        with pytest.raises(openai.BadRequestError) as not_an_image:
            await in_thread(lambda: client.images.edit(image=("a.png", b"text", "image/png"), prompt="x",
                                                       model="gpt-image-1"))
        assert not_an_image.value.param == "image"

        sim.quota_exhausted = True
        with pytest.raises(openai.RateLimitError) as quota:
            await in_thread(lambda: client.images.generate(model="gpt-image-1", prompt="x"))
        assert quota.value.code == "insufficient_quota"
        sim.quota_exhausted = False

        sim.knobs = Knobs(duration=0.02, token=KEY, rate_limit_rate=1.0, retry_after=0.25)
        with pytest.raises(openai.RateLimitError) as limited:
            await in_thread(lambda: client.images.generate(model="gpt-image-1", prompt="x"))
        assert limited.value.code == "rate_limit_exceeded"
        assert limited.value.response.headers["retry-after-ms"] == "250"

        sim.knobs = Knobs(duration=0.02, token=KEY, error_5xx_rate=1.0)
        with pytest.raises(openai.InternalServerError) as server:
            await in_thread(lambda: client.images.generate(model="gpt-image-1", prompt="x"))
        assert isinstance(server.value.body, dict) and server.value.body["type"] == "server_error"
    # Refusals record no generation.
    assert sim.stats().submissions == 0


async def test_active_counts_requests_being_generated(start_sim: Callable[..., Awaitable[Started]]) -> None:
    sim, url = await start_sim(duration=0.3)
    with sdk(url) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, lambda: client.images.generate(model="gpt-image-1", prompt="slow"))
            with trio.fail_after(5):
                while sim.stats().active == 0:
                    await trio.sleep(0.01)
            assert sim.stats().active == 1
    assert sim.stats().active == 0 and sim.stats().submissions == 1


# -- the adapter against the simulator ----------------------------------------------


def job(model: str = "gpt-image-1", prompt: str = "a lighthouse", **kwargs: Any) -> JobRequest:
    spec = ModelSpec(provider="openai", provider_model=model)
    return JobRequest(job_id="job-1", model=model, spec=spec, prompt=prompt, **kwargs)


@pytest.fixture
async def adapter_for() -> AsyncIterator[Callable[..., OpenaiAdapter]]:
    made: list[OpenaiAdapter] = []

    def make(url: str, key: str = KEY, **settings: Any) -> OpenaiAdapter:
        adapter = OpenaiAdapter(ProviderSettings(base_url=f"{url}/v1", api_key=key, **settings), "openai")
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


async def test_adapter_generation_is_completed_with_data_uris(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter]
) -> None:
    sim, url = await start_sim()
    result = await adapter_for(url).submit(job(number_of_outputs=2, parameters={"size": "1024x1536"}))
    assert isinstance(result, Completed) and len(result.outputs) == 2
    for output in result.outputs:
        assert output.startswith("data:image/png;base64,")
        data, content_type = decode_data_uri(output)  # what the finalizer will do
        assert content_type == "image/png" and png_format(data) == "PNG"
    assert sim.stats().submissions == 1


async def test_adapter_dalle_url_mode_and_default_b64(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter]
) -> None:
    _sim, url = await start_sim()
    adapter = adapter_for(url)
    by_url = await adapter.submit(job("dall-e-3", parameters={"response_format": "url", "style": "vivid"}))
    assert isinstance(by_url, Completed) and by_url.outputs[0].startswith(f"{url}/_sim/files/")
    default = await adapter.submit(job("dall-e-3"))
    assert isinstance(default, Completed) and default.outputs[0].startswith("data:image/png;base64,")


async def test_adapter_edits_send_the_input_bytes(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter]
) -> None:
    sim, url = await start_sim()
    # The input image is served on loopback: allowed explicitly for this section.
    adapter = adapter_for(url, allow_private_inputs=True)
    # An http(s) input: a PNG the simulator itself serves.
    served = await adapter.submit(job("dall-e-2", parameters={"response_format": "url"}))
    assert isinstance(served, Completed)
    async with httpx.AsyncClient() as http:
        served_bytes = (await http.get(served.outputs[0])).content
    inline = png((9, 9, 9))
    data_uri = "data:image/png;base64," + base64.b64encode(inline).decode()

    single = await adapter.submit(job(input_images=(data_uri,)))
    double = await adapter.submit(job(input_images=(served.outputs[0], data_uri), number_of_outputs=2))

    assert isinstance(single, Completed) and len(single.outputs) == 1
    assert isinstance(double, Completed) and len(double.outputs) == 2
    edits = [task for task in sim.tasks.values() if isinstance(task, ImageTask) and task.input_digests]
    assert sorted(task.input_digests for task in edits) == sorted([
        [hashlib.sha256(inline).hexdigest()],
        [hashlib.sha256(served_bytes).hexdigest(), hashlib.sha256(inline).hexdigest()],
    ])


async def test_adapter_refuses_what_the_api_refuses_before_sending(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter]
) -> None:
    sim, url = await start_sim()
    adapter = adapter_for(url)
    for bad in (
        job("dall-e-3", number_of_outputs=2),
        job("dall-e-3", input_images=("data:image/png;base64," + base64.b64encode(png()).decode(),)),
        job(input_images=("data:image/gif;base64,R0lGODlh",)),
        job(input_images=("data:image/png;base64,@@not-base64@@",)),
    ):
        with pytest.raises(EaselError) as refused:
            await adapter.submit(bad)
        assert refused.value.code is ErrorCode.INVALID_PARAMETERS
    assert sim.stats().requests.get("create", 0) == 0


@pytest.mark.parametrize(
    ("setup", "request_", "code", "status"),
    [
        ("wrong_key", job(), ErrorCode.AUTHENTICATION_FAILED, 401),
        ("quota", job(), ErrorCode.QUOTA_EXCEEDED, 429),
        ("rate_limit", job(), ErrorCode.RATE_LIMITED, 429),
        ("", job(prompt="a forbidden thing"), ErrorCode.CONTENT_MODERATED, 400),
        ("", job("dall-e-3", prompt="forbidden"), ErrorCode.CONTENT_MODERATED, 400),
        ("", job(parameters={"size": "999x999"}), ErrorCode.INVALID_PARAMETERS, 400),
        ("server_error", job(), ErrorCode.PROVIDER_ERROR, None),
        ("fail", job(), ErrorCode.PROVIDER_ERROR, 500),
    ],
)
async def test_adapter_maps_openai_errors(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter],
    setup: str, request_: JobRequest, code: ErrorCode, status: int | None,
) -> None:
    knobs = {
        "rate_limit": {"rate_limit_rate": 1.0, "retry_after": 0.25},
        "server_error": {"error_5xx_rate": 1.0},
        "fail": {"fail_rate": 1.0},
    }.get(setup, {})
    sim, url = await start_sim(**knobs)
    sim.quota_exhausted = setup == "quota"
    adapter = adapter_for(url, "sk-wrong-key-abcdef" if setup == "wrong_key" else KEY)
    with pytest.raises(EaselError) as caught:
        await adapter.submit(request_)
    error = caught.value
    assert error.code is code, error.info
    if status is not None:
        assert error.info.details["status"] == status
    else:
        assert error.info.details["status"] in (500, 502, 503)
    assert error.info.details["provider"] == "openai"
    assert "sk-wrong-key-abcdef" not in json.dumps(error.info.to_json())
    if setup == "rate_limit":
        assert error.retry_after == pytest.approx(0.25) and error.sent is False and error.info.is_retryable
    else:
        assert error.sent is True  # a generation may have been paid for: never blindly resent
    if code is ErrorCode.CONTENT_MODERATED:
        assert error.info.details["provider_code"] in ("moderation_blocked", "content_policy_violation")


async def test_adapter_malformed_and_hung_answers(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter]
) -> None:
    sim, url = await start_sim(malformed_rate=1.0)
    with pytest.raises(EaselError) as malformed:
        await adapter_for(url).submit(job())
    assert malformed.value.code is ErrorCode.PROVIDER_ERROR and malformed.value.info.is_retryable

    sim.knobs = Knobs(duration=0.02, token=KEY, timeout_rate=1.0, hang_seconds=5.0)
    with pytest.raises(EaselError) as hung:
        await adapter_for(url, request_timeout=0.2).submit(job())
    assert hung.value.code is ErrorCode.PROVIDER_TIMEOUT and hung.value.sent is True


async def test_adapter_unreachable_provider_is_provably_unsent(adapter_for: Callable[..., OpenaiAdapter]) -> None:
    with pytest.raises(EaselError) as caught:
        await adapter_for(f"http://127.0.0.1:{free_port()}").submit(job())
    assert caught.value.code is ErrorCode.PROVIDER_UNAVAILABLE and caught.value.sent is False


@pytest.mark.parametrize(
    "body",
    [
        {}, [], {"data": []}, {"data": {}}, {"data": [1]}, {"data": [{}]},
        {"data": [{"b64_json": "%%%"}]}, {"data": [{"url": "ftp://x"}]}, {"data": [{"b64_json": 5}]},
    ],
)
def test_malformed_image_responses_are_retryable_provider_errors(body: Any) -> None:
    response = httpx.Response(200, json=body)
    with pytest.raises(EaselError) as caught:
        outputs_of(body, response, "openai")
    assert caught.value.code is ErrorCode.PROVIDER_ERROR and caught.value.info.is_retryable


def test_output_format_sets_the_data_uri_type() -> None:
    body = {"data": [{"b64_json": base64.b64encode(b"x").decode()}], "output_format": "webp"}
    assert outputs_of(body, httpx.Response(200, json=body), "openai") == ("data:image/webp;base64,eA==",)


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (401, {"code": "invalid_api_key"}, ErrorCode.AUTHENTICATION_FAILED),
        (403, {}, ErrorCode.AUTHENTICATION_FAILED),
        (429, {"type": "insufficient_quota", "code": None}, ErrorCode.QUOTA_EXCEEDED),
        (429, {"code": "rate_limit_exceeded"}, ErrorCode.RATE_LIMITED),
        (400, {"code": "content_policy_violation"}, ErrorCode.CONTENT_MODERATED),
        (400, {"code": None, "message": "Your request was rejected by the safety system."},
         ErrorCode.CONTENT_MODERATED),
        (400, {"code": "invalid_value"}, ErrorCode.INVALID_PARAMETERS),
        (404, {"code": "model_not_found"}, ErrorCode.INVALID_PARAMETERS),
        (408, {}, ErrorCode.PROVIDER_TIMEOUT),
        (500, {}, ErrorCode.PROVIDER_ERROR),
        (503, {}, ErrorCode.PROVIDER_ERROR),
    ],
)
def test_code_for_each_documented_status(status: int, error: dict[str, Any], code: ErrorCode) -> None:
    assert code_for(status, error) is code


async def test_no_tasks_no_webhooks_no_lookup(adapter_for: Callable[..., OpenaiAdapter]) -> None:
    adapter = adapter_for("http://127.0.0.1:9")
    for call in (adapter.check, adapter.cancel):
        with pytest.raises(EaselError) as caught:
            await call("anything")
        assert caught.value.code is ErrorCode.INTERNAL_ERROR and not caught.value.info.is_retryable
    assert not isinstance(adapter, TaskLister)
    # Without parse_webhook the provider actor passes no callback URL.
    assert not hasattr(adapter, "parse_webhook")


# -- the daemon as a process --------------------------------------------------------


def test_easel_run_stores_an_openai_image(tmp_path: Path) -> None:
    with start_simulator_process("openai", "--duration", "0.05", "--token", KEY) as (_process, sim_url):
        port = free_port()
        config = write_config(tmp_path, f"""
[providers.openai]
base_url = "{sim_url}/v1"
api_key = "${{OPENAI_TEST_KEY}}"
request_timeout = 30

[models.gpt-image-1]
provider = "openai"
provider_model = "gpt-image-1"
kind = "image"
expected_duration = 1
max_duration = 60
""", port=port)
        base_url = f"http://127.0.0.1:{port}"
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out", env={"OPENAI_TEST_KEY": KEY})
        try:
            daemon.start()
            with httpx.Client(base_url=base_url, timeout=30) as client:
                accepted = client.post("/api/external/generation",
                                       json={"modelIdentifier": "gpt-image-1", "prompt": "a red kite"})
                assert accepted.status_code == 202, accepted.text
                job_id = accepted.json()["id"]
                final = client.get(f"/api/external/generation/{job_id}", params={"wait": 20}).json()
                assert final["status"] == "SUCCESS", (final, daemon.log_text())
                media = client.get(final["results"][0]["url"])
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)
    assert media.status_code == 200 and png_format(media.content) == "PNG"
    stored = tmp_path / "state" / "media" / job_id / "0.png"
    assert stored.read_bytes() == media.content
    assert (stats.submissions, stats.max_submissions_per_input, stats.status_checks) == (1, 1, 0)


async def test_input_images_on_private_addresses_are_not_fetched(
    start_sim: Callable[..., Awaitable[Started]], adapter_for: Callable[..., OpenaiAdapter]
) -> None:
    sim, url = await start_sim()
    served = await adapter_for(url).submit(job("dall-e-2", parameters={"response_format": "url"}))
    assert isinstance(served, Completed) and served.outputs[0].startswith("http://127.0.0.1")
    before = len(sim.tasks)
    with pytest.raises(EaselError) as refused:
        await adapter_for(url).submit(job(input_images=(served.outputs[0],)))
    assert refused.value.code is ErrorCode.INVALID_PARAMETERS
    assert "not a public address" in refused.value.info.message
    assert len(sim.tasks) == before  # nothing was sent to the provider either
