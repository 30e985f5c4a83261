"""Circuit breakers and fallbacks end to end: an embedded daemon (HTTP over
loopback) in front of an in-process Replicate simulator whose faults are switched
on and off, with the built-in sandbox model as the fallback.

What must hold: a failing provider's circuit opens (in ``/api/metrics`` and in the
jobs' events), new jobs are served by the fallback with ``servedBy`` set, a half-open
probe closes the circuit once the provider is well again, retries are counted on the
job, and a submission the provider may have received (a timeout) is never moved to
a fallback: that could pay twice.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import trio

from actors.breaker import BreakerConfig
from tests.conftest import EmbeddedDaemon, free_port
from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.replicate import ReplicateSimulator

TOKEN = "test-token"


def toml(url: str, *, fallbacks: bool = True, extra: str = "") -> str:
    listed = '["sandbox-image"]' if fallbacks else "[]"
    return f"""
[providers.replicate]
base_url = "{url}"
api_token = "{TOKEN}"
request_timeout = 0.5
{extra}

[providers.sandbox]
delay = 0

[models.primary]
provider = "replicate"
provider_model = "owner/flux"
kind = "image"
expected_duration = 0.2
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.05 }}
fallbacks = {listed}
"""


async def start(easel_daemon: Any, url: str, *, breaker: BreakerConfig | None = None,
                max_attempts: int = 1, **kwargs: Any) -> EmbeddedDaemon:
    # Short real-time knobs, set in the provider section as an operator would: the
    # daemon talks real HTTP, so this test runs on the real clock (the breaker's
    # logic is covered under MockClock in test_breaker.py).
    knobs = [f"max_attempts = {max_attempts}", "retry_base = 0.01", "retry_cap = 0.02",
             # A lost create is looked for this long before it ends uncertain.
             "lookup_window = 1"]
    if breaker is not None:
        knobs += [f"breaker_min_calls = {breaker.min_calls}",
                  f"breaker_threshold = {breaker.threshold}",
                  f"breaker_cooldown = {breaker.cooldown}"]
    kwargs["extra"] = "\n".join([*knobs, kwargs.get("extra", "")])
    return await easel_daemon(toml(url, **kwargs))


def circuit_state(easel: EmbeddedDaemon, provider: str = "replicate") -> str:
    return easel.runtime.statistics()["providers"][provider]["circuit"]["state"]


async def run_job(easel: EmbeddedDaemon, model: str = "primary") -> dict[str, Any]:
    response = await easel.submit({"modelIdentifier": model, "prompt": "a red fox"})
    assert response.status_code == 202, response.text
    return await easel.wait(response.json()["id"], 20)


async def events(easel: EmbeddedDaemon, job_id: str, kind: str) -> list[dict[str, Any]]:
    response = await easel.client.get(f"/api/external/generation/{job_id}/events")
    return [e for e in response.json()["events"] if e["kind"] == kind]


async def metric(easel: EmbeddedDaemon, name: str, **labels: str) -> float | None:
    text = (await easel.client.get("/api/metrics")).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


async def wait_metric(easel: EmbeddedDaemon, value: float, name: str, **labels: str) -> None:
    with trio.fail_after(30):
        while await metric(easel, name, **labels) != value:
            await trio.sleep(0.02)


async def test_open_circuit_serves_from_the_fallback_then_a_probe_closes_it(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.1, error_5xx_rate=1.0, seed=7))
    url = await nursery.start(serve_simulator, sim)
    # The cool-down is real time, and phase two (the circuit still open) must
    # happen within it after phase one's lookups: generous, so a loaded machine
    # cannot let the circuit half-open before the second job is routed.
    easel = await start(easel_daemon, url,
                        breaker=BreakerConfig(min_calls=3, threshold=0.5, cooldown=5.0))
    state = {"provider": "replicate"}
    await wait_metric(easel, 0, "easel_circuit_state", **state)

    # A 5xx answer to a submission: the provider may have stored the task (a 5xx
    # proves nothing), so the job is neither moved nor resent: it is looked for
    # until the lookup window ends, then ends uncertain, not retryable. The create
    # and the lookups that follow it (also 5xx) open the circuit.
    job = await run_job(easel)
    assert job["status"] == "FAILED", job
    assert job["error"]["code"] == "UNCERTAIN_SUBMISSION" and not job["error"]["isRetryable"]
    assert job["servedBy"] == "primary" and job["attempts"] == 1
    assert await events(easel, job["id"], "fallback") == []
    stages = [e.get("state") for e in await events(easel, job["id"], "state")]
    assert stages[:3] == ["SUBMITTING", "RESOLVING", "FAILED"]
    await wait_metric(easel, 2, "easel_circuit_state", **state)
    assert await metric(easel, "easel_circuit_transitions_total",
                        provider="replicate", state="open") == 1
    submissions = sim.stats().submissions

    # Open: the next job never reaches Replicate; the sandbox serves it.
    job = await run_job(easel)
    assert job["status"] == "SUCCESS", job
    assert job["servedBy"] == "sandbox-image" and job["modelIdentifier"] == "primary"
    assert job["provider"] == "sandbox"
    [fallback] = await events(easel, job["id"], "fallback")
    assert (fallback["from"], fallback["to"], fallback["reason"]) == (
        "primary", "sandbox-image", "circuit_open")
    assert (fallback["provider"], fallback["state"]) == ("replicate", "open")
    assert await events(easel, job["id"], "circuit") == []  # moved at once, never held
    assert sim.stats().submissions == submissions

    # Replicate recovers; after the cool-down one probe goes through and closes it.
    sim.knobs = attrs.evolve(sim.knobs, error_5xx_rate=0.0)
    await wait_metric(easel, 1, "easel_circuit_state", **state)
    job = await run_job(easel)
    assert job["status"] == "SUCCESS", job
    assert job["servedBy"] == "primary" and job["provider"] == "replicate"
    await wait_metric(easel, 0, "easel_circuit_state", **state)
    assert sim.stats().submissions == submissions + 1
    assert circuit_state(easel) == "closed"


async def test_a_timed_out_submission_is_resolved_not_moved_to_a_fallback(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    # The simulator stores the task, then hangs past the daemon's read timeout.
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.1, timeout_rate=1.0,
                                   hang_seconds=2.0, fault_routes=("create",)))
    url = await nursery.start(serve_simulator, sim)
    easel = await start(easel_daemon, url, max_attempts=4)
    job = await run_job(easel)
    # Replicate may have the task, so it is looked for, found and adopted: neither
    # resent nor moved.
    assert job["status"] == "SUCCESS", job
    assert job["servedBy"] == "primary" and job["provider"] == "replicate"
    assert job["attempts"] == 1
    assert await events(easel, job["id"], "fallback") == []
    assert sim.stats().submissions == 1


async def test_a_refused_connection_is_retried_then_moved_to_the_fallback(
    easel_daemon: Any,
) -> None:
    easel = await start(easel_daemon, f"http://127.0.0.1:{free_port()}", max_attempts=3)
    job = await run_job(easel)
    assert job["status"] == "SUCCESS", job
    assert job["servedBy"] == "sandbox-image"
    assert job["attempts"] == 4  # three at Replicate, one at the sandbox
    [fallback] = await events(easel, job["id"], "fallback")
    assert fallback["from"] == "primary" and fallback["to"] == "sandbox-image"
    assert fallback["code"] == "PROVIDER_UNAVAILABLE"
    assert fallback["reason"] == "not_accepted" and fallback["attempts"] == 3


async def test_retries_are_counted_on_a_job_without_fallbacks(easel_daemon: Any) -> None:
    easel = await start(easel_daemon, f"http://127.0.0.1:{free_port()}", max_attempts=3,
                        fallbacks=False)
    job = await run_job(easel)
    assert job["status"] == "FAILED" and job["error"]["code"] == "PROVIDER_UNAVAILABLE"
    assert job["attempts"] == 3
    assert job["error"]["details"]["attempts"] == 3
    assert job["servedBy"] == "primary"


async def test_rate_limited_submissions_are_refusals_and_may_fall_back(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, rate_limit_rate=1.0, retry_after=0.01))
    url = await nursery.start(serve_simulator, sim)
    easel = await start(easel_daemon, url, max_attempts=2)
    job = await run_job(easel)
    assert job["status"] == "SUCCESS", job
    assert job["servedBy"] == "sandbox-image" and job["attempts"] == 3
    [fallback] = await events(easel, job["id"], "fallback")
    assert fallback["code"] == "RATE_LIMITED"
    assert sim.stats().submissions == 0  # a 429 created nothing
    # Rate limits say nothing about health: the circuit stays closed.
    assert circuit_state(easel) == "closed"


async def test_held_jobs_go_once_the_circuit_closes(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.1, error_5xx_rate=1.0, seed=3))
    url = await nursery.start(serve_simulator, sim)
    # A cool-down long enough that the jobs below are submitted while it is open
    # even on a loaded machine (a job dispatched as a half-open probe would fail).
    easel = await start(easel_daemon, url, fallbacks=False,
                        breaker=BreakerConfig(min_calls=2, cooldown=5.0))
    # Its create and the lookups after it (all 5xx) open the circuit.
    assert (await run_job(easel))["status"] == "FAILED"
    await wait_metric(easel, 2, "easel_circuit_state", provider="replicate")
    ids = []
    for i in range(5):
        response = await easel.submit({"modelIdentifier": "primary", "prompt": f"held {i}"})
        ids.append(response.json()["id"])
    # Each is told it waits for the circuit (however loaded the machine is, and so
    # however much of the cool-down has passed, a job is held before any probe).
    for job_id in ids:
        with trio.fail_after(30):
            while not (held := await events(easel, job_id, "circuit")):
                await trio.sleep(0.02)
        assert [(e["action"], e["state"]) for e in held] == [("held", "open")]
    sim.knobs = attrs.evolve(sim.knobs, error_5xx_rate=0.0)
    for job_id in ids:
        job = await easel.wait(job_id, 30)
        assert job["status"] == "SUCCESS" and job["servedBy"] == "primary", job


async def test_a_fallback_that_cannot_take_the_parameters_is_skipped(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.1))
    url = await nursery.start(serve_simulator, sim)
    easel = await start(easel_daemon, url)
    response = await easel.submit({"modelIdentifier": "primary", "prompt": "a red fox",
                                   "parameters": {"guidance": 3}})
    job = await easel.runtime.store.get_job(response.json()["id"])
    assert job is not None
    # The sandbox takes any small object; fal's flux/dev has no "guidance" (it
    # calls it guidance_scale) and would refuse the job as stored.
    assert easel.runtime.fits(job, "sandbox-image")
    assert not easel.runtime.fits(job, "fal-flux-dev")
    assert not easel.runtime.fits(job, "no-such-model")
