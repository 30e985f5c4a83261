"""Signed client webhooks (actors/outbox.py): the outbox row, delivery, retries.

The receiver is a real HTTP server on loopback (h11 over trio sockets, in the
test's nursery), so the outbox runs with ``allow_private_targets = true`` except in
the test that proves loopback is refused. Signatures are checked with the
``standardwebhooks`` package from PyPI, not with Easel's own code. Timers run under
``MockClock``; the end-to-end tests run an embedded daemon on the real clock.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from trio.testing import MockClock

from actors.catalog import ModelSpec
from actors.jobs import Job, JobState, new_job_id
from actors.monitor import Monitor
from actors.outbox import BACKOFF, Outbox, OutboxSettings
from actors.providers.sandbox import SandboxSettings
from actors.runtime import Runtime
from actors.storage import LocalStorage, ResultLinks
from actors.store import Store, open_store
from daemon import config as config_module

SECRET = "whsec_" + base64.b64encode(b"easel test webhook key 32 bytes!").decode()


# -- a real receiver ----------------------------------------------------------


@attrs.define
class Received:
    at: float  # trio.current_time() when the request arrived
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@attrs.define(eq=False)
class Receiver:
    """Answers each request with the next of ``statuses`` (then 200) and records it."""

    statuses: list[int]
    url: str = ""
    #: Headers added to every answer that is not 200 (a Location, a Retry-After).
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    requests: list[Received] = attrs.field(factory=list)
    #: When set, each answer waits for it (to hold requests open).
    gate: trio.Event | None = None
    open_now: int = 0
    most_open: int = 0
    _arrived: trio.Event = attrs.field(factory=trio.Event)

    async def wait_for(self, count: int, within: float = 300.0) -> list[Received]:
        """The requests once ``count`` have come; fails after ``within`` seconds
        (of the MockClock, when one runs: a broken timer fails fast, not hangs)."""
        with trio.fail_after(within):
            while len(self.requests) < count:
                self._arrived = trio.Event()
                await self._arrived.wait()
        return self.requests

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        headers: dict[str, str] = {}
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # the client went away
                return
        self.requests.append(Received(trio.current_time(), headers, body))
        self._arrived.set()
        if self.gate is not None:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
            await self.gate.wait()
            self.open_now -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        extra = self.headers if status != 200 else []
        reply = conn.send(h11.Response(status_code=status, headers=[
            ("content-length", "2"), ("connection", "close"), *extra]))
        reply += conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
        await stream.send_all(reply)
        await stream.aclose()


async def start_receiver(nursery: trio.Nursery, statuses: list[int] | None = None,
                         headers: list[tuple[str, str]] | None = None,
                         host: str = "127.0.0.1") -> Receiver:
    receiver = Receiver(list(statuses or []), headers=list(headers or []))
    serve = functools.partial(trio.serve_tcp, receiver.handle, 0, host=host)
    listeners = await nursery.start(serve)
    port = listeners[0].socket.getsockname()[1]
    receiver.url = f"http://{host}:{port}/hooks/easel?tenant=7"
    return receiver


def verify(received: Received, secret: str = SECRET) -> dict[str, Any]:
    """The body, verified by the reference implementation (raises when not)."""
    return Webhook(secret).verify(received.body, received.headers)  # type: ignore[no-any-return]


# -- helpers ------------------------------------------------------------------


@pytest.fixture
def clock() -> MockClock:
    """Jumps only after some real idleness: the store's worker threads are real,
    and a jump while one is busy would cancel work the test means to finish."""
    return MockClock(autojump_threshold=0.1)


def settings(**overrides: Any) -> OutboxSettings:
    return OutboxSettings(**{"secret": SECRET, "allow_private_targets": True, **overrides})


async def ended_job(store: Store, url: str | None, state: JobState = JobState.SUCCEEDED) -> Job:
    """A job with ``webhook_url`` moved to a terminal state, as the actors do."""
    job = Job(id=new_job_id(), model="sandbox-image", provider="sandbox",
              provider_model="sandbox-image", prompt="a lighthouse", webhook_url=url)
    await store.insert_job(job)
    results = [{"type": "image", "url": f"/media/{job.id}/0.png"}]
    ended = await store.transition(job.id, JobState.QUEUED, state,
                                   results=results if state is JobState.SUCCEEDED else [])
    assert ended is not None
    return ended


@asynccontextmanager
async def running_outbox(store: Store, outbox_settings: OutboxSettings,
                         **kwargs: Any) -> AsyncIterator[Outbox]:
    """The outbox actor, wired to the store as the runtime does, stopped before the
    store closes."""
    outbox = Outbox(store, outbox_settings, changes=store.subscribe(),
                    monitor=kwargs.pop("monitor", Monitor()), **kwargs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        yield outbox
        nursery.cancel_scope.cancel()


def local_links(tmp_path: Path, base_url: str) -> ResultLinks:
    """Result URLs as a daemon with the local backend at ``base_url`` makes them
    (the test's results hold ``/media/`` paths, as results stored before keys did)."""
    return ResultLinks(LocalStorage(tmp_path / "media", base_url), base_url)


async def wait_until(check: Callable[[], Any], step: float = 1.0, within: float = 300.0) -> Any:
    """Poll an async ``check`` until it returns something truthy."""
    with trio.fail_after(within):
        while not (value := await check()):
            await trio.sleep(step)
        return value


async def finished(store: Store, job_id: str, step: float = 1.0, within: float = 300.0) -> Any:
    async def check() -> Any:
        [row] = await store.webhooks_of(job_id)
        return row if row.state != "PENDING" else None

    return await wait_until(check, step, within)


# -- the outbox row -----------------------------------------------------------


async def test_terminal_transition_writes_the_row_in_its_transaction(tmp_path: Path) -> None:
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await ended_job(store, "https://hooks.example.com/x", JobState.FAILED)
        [row] = await store.webhooks_of(job.id)
        assert row.id == f"msg_{job.id}_FAILED"
        assert (row.state, row.attempts, row.url) == ("PENDING", 0, "https://hooks.example.com/x")
        assert json.loads(row.payload) == job.to_api()
        # Only a terminal transition of a job with a webhook_url makes one.
        quiet = await ended_job(store, None)
        assert await store.webhooks_of(quiet.id) == []
        running = Job(id=new_job_id(), model="m", provider="sandbox", provider_model="m",
                      prompt="p", webhook_url="https://hooks.example.com/x")
        await store.insert_job(running)
        await store.transition(running.id, JobState.QUEUED, JobState.SUBMITTING)
        assert await store.webhooks_of(running.id) == []
        # A failed transition (stale state) writes nothing either.
        assert await store.transition(running.id, JobState.QUEUED, JobState.CANCELLED) is None
        assert await store.webhooks_of(running.id) == []


# -- delivery -----------------------------------------------------------------


async def test_delivery_is_signed_per_standard_webhooks(tmp_path: Path, nursery) -> None:
    receiver = await start_receiver(nursery)
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(), links=local_links(tmp_path, "https://easel.example/")
    ):
        job = await ended_job(store, receiver.url)
        [received] = await receiver.wait_for(1)
        payload = verify(received)
        assert received.headers["webhook-id"] == f"msg_{job.id}_SUCCEEDED"
        assert payload["id"] == job.id and payload["status"] == "SUCCESS"
        assert payload["results"] == [
            {"type": "image", "url": f"https://easel.example/media/{job.id}/0.png"}]
        assert {k: v for k, v in payload.items() if k != "results"} == {
            k: v for k, v in job.to_api().items() if k != "results"}
        with pytest.raises(WebhookVerificationError):  # and a wrong key is refused
            verify(received, "whsec_" + base64.b64encode(b"another key" * 3).decode())
        row = await finished(store, job.id, step=0.01, within=10)
        assert (row.state, row.attempts, row.last_status) == ("DELIVERED", 1, 200)


