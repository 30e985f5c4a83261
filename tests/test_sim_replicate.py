"""The Replicate simulator speaks the protocol the official SDK expects.

The SDK-driven tests are what give the simulator its authority: if the real
``replicate`` client can create, poll, cancel, list and page through predictions
against it, the daemon's adapter tested against it is tested against the protocol,
not against our own reading of it. The in-process tests pin down the simulator's
own contract (stats, lifecycle, validation, faults in Replicate's shapes, signed
webhooks) on a fake clock or trio's MockClock, so nothing depends on how fast the
machine is. The shared fault machinery itself is tested in ``test_sim_base.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import trio
from PIL import Image
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.pagination import paginate
from replicate.webhook import Webhooks, WebhookSigningSecret
from trio.testing import MockClock

from actors.clock import wall_now
from tests.fakes import FakeClock, WebhookSink, start_webhook_sink
from tests.simulators.base import (
    Knobs,
    fetch_stats,
    serve_simulator,
    set_knobs,
    start_simulator_process,
)
from tests.simulators.replicate import Prediction, ReplicateSimulator

TOKEN = "r8_simulated_token"
FLUX = "black-forest-labs/flux-schnell"

Started = tuple[ReplicateSimulator, str]


@pytest.fixture(scope="module")
def replicate_process() -> Iterator[str]:
    """One simulator subprocess for the SDK tests, as the daemon tests will run it."""
    with start_simulator_process("replicate", "--duration", "0.4", "--token", TOKEN) as (_process, url):
        yield url


@contextlib.contextmanager
def sdk_client(base_url: str, token: str) -> Iterator[Client]:
    """An official client whose connections are closed afterwards (the SDK has no
    ``close``, so we hand it a transport we own)."""
    transport = httpx.HTTPTransport()
    try:
        # Generous: the simulator subprocess shares a loaded 2-core machine with the
        # suite, and no test here is about the client giving up.
        sdk = Client(api_token=token, base_url=base_url, transport=transport,
                     timeout=httpx.Timeout(120.0))
        sdk.poll_interval = 0.05
        yield sdk
    finally:
        transport.close()


@pytest.fixture
def client(replicate_process: str) -> Iterator[Client]:
    with sdk_client(replicate_process, TOKEN) as sdk:
        yield sdk


@pytest.fixture
async def start_sim(nursery: trio.Nursery) -> Callable[..., Awaitable[Started]]:
    """Factory serving a ``ReplicateSimulator`` in the test's nursery."""

    async def start(**kwargs: Any) -> Started:
        sim = ReplicateSimulator(**kwargs)
        url = await nursery.start(serve_simulator, sim)
        return sim, url

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as session:
        yield session


def is_png(data: bytes) -> bool:
    return Image.open(io.BytesIO(data)).format == "PNG"


# -- the official SDK against the subprocess ------------------------------------------


def test_sdk_creates_waits_and_downloads_outputs(client: Client, replicate_process: str) -> None:
    prediction = client.models.predictions.create(
        model=FLUX, input={"prompt": "a lighthouse", "num_outputs": 2}
    )
    initial_status = prediction.status  # (a copy: mypy would narrow the attribute)
    assert initial_status in ("starting", "processing")
    assert prediction.model == FLUX
    assert (
        prediction.urls is not None
        and prediction.urls["get"] == f"{replicate_process}/v1/predictions/{prediction.id}"
    )

    prediction.wait()

    assert prediction.status == "succeeded"
    assert prediction.error is None
    assert prediction.started_at is not None and prediction.completed_at is not None
    assert prediction.progress is not None and prediction.progress.percentage == 1.0
    assert isinstance(prediction.output, list) and len(prediction.output) == 2
    downloads = [httpx.get(url, timeout=60) for url in prediction.output]
    assert all(response.status_code == 200 and is_png(response.content) for response in downloads)
    assert downloads[0].content != downloads[1].content


def test_sdk_cancel_is_final(client: Client) -> None:
    prediction = client.predictions.create(model=FLUX, input={"prompt": "never mind"})
    prediction.cancel()
    assert prediction.status == "canceled"

    time.sleep(0.5)  # past the 0.4 s duration: a canceled prediction must stay canceled
    prediction.reload()
    assert prediction.status == "canceled"
    assert prediction.output is None
    assert prediction.completed_at is not None


