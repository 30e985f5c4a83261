"""fal.ai: the queue simulator's protocol, the adapter against it, and one daemon run.

The simulator runs in-process on a hand-stepped clock (so queue positions and
completion are exact, with no sleeping) and is reached over real loopback HTTP by
both raw httpx and the adapter. The last test runs ``easel run`` against a
simulator subprocess and fetches the stored output from the daemon.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image
from quart import request
from quart_trio import QuartTrio

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.providers import fal
from actors.providers.base import JobRequest, ProviderSettings, Submitted, TaskLister, TaskState
from tests.conftest import free_port, write_config
from tests.fakes import FakeClock
from tests.process import DaemonProcess
from tests.simulators.base import (
    Knobs,
    fetch_stats,
    png_bytes,
    serve_simulator,
    start_simulator_process,
)
from tests.simulators.fal import FalSimulator

KEY = "fal-key-id:fal-key-secret"
MODEL = "fal-ai/flux/dev"


Started = tuple[FalSimulator, str, FakeClock]


@pytest.fixture
async def start_sim(nursery: trio.Nursery) -> Callable[..., Awaitable[Started]]:
    async def start(**knobs: Any) -> Started:
        clock = FakeClock()
        knobs.setdefault("token", KEY)
        knobs.setdefault("duration", 10.0)
        sim = FalSimulator(Knobs(**knobs), clock=clock)
        url = await nursery.start(serve_simulator, sim)
        return sim, url, clock

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Key {KEY}"}) as client:
        yield client


@pytest.fixture
async def adapters() -> AsyncIterator[Callable[..., fal.FalAdapter]]:
    made: list[fal.FalAdapter] = []

    def make(url: str, key: str = KEY) -> fal.FalAdapter:
        adapter = fal.FalAdapter(ProviderSettings(base_url=url, api_key=key, request_timeout=5), "fal")
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


def job(prompt: str = "a lighthouse", *, outputs: int = 1, callback_url: str | None = None,
        **parameters: Any) -> JobRequest:
    spec = ModelSpec(provider="fal", provider_model=MODEL)
    return JobRequest(job_id="job-1", model="fal-flux-dev", spec=spec, prompt=prompt,
                      number_of_outputs=outputs, parameters=parameters, callback_url=callback_url)


def is_png(data: bytes) -> bool:
    return Image.open(io.BytesIO(data)).format == "PNG"


async def submitted(adapter: fal.FalAdapter, request_: JobRequest) -> fal.RequestHandle:
    result = await adapter.submit(request_)
    assert isinstance(result, Submitted)
    return fal.RequestHandle.decode(result.task_id)


# -- the simulator's protocol ----------------------------------------------------------


async def test_queue_lifecycle_follows_fal_urls(start_sim: Callable[..., Awaitable[Started]],
                                                http: httpx.AsyncClient) -> None:
    sim, url, clock = await start_sim(duration=10.0)
    created = await http.post(f"{url}/{MODEL}", json={"prompt": "a cat", "num_images": 2})
    assert created.status_code == 200
    body = created.json()
    rid = body["request_id"]
    # Status, result and cancel URLs drop the endpoint's sub-path ("/dev").
    assert body["status_url"] == f"{url}/fal-ai/flux/requests/{rid}/status"
    assert body["response_url"] == f"{url}/fal-ai/flux/requests/{rid}"
    assert body["cancel_url"] == f"{url}/fal-ai/flux/requests/{rid}/cancel"
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 3

    positions = []
    for _ in range(3):
        status = await http.get(body["status_url"])
        assert status.status_code == 202 and status.json()["status"] == "IN_QUEUE"
        positions.append(status.json()["queue_position"])
        clock.now += 0.9
    assert positions == sorted(positions, reverse=True) and positions[0] > positions[-1]

    clock.now += 1.0  # past the queue (30% of 10 s)
    running = await http.get(body["status_url"])
    assert running.status_code == 202 and running.json()["status"] == "IN_PROGRESS"
    assert "queue_position" not in running.json()
    early = await http.get(body["response_url"])
    assert early.status_code == 400 and early.json() == {"detail": "Request is still in progress"}

    clock.now += 10
    done = await http.get(body["status_url"])
    assert done.status_code == 200 and done.json()["status"] == "COMPLETED"
    result = (await http.get(body["response_url"])).json()
    urls = [image["url"] for image in result["images"]]
    assert len(urls) == 2 and result["has_nsfw_concepts"] == [False, False]
    files = [await http.get(u) for u in urls]
    assert all(f.status_code == 200 and is_png(f.content) for f in files)
    assert files[0].content != files[1].content

    stats = sim.stats()
    assert stats.submissions == 1 and stats.max_submissions_per_input == 1 and stats.active == 0
    assert stats.status_checks == 7  # five status polls and two result fetches


async def test_auth_is_key_scheme(start_sim: Callable[..., Awaitable[Started]]) -> None:
    _sim, url, _clock = await start_sim()
    async with httpx.AsyncClient(timeout=10) as client:
        for headers in ({}, {"Authorization": "Key wrong"}, {"Authorization": f"Bearer {KEY}"}):
            answer = await client.post(f"{url}/{MODEL}", json={"prompt": "x"}, headers=headers)
            assert answer.status_code == 401 and isinstance(answer.json()["detail"], str)


async def test_rebuilt_urls_with_sub_path_find_nothing(start_sim: Callable[..., Awaitable[Started]],
                                                       http: httpx.AsyncClient) -> None:
    _sim, url, _clock = await start_sim()
    rid = (await http.post(f"{url}/{MODEL}", json={"prompt": "x"})).json()["request_id"]
    assert (await http.get(f"{url}/{MODEL}/requests/{rid}/status")).status_code in (404, 405)
    assert (await http.get(f"{url}/fal-ai/other/requests/{rid}/status")).status_code == 404


async def test_validation_errors_are_detail_lists(start_sim: Callable[..., Awaitable[Started]],
                                                  http: httpx.AsyncClient) -> None:
    sim, url, _clock = await start_sim()
    for body, field in (({"num_images": 1}, "prompt"), ({"prompt": "x", "num_images": 9}, "num_images")):
        answer = await http.post(f"{url}/{MODEL}", json=body)
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", field]
    assert sim.stats().submissions == 0


async def test_cancel_then_status_reflects_it(start_sim: Callable[..., Awaitable[Started]],
                                              http: httpx.AsyncClient) -> None:
    sim, url, clock = await start_sim()
    body = (await http.post(f"{url}/{MODEL}", json={"prompt": "x"})).json()
    cancelled = await http.put(body["cancel_url"])
    assert cancelled.status_code == 202 and cancelled.json() == {"status": "CANCELLATION_REQUESTED"}
    clock.now += 60
    status = await http.get(body["status_url"])
    assert status.json()["status"] == "COMPLETED" and status.json()["error_type"] == "request_cancelled"
    assert (await http.get(body["response_url"])).status_code == 400
    again = await http.put(body["cancel_url"])
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
    missing = await http.put(f"{url}/fal-ai/flux/requests/nope/cancel")
    assert missing.status_code == 404 and missing.json() == {"status": "NOT_FOUND"}
    assert sim.stats().cancels == 3


# -- the adapter against the simulator ---------------------------------------------------


async def test_adapter_submits_polls_and_gets_outputs(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter]
) -> None:
    sim, url, clock = await start_sim()
    adapter = adapters(url)
    handle = await submitted(adapter, job(outputs=2, seed=7))
    task = sim.tasks[handle.request_id]
    assert task.input == {"prompt": "a lighthouse", "num_images": 2, "seed": 7}
    assert handle.status_url == f"{url}/fal-ai/flux/requests/{handle.request_id}/status"

    first = await adapter.check(handle.encode())
    clock.now += 2
    second = await adapter.check(handle.encode())
    assert first.state is second.state is TaskState.RUNNING
    assert first.progress is not None and second.progress is not None and first.progress < second.progress
    clock.now += 2
    assert (await adapter.check(handle.encode())).progress == fal.RUNNING_PROGRESS

    clock.now += 10
    done = await adapter.check(handle.encode())
    assert done.state is TaskState.SUCCEEDED and len(done.outputs) == 2
    assert done.outputs[0] == f"{url}/_sim/files/{handle.request_id}/0.png"
    assert not isinstance(adapter, TaskLister)


async def test_adapter_maps_task_outcomes(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter]
) -> None:
    sim, url, clock = await start_sim()
    adapter = adapters(url)
    flagged = await submitted(adapter, job("policy-violation please"))
    blanked = await submitted(adapter, job("something nsfw"))
    sim.knobs.fail_rate = 1.0
    broken = await submitted(adapter, job("fine"))
    clock.now += 20

    outcomes = {name: await adapter.check(h.encode())
                for name, h in (("flagged", flagged), ("blanked", blanked), ("broken", broken))}
    assert {s.state for s in outcomes.values()} == {TaskState.FAILED}
    assert outcomes["flagged"].error.code is ErrorCode.CONTENT_MODERATED
    assert outcomes["flagged"].error.details["status"] == 422
    assert outcomes["blanked"].error.code is ErrorCode.CONTENT_MODERATED
    assert outcomes["broken"].error.code is ErrorCode.TASK_FAILED
    assert "Simulated failure" in outcomes["broken"].error.message


async def test_adapter_cancel_reaches_fal(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter]
) -> None:
    sim, url, clock = await start_sim()
    adapter = adapters(url)
    handle = await submitted(adapter, job())
    await adapter.cancel(handle.encode())
    assert sim.stats().cancels == 1 and sim.tasks[handle.request_id].canceled_at is not None
    clock.now += 20
    assert (await adapter.check(handle.encode())).state is TaskState.CANCELLED
    await adapter.cancel(handle.encode())  # ALREADY_COMPLETED is not an error
    assert sim.stats().cancels == 2


@pytest.mark.parametrize(
    ("setup", "code", "retryable"),
    [
        ("bad_key", ErrorCode.AUTHENTICATION_FAILED, False),
        ("locked", ErrorCode.QUOTA_EXCEEDED, False),
        ("invalid", ErrorCode.INVALID_PARAMETERS, False),
        ("rate_limit", ErrorCode.RATE_LIMITED, True),
        ("server_error", ErrorCode.PROVIDER_ERROR, True),
        ("malformed", ErrorCode.PROVIDER_ERROR, True),
    ],
)
async def test_adapter_submit_errors(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter],
    setup: str, code: ErrorCode, retryable: bool,
) -> None:
    knobs = {"rate_limit": {"rate_limit_rate": 1.0, "retry_after": 0.25},
             "server_error": {"error_5xx_rate": 1.0}, "malformed": {"malformed_rate": 1.0}}
    sim, url, _clock = await start_sim(**knobs.get(setup, {}))
    sim.locked = setup == "locked"
    adapter = adapters(url, "wrong" if setup == "bad_key" else KEY)
    request_ = job(outputs=9) if setup == "invalid" else job()
    with pytest.raises(EaselError) as caught:
        await adapter.submit(request_)
    assert caught.value.code is code
    assert caught.value.info.is_retryable is retryable
    assert "status" in caught.value.info.details or setup == "malformed"
    if setup == "invalid":
        assert "num_images" in caught.value.info.message
    if setup == "rate_limit":
        assert caught.value.retry_after == 0.25
    if setup == "bad_key":
        assert KEY not in json.dumps(caught.value.info.details)


@pytest.mark.parametrize("fault", ["error_5xx_rate", "malformed_rate", "rate_limit_rate"])
async def test_adapter_check_faults_are_retryable(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter], fault: str
) -> None:
    sim, url, _clock = await start_sim()
    adapter = adapters(url)
    handle = await submitted(adapter, job())
    setattr(sim.knobs, fault, 1.0)
    with pytest.raises(EaselError) as caught:
        await adapter.check(handle.encode())
    assert caught.value.info.is_retryable


async def test_adapter_unknown_request_and_bad_handle(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter]
) -> None:
    _sim, url, _clock = await start_sim()
    adapter = adapters(url)
    base = f"{url}/fal-ai/flux/requests/nope"
    gone = fal.RequestHandle("nope", f"{base}/status", base, f"{base}/cancel").encode()
    with pytest.raises(EaselError) as caught:
        await adapter.check(gone)
    assert caught.value.code is ErrorCode.NOT_FOUND
    await adapter.cancel(gone)  # NOT_FOUND: nothing to cancel
    with pytest.raises(EaselError) as bad:
        await adapter.check("just-an-id")
    assert bad.value.code is ErrorCode.PROVIDER_ERROR and not bad.value.info.is_retryable


def test_result_errors_tell_gateway_failures_from_request_outcomes() -> None:
    def answer(status: int, body: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content)

    # fal's account of the request: final.
    timeout = fal.failed_result(answer(504, {"detail": "Request timed out", "error_type": "request_timeout"}),
                                "fal")
    assert timeout is not None and timeout.error.code is ErrorCode.TASK_FAILED
    assert timeout.error.details["errorType"] == "request_timeout"
    invalid = fal.failed_result(answer(422, {"detail": [{"loc": ["body", "image_size"], "msg": "bad",
                                                         "type": "value_error"}]}), "fal")
    assert invalid is not None and invalid.error.code is ErrorCode.INVALID_PARAMETERS
    assert "body.image_size: bad" in invalid.error.message
    # Not an account of the request: raised, and the check is repeated.
    assert fal.failed_result(answer(502, b"<html>bad gateway</html>"), "fal") is None
    assert fal.failed_result(answer(503, {"detail": "Service Unavailable"}), "fal") is None
    assert fal.failed_result(answer(401, {"detail": [{"msg": "no"}]}), "fal") is None


async def test_webhook_is_a_hint(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., fal.FalAdapter],
    nursery: trio.Nursery,
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = trio.Event()
    receiver = QuartTrio("receiver")

    @receiver.post("/hook")
    async def hook() -> str:
        received.append((dict(request.headers), await request.get_data(as_text=False)))
        arrived.set()
        return "ok"

    hook_url = await nursery.start(serve_simulator, receiver)
    sim, url, clock = await start_sim()
    adapter = adapters(url)
    handle = await submitted(adapter, job(callback_url=f"{hook_url}/hook"))
    assert sim.tasks[handle.request_id].webhook == f"{hook_url}/hook"
    clock.now += 20
    sim.time_moved()
    with trio.fail_after(5):
        await arrived.wait()
    headers, body = received[0]
    assert json.loads(body)["status"] == "OK"
    event = adapter.parse_webhook(headers, body)
    assert event.task_id == handle.request_id and event.status is None

    for unreadable in (b"not json", b"[]", b'{"status": "OK"}', b'{"request_id": 5}'):
        with pytest.raises(EaselError) as caught:
            adapter.parse_webhook({}, unreadable)
        assert caught.value.code is ErrorCode.INVALID_REQUEST


# -- the daemon, end to end --------------------------------------------------------------


def test_daemon_runs_a_fal_job_to_stored_output(tmp_path: Path) -> None:
    with start_simulator_process("fal", "--duration", "0.3", "--token", KEY) as (_process, sim_url):
        port = free_port()
        config = write_config(tmp_path, f"""
[providers.fal]
base_url = "{sim_url}"
api_key = "{KEY}"
rate = 20
burst = 10
max_in_flight = 8

[models.fal-flux-dev]
provider = "fal"
provider_model = "{MODEL}"
kind = "image"
expected_duration = 0.3
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.1 }}
""", port=port)
        base_url = f"http://127.0.0.1:{port}"
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            with httpx.Client(base_url=base_url, timeout=30) as client:
                created = client.post("/api/external/generation",
                                      json={"modelIdentifier": "fal-flux-dev", "prompt": "a harbour"})
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]
                finished = None
                for _ in range(20):
                    finished = client.get(f"/api/external/generation/{job_id}", params={"wait": 5}).json()
                    if finished["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                        break
                assert finished is not None and finished["status"] == "SUCCESS", (finished, daemon.log_text())
                request_id = finished["providerTaskId"].split(" ", 1)[0]
                media_url = finished["results"][0]["url"]
                assert "/media/" in media_url
                stored = httpx.get(media_url, timeout=10)
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)
    assert stored.status_code == 200
    assert stored.content == png_bytes(f"{request_id}/0")
    assert stats.submissions == 1 and stats.max_submissions_per_input == 1
