"""A create whose answer was lost is resolved, never failed as retryable.

While the provider may hold a task for the job, the job is RESOLVING (its own stage,
with the reason) and the task is looked for until the section's ``lookup_window``
ends, across restarts; only then does it end UNCERTAIN_SUBMISSION, not retryable.
Embedded daemons in front of simulators on loopback.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from tests.conftest import EmbeddedDaemon
from tests.simulators.base import Knobs, Simulator, serve_simulator
from tests.simulators.bfl import BflSimulator
from tests.simulators.replicate import ReplicateSimulator
from tests.test_cancel import TOKEN, provider_toml

#: Creates are stored, then answered too late: Easel's request times out.
LOST_ANSWERS = Knobs(token=TOKEN, duration=0.1, timeout_rate=1.0, hang_seconds=3,
                     fault_routes=("create",))


def replicate_toml(url: str, window: float) -> str:
    return provider_toml("replicate", url, "flux", "owner/flux").replace(
        f'api_token = "{TOKEN}"',
        f'api_token = "{TOKEN}"\nrequest_timeout = 0.5\nmax_attempts = 2\nretry_base = 0.01\n'
        f"lookup_window = {window}")


async def job_of(easel: EmbeddedDaemon, job_id: str) -> dict[str, Any]:
    return (await easel.client.get(f"/api/external/generation/{job_id}")).json()


async def wait_stage(easel: EmbeddedDaemon, job_id: str, stage: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while (job := await job_of(easel, job_id))["stage"] != stage:
            await trio.sleep(0.02)
    return job


async def created(sim: Simulator) -> None:
    """Wait until the simulator has received (and stored) the create."""
    with trio.fail_after(30):
        while sim.stats().requests.get("create", 0) < 1:
            await trio.sleep(0.01)


async def test_a_lost_create_is_resolving_while_the_list_fails_then_adopted(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(LOST_ANSWERS)
    url = await nursery.start(serve_simulator, sim)
    easel = await easel_daemon(replicate_toml(url, window=600))
    job_id = (await easel.submit({"modelIdentifier": "flux", "prompt": "lost"})).json()["id"]
    await created(sim)
    # The list fails now: every lookup is a 5xx.
    sim.knobs = attrs.evolve(sim.knobs, timeout_rate=0.0, error_5xx_rate=1.0,
                             fault_routes=("list",))
    resolving = await wait_stage(easel, job_id, "RESOLVING")
    assert resolving["status"] == "PENDING" and resolving["error"] is None
    assert "answer was lost" in resolving["stageReason"]
    with trio.fail_after(30):
        while sim.stats().faults.get("server_error", 0) < 2:  # looked for, and again
            await trio.sleep(0.02)
    assert (await job_of(easel, job_id))["stage"] == "RESOLVING"
    # The list answers again: the task is found and adopted.
    sim.knobs = attrs.evolve(sim.knobs, error_5xx_rate=0.0)
    job = await easel.wait(job_id)
    assert job["status"] == "SUCCESS", job
    assert job["attempts"] == 1 and job["stageReason"] is None
    assert sim.stats().submissions == 1 and sim.stats().max_submissions_per_input == 1


async def test_a_search_that_keeps_failing_goes_on_after_a_restart(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(LOST_ANSWERS)
    url = await nursery.start(serve_simulator, sim)
    first = await easel_daemon(replicate_toml(url, window=600))
    job_id = (await first.submit({"modelIdentifier": "flux", "prompt": "lost"})).json()["id"]
    await created(sim)
    sim.knobs = attrs.evolve(sim.knobs, timeout_rate=0.0, rate_limit_rate=1.0,
                             retry_after=0.05, fault_routes=("list",))
    await wait_stage(first, job_id, "RESOLVING")
    first.stop.set()
    await first.done.wait()

    second = await easel_daemon(replicate_toml(url, window=600))
    assert (await job_of(second, job_id))["stage"] == "RESOLVING"  # still looked for
    sim.knobs = attrs.evolve(sim.knobs, rate_limit_rate=0.0)
    job = await second.wait(job_id)
    assert job["status"] == "SUCCESS", job
    events = (await second.client.get(f"/api/external/generation/{job_id}/events")).json()
    [adopted] = [e for e in events["events"] if e["kind"] == "reconciled"]
    assert adopted["after"] == "restart"
    assert sim.stats().submissions == 1


async def test_nothing_found_within_the_window_ends_uncertain_not_retryable(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    # 5xx before anything is stored: there is no task to find, but nothing proves it.
    sim = ReplicateSimulator(Knobs(token=TOKEN, error_5xx_rate=1.0, fault_routes=("create",)))
    url = await nursery.start(serve_simulator, sim)
    easel = await easel_daemon(replicate_toml(url, window=1))
    job_id = (await easel.submit({"modelIdentifier": "flux", "prompt": "nothing"})).json()["id"]
    job = await easel.wait(job_id)
    assert job["status"] == "FAILED" and job["stage"] == "FAILED"
    error = job["error"]
    assert error["code"] == "UNCERTAIN_SUBMISSION" and error["isRetryable"] is False
    assert error["details"]["lookup"] == "no match"
    assert "may hold a task" in error["message"]
    assert sim.stats().requests["create"] == 1  # never resent


async def test_a_provider_that_cannot_list_ends_uncertain_not_retryable(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = BflSimulator(attrs.evolve(LOST_ANSWERS, token=TOKEN))
    url = await nursery.start(serve_simulator, sim)
    toml = provider_toml("bfl", url, "flux-pro", "flux-pro-1.1").replace(
        f'api_key = "{TOKEN}"', f'api_key = "{TOKEN}"\nrequest_timeout = 0.5')
    easel = await easel_daemon(toml)
    job_id = (await easel.submit({"modelIdentifier": "flux-pro", "prompt": "lost"})).json()["id"]
    job = await easel.wait(job_id)
    error = job["error"]
    assert error["code"] == "UNCERTAIN_SUBMISSION" and error["isRetryable"] is False, job
    assert error["details"]["lookup"] == "unavailable"
    assert "offers no way to list" in error["details"]["lookupError"]
    assert sim.stats().submissions == 1
