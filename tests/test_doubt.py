"""A submission whose answer is lost (a timeout after the request went out) is
looked up at once: the task the provider did create is adopted, not abandoned while
it runs and bills. Embedded daemon, Replicate simulator on loopback."""

from __future__ import annotations

import trio

from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.replicate import ReplicateSimulator
from tests.test_cancel import TOKEN, provider_toml


async def test_timed_out_create_is_adopted_from_the_list(easel_daemon, nursery: trio.Nursery) -> None:
    # Every create is recorded, then hangs past Easel's request timeout.
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.2, timeout_rate=1.0, hang_seconds=5,
                                   fault_routes=("create",)))
    url = await nursery.start(serve_simulator, sim)
    toml = provider_toml("replicate", url, "flux", "owner/flux").replace(
        f'api_token = "{TOKEN}"', f'api_token = "{TOKEN}"\nrequest_timeout = 0.5')
    easel = await easel_daemon(toml)
    response = await easel.submit({"modelIdentifier": "flux", "prompt": "a lost answer"})
    job = await easel.wait(response.json()["id"])
    events = (await easel.client.get(f"/api/external/generation/{job['id']}/events")).json()

    assert job["status"] == "SUCCESS", job
    assert sim.stats().submissions == 1  # adopted, never sent again
    [adopted] = [e for e in events["events"] if e["kind"] == "reconciled"]
    assert adopted["after"] == "PROVIDER_TIMEOUT"
