"""The machinery every provider simulator shares: faults, stats, webhooks, CLI.

Tested through ``ToySimulator``, the smallest simulator there is, so a failure
here is the base's and not a provider's. It doubles as the example of the API a
provider simulator uses: ``add_route`` for every route, ``create_task`` and
``cancel_task`` for tasks, ``webhook_request`` for callbacks.

Time-dependent tests run on trio's MockClock with autojump (the simulator's clock
is ``actors.clock.wall_now``, which follows it), so a 30 s hang or a task that
runs for ten seconds costs no real time.
"""

from __future__ import annotations

import json
import random
import secrets
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
from quart import Response, request
from quart_trio import QuartTrio
from trio.testing import MockClock

from actors.clock import wall_now
from tests.simulators import __main__ as cli
from tests.simulators.base import (
    REQUEST_FAULTS,
    Fault,
    Knobs,
    Phase,
    SimTask,
    Simulator,
    WebhookRequest,
    sample_duration,
    serve_simulator,
)

CREATE_BODY = {"model": "toy", "input": {"prompt": "a lighthouse"}}


@attrs.define(kw_only=True)
class ToyTask(SimTask):
    input: dict[str, Any]


class ToySimulator(Simulator):
    """A minimal provider: create, status, cancel, list, and JSON webhooks."""

    name = "toy"

    def register_routes(self, app: QuartTrio) -> None:
        self.add_route(app, "/v1/tasks", self.create, kind="create", methods=["POST"])
        self.add_route(app, "/v1/tasks", self.list_tasks, kind="list")
        self.add_route(app, "/v1/tasks/<task_id>", self.status, kind="status")
        self.add_route(app, "/v1/tasks/<task_id>/cancel", self.cancel, kind="cancel", methods=["POST"])
        self.add_route(app, "/v1/credits", self.credits, kind="other")

    async def create(self) -> Response:
        body = await request.get_json()
        task = self.create_task(
            ToyTask,
            id=secrets.token_hex(8),
            key=self.submission_key(body["model"], body["input"]),
            input=body["input"],
            webhook=body.get("webhook"),
        )
        await self.create_delay()
        return self.json_response(201, self.render(task))

    async def status(self, task_id: str) -> Response:
        task = self.tasks.get(task_id)
        if task is None:
            return self.error_response(404, "no such task")
        return self.json_response(200, self.render(task))

    async def cancel(self, task_id: str) -> Response:
        task = self.tasks[task_id]
        self.cancel_task(task)
        return self.json_response(200, self.render(task))

    async def list_tasks(self) -> Response:
        return self.json_response(200, [self.render(task) for task in self.tasks.values()])

    async def credits(self) -> dict[str, Any]:
        return {"credits": 100}

    def render(self, task: SimTask) -> dict[str, Any]:
        phase = task.phase(self.clock())
        outputs = [self.file_url(task, 0)] if phase is Phase.SUCCEEDED else []
        return {"id": task.id, "status": phase.value, "error": task.error, "outputs": outputs}

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        assert task.webhook is not None
        body = json.dumps({"event": event, **self.render(task)}).encode()
        return WebhookRequest(task.webhook, body, {"content-type": "application/json"})


Started = tuple[ToySimulator, str]


@pytest.fixture
async def start_toy(nursery: trio.Nursery) -> Callable[..., Awaitable[Started]]:
    """Factory serving a ``ToySimulator`` (clock ``wall_now``) in the test's nursery."""

    async def start(**knobs: Any) -> Started:
        sim = ToySimulator(Knobs(**knobs), clock=wall_now)
        url = await nursery.start(serve_simulator, sim)
        return sim, url

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as session:
        yield session


async def create(http: httpx.AsyncClient, url: str, body: dict[str, Any] = CREATE_BODY) -> httpx.Response:
    return await http.post(f"{url}/v1/tasks", json=body)


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


# -- each fault at rate 1, as an httpx client sees it --------------------------------------


