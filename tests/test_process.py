"""Process-level tests: ``easel run`` as a subprocess, killed and restarted.

These are the promises the daemon makes to its users: a job accepted over HTTP is
never lost and never sent to a provider twice, whether the daemon is SIGKILLed or
drained with SIGTERM, and it is finished after a restart.
"""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import free_port, write_config
from tests.process import (
    PROJECT_ROOT,
    DaemonProcess,
    job_states,
    submit_many,
    wait_all_terminal,
)
from tests.simulators.base import fetch_stats, start_simulator_process

TOKEN = "r8_test_token"


def replicate_config(tmp_path: Path, sim_url: str, drain_timeout: float = 5) -> tuple[Path, str]:
    port = free_port()
    config = write_config(
        tmp_path,
        f"""
[providers.replicate]
base_url = "{sim_url}"
api_token = "{TOKEN}"
rate = 40
burst = 10
max_in_flight = 100
# A create caught by the kill is looked for this long before it ends uncertain.
lookup_window = 20

[models.replicate-flux-schnell]
provider = "replicate"
provider_model = "black-forest-labs/flux-schnell"
max_duration = 120
polling = {{ strategy = "fixed", interval = 0.5 }}
""",
        port=port,
    )
    text = config.read_text().replace("drain_timeout = 5", f"drain_timeout = {drain_timeout}")
    config.write_text(text)
    return config, f"http://127.0.0.1:{port}"


def test_sigkill_mid_flight_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    with start_simulator_process(
        "replicate", "--duration", "2", "--create-latency", "0.3", "--token", TOKEN
    ) as (_, sim_url):
        config, base_url = replicate_config(tmp_path, sim_url)
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            ids = submit_many(base_url, 100, "a lighthouse at dusk, take")
            time.sleep(0.4)
            daemon.kill()
            at_kill = collections.Counter(job_states(tmp_path / "state" / "easel.db").values())
            # The kill must have caught jobs on their way: otherwise this proves nothing.
            assert at_kill["SUBMITTING"] + at_kill["RUNNING"] + at_kill["QUEUED"] > 0, at_kill

            daemon.start()
            with httpx.Client(base_url=base_url, timeout=60) as client:
                jobs = wait_all_terminal(client, ids, timeout=120)
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)

    outcomes = collections.Counter(job["status"] for job in jobs.values())
    failures = {job["error"]["code"] for job in jobs.values() if job["status"] != "SUCCESS"}
    print(f"states at SIGKILL: {dict(at_kill)}; outcomes: {dict(outcomes)}; sim: {stats}")
    assert len(jobs) == 100
    assert outcomes["SUCCESS"] >= 95, (outcomes, failures)
    assert failures <= {"UNCERTAIN_SUBMISSION"}
    assert stats.max_submissions_per_input == 1
    assert stats.submissions <= 100
    after = job_states(tmp_path / "state" / "easel.db")
    assert "SUBMITTING" not in after.values()
    for job in jobs.values():
        if job["status"] == "SUCCESS":
            assert job["results"] and job["results"][0]["url"].endswith(".png")


def test_sigkill_during_submissions_adopts_or_resubmits_each_once(tmp_path: Path) -> None:
    """Kill while creates are in flight (the simulator records each prediction,
    then takes 2 s to answer): after the restart every job caught in SUBMITTING is
    either adopted (found in Replicate's list) or, when the request never arrived,
    resubmitted, each exactly once."""
    with start_simulator_process(
        "replicate", "--duration", "0.5", "--create-latency", "2", "--token", TOKEN
    ) as (_, sim_url):
        config, base_url = replicate_config(tmp_path, sim_url)
        config.write_text(config.read_text().replace(
            'provider_model = "black-forest-labs/flux-schnell"',
            'provider_model = "black-forest-labs/flux-schnell"\nresubmit_on_uncertain = true'))
        db = tmp_path / "state" / "easel.db"
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            ids = submit_many(base_url, 60, "a paper crane, take")
            deadline = time.monotonic() + 10
            while collections.Counter(job_states(db).values())["SUBMITTING"] < 20:
                assert time.monotonic() < deadline, job_states(db)
                time.sleep(0.05)
            daemon.kill()
            at_kill = {job_id: state for job_id, state in job_states(db).items()}
            submitting = [job_id for job_id, state in at_kill.items() if state == "SUBMITTING"]

            daemon.start()
            with httpx.Client(base_url=base_url, timeout=60) as client:
                jobs = wait_all_terminal(client, ids, timeout=120)
                events = {job_id: client.get(f"/api/external/generation/{job_id}/events").json()
                          for job_id in submitting}
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)

    kinds = {job_id: [e["kind"] for e in found["events"] if e["kind"] in ("reconciled", "resubmitted")]
             for job_id, found in events.items()}
    adopted = sum(1 for k in kinds.values() if k == ["reconciled"])
    resubmitted = sum(1 for k in kinds.values() if k == ["resubmitted"])
    print(f"submitting at kill: {len(submitting)}; adopted {adopted}, resubmitted {resubmitted}")
    assert adopted + resubmitted == len(submitting), kinds
    assert adopted > 0  # the creates in flight had reached the provider
    assert "SUBMITTING" not in job_states(db).values()
    assert {job["status"] for job in jobs.values()} == {"SUCCESS"}
    assert stats.max_submissions_per_input == 1
    assert stats.submissions == 60