async def test_retries_back_off_exponentially(tmp_path: Path, nursery, clock) -> None:
    receiver = await start_receiver(nursery, [500, 503])
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(store, settings()):
        job = await ended_job(store, receiver.url)
        first, second, third = await receiver.wait_for(3)
        # Policy: 5 s, then 10 s, each shortened by up to a fifth.
        assert 5 * (1 - BACKOFF.jitter) <= second.at - first.at <= 5 + 0.5
        assert 10 * (1 - BACKOFF.jitter) <= third.at - second.at <= 10 + 0.5
        assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_{job.id}_SUCCEEDED"}
        for received in receiver.requests:
            verify(received)
        row = await finished(store, job.id)
        assert (row.state, row.attempts, row.last_status) == ("DELIVERED", 3, 200)
        assert row.finished_at is not None and row.finished_at >= row.created_at + 12
        await trio.sleep(3600)
        assert len(receiver.requests) == 3


async def test_gives_up_at_max_age(tmp_path: Path, nursery, clock) -> None:
    receiver = await start_receiver(nursery, [500] * 100)
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(max_age=60)
    ):
        start = trio.current_time()
        job = await ended_job(store, receiver.url)
        row = await finished(store, job.id)
        assert row.state == "FAILED"
        assert "gave up after 5 attempts" in row.last_error and "HTTP 500" in row.last_error
        # 0, ~5, ~15, ~35, then the last try at the deadline itself.
        assert len(receiver.requests) == row.attempts == 5
        assert 60 <= receiver.requests[-1].at - start <= 61
        await trio.sleep(24 * 3600)
        assert len(receiver.requests) == 5