async def test_rate_limit_answers_429_with_retry_after(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(rate_limit_rate=1.0)
    response = await http.get(f"{url}/v1/tasks/x")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["detail"]

    sim.knobs.retry_after = 2.5
    assert (await http.get(f"{url}/v1/tasks/x")).headers["Retry-After"] == "2.5"
    assert sim.stats().faults == {"rate_limit": 2}
    assert sim.stats().status_checks == 2


async def test_server_errors_are_500_502_503(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(error_5xx_rate=1.0, seed=1)
    statuses = [(await http.get(f"{url}/v1/tasks")).status_code for _ in range(30)]
    assert set(statuses) == {500, 502, 503}
    assert sim.stats().faults == {"server_error": 30}


async def test_timeout_hangs_past_the_client_read_timeout(
    autojump_clock: MockClock, start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(timeout_rate=1.0, hang_seconds=30)
    began = trio.current_time()
    with pytest.raises(httpx.ReadTimeout):
        await http.get(f"{url}/v1/tasks", timeout=5)
    assert trio.current_time() - began == pytest.approx(5)

    # A client patient enough gets the real answer, late.
    began = trio.current_time()
    response = await http.get(f"{url}/v1/tasks", timeout=60)
    assert response.status_code == 200 and response.json() == []
    assert trio.current_time() - began == pytest.approx(30)
    assert sim.stats().faults == {"timeout": 2}


async def test_malformed_answers_200_with_a_body_that_is_not_json(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(malformed_rate=1.0)
    for path in ("/v1/tasks", "/v1/tasks/unknown"):
        response = await http.get(url + path)
        assert response.status_code == 200
        assert response.content and not is_json(response.content)
        with pytest.raises(ValueError):
            response.json()
    assert sim.stats().faults == {"malformed": 2}


async def test_reset_drops_the_connection_without_an_answer(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(reset_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await http.get(f"{url}/v1/tasks")
    with pytest.raises(httpx.RemoteProtocolError):
        await create(http, url)
    # The server itself is fine, and so is the next request.
    sim.knobs.reset_rate = 0.0
    assert (await http.get(f"{url}/v1/tasks")).status_code == 200
    assert sim.stats().faults == {"reset": 2}


async def test_reset_is_seen_by_a_blocking_client_too(start_toy: Callable[..., Awaitable[Started]]) -> None:
    _sim, url = await start_toy(reset_rate=1.0)

    def fetch() -> None:
        httpx.get(f"{url}/v1/tasks", timeout=5)

    with pytest.raises(httpx.RemoteProtocolError):
        await trio.to_thread.run_sync(fetch)


async def test_auth_comes_before_faults_and_has_a_default_shape(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(token="secret", rate_limit_rate=1.0)
    anonymous = await http.get(f"{url}/v1/tasks")
    assert anonymous.status_code == 401 and anonymous.json()["detail"]
    wrong = await http.get(f"{url}/v1/tasks", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = await http.get(f"{url}/v1/tasks", headers={"Authorization": "Bearer secret"})
    assert right.status_code == 429
    assert sim.stats().faults == {"rate_limit": 1} and sim.stats().list_calls == 3


async def test_faults_spare_sim_routes_files_and_routes_not_selected(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(rate_limit_rate=1.0, duration=0.0)
    task = sim.create_task(ToyTask, id="t1", key="k", input={})
    assert (await http.get(f"{url}/_sim/files/{task.id}/0.png")).status_code == 200
    assert (await http.get(f"{url}/_sim/stats")).status_code == 200
    assert (await http.get(f"{url}/_sim/knobs")).status_code == 200
    # "other" routes are not faulted unless asked for.
    assert (await http.get(f"{url}/v1/credits")).status_code == 200
    assert (await http.post(f"{url}/_sim/knobs", json={"fault_routes": ["create"]})).status_code == 200
    assert (await http.get(f"{url}/v1/tasks/t1")).status_code == 200
    assert (await create(http, url)).status_code == 429
    assert sim.stats().faults == {"rate_limit": 1}


# -- rates and seeds ------------------------------------------------------------------------


async def test_rates_are_honoured_over_a_thousand_requests(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(rate_limit_rate=0.3, seed=42)
    statuses = [(await http.get(f"{url}/v1/tasks/none")).status_code for _ in range(1000)]
    limited = statuses.count(429)
    assert 250 <= limited <= 350
    assert statuses.count(404) == 1000 - limited
    assert sim.stats().faults == {"rate_limit": limited}


def test_stacked_rates_split_one_draw() -> None:
    rates = {"rate_limit_rate": 0.1, "error_5xx_rate": 0.1, "timeout_rate": 0.1, "malformed_rate": 0.1,
             "reset_rate": 0.1}
    sim = ToySimulator(Knobs(**rates, seed=3))
    drawn = [sim.draw_fault("status") for _ in range(10_000)]
    for fault in REQUEST_FAULTS:
        assert 800 <= drawn.count(fault) <= 1200, fault
    assert 4700 <= drawn.count(None) <= 5300
    assert sim.draw_fault("other") is None  # not in the default fault_routes


def test_the_same_seed_gives_the_same_run() -> None:
    knobs = {"error_5xx_rate": 0.2, "timeout_rate": 0.2, "fail_rate": 0.5, "duration": 5.0,
             "duration_sigma": 0.5, "seed": 7}

    def run() -> tuple[list[Fault | None], list[tuple[float, str | None]]]:
        sim = ToySimulator(Knobs(**knobs))
        faults = [sim.draw_fault("create") for _ in range(200)]
        tasks = [sim.create_task(ToyTask, id=str(n), key=str(n), input={}) for n in range(50)]
        return faults, [(task.duration, task.error) for task in tasks]

    assert run() == run()
    other = ToySimulator(Knobs(**{**knobs, "seed": 8}))
    assert [other.draw_fault("create") for _ in range(200)] != run()[0]


async def test_posting_a_seed_restarts_the_random_streams(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(rate_limit_rate=0.5)
    await http.post(f"{url}/_sim/knobs", json={"seed": 11})
    first = [(await http.get(f"{url}/v1/tasks")).status_code for _ in range(20)]
    await http.post(f"{url}/_sim/knobs", json={"seed": 11})
    again = [(await http.get(f"{url}/v1/tasks")).status_code for _ in range(20)]
    assert first == again and 429 in first and 200 in first


@pytest.mark.parametrize(
    "changes",
    [
        {"rate_limit_rate": 0.6, "reset_rate": 0.6},  # stacked rates above 1
        {"fail_rate": 1.5},
        {"fault_routes": ["create", "downloads"]},
        {"late_faults": ["rate_limit", "gremlins"]},
        {"max_active": 0},
        {"unknown_knob": 1},
    ],
)
async def test_bad_knobs_are_refused(
    start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, changes: dict[str, Any]
) -> None:
    sim, url = await start_toy()
    before = sim.knobs
    response = await http.post(f"{url}/_sim/knobs", json=changes)
    assert response.status_code == 422 and response.json()["detail"]
    assert sim.knobs == before


# -- exactly-once accounting ------------------------------------------------------------------

CLIENT_SEES = {
    Fault.RATE_LIMIT: 429,
    Fault.SERVER_ERROR: "5xx",
    Fault.TIMEOUT: httpx.ReadTimeout,
    Fault.MALFORMED: "not json",
    Fault.RESET: httpx.RemoteProtocolError,
}


async def post_and_classify(http: httpx.AsyncClient, url: str) -> Any:
    """What the client made of one create: a status, "5xx", "not json" or an exception class."""
    try:
        response = await http.post(f"{url}/v1/tasks", json=CREATE_BODY, timeout=2)
    except httpx.HTTPError as exc:
        return type(exc)
    if response.status_code >= 500:
        return "5xx"
    if response.status_code == 200 and not is_json(response.content):
        return "not json"
    return response.status_code


@pytest.mark.parametrize(
    ("fault", "recorded"),
    [
        # The provider refused: nothing recorded, a retry is safe.
        (Fault.RATE_LIMIT, 0),
        (Fault.SERVER_ERROR, 0),
        # The provider accepted but the answer never arrived usable: a blind retry
        # submits the same input twice, which max_submissions_per_input exposes.
        (Fault.TIMEOUT, 2),
        (Fault.MALFORMED, 2),
        (Fault.RESET, 2),
    ],
)
async def test_which_faulted_creates_are_recorded(
    autojump_clock: MockClock,
    start_toy: Callable[..., Awaitable[Started]],
    http: httpx.AsyncClient,
    fault: Fault,
    recorded: int,
) -> None:
    sim, url = await start_toy(**{knob_of(fault): 1.0}, hang_seconds=30)
    for _ in range(2):  # a client retrying blindly
        assert await post_and_classify(http, url) == CLIENT_SEES[fault]
    stats = sim.stats()
    assert stats.requests["create"] == 2
    assert (stats.submissions, stats.tasks, stats.max_submissions_per_input) == (recorded, recorded, recorded)
    assert stats.faults == {fault.value: 2}


async def test_late_faults_are_configurable(
    autojump_clock: MockClock, start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    # A gateway 502 after the backend took the job; a request lost before it arrived.
    sim, url = await start_toy(error_5xx_rate=1.0, late_faults=["server_error"])
    assert await post_and_classify(http, url) == "5xx"
    assert sim.stats().submissions == 1

    sim.knobs = Knobs(timeout_rate=1.0, late_faults=[], hang_seconds=30)
    assert await post_and_classify(http, url) is httpx.ReadTimeout
    late = await http.post(f"{url}/v1/tasks", json=CREATE_BODY, timeout=60)
    assert late.status_code == 504  # the hang ends in a gateway timeout, not a task
    assert sim.stats().submissions == 1


def knob_of(fault: Fault) -> str:
    return {
        Fault.RATE_LIMIT: "rate_limit_rate",
        Fault.SERVER_ERROR: "error_5xx_rate",
        Fault.TIMEOUT: "timeout_rate",
        Fault.MALFORMED: "malformed_rate",
        Fault.RESET: "reset_rate",
    }[fault]


async def test_max_active_refuses_creates_until_a_task_ends(
    autojump_clock: MockClock, start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(max_active=2, duration=10.0)
    first = (await create(http, url, {"model": "toy", "input": {"n": 1}})).json()
    assert (await create(http, url, {"model": "toy", "input": {"n": 2}})).status_code == 201
    refused = await create(http, url, {"model": "toy", "input": {"n": 3}})
    assert refused.status_code == 429 and refused.json()["detail"]
    assert sim.stats().submissions == 2 and sim.stats().faults == {"too_many_active": 1}

    await http.post(f"{url}/v1/tasks/{first['id']}/cancel")  # a cancel frees a slot
    assert (await create(http, url, {"model": "toy", "input": {"n": 3}})).status_code == 201
    assert (await create(http, url, {"model": "toy", "input": {"n": 4}})).status_code == 429
    await trio.sleep(10)  # the others finish
    assert (await create(http, url, {"model": "toy", "input": {"n": 4}})).status_code == 201
    assert sim.stats().active == 1


async def test_the_most_tasks_active_at_once_is_kept_after_they_end(
    autojump_clock: MockClock, start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(duration=10.0)
    first = (await create(http, url, {"model": "toy", "input": {"n": 1}})).json()
    await create(http, url, {"model": "toy", "input": {"n": 2}})
    await trio.sleep(5)
    await create(http, url, {"model": "toy", "input": {"n": 3}})  # three at once
    await http.post(f"{url}/v1/tasks/{first['id']}/cancel")
    await create(http, url, {"model": "toy", "input": {"n": 4}})  # three again, not four
    assert (sim.stats().active, sim.stats().max_active_seen) == (3, 3)
    await trio.sleep(20)  # every task ends; one more runs alone
    await create(http, url, {"model": "toy", "input": {"n": 5}})
    stats = (await http.get(f"{url}/_sim/stats")).json()
    assert (stats["active"], stats["max_active_seen"]) == (1, 3)


# -- task failures and durations ------------------------------------------------------------------


async def test_fail_rate_ends_tasks_failed_with_the_provider_message(
    autojump_clock: MockClock, start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(fail_rate=1.0, duration=3.0)
    task = (await create(http, url)).json()
    assert task["status"] == "queued" and task["error"] == sim.task_failed_message()
    await trio.sleep(3)
    done = (await http.get(f"{url}/v1/tasks/{task['id']}")).json()
    assert done["status"] == "failed" and done["outputs"] == []
    assert sim.stats().faults == {"task_failed": 1}


def test_fail_rate_is_roughly_honoured() -> None:
    sim = ToySimulator(Knobs(fail_rate=0.3, seed=5))
    tasks = [sim.create_task(ToyTask, id=str(n), key=str(n), input={}) for n in range(1000)]
    failed = sum(task.error is not None for task in tasks)
    assert 250 <= failed <= 350 and sim.faults["task_failed"] == failed


def test_lognormal_durations_have_the_requested_median() -> None:
    rng = random.Random(1)
    samples = [sample_duration(rng, 5.0, 0.8) for _ in range(2000)]
    assert statistics.median(samples) == pytest.approx(5.0, rel=0.10)
    assert min(samples) > 0 and max(samples) > 2 * 5.0  # actually spread out

    state = rng.getstate()
    assert sample_duration(rng, 5.0, 0.0) == 5.0
    assert rng.getstate() == state  # sigma 0 draws nothing


def test_task_durations_follow_the_knobs() -> None:
    spread = ToySimulator(Knobs(duration=4.0, duration_sigma=0.5, seed=2))
    durations = [spread.create_task(ToyTask, id=str(n), key="k", input={}).duration for n in range(200)]
    assert len(set(durations)) == 200
    fixed = ToySimulator(Knobs(duration=4.0))
    assert fixed.create_task(ToyTask, id="a", key="k", input={}).duration == 4.0


# -- webhooks ------------------------------------------------------------------------------------


@attrs.define
class Receiver:
    """A webhook endpoint: records deliveries, fails the first ``fail_first``."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes, float]] = attrs.field(factory=list)
    attempts: int = 0
    fail_first: int = 0
    arrived: trio.Event = attrs.field(factory=trio.Event)

    def app(self) -> QuartTrio:
        app = QuartTrio("receiver")

        @app.post("/hook")
        async def hook() -> tuple[str, int]:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                return "not now", 503
            headers = {key.lower(): value for key, value in request.headers.items()}
            self.received.append((headers, await request.get_data(), trio.current_time()))
            self.arrived.set()
            self.arrived = trio.Event()
            return "", 204

        return app


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    hooks = Receiver()
    hooks.url = await nursery.start(serve_simulator, hooks.app()) + "/hook"
    return hooks


async def test_webhook_is_delivered_when_the_task_finishes(
    autojump_clock: MockClock,
    start_toy: Callable[..., Awaitable[Started]],
    http: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    sim, url = await start_toy(duration=10.0)
    began = trio.current_time()
    task = (await create(http, url, {**CREATE_BODY, "webhook": receiver.url})).json()
    await receiver.arrived.wait()

    headers, body, at = receiver.received[0]
    assert at - began == pytest.approx(10.0, abs=0.1)
    delivered = json.loads(body)
    assert delivered["event"] == "completed" and delivered["id"] == task["id"]
    assert delivered["status"] == "succeeded"
    # Absolute URLs in a webhook body work outside any request.
    assert delivered["outputs"] == [f"{url}/_sim/files/{task['id']}/0.png"]
    assert (await http.get(delivered["outputs"][0])).status_code == 200
    assert headers["content-type"] == "application/json"
    assert sim.stats().webhooks_delivered == 1


async def test_webhook_is_retried_then_delivered_once(
    autojump_clock: MockClock,
    start_toy: Callable[..., Awaitable[Started]],
    http: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    receiver.fail_first = 1
    sim, url = await start_toy(duration=1.0)
    await create(http, url, {**CREATE_BODY, "webhook": receiver.url})
    await receiver.arrived.wait()
    await trio.sleep(60)
    assert receiver.attempts == 2 and len(receiver.received) == 1
    assert (sim.stats().webhooks_delivered, sim.stats().webhooks_failed) == (1, 0)


async def test_cancel_sends_the_webhook_at_once_and_only_once(
    autojump_clock: MockClock,
    start_toy: Callable[..., Awaitable[Started]],
    http: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    _sim, url = await start_toy(duration=100.0)
    task = (await create(http, url, {**CREATE_BODY, "webhook": receiver.url})).json()
    await trio.sleep(5)
    began = trio.current_time()
    await http.post(f"{url}/v1/tasks/{task['id']}/cancel")
    await receiver.arrived.wait()
    assert trio.current_time() - began < 1
    await trio.sleep(200)  # past the task's would-be finish
    assert [json.loads(body)["status"] for _h, body, _t in receiver.received] == ["canceled"]


async def test_undeliverable_webhook_is_given_up_after_the_attempts(
    autojump_clock: MockClock, start_toy: Callable[..., Awaitable[Started]], http: httpx.AsyncClient
) -> None:
    sim, url = await start_toy(duration=1.0)
    receiver = trio.socket.socket()  # bound, never listening: connection refused
    await receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    try:
        await create(http, url, {**CREATE_BODY, "webhook": f"http://127.0.0.1:{port}/hook"})
        await trio.sleep(30)
    finally:
        receiver.close()
    assert (sim.stats().webhooks_delivered, sim.stats().webhooks_failed) == (0, 1)


async def test_webhook_waits_for_a_hand_stepped_clock() -> None:
    """With a clock that trio does not drive, ``time_moved`` wakes the scheduler."""
    now = [1_700_000_000.0]
    sim = ToySimulator(Knobs(duration=50.0), clock=lambda: now[0])
    woke = trio.Event()

    async def waiter() -> None:
        await sim.sleep_until(now[0] + 50)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.05)
        assert not woke.is_set()
        now[0] += 50
        sim.time_moved()
        with trio.fail_after(1):
            await woke.wait()


def test_scheduling_a_webhook_needs_a_served_simulator() -> None:
    sim = ToySimulator()
    with pytest.raises(RuntimeError, match="not being served"):
        sim.create_task(ToyTask, id="a", key="k", input={}, webhook="http://127.0.0.1:9/")


# -- command line ------------------------------------------------------------------------------


def test_cli_maps_every_knob_and_simulator_options() -> None:
    args, sim = cli.make_simulator([
        "replicate", "--port", "0", "--fail-rate", "0.25", "--rate-limit-rate", "0.1", "--retry-after", "3",
        "--error-5xx-rate", "0.1", "--timeout-rate", "0.1", "--hang-seconds", "9", "--malformed-rate", "0.1",
        "--reset-rate", "0.1", "--max-active", "4", "--duration", "2", "--duration-sigma", "0.3",
        "--seed", "12", "--fault-routes", "create,status", "--late-faults", "timeout",
        "--webhook-secret", "whsec_c2VjcmV0", "--page-size", "7",
    ])
    assert args.port == 0
    assert sim.knobs == Knobs(
        fail_rate=0.25, rate_limit_rate=0.1, retry_after=3, error_5xx_rate=0.1, timeout_rate=0.1,
        hang_seconds=9, malformed_rate=0.1, reset_rate=0.1, max_active=4, duration=2, duration_sigma=0.3,
        seed=12, fault_routes=("create", "status"), late_faults=("timeout",), webhook_secret="whsec_c2VjcmV0",
    )
    assert sim.page_size == 7  # type: ignore[attr-defined]
    assert cli.make_simulator(["replicate", "--port", "0"])[1].knobs == Knobs()


def test_cli_help_lists_every_simulator_without_importing_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for name in ("replicate", "bfl", "kling", "pollo", "openai", "fal"):
        assert name in shown
    assert "--reset-rate" in shown and "--page-size" not in shown

    with pytest.raises(SystemExit):
        cli.parse_args(["replicate", "--help"])
    assert "--page-size" in capsys.readouterr().out


def test_cli_reports_a_registered_simulator_that_does_not_exist_yet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(cli.SIMULATORS, "ghost", "tests.simulators.ghost:GhostSimulator")
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["ghost", "--port", "0"])
    assert exited.value.code == 2
    assert "does not exist yet" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["replicate", "bfl", "kling", "pollo", "openai", "fal"])
def test_every_registered_simulator_loads(name: str) -> None:
    assert issubclass(cli.load_simulator(name), Simulator)


def test_cli_registry_follows_the_naming_convention() -> None:
    assert set(cli.SIMULATORS) == {"replicate", "bfl", "kling", "pollo", "openai", "fal"}
    for name, target in cli.SIMULATORS.items():
        assert target == f"tests.simulators.{name}:{name.capitalize()}Simulator"


@pytest.mark.parametrize("option", [["--fail-rate", "2"], ["--late-faults", "nonsense"],
                                    ["--webhook-secret", "not-whsec"]])
def test_cli_rejects_bad_values_as_usage_errors(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.make_simulator(["replicate", "--port", "0", *option])
    assert exited.value.code == 2