def test_sigterm_drains_and_restart_finishes_everything(tmp_path: Path) -> None:
    drain_timeout = 5
    with start_simulator_process(
        "replicate", "--duration", "3", "--create-latency", "0.2", "--token", TOKEN
    ) as (_, sim_url):
        config, base_url = replicate_config(tmp_path, sim_url, drain_timeout=drain_timeout)
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            ids = submit_many(base_url, 40, "a quiet harbour, take")
            time.sleep(0.3)
            daemon.signal(signal.SIGTERM)
            # Within drain_timeout (plus process start-up/tear-down slack), and exit 0.
            assert daemon.wait(timeout=drain_timeout + 10) == 0, daemon.log_text()
            at_stop = collections.Counter(job_states(tmp_path / "state" / "easel.db").values())
            assert at_stop["SUCCEEDED"] < 40, "jobs must still be in flight at SIGTERM"
            # Drained: no submission was left half-recorded.
            assert at_stop["SUBMITTING"] == 0, at_stop

            daemon.start()
            with httpx.Client(base_url=base_url, timeout=60) as client:
                jobs = wait_all_terminal(client, ids, timeout=120)
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)
    outcomes = collections.Counter(job["status"] for job in jobs.values())
    assert outcomes == {"SUCCESS": 40}, [j["error"] for j in jobs.values() if j["error"]]
    assert stats.max_submissions_per_input == 1
    assert stats.submissions == 40
    assert "draining" in (tmp_path / "easel.out").read_text()


def test_submissions_during_drain_get_503(tmp_path: Path) -> None:
    # A slow provider call keeps the drain open long enough to observe it.
    with start_simulator_process(
        "replicate", "--duration", "5", "--create-latency", "2", "--token", TOKEN
    ) as (_, sim_url):
        config, base_url = replicate_config(tmp_path, sim_url, drain_timeout=10)
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            submit_many(base_url, 2, "slow")
            time.sleep(0.3)
            daemon.signal(signal.SIGTERM)
            time.sleep(0.3)
            response = httpx.post(
                f"{base_url}/api/external/generation",
                json={"modelIdentifier": "replicate-flux-schnell", "prompt": "late"},
            )
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "SHUTTING_DOWN"
            assert response.headers["retry-after"]
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.stop()


def test_cli_submit_wait_produces_a_png(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port)
    daemon = DaemonProcess(config, f"http://127.0.0.1:{port}", tmp_path / "easel.out")
    try:
        daemon.start()
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "submit", "--config", str(config),
             "--model", "sandbox-image", "--wait", "a red apple"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        job_id, url = result.stdout.split()
        assert url.startswith(f"http://127.0.0.1:{port}/media/{job_id}/")
        png = tmp_path / "out.png"
        png.write_bytes(httpx.get(url).content)
        assert Image.open(png).format == "PNG"
        status = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--json", "--config", str(config),
             job_id],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
        )
        assert json.loads(status.stdout)["status"] == "SUCCESS"
    finally:
        daemon.stop()
    # Log lines are JSON and carry the job id where they concern a job.
    lines = [json.loads(line) for line in
             (tmp_path / "state" / "logs" / "easel.log").read_text().splitlines()]
    assert any(line.get("job_id") == job_id and line.get("request_id") for line in lines)
    assert any(line.get("job_id") == job_id and "succeeded" in line["msg"] for line in lines)


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(20)
        daemon = DaemonProcess(config, f"http://127.0.0.1:{port}", tmp_path / "easel.out",
                               env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
        try:
            daemon.start()
            seen: list[str] = []
            while not any("READY=1" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            while not any("WATCHDOG=1" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            daemon.signal(signal.SIGTERM)
            while not any("STOPPING=1" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.stop()


def test_bad_config_exits_2_with_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.replicate]\nrate = "fast"\n')
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(bad)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "providers.replicate.rate: expected a number, got a string" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_sigint_also_drains(tmp_path: Path, signum: int) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port)
    daemon = DaemonProcess(config, f"http://127.0.0.1:{port}", tmp_path / "easel.out")
    try:
        daemon.start()
        daemon.signal(signum)
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.stop()
