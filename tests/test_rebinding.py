"""DNS rebinding cannot make Easel reach loopback: client webhooks and input images.

A name whose first answer is public and whose later answers are loopback must be
sent to the address that was checked, never to one found by resolving again. The
name is ``localhost``, which the system resolver answers with 127.0.0.1 (where the
host's own service stands here): a client that resolved it again to connect, as
httpx would, lands there. The injected resolver answers 127.0.0.2 first (counted
as public, the one seam: the "internet" server stands there, on the same port),
then 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from trio.testing import MockClock

from actors.catalog import ModelSpec
from actors.errors import EaselError
from actors.fetch import Fetcher
from actors.providers.base import JobRequest, ProviderSettings
from actors.providers.openai import OpenaiAdapter
from actors.store import open_store
from actors.targets import IPAddress
from tests.test_fetch import Dns, Server, start_server
from tests.test_outbox import ended_job, finished, running_outbox, settings

PUBLIC = ipaddress.ip_address("127.0.0.2")


def seam(address: IPAddress) -> bool:
    """127.0.0.2 plays a public address; everything else is what it really is."""
    return address == PUBLIC


@attrs.frozen
class Hosts:
    inside: Server  # 127.0.0.1: the host's own service
    outside: Server  # 127.0.0.2: the public server the name first answered
    port: int


@pytest.fixture
async def hosts(nursery: trio.Nursery) -> Hosts:
    inside = await start_server(nursery, "127.0.0.1")
    port = httpx.URL(inside.url).port
    assert port is not None
    outside = await start_server(nursery, str(PUBLIC), port)
    return Hosts(inside, outside, port)


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.1)


def rebinding() -> Dns:
    return Dns([str(PUBLIC)], ["127.0.0.1"])


async def test_a_client_webhook_to_a_rebinding_name_never_reaches_loopback(
    tmp_path: Path, hosts: Hosts, clock: MockClock
) -> None:
    dns = rebinding()
    async with open_store(tmp_path / "db.sqlite") as store, running_outbox(
        store, settings(allow_private_targets=False), resolve=dns, public=seam,
    ):
        first = await ended_job(store, f"http://localhost:{hosts.port}/hook")
        row = await finished(store, first.id)
        assert row.state == "DELIVERED"
        # The delivery went to the address that was checked, named as the client named it.
        assert [(m, p, h) for m, p, h, _ in hosts.outside.seen] == [
            ("POST", "/hook", f"localhost:{hosts.port}")]
        second = await ended_job(store, f"http://localhost:{hosts.port}/again")
        row = await finished(store, second.id)
        assert row.state == "FAILED" and "127.0.0.1" in row.last_error  # rebound: refused
    assert hosts.inside.seen == []


async def test_an_input_image_on_a_rebinding_name_is_never_fetched_from_loopback(
    hosts: Hosts,
) -> None:
    adapter = OpenaiAdapter(ProviderSettings(base_url=hosts.outside.url, api_key="k" * 12,
                                             request_timeout=5, connect_timeout=2), "openai")
    await adapter.fetcher.aclose()
    adapter.fetcher = Fetcher(timeout=5.0, resolve=rebinding(), public=seam)
    job = JobRequest(job_id="j", model="gpt-image-1",
                     spec=ModelSpec(provider="openai", provider_model="gpt-image-1"),
                     prompt="a cat", input_images=(f"http://localhost:{hosts.port}/cat.png",))
    try:
        for _ in range(2):  # the first answer, then the rebound one
            with pytest.raises(EaselError):  # the stand-in answers text, not an image
                await adapter.submit(job)
    finally:
        await adapter.aclose()
    assert [(m, p, h) for m, p, h, _ in hosts.outside.seen] == [
        ("GET", "/cat.png", f"localhost:{hosts.port}")]
    assert hosts.inside.seen == []
