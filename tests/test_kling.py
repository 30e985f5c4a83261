"""Kling: the simulator's protocol, the adapter against it over loopback, and one
daemon run end to end (official JWT auth and the Tu-zi bearer reseller).

Time is a hand-stepped clock shared by the simulator and the adapter's JWT signer,
so task phases and token expiry are exact and nothing sleeps.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from actors.catalog import MediaKind, ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.providers import kling, make_adapter
from actors.providers.base import (
    JobRequest,
    LookupPage,
    ProviderSettings,
    Submitted,
    TaskState,
    WebhookEvent,
)
from actors.providers.kling import JwtSigner, KlingAdapter, KlingSettings, encode_jwt
from tests.conftest import free_port, write_config
from tests.fakes import FakeClock
from tests.images import PNG_URI as IMAGE_URI
from tests.process import DaemonProcess, wait_all_terminal
from tests.simulators.base import Knobs, fetch_stats, serve_simulator, start_simulator_process
from tests.simulators.kling import KlingSimulator, jwt_problem

ACCESS = "ak_simulated"
SECRET = "sk_simulated_secret"
TUZI_KEY = "tuzi-simulated-key"
MODEL = "kling-v2-1-master"
PNG_URI = IMAGE_URI


Started = tuple[KlingSimulator, str]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_sim(nursery: trio.Nursery, clock: FakeClock) -> Callable[..., Awaitable[Started]]:
    async def start(**kwargs: Any) -> Started:
        kwargs.setdefault("access_key", ACCESS)
        kwargs.setdefault("secret_key", SECRET)
        kwargs.setdefault("clock", clock)
        sim = KlingSimulator(**kwargs)
        url = await nursery.start(serve_simulator, sim)
        return sim, url

    return start


@pytest.fixture
async def adapters(clock: FakeClock) -> AsyncIterator[Callable[..., KlingAdapter]]:
    made: list[KlingAdapter] = []

    def make(base_url: str, **settings: Any) -> KlingAdapter:
        settings.setdefault("access_key", ACCESS)
        settings.setdefault("secret_key", SECRET)
        adapter = KlingAdapter(KlingSettings(base_url=base_url, **settings), "kling", clock=clock)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as session:
        yield session


def job(prompt: str = "a fox in the snow", *, job_id: str = "gen_0001", images: tuple[str, ...] = (),
        parameters: dict[str, Any] | None = None, callback_url: str | None = None,
        submitting_at: float = 0.0, outputs: int = 1) -> JobRequest:
    spec = ModelSpec(provider="kling", provider_model=MODEL, kind=MediaKind.VIDEO)
    return JobRequest(job_id=job_id, model="kling-v2-1-master", spec=spec, prompt=prompt,
                      number_of_outputs=outputs, input_images=images, parameters=parameters or {},
                      callback_url=callback_url, submitting_at=submitting_at)


def jwt(clock: FakeClock, secret: str = SECRET, access: str = ACCESS) -> dict[str, str]:
    return {"Authorization": f"Bearer {encode_jwt(access, secret, clock())}"}


# -- JWT -------------------------------------------------------------------------------


def test_jwt_is_hs256_over_iss_exp_nbf() -> None:
    token = encode_jwt(ACCESS, SECRET, 1000.0)
    header, payload, _ = token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    assert decode(header) == {"alg": "HS256", "typ": "JWT"}
    assert decode(payload) == {"iss": ACCESS, "exp": 2800, "nbf": 995}
    assert jwt_problem(token, ACCESS, SECRET, 1000.0) is None
    assert jwt_problem(token, ACCESS, "other secret", 1000.0) == (1002, "Authorization is invalid: bad signature")
    assert jwt_problem(token, "other ak", SECRET, 1000.0)[0] == 1002  # type: ignore[index]
    assert jwt_problem(token, ACCESS, SECRET, 990.0)[0] == 1003  # type: ignore[index]
    assert jwt_problem(token, ACCESS, SECRET, 2800.0)[0] == 1004  # type: ignore[index]


def test_signer_reuses_the_token_then_refreshes_before_expiry(clock: FakeClock) -> None:
    signer = JwtSigner(ACCESS, SECRET, clock)
    first = signer.token()
    clock.advance(1800 - kling.TOKEN_REFRESH_MARGIN - 1)
    assert signer.token() == first
    clock.advance(2)
    second = signer.token()
    assert second != first
    assert jwt_problem(second, ACCESS, SECRET, clock() + 1700) is None


async def test_adapter_refreshes_its_jwt_against_the_simulator(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter], clock: FakeClock
) -> None:
    sim, url = await start_sim()
    adapter = adapters(url)
    handle = (await adapter.submit(job())).task_id
    first = adapter.authorization()
    clock.advance(1850)  # the first token has expired: only a fresh one gets through
    assert (await adapter.check(handle)).state is TaskState.SUCCEEDED
    assert adapter.authorization() != first
    assert jwt_problem(first.split()[1], ACCESS, SECRET, clock())[0] == 1004  # type: ignore[index]


# -- the simulator's protocol ------------------------------------------------------------


async def test_sim_lifecycle_envelope_and_video_file(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sim, url = await start_sim(knobs=Knobs(duration=10.0))
    body = {"model_name": MODEL, "prompt": "a boat", "duration": "5", "mode": "pro",
            "external_task_id": "ext-1"}
    created = await http.post(f"{url}/v1/videos/text2video", json=body, headers=jwt(clock))
    assert created.status_code == 200
    envelope = created.json()
    assert envelope["code"] == 0 and envelope["message"] == "SUCCEED" and envelope["request_id"]
    data = envelope["data"]
    assert data["task_status"] == "submitted" and data["task_id"].isdigit()
    assert data["task_info"] == {"external_task_id": "ext-1"}
    assert data["created_at"] == int(clock() * 1000)
    query = f"{url}/v1/videos/text2video/{data['task_id']}"

    clock.advance(1.0)
    running = (await http.get(query, headers=jwt(clock))).json()["data"]
    assert running["task_status"] == "processing" and running["task_result"]["videos"] == []

    clock.advance(9.0)
    done = (await http.get(query, headers=jwt(clock))).json()["data"]
    assert done["task_status"] == "succeed"
    [video] = done["task_result"]["videos"]
    assert video["duration"] == "5"
    download = await http.get(video["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    assert download.content[4:8] == b"ftyp"

    # A task is found only under the endpoint that made it.
    wrong = await http.get(f"{url}/v1/videos/image2video/{data['task_id']}", headers=jwt(clock))
    assert wrong.status_code == 404 and wrong.json()["code"] == 1203

    stats = (await http.get(f"{url}/_sim/stats")).json()
    assert stats["submissions"] == 1 and stats["status_checks"] == 3
    assert stats["max_submissions_per_input"] == 1 and stats["active"] == 0


async def test_sim_list_is_newest_first_and_paged_under_both_prefixes(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sim, url = await start_sim()
    ids = []
    for index in range(3):
        prefix = "/kling" if index % 2 else ""
        created = await http.post(f"{url}{prefix}/v1/videos/text2video", json={"prompt": f"p{index}"},
                                  headers=jwt(clock))
        ids.append(created.json()["data"]["task_id"])
    await http.post(f"{url}/v1/videos/image2video", json={"image": "https://x/y.png"}, headers=jwt(clock))
    page1 = (await http.get(f"{url}/kling/v1/videos/text2video",
                            params={"pageNum": 1, "pageSize": 2}, headers=jwt(clock))).json()["data"]
    page2 = (await http.get(f"{url}/v1/videos/text2video",
                            params={"pageNum": 2, "pageSize": 2}, headers=jwt(clock))).json()["data"]
    assert [t["task_id"] for t in page1 + page2] == ids[::-1]
    bad = await http.get(f"{url}/v1/videos/text2video", params={"pageSize": 501}, headers=jwt(clock))
    assert bad.status_code == 400 and bad.json()["code"] == 1201
    assert sim.stats().list_calls == 3


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 1001),
        ({"Authorization": "Bearer not.a.jwt"}, 1002),
        ("wrong-secret", 1002),
        ("expired", 1004),
    ],
)
async def test_sim_rejects_bad_jwts_with_kling_codes(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, clock: FakeClock,
    headers: Any, code: int,
) -> None:
    sim, url = await start_sim()
    if headers == "wrong-secret":
        headers = jwt(clock, secret="nope")
    elif headers == "expired":
        headers = jwt(clock)
        clock.advance(1800)
    response = await http.post(f"{url}/v1/videos/text2video", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == code
    assert sim.stats().submissions == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "x", "duration": 5}, 400, 1201),
        ({"prompt": "x", "model_name": "kling-v9"}, 404, 1203),
        ({"prompt": "sim:blocked"}, 400, 1301),
        ({"prompt": "x", "aspect_ratio": "4:3"}, 400, 1201),
        ("not json", 400, 1200),
    ],
)
async def test_sim_refuses_bad_creates_in_its_envelope(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, clock: FakeClock,
    body: Any, status: int, code: int,
) -> None:
    sim, url = await start_sim(secret_key=None)
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    response = await http.post(f"{url}/v1/videos/text2video", headers={"Authorization": "Bearer x"}, **kwargs)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert sim.stats().submissions == 0


async def test_sim_image2video_rejects_a_data_uri_and_duplicate_external_ids(
    start_sim: Callable[..., Awaitable[Started]], http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sim, url = await start_sim()
    create = f"{url}/v1/videos/image2video"
    refused = await http.post(create, json={"image": PNG_URI}, headers=jwt(clock))
    assert refused.json()["code"] == 1201
    not_an_image = await http.post(create, json={"image": "aGVsbG8="}, headers=jwt(clock))
    assert not_an_image.json()["code"] == 1201  # base64, but of no image
    body = {"image": PNG_URI.partition(",")[2], "external_task_id": "same"}
    assert (await http.post(create, json=body, headers=jwt(clock))).json()["code"] == 0
    duplicate = await http.post(create, json={**body, "prompt": "other"}, headers=jwt(clock))
    assert duplicate.status_code == 400 and "already exists" in duplicate.json()["message"]
    assert sim.stats().submissions == 1


async def test_sim_sends_unsigned_callbacks_on_each_change(
    start_sim: Callable[..., Awaitable[Started]], nursery: trio.Nursery, http: httpx.AsyncClient,
    adapters: Callable[..., KlingAdapter],
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    got_two = trio.Event()
    receiver = QuartTrio("receiver")

    @receiver.post("/hook")
    async def hook() -> str:
        received.append((dict(request.headers), await request.get_data()))
        if len(received) == 2:
            got_two.set()
        return "ok"

    hook_url = await nursery.start(serve_simulator, receiver)
    # Real time here: callbacks go out when the simulator's clock reaches them.
    sim, url = await start_sim(clock=time.time, knobs=Knobs(duration=0.2))
    adapter = adapters(url)
    adapter.signer.clock = time.time
    handle = (await adapter.submit(job(callback_url=f"{hook_url}/hook"))).task_id
    with trio.fail_after(10):
        await got_two.wait()
    statuses = [json.loads(body)["task_status"] for _, body in received]
    assert statuses == ["processing", "succeed"]
    headers, body = received[-1]
    assert not any("signature" in name.lower() for name in headers)
    event = adapter.parse_webhook(headers, body)
    assert event == WebhookEvent(handle.split()[0], None)


# -- the adapter: submit, check, lookup ----------------------------------------------------


async def test_text2video_submit_and_check(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter], clock: FakeClock
) -> None:
    sim, url = await start_sim(knobs=Knobs(duration=10.0))
    adapter = adapters(url)
    params = {"duration": 10, "mode": "pro", "aspect_ratio": "9:16", "negative_prompt": "blur",
              "cfg_scale": 0.4}
    submitted = await adapter.submit(job(parameters=params, callback_url="https://easel.example/hook"))
    assert isinstance(submitted, Submitted)
    task_id, endpoint = submitted.task_id.split()
    assert endpoint == "text2video"
    task = sim.tasks[task_id]
    assert task.model_name == MODEL and task.external_task_id == "gen_0001"  # type: ignore[attr-defined]
    assert task.duration_field == "10" and task.webhook == "https://easel.example/hook"  # type: ignore[attr-defined]

    assert (await adapter.check(submitted.task_id)).state is TaskState.RUNNING
    clock.advance(10)
    status = await adapter.check(submitted.task_id)
    assert status.state is TaskState.SUCCEEDED
    assert status.outputs == (f"{url}/_sim/videos/{task_id}/0.mp4",)


async def test_image2video_sends_bare_base64_and_keeps_the_endpoint_in_the_handle(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter], clock: FakeClock
) -> None:
    sim, url = await start_sim(knobs=Knobs(duration=1.0))
    adapter = adapters(url)
    submitted = await adapter.submit(job(images=(PNG_URI,), parameters={"aspect_ratio": "1:1"}))
    task_id, endpoint = submitted.task_id.split()
    assert endpoint == "image2video" and sim.tasks[task_id].endpoint == "image2video"  # type: ignore[attr-defined]
    clock.advance(1)
    assert (await adapter.check(submitted.task_id)).state is TaskState.SUCCEEDED
    body = kling.create_body(job(images=(PNG_URI, "https://x/last.png"), parameters={"aspect_ratio": "1:1"}))
    assert body["image"] == PNG_URI.split(",", 1)[1] and body["image_tail"] == "https://x/last.png"
    assert "aspect_ratio" not in body


async def test_task_failures_map_to_task_failed_or_moderated(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter], clock: FakeClock
) -> None:
    sim, url = await start_sim(knobs=Knobs(duration=1.0))
    adapter = adapters(url)
    risky = await adapter.submit(job("a sim:risky scene", job_id="gen_r"))
    sim.knobs = Knobs(duration=1.0, fail_rate=1.0)
    plain = await adapter.submit(job("a calm scene", job_id="gen_p"))
    clock.advance(1)
    moderated = await adapter.check(risky.task_id)
    failed = await adapter.check(plain.task_id)
    assert moderated.state is failed.state is TaskState.FAILED
    assert moderated.error.code is ErrorCode.CONTENT_MODERATED and "risk control" in moderated.error.message
    assert failed.error.code is ErrorCode.TASK_FAILED and "simulated failure" in failed.error.message


async def test_lookup_pages_search_by_external_task_id(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter],
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, url = await start_sim()
    adapter = adapters(url)
    monkeypatch.setattr(kling, "LOOKUP_PAGE_SIZE", 1)  # make it page
    lost = job("lost answer", job_id="gen_lost", submitting_at=clock())
    handle = (await adapter.submit(lost)).task_id
    for index in range(2):
        await adapter.submit(job(f"later {index}", job_id=f"gen_later{index}"))
    before = sim.stats().list_calls
    # Newest first: two later tasks, then the lost one; each call is one request.
    assert await adapter.lookup_page(lost, None) == LookupPage((), "2")
    assert await adapter.lookup_page(lost, "2") == LookupPage((), "3")
    assert await adapter.lookup_page(lost, "3") == LookupPage((handle,), "4")
    assert await adapter.lookup_page(lost, "4") == LookupPage((), None)  # a short page ends it
    assert sim.stats().list_calls - before == 4
    never = job("never sent", job_id="gen_never", submitting_at=clock())
    assert (await adapter.lookup_page(never, "3")).matches == ()
    i2v = job(images=("https://x/a.png",), job_id="gen_i2v", submitting_at=clock())
    assert await adapter.lookup_page(i2v, None) == LookupPage((), None)  # image2video is its own list
    handle_i2v = (await adapter.submit(i2v)).task_id
    assert await adapter.lookup_page(i2v, None) == LookupPage((handle_i2v,), "2")


async def test_lookup_ends_at_tasks_older_than_the_skew(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter],
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, url = await start_sim()
    adapter = adapters(url)
    monkeypatch.setattr(kling, "LOOKUP_PAGE_SIZE", 1)
    await adapter.submit(job("long ago", job_id="gen_old"))
    clock.advance(kling.LOOKUP_SKEW + 1)
    lost = job("lost answer", job_id="gen_lost", submitting_at=clock())
    await adapter.submit(job("other", job_id="gen_other"))
    assert await adapter.lookup_page(lost, None) == LookupPage((), "2")
    assert await adapter.lookup_page(lost, "2") == LookupPage((), None)  # older than its reach


async def test_cancel_is_a_no_op(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter]
) -> None:
    sim, url = await start_sim()
    adapter = adapters(url)
    handle = (await adapter.submit(job())).task_id
    requests = dict(sim.stats().requests)
    await adapter.cancel(handle)
    assert sim.stats().requests == requests


async def test_make_adapter_finds_kling_by_name() -> None:
    adapter = make_adapter("kling", ProviderSettings(base_url="http://127.0.0.1:9"), "tuzi-kling")
    try:
        assert isinstance(adapter, KlingAdapter) and adapter.name == "tuzi-kling"
    finally:
        await adapter.aclose()


# -- the adapter: errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, 1000, ErrorCode.AUTHENTICATION_FAILED),
        (401, 1004, ErrorCode.AUTHENTICATION_FAILED),
        (429, 1100, ErrorCode.AUTHENTICATION_FAILED),
        (429, 1101, ErrorCode.QUOTA_EXCEEDED),
        (429, 1102, ErrorCode.QUOTA_EXCEEDED),
        (403, 1103, ErrorCode.AUTHENTICATION_FAILED),
        (400, 1200, ErrorCode.INVALID_PARAMETERS),
        (400, 1201, ErrorCode.INVALID_PARAMETERS),
        (404, 1202, ErrorCode.INVALID_REQUEST),
        (404, 1203, ErrorCode.INVALID_PARAMETERS),
        (400, 1300, ErrorCode.CONTENT_MODERATED),
        (400, 1301, ErrorCode.CONTENT_MODERATED),
        (429, 1302, ErrorCode.RATE_LIMITED),
        (429, 1303, ErrorCode.RATE_LIMITED),
        (429, 1304, ErrorCode.AUTHENTICATION_FAILED),
        (500, 5000, ErrorCode.PROVIDER_ERROR),
        (503, 5001, ErrorCode.PROVIDER_UNAVAILABLE),
        (504, 5002, ErrorCode.PROVIDER_TIMEOUT),
        (200, 1201, ErrorCode.INVALID_PARAMETERS),  # an error code in a 200 envelope
    ],
)
async def test_every_documented_error_code_maps(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter],
    status: int, code: int, expected: ErrorCode,
) -> None:
    sim, url = await start_sim()
    sim.forced_errors.append((status, code, f"simulated {code} Bearer abc.def.ghi"))
    with pytest.raises(EaselError) as raised:
        await adapters(url).submit(job())
    error = raised.value
    assert error.code is expected
    assert error.info.details["providerCode"] == code and error.info.details["status"] == status
    assert "abc.def.ghi" not in json.dumps(error.info.details) and "***" in error.info.details["body"]
    if expected is ErrorCode.RATE_LIMITED:
        assert error.sent is False and error.retry_after is not None and error.retry_after >= 1.0
    else:
        assert error.sent is True


async def test_quota_and_concurrency_refusals_from_the_simulator(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter]
) -> None:
    sim, url = await start_sim(knobs=Knobs(duration=100.0, max_active=1), credits=2)
    adapter = adapters(url)
    await adapter.submit(job(job_id="gen_a"))
    with pytest.raises(EaselError) as busy:
        await adapter.submit(job("second", job_id="gen_b"))
    assert busy.value.code is ErrorCode.RATE_LIMITED and busy.value.info.details["providerCode"] == 1303
    sim.knobs = Knobs(duration=100.0)
    await adapter.submit(job("third", job_id="gen_c"))
    with pytest.raises(EaselError) as broke:
        await adapter.submit(job("fourth", job_id="gen_d"))
    assert broke.value.code is ErrorCode.QUOTA_EXCEEDED and not broke.value.info.is_retryable


@pytest.mark.parametrize(
    ("knobs", "expected", "retryable"),
    [
        (Knobs(rate_limit_rate=1.0, retry_after=2.0), ErrorCode.RATE_LIMITED, True),
        (Knobs(error_5xx_rate=1.0), None, True),
        (Knobs(malformed_rate=1.0), ErrorCode.PROVIDER_ERROR, True),
    ],
)
async def test_request_faults_in_kling_shapes(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter],
    knobs: Knobs, expected: ErrorCode | None, retryable: bool,
) -> None:
    sim, url = await start_sim()
    adapter = adapters(url)
    handle = (await adapter.submit(job())).task_id
    sim.knobs = knobs
    with pytest.raises(EaselError) as raised:
        await adapter.check(handle)
    error = raised.value
    if expected is None:
        assert error.code in (ErrorCode.PROVIDER_ERROR, ErrorCode.PROVIDER_UNAVAILABLE)
        assert error.info.details["providerCode"] in (5000, 5001)
    else:
        assert error.code is expected
    if expected is ErrorCode.RATE_LIMITED:
        assert error.retry_after == 2.0
    assert error.info.is_retryable is retryable


@pytest.mark.parametrize(
    "data",
    [
        {"task_id": "1", "task_status": "weird"},
        {"task_id": "1"},
        {"task_id": "1", "task_status": ["succeed"]},
    ],
)
def test_malformed_task_objects_are_retryable_provider_errors(data: dict[str, Any]) -> None:
    with pytest.raises(EaselError) as raised:
        kling.status_of(data)
    assert raised.value.code is ErrorCode.PROVIDER_ERROR and raised.value.info.is_retryable


def test_succeed_without_video_is_a_task_failure() -> None:
    status = kling.status_of({"task_id": "1", "task_status": "succeed", "task_result": {"videos": [{}]}})
    assert status.state is TaskState.FAILED and status.error.code is ErrorCode.TASK_FAILED


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (502, b"<html>bad gateway</html>", ErrorCode.PROVIDER_ERROR),
        (429, b"", ErrorCode.RATE_LIMITED),
        (200, b'{"code": 0, "message": "SUCCEED"}', ErrorCode.PROVIDER_ERROR),
        (200, b'{"code": 0, "data": {"task_status": "submitted"}}', ErrorCode.PROVIDER_ERROR),
        (200, b'[1, 2]', ErrorCode.PROVIDER_ERROR),
    ],
)
async def test_malformed_answers_never_escape_as_python_errors(
    nursery: trio.Nursery, adapters: Callable[..., KlingAdapter],
    status: int, body: bytes, expected: ErrorCode,
) -> None:
    """A stand-in server answering shapes the simulator never produces."""
    app = QuartTrio("odd")

    @app.post("/v1/videos/text2video")
    async def create() -> tuple[bytes, int, dict[str, str]]:
        return body, status, {"content-type": "application/json"}

    url = await nursery.start(serve_simulator, app)
    with pytest.raises(EaselError) as raised:
        await adapters(url).submit(job())
    assert raised.value.code is expected


async def test_auth_failures(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter], clock: FakeClock
) -> None:
    sim, url = await start_sim()
    with pytest.raises(EaselError) as wrong:
        await adapters(url, secret_key="not the secret").submit(job())
    assert wrong.value.code is ErrorCode.AUTHENTICATION_FAILED and wrong.value.info.details["providerCode"] == 1002
    with pytest.raises(EaselError) as missing:
        await adapters(url, secret_key="").submit(job())
    assert missing.value.code is ErrorCode.AUTHENTICATION_FAILED and missing.value.sent is False
    assert sim.stats().requests.get("create") == 1  # the unconfigured one sent nothing


async def test_bearer_mode_for_the_tuzi_reseller(
    start_sim: Callable[..., Awaitable[Started]], adapters: Callable[..., KlingAdapter], clock: FakeClock
) -> None:
    sim, url = await start_sim(auth="bearer", knobs=Knobs(token=TUZI_KEY, duration=1.0))
    adapter = adapters(f"{url}/kling", auth="bearer", api_key=TUZI_KEY, access_key="", secret_key="")
    handle = (await adapter.submit(job())).task_id
    clock.advance(1)
    assert (await adapter.check(handle)).state is TaskState.SUCCEEDED
    with pytest.raises(EaselError) as raised:
        await adapters(f"{url}/kling", auth="bearer", api_key="wrong").submit(job(job_id="gen_2"))
    assert raised.value.code is ErrorCode.AUTHENTICATION_FAILED


def test_parse_webhook_reads_both_shapes_and_refuses_garbage() -> None:
    adapter = KlingAdapter(KlingSettings(base_url="http://127.0.0.1:9"))
    bare = json.dumps({"task_id": "866889456698785798", "task_status": "succeed"}).encode()
    wrapped = json.dumps({"code": 0, "data": {"task_id": 866889456698785798}}).encode()
    assert adapter.parse_webhook({}, bare) == WebhookEvent("866889456698785798", None)
    assert adapter.parse_webhook({}, wrapped) == WebhookEvent("866889456698785798", None)
    for junk in (b"not json", b"[]", b'{"task_status": "succeed"}', b'{"task_id": null}'):
        with pytest.raises(EaselError) as raised:
            adapter.parse_webhook({}, junk)
        assert raised.value.code is ErrorCode.INVALID_REQUEST


# -- the daemon end to end ----------------------------------------------------------------


def test_daemon_runs_kling_jobs_official_and_through_tuzi(tmp_path: Path) -> None:
    official = ("--duration", "0.3", "--access-key", ACCESS, "--secret-key", SECRET)
    tuzi = ("--duration", "0.3", "--auth", "bearer", "--token", TUZI_KEY)
    with start_simulator_process("kling", *official) as (_, kling_url), \
            start_simulator_process("kling", *tuzi) as (_, tuzi_url):
        port = free_port()
        config = write_config(tmp_path, f"""
