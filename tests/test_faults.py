"""Fault injection: a few hundred jobs through ``easel run`` against a Replicate
simulator that fails in every way a network service can.

The simulator answers 30% of requests with a 5xx, 10% with a 429 and
``Retry-After``, and 5% each with a read timeout (it hangs past Easel's request
timeout), a dropped connection, and a body that is not JSON; the last three strike
after the prediction is created, as they would in life. What must hold: every job
ends terminal, either SUCCESS or a failure with one of the documented codes; no
input is created twice at the provider; no job is attempted more often than the
retry policy allows; and the daemon is healthy at the end, with no actor restarts.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, write_config
from tests.process import DaemonProcess, submit_many, wait_all_terminal
from tests.simulators.base import fetch_stats, set_knobs, start_simulator_process

TOKEN = "r8_faults_token"
JOBS = 300
MAX_ATTEMPTS = 4

#: Every code a job of this test may fail with (the taxonomy is ``actors/errors.py``),
#: less INTERNAL_ERROR: a fault of the provider must never surface as a bug of Easel's.
CLASSIFIED = {
    "INVALID_REQUEST", "INVALID_PARAMETERS", "AUTHENTICATION_FAILED", "QUOTA_EXCEEDED",
    "RATE_LIMITED", "PROVIDER_ERROR", "PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT",
    "CONTENT_MODERATED", "TASK_TIMEOUT", "TASK_FAILED", "UNCERTAIN_SUBMISSION",
}

FAULTS = (
    "--duration", "0.3", "--token", TOKEN, "--seed", "7",
    "--error-5xx-rate", "0.3", "--rate-limit-rate", "0.1", "--retry-after", "0.25",
    "--timeout-rate", "0.05", "--hang-seconds", "3",
    "--reset-rate", "0.05", "--malformed-rate", "0.05",
)


def test_every_job_ends_classified_and_nothing_is_paid_twice(tmp_path: Path) -> None:
    with start_simulator_process("replicate", *FAULTS) as (_, sim_url):
        port = free_port()
        config = write_config(tmp_path, f"""
[providers.replicate]
base_url = "{sim_url}"
api_token = "{TOKEN}"
rate = 200
burst = 50
max_in_flight = 64
request_timeout = 1
max_attempts = {MAX_ATTEMPTS}
# About half the calls fail here: the breaker opens and closes again and again;
# a short cool-down keeps the run short. A create whose answer is lost is looked
# for 5 s before it ends uncertain.
breaker_cooldown = 1
lookup_window = 5
# The orphan sweep runs every second here (its default is five minutes).
sweep_interval = 1

[models.replicate-flux-schnell]
provider = "replicate"
provider_model = "black-forest-labs/flux-schnell"
max_duration = 120
polling = {{ strategy = "fixed", interval = 0.2 }}
""", port=port)
        base_url = f"http://127.0.0.1:{port}"
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            ids = submit_many(base_url, JOBS, "storm")
            with httpx.Client(base_url=base_url, timeout=40) as client:
                jobs = wait_all_terminal(client, ids, timeout=180)
                health = client.get("/api/health")
                detailed = client.get("/api/health/detailed").json()
                # The storm is over: every prediction Replicate holds is a job's
                # own, or the sweep reports it as an orphan (and cancels it).
                set_knobs(sim_url, error_5xx_rate=0.0, rate_limit_rate=0.0,
                          timeout_rate=0.0, reset_rate=0.0, malformed_rate=0.0)
                unowned = predictions(sim_url) - {
                    job["providerTaskId"] for job in jobs.values() if job["providerTaskId"]}
                orphans = wait_reported(client, ids, unowned)
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)

    outcomes = collections.Counter(
        job["status"] if job["status"] == "SUCCESS" else job["error"]["code"]
        for job in jobs.values()
    )
    print("outcomes:", dict(outcomes), "simulator faults:", stats.faults)
    assert sum(outcomes.values()) == JOBS
    assert set(outcomes) <= CLASSIFIED | {"SUCCESS"}, outcomes
    # The faults were real, and most jobs still got through the retries.
    assert sum(stats.faults.values()) > JOBS / 2
    assert outcomes["SUCCESS"] > JOBS / 3
    for job in jobs.values():
        if job["status"] != "SUCCESS":
            assert job["error"]["message"] and "details" in job["error"]
        assert job["attempts"] <= MAX_ATTEMPTS, job
    # Exactly once at the provider, and retries within the policy.
    assert stats.max_submissions_per_input == 1
    assert stats.requests["create"] <= JOBS * MAX_ATTEMPTS
    # No billed task left behind unseen.
    assert orphans == unowned, (len(orphans), len(unowned))
    for job in jobs.values():
        if job["status"] != "SUCCESS":
            assert job["error"]["code"] != "UNCERTAIN_SUBMISSION" or not job["error"]["isRetryable"]
    print("predictions owned by no job, reported as orphans:", len(orphans))
    # Healthy at the end: serving, no actor crashed.
    assert health.status_code == 200
    assert not any(detailed["restarts"].values()), detailed["restarts"]


def predictions(sim_url: str) -> set[str]:
    """Every prediction the simulator holds, through Replicate's own list API."""
    found: set[str] = set()
    url: str | None = f"{sim_url}/v1/predictions"
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        while url:
            page = client.get(url).raise_for_status().json()
            found.update(prediction["id"] for prediction in page["results"])
            url = page.get("next")
    return found


def wait_reported(client: httpx.Client, ids: list[str], unowned: set[str],
                  timeout: float = 120) -> set[str]:
    """The task ids the sweep has reported as orphans, once it has reported every
    one of ``unowned`` (or ``timeout`` has passed)."""
    deadline = time.monotonic() + timeout
    while True:
        reported = set()
        for job_id in ids:
            events = client.get(f"/api/external/generation/{job_id}/events").json()["events"]
            reported.update(e["taskId"] for e in events if e["kind"] == "orphan")
        if unowned <= reported or time.monotonic() > deadline:
            return reported
        time.sleep(1)