def test_sdk_lists_newest_first_with_exact_input_and_created_at(client: Client) -> None:
    by_version = client.predictions.create(
        version="5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa", input={"prompt": "one"}
    )
    by_deployment = client.deployments.predictions.create(
        deployment="acme/flux", input={"prompt": "two", "seed": 7}
    )

    page = client.predictions.list()

    assert page.previous is None
    newest = page.results[:2]
    assert [p.id for p in newest] == [by_deployment.id, by_version.id]
    for listed, created in zip(newest, [by_deployment, by_version], strict=True):
        assert listed.input == created.input
        assert listed.created_at == created.created_at
    assert by_version.version == "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
    assert by_deployment.model == "acme/flux"


def test_sdk_with_wrong_token_gets_401(replicate_process: str) -> None:
    with sdk_client(replicate_process, "r8_wrong") as intruder, pytest.raises(ReplicateError) as raised:
        intruder.predictions.create(model=FLUX, input={"prompt": "x"})
    assert raised.value.status == 401
    assert raised.value.detail

    anonymous = httpx.get(f"{replicate_process}/v1/predictions", timeout=60)
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"]


# -- in-process: stats ----------------------------------------------------------------


async def test_stats_count_identical_submissions_and_polls(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim, url = await start_sim(clock=clock)
    create = f"{url}/v1/models/{FLUX}/predictions"

    first = (await http.post(create, json={"input": {"prompt": "a", "seed": 1}})).json()
    await http.post(create, json={"input": {"prompt": "b", "seed": 1}})
    assert sim.stats().max_submissions_per_input == 1

    # Same input with keys in another order is the same submission.
    await http.post(create, json={"input": {"seed": 1, "prompt": "a"}})
    for _ in range(3):
        await http.get(f"{url}/v1/predictions/{first['id']}")

    stats = sim.stats()
    assert (stats.submissions, stats.max_submissions_per_input, stats.status_checks) == (3, 2, 3)
    assert stats.active == 3
    clock.advance(sim.knobs.duration)
    assert sim.stats().active == 0

    served = (await http.get(f"{url}/_sim/stats")).json()
    assert served["max_submissions_per_input"] == 2 and served["submissions"] == 3


async def test_same_input_on_another_model_is_a_distinct_submission(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_sim()
    body = {"input": {"prompt": "same"}}
    await http.post(f"{url}/v1/models/{FLUX}/predictions", json=body)
    await http.post(f"{url}/v1/models/black-forest-labs/flux-dev/predictions", json=body)
    assert sim.stats().max_submissions_per_input == 1


# -- in-process: lifecycle on a fake clock ----------------------------------------------


async def test_lifecycle_starting_processing_succeeded(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim, url = await start_sim(knobs=Knobs(duration=10.0), clock=clock)
    created = await http.post(f"{url}/v1/models/{FLUX}/predictions", json={"input": {"prompt": "p"}})
    assert created.status_code == 201
    prediction = created.json()
    assert prediction["status"] == "starting" and prediction["output"] is None
    assert prediction["created_at"].endswith("Z") and len(prediction["created_at"]) == len(
        "2024-01-01T00:00:00.000000Z"
    )
    get_url = prediction["urls"]["get"]

    clock.advance(1.0)  # 10% of the duration
    running = (await http.get(get_url)).json()
    assert running["status"] == "processing" and running["started_at"] is not None
    assert running["completed_at"] is None
    file_url = f"{url}/_sim/files/{prediction['id']}/0.png"
    assert (await http.get(file_url)).status_code == 404  # no output before success

    clock.advance(9.0)
    done = (await http.get(get_url)).json()
    assert done["status"] == "succeeded"
    assert done["output"] == [file_url]
    assert done["created_at"] == prediction["created_at"]
    assert done["metrics"]["predict_time"] == pytest.approx(9.0)
    assert is_png((await http.get(file_url)).content)

    # Canceling a finished prediction changes nothing.
    late_cancel = await http.post(prediction["urls"]["cancel"])
    assert late_cancel.status_code == 200 and late_cancel.json()["status"] == "succeeded"


async def test_cancel_mid_run_freezes_the_prediction(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim, url = await start_sim(knobs=Knobs(duration=10.0), clock=clock)
    prediction = (
        await http.post(f"{url}/v1/models/{FLUX}/predictions", json={"input": {"prompt": "p"}})
    ).json()
    clock.advance(5.0)
    canceled = (await http.post(prediction["urls"]["cancel"])).json()
    clock.advance(100.0)
    later = (await http.get(prediction["urls"]["get"])).json()
    assert canceled["status"] == later["status"] == "canceled"
    assert later["output"] is None
    assert later["completed_at"] == canceled["completed_at"] is not None
    assert sim.stats().active == 0 and sim.stats().cancels == 1


# -- in-process: errors, paging, create latency -------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/predictions", {"input": {"prompt": "no version"}}, 422),
        (f"/v1/models/{FLUX}/predictions", {"prompt": "input missing"}, 422),
        (f"/v1/models/{FLUX}/predictions", {"input": {"num_outputs": 9}}, 422),
        (f"/v1/models/{FLUX}/predictions", {"input": {}, "webhook_events_filter": ["everything"]}, 422),
        (f"/v1/models/{FLUX}/predictions", "not json", 400),
    ],
)
async def test_bad_creates_get_problem_details(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, path: str, body: Any, status: int
) -> None:
    sim, url = await start_sim()
    if isinstance(body, str):
        response = await http.post(url + path, content=body)
    else:
        response = await http.post(url + path, json=body)
    assert response.status_code == status
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    assert sim.stats().submissions == 0


async def test_unknown_prediction_is_404(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    _sim, url = await start_sim()
    assert (await http.get(f"{url}/v1/predictions/doesnotexist")).status_code == 404
    assert (await http.post(f"{url}/v1/predictions/doesnotexist/cancel")).status_code == 404


async def test_webhook_is_accepted_and_stored(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_sim()
    body = {
        "input": {"prompt": "p"},
        "webhook": "http://127.0.0.1:9/hook",
        "webhook_events_filter": ["completed"],
    }
    created = (await http.post(f"{url}/v1/models/{FLUX}/predictions", json=body)).json()
    stored = sim.tasks[created["id"]]
    assert isinstance(stored, Prediction)
    assert stored.webhook == "http://127.0.0.1:9/hook"
    assert stored.webhook_events_filter == ["completed"]


async def test_sdk_pages_through_the_list_newest_first(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    _sim, url = await start_sim(page_size=2)
    ids = []
    for index in range(5):
        created = await http.post(
            f"{url}/v1/models/{FLUX}/predictions", json={"input": {"prompt": f"p{index}"}}
        )
        ids.append(created.json()["id"])

    def list_all() -> list[list[str]]:
        with sdk_client(url, "any") as sdk:
            return [[prediction.id for prediction in page] for page in paginate(sdk.predictions.list)]

    pages = await trio.to_thread.run_sync(list_all)
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]


async def test_prediction_exists_while_its_create_is_still_in_flight(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    """The window a crash-recovery test aims at: the provider has the job, the
    client has no answer yet, and the list endpoint already shows it."""
    sim, url = await start_sim(knobs=Knobs(create_latency=60.0))
    answered = trio.Event()
    body = {"input": {"prompt": "in flight"}}

    async def submit() -> None:
        await http.post(f"{url}/v1/models/{FLUX}/predictions", json=body)
        answered.set()

    async with trio.open_nursery() as submitter:
        submitter.start_soon(submit)
        while sim.stats().submissions == 0:
            await trio.sleep(0.01)
        listed = (await http.get(f"{url}/v1/predictions")).json()["results"]
        assert not answered.is_set()
        assert [p["input"] for p in listed] == [body["input"]]
        submitter.cancel_scope.cancel()  # the "crash": abandon the request


# -- faults in Replicate's shapes ----------------------------------------------------------


def test_sdk_meets_throttling_failures_and_the_webhook_secret() -> None:
    """The official client against a faulty subprocess: 429s on create (which the SDK
    does not retry), the webhook secret route (spared by faults), failed predictions."""
    secret = "whsec_" + base64.b64encode(b"simulated webhook signing key!!").decode()
    args = ("--duration", "0.2", "--rate-limit-rate", "1", "--fault-routes", "create",
            "--retry-after", "3", "--webhook-secret", secret)
    with start_simulator_process("replicate", *args) as (_process, url), sdk_client(url, TOKEN) as sdk:
        with pytest.raises(ReplicateError) as raised:
            sdk.models.predictions.create(model=FLUX, input={"prompt": "x"})
        assert raised.value.status == 429
        assert raised.value.detail == "Request was throttled. Your rate limit resets in ~3s."
        assert sdk.webhooks.default.secret().key == secret

        set_knobs(url, rate_limit_rate=0.0, fail_rate=1.0)
        prediction = sdk.models.predictions.create(model=FLUX, input={"prompt": "x"})
        prediction.wait()
        assert prediction.status == "failed"
        assert prediction.error and "simulated failure" in prediction.error
        assert prediction.output is None

        stats = fetch_stats(url)
        assert stats.faults == {"rate_limit": 1, "task_failed": 1}
        assert (stats.requests["create"], stats.submissions) == (2, 1)


async def test_fault_answers_use_replicate_shapes(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_sim(knobs=Knobs(rate_limit_rate=1.0, retry_after=30))
    create = f"{url}/v1/models/{FLUX}/predictions"
    throttled = await http.post(create, json={"input": {}})
    assert throttled.status_code == 429
    assert throttled.json() == {"detail": "Request was throttled. Your rate limit resets in ~30s."}
    assert throttled.headers["Retry-After"] == "30" and throttled.headers["ratelimit-remaining"] == "0"

    sim.knobs = Knobs(error_5xx_rate=1.0)
    failed = await http.get(f"{url}/v1/predictions")
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.json()["status"] == failed.status_code in (500, 502, 503) and failed.json()["detail"]

    sim.knobs = Knobs(max_active=1, duration=60)
    assert (await http.post(create, json={"input": {"n": 1}})).status_code == 201
    refused = await http.post(create, json={"input": {"n": 2}})
    assert refused.status_code == 429 and refused.json()["status"] == 429
    assert sim.stats().submissions == 1


# -- webhooks -------------------------------------------------------------------------------


@pytest.fixture
async def hooks(nursery: trio.Nursery) -> WebhookSink:
    return await start_webhook_sink(nursery)


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification written out by hand, independently of the
    simulator: HMAC-SHA256 over "id.timestamp.body" keyed with the base64-decoded
    part of the secret after ``whsec_``; any ``v1,<base64>`` entry may match."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(signature), expected):
            return True
    return False


async def test_completed_webhook_is_signed_per_standard_webhooks(
    autojump_clock: MockClock,
    start_sim: Callable[..., Awaitable[Started]],
    http: httpx.AsyncClient,
    hooks: WebhookSink,
) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    sim, url = await start_sim(knobs=Knobs(duration=20.0, webhook_secret=secret), clock=wall_now)
    body = {"input": {"prompt": "p"}, "webhook": hooks.url, "webhook_events_filter": ["completed"]}
    created = (await http.post(f"{url}/v1/models/{FLUX}/predictions", json=body)).json()
    began = trio.current_time()
    await hooks.wait_for(1)
    assert trio.current_time() - began == pytest.approx(20.0, abs=0.5)

    headers, raw = hooks.received[0]
    assert verify_standard_webhook(secret, headers, raw)
    assert not verify_standard_webhook(secret, headers, raw + b" ")
    assert headers["webhook-id"].startswith("msg_")
    assert abs(int(headers["webhook-timestamp"]) - wall_now()) < 5
    # The official SDK's validator agrees.
    Webhooks.validate(headers=headers, body=raw.decode(), secret=WebhookSigningSecret(key=secret))

    prediction = json.loads(raw)
    assert prediction["id"] == created["id"] and prediction["status"] == "succeeded"
    assert prediction["output"] == [f"{url}/_sim/files/{created['id']}/0.png"]
    assert (await http.get(f"{url}/v1/webhooks/default/secret")).json() == {"key": secret}
    assert sim.stats().webhooks_delivered == 1


async def test_webhook_events_follow_the_filter_and_cancels(
    autojump_clock: MockClock,
    start_sim: Callable[..., Awaitable[Started]],
    http: httpx.AsyncClient,
    hooks: WebhookSink,
) -> None:
    sim, url = await start_sim(knobs=Knobs(duration=10.0), clock=wall_now)
    create = f"{url}/v1/models/{FLUX}/predictions"
    both = {"input": {"n": 1}, "webhook": hooks.url, "webhook_events_filter": ["start", "completed"]}
    await http.post(create, json=both)
    await hooks.wait_for(2)
    assert [json.loads(raw)["status"] for _h, raw in hooks.received] == ["processing", "succeeded"]

    # The generated secret is a whsec_ one, and it signs.
    secret = (await http.get(f"{url}/v1/webhooks/default/secret")).json()["key"]
    assert all(verify_standard_webhook(secret, headers, raw) for headers, raw in hooks.received)

    canceled = (await http.post(create, json={"input": {"n": 2}, "webhook": hooks.url})).json()
    await http.post(canceled["urls"]["cancel"])
    await hooks.wait_for(3)
    await trio.sleep(30)
    assert [json.loads(raw)["status"] for _h, raw in hooks.received[2:]] == ["canceled"]
    assert sim.stats().webhooks_delivered == 3
