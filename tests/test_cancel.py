"""Cancelling a running job reaches the provider where its API allows (Replicate,
fal): an embedded daemon against in-process simulators over loopback."""

from __future__ import annotations

import trio

from tests.simulators.base import Knobs, Simulator, serve_simulator
from tests.simulators.fal import FalSimulator
from tests.simulators.replicate import ReplicateSimulator

TOKEN = "test-token"


def provider_toml(name: str, url: str, model: str, provider_model: str) -> str:
    key = "api_token" if name == "replicate" else "api_key"
    return f"""
[providers.{name}]
base_url = "{url}"
{key} = "{TOKEN}"

[models.{model}]
provider = "{name}"
provider_model = "{provider_model}"
kind = "image"
expected_duration = 1
max_duration = 600
polling = {{ strategy = "fixed", interval = 0.1 }}
"""


async def cancel_while_running(easel_daemon, sim: Simulator, toml: str, model: str) -> dict:
    """Submit, wait for RUNNING, cancel through the API; the job once the simulator
    has seen the cancel request."""
    easel = await easel_daemon(toml)
    response = await easel.submit({"modelIdentifier": model, "prompt": "a long exposure"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with trio.fail_after(30):
        while (await easel.client.get(f"/api/external/generation/{job_id}")).json()[
                "stage"] != "RUNNING":
            await trio.sleep(0.02)
    cancelled = await easel.client.post(f"/api/external/generation/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    with trio.fail_after(30):
        while sim.stats().requests.get("cancel", 0) == 0:
            await trio.sleep(0.02)
    return (await easel.client.get(f"/api/external/generation/{job_id}")).json()


async def test_cancel_reaches_replicate(easel_daemon, nursery: trio.Nursery) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=60))
    url = await nursery.start(serve_simulator, sim)
    job = await cancel_while_running(
        easel_daemon, sim, provider_toml("replicate", url, "slow-flux", "owner/flux"), "slow-flux")
    assert job["status"] == "CANCELLED"
    assert sim.stats().requests["cancel"] == 1
    [prediction] = sim.tasks.values()
    assert prediction.canceled_at is not None  # stopped at Replicate, not only locally


async def test_cancel_reaches_fal(easel_daemon, nursery: trio.Nursery) -> None:
    sim = FalSimulator(Knobs(token=TOKEN, duration=60))
    url = await nursery.start(serve_simulator, sim)
    job = await cancel_while_running(
        easel_daemon, sim, provider_toml("fal", url, "slow-fal", "fal-ai/flux/dev"), "slow-fal")
    assert job["status"] == "CANCELLED"
    assert sim.stats().requests["cancel"] == 1
    [request] = sim.tasks.values()
    assert request.canceled_at is not None
