"""URLs a provider hands back are followed with the API key only to its own hosts.

BFL's ``polling_url``, fal's status/response/cancel URLs and Replicate's next page
are followed as returned, with the key. The simulators are told to hand out URLs
on another host (``Knobs.task_url_base``): 127.0.0.2, where a recorder stands for
whoever would collect the key. It must see nothing unless the operator listed it
in the section's ``allowed_hosts``.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from actors.errors import EaselError, ErrorCode
from actors.providers import fal
from actors.providers.base import ProviderSettings
from actors.providers.bfl import BflAdapter
from actors.providers.http import AllowedHosts
from actors.providers.replicate import ReplicateAdapter
from daemon import config as config_module
from tests.conftest import write_config
from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.bfl import BflSimulator
from tests.simulators.fal import FalSimulator
from tests.simulators.replicate import ReplicateSimulator
from tests.test_bfl import job as bfl_job
from tests.test_fal import job as fal_job

KEY = "allowed-hosts-test-key"


@attrs.define
class Recorder:
    """Anything served on 127.0.0.2: records the headers of every request."""

    url: str = ""
    seen: list[dict[str, str]] = attrs.field(factory=list)


@pytest.fixture
async def elsewhere(nursery: trio.Nursery) -> Recorder:
    recorder = Recorder()
    app = QuartTrio("elsewhere")

    @app.route("/<path:path>", methods=["GET", "PUT", "POST"])
    async def any_path(path: str) -> tuple[str, int]:
        recorder.seen.append({k.lower(): v for k, v in request.headers.items()})
        return '{"status": "IN_PROGRESS"}', 200

    recorder.url = await nursery.start(serve_simulator, app, "127.0.0.2")
    return recorder


def settings(url: str, **fields: Any) -> ProviderSettings:
    return ProviderSettings(base_url=url, api_key=KEY, api_token=KEY, request_timeout=5,
                            connect_timeout=2, **fields)


def refused(exc: EaselError, section: str) -> None:
    assert exc.code is ErrorCode.PROVIDER_ERROR and not exc.info.is_retryable
    assert "127.0.0.2" in exc.info.message
    assert f"providers.{section}.allowed_hosts" in exc.info.message


def test_documented_hosts_wildcards_and_the_base_url() -> None:
    hosts = AllowedHosts("bfl", ("api.bfl.ai", "*.eu.bfl.ai"), "https://proxy.example/bfl")
    for url in ("https://api.bfl.ai/v1/get_result?id=1", "https://API.bfl.ai./x",
                "https://api.x.eu.bfl.ai/v1", "https://proxy.example/v1/get_result"):
        assert hosts.check(url) == url
    for url in ("https://api.bfl.ai.evil.example/x", "https://eu.bfl.ai/x", "https://evil.example/x",
                "http://api.bfl.ai/x",  # the base URL is https: no downgrade
                "https://u:p@api.bfl.ai/x", "ftp://api.bfl.ai/x", "not a url"):
        with pytest.raises(EaselError):
            hosts.check(url)


async def test_bfl_polling_url_on_another_host_is_not_sent_the_key(
    nursery: trio.Nursery, elsewhere: Recorder
) -> None:
    sim = BflSimulator(Knobs(token=KEY, duration=60, task_url_base=elsewhere.url))
    url = await nursery.start(serve_simulator, sim)
    adapter = BflAdapter(settings(url), "bfl")
    try:
        submitted = await adapter.submit(bfl_job())
        assert "127.0.0.2" in submitted.task_id
        with pytest.raises(EaselError) as info:
            await adapter.check(submitted.task_id)
        refused(info.value, "bfl")
        assert elsewhere.seen == []
    finally:
        await adapter.aclose()
    # Listed by the operator: followed, key and all.
    trusting = BflAdapter(settings(url, allowed_hosts=("127.0.0.2",)), "bfl")
    try:
        with pytest.raises(EaselError):  # the recorder does not speak BFL
            await trusting.check(submitted.task_id)
    finally:
        await trusting.aclose()
    assert [seen.get("x-key") for seen in elsewhere.seen] == [KEY]


async def test_fal_queue_urls_on_another_host_are_not_sent_the_key(
    nursery: trio.Nursery, elsewhere: Recorder
) -> None:
    sim = FalSimulator(Knobs(token=f"{KEY}", duration=60, task_url_base=elsewhere.url))
    url = await nursery.start(serve_simulator, sim)
    adapter = fal.FalAdapter(settings(url), "fal")
    try:
        submitted = await adapter.submit(fal_job())
        for call in (adapter.check, adapter.cancel):
            with pytest.raises(EaselError) as info:
                await call(submitted.task_id)
            refused(info.value, "fal")
        assert elsewhere.seen == []
    finally:
        await adapter.aclose()


async def test_replicate_next_page_on_another_host_is_not_sent_the_token(
    nursery: trio.Nursery, elsewhere: Recorder
) -> None:
    sim = ReplicateSimulator(Knobs(token=KEY, duration=60, task_url_base=elsewhere.url))
    url = await nursery.start(serve_simulator, sim)
    adapter = ReplicateAdapter(settings(url), "replicate")
    try:
        with pytest.raises(EaselError) as info:
            await adapter.recent_page(f"{elsewhere.url}/v1/predictions?cursor=x", 0.0)
        refused(info.value, "replicate")
        assert elsewhere.seen == []
    finally:
        await adapter.aclose()


def test_allowed_hosts_is_a_setting_of_every_section(tmp_path: Any) -> None:
    path = write_config(tmp_path, """
[providers.bfl]
api_key = "k"
allowed_hosts = ["api.bfl.ai", "*.bfl.example"]
""")
    config = config_module.load(path, environ={})
    assert config.providers["bfl"].allowed_hosts == ("api.bfl.ai", "*.bfl.example")
    assert config.providers["fal"].allowed_hosts == ()


async def test_a_bfl_job_whose_polling_url_names_another_host_fails_clearly(
    easel_daemon: Any, nursery: trio.Nursery, elsewhere: Recorder
) -> None:
    sim = BflSimulator(Knobs(token=KEY, duration=0.2, task_url_base=elsewhere.url))
    sim_url = await nursery.start(serve_simulator, sim)
    easel = await easel_daemon(f"""
[providers.bfl]
base_url = "{sim_url}"
api_key = "{KEY}"

[models.bfl-flux-pro]
provider = "bfl"
provider_model = "flux-pro-1.1"
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.1 }}
""")
    submitted = await easel.submit({"modelIdentifier": "bfl-flux-pro", "prompt": "a fox"})
    assert submitted.status_code == 202, submitted.text
    job = await easel.wait(submitted.json()["id"])
    assert job["status"] == "FAILED"
    assert job["error"]["code"] == "PROVIDER_ERROR"
    assert "allowed_hosts" in job["error"]["message"]
    assert elsewhere.seen == []