async def test_gone_stops_at_once(tmp_path: Path, nursery, clock) -> None:
    receiver = await start_receiver(nursery, [410])
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(store, settings()):
        job = await ended_job(store, receiver.url, JobState.CANCELLED)
        row = await finished(store, job.id)
        assert (row.state, row.attempts, row.last_status) == ("FAILED", 1, 410)
        await trio.sleep(3600)
        assert len(receiver.requests) == 1


async def test_loopback_target_refused_without_a_request(tmp_path: Path, nursery, clock) -> None:
    receiver = await start_receiver(nursery)
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(allow_private_targets=False)
    ):
        job = await ended_job(store, receiver.url)
        row = await finished(store, job.id)
        assert row.state == "FAILED" and row.attempts == 1
        assert "127.0.0.1" in row.last_error and "not a public address" in row.last_error
        await trio.sleep(3600)  # and it is not retried
        assert receiver.requests == []


async def test_redirect_to_loopback_is_not_followed(tmp_path: Path, nursery, clock) -> None:
    """A public receiver that redirects into the host is refused at the hop.

    127.0.0.1 plays the public receiver (the one address the outbox is told is
    public), 127.0.0.2 the host's own service it redirects to."""
    inside = await start_receiver(nursery, host="127.0.0.2")
    outside = await start_receiver(nursery, [307], [("location", inside.url)])
    port = outside.url.split(":")[2].split("/")[0]

    async def public_dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(allow_private_targets=False), resolve=public_dns,
        public=lambda address: str(address) == "127.0.0.1",
    ):
        job = await ended_job(store, f"http://hooks.example.com:{port}/x")
        row = await finished(store, job.id)
        assert row.state == "FAILED" and "127.0.0.2" in row.last_error
        assert "not a public address" in row.last_error
        assert [r.headers["host"] for r in outside.requests] == [f"hooks.example.com:{port}"]
        assert inside.requests == []


async def test_retry_after_is_honoured(tmp_path: Path, nursery, clock) -> None:
    receiver = await start_receiver(nursery, [503], [("retry-after", "600")])
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(store, settings()):
        job = await ended_job(store, receiver.url)
        first, second = await receiver.wait_for(2, within=3600)
        assert 600 <= second.at - first.at <= 601  # not the schedule's 5 s
        row = await finished(store, job.id)
        assert (row.state, row.attempts) == ("DELIVERED", 2)


async def test_a_name_no_resolver_takes_fails_the_delivery_not_the_daemon(
    tmp_path: Path, nursery, clock
) -> None:
    """getaddrinfo raises UnicodeError (not OSError) for some names: the delivery
    fails for good; the outbox does not crash (and crash-loop the daemon)."""

    async def idna_error(host: str, port: int) -> list[str]:
        raise UnicodeError("label empty or too long")

    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(allow_private_targets=False), resolve=idna_error,
    ):
        job = await ended_job(store, "https://hooks.example.com/x")
        row = await finished(store, job.id)
        assert row.state == "FAILED" and "cannot resolve" in row.last_error


async def test_concurrency_is_limited(tmp_path: Path, nursery) -> None:
    receiver = await start_receiver(nursery)
    receiver.gate = trio.Event()
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(max_concurrency=2)
    ):
        jobs = [await ended_job(store, receiver.url) for _ in range(5)]
        with trio.fail_after(10):
            await receiver.wait_for(2)
            await trio.sleep(0.2)  # room for a third, were the limit broken
            assert len(receiver.requests) == 2
            receiver.gate.set()
            await receiver.wait_for(5)
            for job in jobs:
                assert (await finished(store, job.id, step=0.01)).state == "DELIVERED"
    assert receiver.most_open == 2


async def test_no_secret_sends_nothing_unsigned(tmp_path: Path, nursery, clock) -> None:
    receiver = await start_receiver(nursery)
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(secret="")
    ):
        job = await ended_job(store, receiver.url)
        await trio.sleep(3600)
        [row] = await store.webhooks_of(job.id)
        assert (row.state, row.attempts) == ("PENDING", 0)
    assert receiver.requests == []


def test_retry_schedule() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (500, 3600)]:
        delay = BACKOFF.delay(attempt, rng=rng)
        assert ceiling * (1 - BACKOFF.jitter) <= delay <= ceiling


# -- restarts -----------------------------------------------------------------


def sandbox_runtime(store: Store, tmp_path: Path) -> Runtime:
    return Runtime(
        store,
        providers={"sandbox": SandboxSettings(rate=100, burst=100, delay=0.1)},
        catalog={"sandbox-image": ModelSpec(provider="sandbox", provider_model="sandbox-image")},
        media_dir=tmp_path / "media",
        webhooks=settings(),
        media_base_url="http://easel.test:8700",
    )


