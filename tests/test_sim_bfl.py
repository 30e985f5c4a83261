"""The BFL simulator speaks BFL's documented protocol (``docs/providers.md``, "BFL (FLUX)").

Plain HTTP against an in-process simulator on a hand-stepped clock, so lifecycle
and expiry are exact; one subprocess test checks the CLI registration and options.
The adapter is tested against this simulator in ``test_bfl.py``.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
from PIL import Image
from quart import request
from quart_trio import QuartTrio

from tests.fakes import FakeClock
from tests.simulators.base import Knobs, fetch_stats, serve_simulator, start_simulator_process
from tests.simulators.bfl import BflSimulator

KEY = "bfl-test-key"
Started = tuple[BflSimulator, str]


@pytest.fixture
async def start_sim(nursery: trio.Nursery) -> Callable[..., Awaitable[Started]]:
    async def start(knobs: Knobs | None = None, **kwargs: Any) -> Started:
        sim = BflSimulator(knobs or Knobs(token=KEY, duration=1.0), **kwargs)
        url = await nursery.start(serve_simulator, sim)
        return sim, url

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, headers={"x-key": KEY}) as session:
        yield session


async def test_submit_poll_ready_and_download(start_sim: Callable[..., Awaitable[Started]],
                                              http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    sim, url = await start_sim(clock=clock)
    answer = await http.post(f"{url}/v1/flux-pro-1.1", json={"prompt": "a fox", "output_format": "png"})
    assert answer.status_code == 200
    created = answer.json()
    assert set(created) >= {"id", "polling_url", "cost"}
    # The polling URL names the cluster (region): clients must follow, not rebuild it.
    assert created["polling_url"] == f"{url}/_region/us1/v1/get_result?id={created['id']}"

    queued = (await http.get(created["polling_url"])).json()
    assert (queued["status"], queued["result"], queued["progress"]) == ("Pending", None, None)
    clock.advance(0.55)
    running = (await http.get(created["polling_url"])).json()
    assert running["status"] == "Pending" and 0.4 < running["progress"] < 0.6
    clock.advance(0.5)
    ready = (await http.get(f"{url}/v1/get_result", params={"id": created["id"]})).json()
    assert ready["status"] == "Ready" and ready["result"]["prompt"] == "a fox"
    image = await http.get(ready["result"]["sample"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).format == "PNG"

    stats = sim.stats()
    assert (stats.submissions, stats.status_checks, stats.active, stats.max_submissions_per_input) == (1, 3, 0, 1)


async def test_sample_url_expires_and_cannot_be_forged(start_sim: Callable[..., Awaitable[Started]],
                                                       http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    sim, url = await start_sim(clock=clock, result_ttl=600)
    created = (await http.post(f"{url}/v1/flux-dev", json={"prompt": "x"})).json()
    clock.advance(1.0)
    sample = (await http.get(created["polling_url"])).json()["result"]["sample"]
    assert sample.split("?")[0].endswith(".jpeg")  # flux-dev's default output_format
    async with httpx.AsyncClient() as anonymous:  # delivery URLs need no x-key
        assert (await anonymous.get(sample)).status_code == 200
        forged = sample.replace("se=", "se=9").split("&sig=")[0] + "&sig=" + "0" * 64
        assert (await anonymous.get(forged)).status_code == 403
        clock.advance(600)
        expired = await anonymous.get(sample)
    assert expired.status_code == 403 and b"expiry" in expired.content
    assert (sim.downloads, sim.expired_downloads) == (1, 1)


async def test_failure_and_moderation_statuses(start_sim: Callable[..., Awaitable[Started]],
                                               http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    _sim, url = await start_sim(clock=clock)
    ids = {}
    for prompt in ("[request-moderated] x", "[content-moderated] x", "[error] x"):
        ids[prompt] = (await http.post(f"{url}/v1/flux-pro-1.1", json={"prompt": prompt})).json()["id"]

    def status(prompt: str) -> Any:
        return http.get(f"{url}/v1/get_result", params={"id": ids[prompt]})

    # A refused request is final at once; the others end at their finish.
    assert (await status("[request-moderated] x")).json()["status"] == "Request Moderated"
    assert (await status("[content-moderated] x")).json()["status"] == "Pending"
    clock.advance(1.0)
    moderated = (await status("[content-moderated] x")).json()
    assert moderated["status"] == "Content Moderated" and moderated["result"] is None
    failed = (await status("[error] x")).json()
    assert failed["status"] == "Error" and failed["details"]["message"]

    unknown = await http.get(f"{url}/v1/get_result", params={"id": "nope"})
    assert (unknown.status_code, unknown.json()["status"]) == (200, "Task not found")


async def test_fail_rate_ends_in_error(start_sim: Callable[..., Awaitable[Started]],
                                       http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    sim, url = await start_sim(Knobs(token=KEY, fail_rate=1.0), clock=clock)
    created = (await http.post(f"{url}/v1/flux-pro-1.1", json={"prompt": "y"})).json()
    clock.advance(2)
    body = (await http.get(created["polling_url"])).json()
    assert body["status"] == "Error"
    assert body["details"]["message"] == sim.task_failed_message()


async def test_validation_errors_are_fastapi_shaped(start_sim: Callable[..., Awaitable[Started]],
                                                    http: httpx.AsyncClient) -> None:
    sim, url = await start_sim()
    bad = await http.post(f"{url}/v1/flux-pro-1.1",
                          json={"prompt": "x", "width": 500, "safety_tolerance": 9, "output_format": "gif"})
    assert bad.status_code == 422
    fields = {tuple(item["loc"]) for item in bad.json()["detail"]}
    assert fields == {("body", "width"), ("body", "safety_tolerance"), ("body", "output_format")}
    assert all({"loc", "msg", "type"} <= set(item) for item in bad.json()["detail"])

    kontext = await http.post(f"{url}/v1/flux-kontext-pro", json={"aspect_ratio": "4:1"})
    assert kontext.status_code == 422
    assert {item["loc"][-1] for item in kontext.json()["detail"]} == {"prompt", "aspect_ratio"}
    assert (await http.post(f"{url}/v1/flux-nonexistent", json={})).status_code == 404
    assert sim.stats().submissions == 0


async def test_auth_credits_and_concurrency(start_sim: Callable[..., Awaitable[Started]],
                                            http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    sim, url = await start_sim(Knobs(token=KEY, max_active=2), clock=clock, credits=10.0)
    async with httpx.AsyncClient() as anonymous:
        missing = await anonymous.post(f"{url}/v1/flux-dev", json={"prompt": "x"})
        wrong = await anonymous.post(f"{url}/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "nope"})
    assert (missing.status_code, wrong.status_code) == (403, 401)
    assert missing.json()["detail"] and wrong.json()["detail"]

    assert (await http.get(f"{url}/v1/credits")).json() == {"credits": 10.0}
    first = await http.post(f"{url}/v1/flux-dev", json={"prompt": "1"})
    second = await http.post(f"{url}/v1/flux-dev", json={"prompt": "2"})
    assert (first.status_code, second.status_code) == (200, 200)
    busy = await http.post(f"{url}/v1/flux-dev", json={"prompt": "3"})
    assert busy.status_code == 429 and "active tasks (2)" in busy.json()["detail"]
    clock.advance(2)  # both finish: slots free, but 2 credits are left of 10
    broke = await http.post(f"{url}/v1/flux-dev", json={"prompt": "4"})
    assert broke.status_code == 402 and "credits" in broke.json()["detail"].lower()
    assert sim.stats().submissions == 2


async def test_default_concurrency_is_24() -> None:
    assert BflSimulator().knobs.max_active == 24
    assert BflSimulator(Knobs(max_active=3)).knobs.max_active == 3


async def test_faults_use_bfl_shapes(start_sim: Callable[..., Awaitable[Started]],
                                     http: httpx.AsyncClient) -> None:
    sim, url = await start_sim(Knobs(token=KEY, rate_limit_rate=1.0, retry_after=0.25))
    limited = await http.post(f"{url}/v1/flux-dev", json={"prompt": "x"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "0.25"
    assert isinstance(limited.json()["detail"], str)
    sim.knobs = Knobs(token=KEY, error_5xx_rate=1.0)
    failing = await http.get(f"{url}/v1/get_result", params={"id": "x"})
    assert failing.status_code in (500, 502, 503) and failing.json()["detail"]
    sim.knobs = Knobs(token=KEY, malformed_rate=1.0)
    malformed = await http.post(f"{url}/v1/flux-dev", json={"prompt": "late"})
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.content)
    # A malformed answer is a late fault: the task exists all the same.
    assert sim.stats().submissions == 1


async def test_webhook_echoes_the_secret(start_sim: Callable[..., Awaitable[Started]],
                                         http: httpx.AsyncClient, nursery: trio.Nursery) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = trio.Event()
    receiver = QuartTrio("receiver")

    @receiver.post("/hook")
    async def hook() -> str:
        received.append((dict(request.headers), await request.get_data()))
        arrived.set()
        return "ok"

    hook_url = await nursery.start(serve_simulator, receiver)
    _sim, url = await start_sim(Knobs(token=KEY, duration=0.05))
    created = await http.post(f"{url}/v1/flux-pro-1.1", json={
        "prompt": "hooked", "webhook_url": f"{hook_url}/hook", "webhook_secret": "s3cret"})
    answer = created.json()
    # The spec's AsyncWebhookResponse: id, status, webhook_url.
    assert answer["webhook_url"] == f"{hook_url}/hook" and answer["status"] == "Pending"
    with trio.fail_after(5):
        await arrived.wait()
    headers, body = received[0]
    assert headers["X-Webhook-Secret"] == "s3cret"
    payload = json.loads(body)
    assert payload["id"] == answer["id"] and payload["status"] == "Ready"
    assert payload["result"]["sample"].startswith(url)


def test_cli_registration_and_options() -> None:
    with start_simulator_process("bfl", "--duration", "0.1", "--token", KEY, "--region", "eu",
                                 "--not-found-status", "404") as (_process, url):
        with httpx.Client(headers={"x-key": KEY}, timeout=10) as client:
            created = client.post(f"{url}/v1/flux-pro-1.1", json={"prompt": "cli"}).json()
            assert "/_region/eu/v1/get_result" in created["polling_url"]
            assert client.get(f"{url}/v1/get_result", params={"id": "missing"}).status_code == 404
        stats = fetch_stats(url)
    assert (stats.submissions, stats.status_checks) == (1, 1)
