"""A submission whose answer is lost (a timeout after the request went out) is
looked up at once: the task the provider did create is adopted, not abandoned while
it runs and bills. Embedded daemon, Replicate simulator on loopback."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import free_port
from tests.simulators.base import Fault, Knobs, serve_simulator
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


async def test_a_lost_answer_is_found_on_the_first_page_after_a_failing_one(
    easel_daemon, nursery: trio.Nursery
) -> None:
    """The list holds others' predictions over several pages; the lost one is the
    newest. The first list request fails (503) and is retried alone; the answer
    holds the match, so no further page is read."""
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.2), page_size=2)
    url = await nursery.start(serve_simulator, sim)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for n in range(5):
            created = await http.post("/v1/models/someone/else/predictions",
                                      json={"input": {"prompt": f"not ours {n}"}})
            assert created.status_code == 201
    sim.knobs = Knobs(token=TOKEN, duration=0.2, timeout_rate=1.0, hang_seconds=5,
                      fault_routes=("create",))
    sim.script_faults("list", Fault.SERVER_ERROR)
    toml = provider_toml("replicate", url, "flux", "owner/flux").replace(
        f'api_token = "{TOKEN}"', f'api_token = "{TOKEN}"\nrequest_timeout = 0.5')
    easel = await easel_daemon(toml)
    response = await easel.submit({"modelIdentifier": "flux", "prompt": "a lost answer"})
    job = await easel.wait(response.json()["id"])

    assert job["status"] == "SUCCESS", job
    assert sim.stats().submissions == 6
    assert sim.stats().list_calls == 2  # page 1 failed, page 1 again: nothing more
    assert [e["kind"] for e in await events_of(easel, job["id"])].count("reconciled") == 1


async def test_crash_while_waiting_to_retry_a_refusal_resubmits(
    easel_daemon, nursery: trio.Nursery
) -> None:
    """Refused (nothing listens), then stopped during the retry's backoff: the job is
    left SUBMITTING. After the restart the recorded refusal proves nothing reached
    the provider, so it is sent again, though its model does not allow resubmitting
    uncertain jobs."""
    dead = f"http://127.0.0.1:{free_port()}"
    slow_retry = "\nmax_attempts = 3\nretry_base = 600\nretry_cap = 600\nretry_jitter = 0"
    first = await easel_daemon(provider_toml("replicate", dead, "flux", "owner/flux").replace(
        f'api_token = "{TOKEN}"', f'api_token = "{TOKEN}"{slow_retry}'))
    job_id = (await first.submit({"modelIdentifier": "flux", "prompt": "twice refused"})).json()["id"]
    with trio.fail_after(20):
        while not [e for e in await events_of(first, job_id) if e["kind"] == "refused"]:
            await trio.sleep(0.02)
    first.stop.set()
    await first.done.wait()

    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.2))
    url = await nursery.start(serve_simulator, sim)
    second = await easel_daemon(provider_toml("replicate", url, "flux", "owner/flux"))
    job = await second.wait(job_id)
    assert job["status"] == "SUCCESS", job
    assert job["attempts"] == 2
    kinds = [(e["kind"], e.get("reason")) for e in await events_of(second, job_id)]
    assert ("resubmitted", "refused before the restart") in kinds
    assert sim.stats().submissions == 1


async def events_of(easel, job_id: str) -> list[dict]:
    response = await easel.client.get(f"/api/external/generation/{job_id}/events")
    return response.json()["events"]