async def test_restart_mid_retry_resumes(tmp_path: Path, nursery, clock) -> None:
    """The runtime runs the outbox; a new runtime on the same database resumes it.

    The job is ended through the store, as an actor would: this test is about the
    outbox surviving a restart (the embedded-daemon tests run real jobs)."""
    receiver = await start_receiver(nursery, [500])
    db = tmp_path / "db.sqlite"
    async with open_store(db) as store, trio.open_nursery() as inner:
        await inner.start(sandbox_runtime(store, tmp_path).run)
        job = await ended_job(store, receiver.url)
        [first] = await receiver.wait_for(1)

        async def failed_once() -> Any:
            rows = await store.webhooks_of(job.id)
            return rows and rows[0].attempts == 1 and rows[0]

        row = await wait_until(failed_once, step=0.01)
        assert row.state == "PENDING" and row.last_status == 500 and row.finished_at is None
        inner.cancel_scope.cancel()  # the daemon dies before the retry is due
    async with open_store(db) as store, trio.open_nursery() as inner:
        await inner.start(sandbox_runtime(store, tmp_path).run)
        row = await finished(store, job.id)
        inner.cancel_scope.cancel()
    assert (row.state, row.attempts) == ("DELIVERED", 2)
    first, second = receiver.requests
    assert second.at - first.at >= 5 * (1 - BACKOFF.jitter)  # the stored schedule held
    assert first.body == second.body
    payload = verify(second)
    assert payload["status"] == "SUCCESS"
    assert payload["results"][0]["url"] == f"http://easel.test:8700/media/{job.id}/0.png"


# -- configuration and the embedded daemon ------------------------------------


def test_config_section(tmp_path: Path) -> None:
    config = config_module.load(environ={})
    assert config.webhooks == OutboxSettings()
    assert (config.webhooks.secret, config.webhooks.allow_private_targets) == ("", False)
    assert (config.webhooks.max_age, config.webhooks.timeout) == (86400, 10)
    assert config.webhooks.max_concurrency == 16
    assert config_module.load(environ={"EASEL_WEBHOOK_SECRET": SECRET}).webhooks.secret == SECRET
    path = tmp_path / "bad.toml"
    for line, problem in [
        ('secret = "hunter2"', "webhooks.secret: must be 'whsec_' followed by base64"),
        ('secret = "whsec_not base64!"', "webhooks.secret: must be 'whsec_' followed by base64"),
        ("max_age = 0", "webhooks.max_age: must be > 0: 0.0"),
        ("max_concurrency = 0", "webhooks.max_concurrency: must be >= 1: 0"),
        ('allow_private_targets = "yes"', "webhooks.allow_private_targets: expected true or false, got a string"),
    ]:
        path.write_text(f"[webhooks]\n{line}\n")
        with pytest.raises(config_module.ConfigError) as caught:
            config_module.load(path, environ={})
        assert caught.value.problems == [problem]


async def test_daemon_delivers_signed_final_job(easel_daemon, nursery) -> None:
    receiver = await start_receiver(nursery)
    easel = await easel_daemon(f"""
[providers.sandbox]
delay = 0.05

[webhooks]
secret = "{SECRET}"
allow_private_targets = true
""")
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a kite",
                                   "webhook_url": receiver.url})
    assert response.status_code == 202
    job = await easel.wait(response.json()["id"])
    with trio.fail_after(10):
        [received] = await receiver.wait_for(1)
    payload = verify(received)
    assert payload["status"] == "SUCCESS"
    # The same object the API returns, result URLs absolute on the daemon's address.
    assert payload == job
    assert payload["results"][0]["url"].startswith(easel.base_url + "/media/")
    with trio.fail_after(5):  # the monitor counts it a moment after the delivery
        while 'easel_webhook_deliveries_total{outcome="delivered",reason=""}' not in (
                await easel.client.get("/api/metrics")).text:
            await trio.sleep(0.02)


async def test_daemon_generates_a_secret_when_none_is_set(easel_daemon, nursery) -> None:
    receiver = await start_receiver(nursery)
    easel = await easel_daemon("""
[providers.sandbox]
delay = 0.05

[webhooks]
allow_private_targets = true
""")
    path = easel.state_dir / "webhook_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = path.read_text().strip()
    assert secret.startswith("whsec_")
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "[fail] a kite",
                                   "webhook_url": receiver.url})
    with trio.fail_after(10):
        [received] = await receiver.wait_for(1)
    payload = verify(received, secret)
    assert payload["id"] == response.json()["id"]
    assert payload["status"] == "FAILED" and payload["error"]["code"] == "TASK_FAILED"