[providers.kling]
base_url = "{kling_url}"
access_key = "${{KLING_ACCESS_KEY}}"
secret_key = "${{KLING_SECRET_KEY}}"

[providers.tuzi-kling]
adapter = "kling"
auth = "bearer"
api_key = "${{TUZI_API_KEY}}"
base_url = "{tuzi_url}/kling"

[models.kling-v2-1-master]
provider = "kling"
provider_model = "kling-v2-1-master"
kind = "video"
expected_duration = 1
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.2 }}

[models.tuzi-kling-v2-1-master]
provider = "tuzi-kling"
provider_model = "kling-v2-1-master"
kind = "video"
expected_duration = 1
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.2 }}
""", port=port)
        base_url = f"http://127.0.0.1:{port}"
        env = {"KLING_ACCESS_KEY": ACCESS, "KLING_SECRET_KEY": SECRET, "TUZI_API_KEY": TUZI_KEY}
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out", env=env)
        try:
            daemon.start()
            with httpx.Client(base_url=base_url, timeout=30) as client:
                ids = []
                for model in ("kling-v2-1-master", "tuzi-kling-v2-1-master"):
                    response = client.post("/api/external/generation", json={
                        "modelIdentifier": model, "prompt": f"a kite over the sea via {model}",
                        "parameters": {"duration": "5", "mode": "std"},
                    })
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["id"])
                jobs = wait_all_terminal(client, ids, timeout=30)
                for job_id in ids:
                    done = jobs[job_id]
                    assert done["status"] == "SUCCESS", (done, daemon.log_text())
                    [result] = done["results"]
                    assert result["type"] == "video" and "/media/" in result["url"]
                    media = client.get(result["url"])
                    assert media.status_code == 200 and media.content[4:8] == b"ftyp"
        finally:
            daemon.stop()
        for url in (kling_url, tuzi_url):
            stats = fetch_stats(url)
            assert stats.submissions == 1 and stats.max_submissions_per_input == 1
            assert stats.requests.get("list", 0) == 0
