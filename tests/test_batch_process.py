"""A batch survives a SIGKILL: ``easel run`` as a subprocess, killed while a
batch's items are on their way to a Replicate simulator (also a subprocess),
then restarted. The batch completes, and no item was sent twice: the
simulator's ``max_submissions_per_input`` is 1, and its high-water mark of
running tasks never passed the batch's ``maxConcurrency``, across the restart.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import httpx

from tests.process import DaemonProcess, job_states
from tests.simulators.base import fetch_stats, start_simulator_process
from tests.test_process import TOKEN, replicate_config

ITEMS = 40
CONCURRENCY = 10
BATCH = "/api/external/generation/batch"


def wait_for_end(client: httpx.Client, batch_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = client.get(f"{BATCH}/{batch_id}", params={"limit": 100}).json()
        if batch["status"] != "PROCESSING":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def test_sigkill_mid_batch_then_restart_completes_it_paying_once(tmp_path: Path) -> None:
    with start_simulator_process(
        "replicate", "--duration", "1", "--create-latency", "0.3", "--token", TOKEN
    ) as (_, sim_url):
        config, base_url = replicate_config(tmp_path, sim_url)
        # A create caught by the kill is looked for briefly; one that never
        # arrived is then sent again (the proof it never arrived is the lookup).
        config.write_text(config.read_text().replace("lookup_window = 20", "lookup_window = 3")
                          .replace('max_duration = 120', 'max_duration = 120\n'
                                   'resubmit_on_uncertain = true'))
        db = tmp_path / "state" / "easel.db"
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        try:
            daemon.start()
            with httpx.Client(base_url=base_url, timeout=60) as client:
                response = client.post(BATCH, json={
                    "requests": [{"custom_id": f"take-{i}", "modelIdentifier":
                                  "replicate-flux-schnell", "prompt": f"a paper boat, take {i}"}
                                 for i in range(ITEMS)],
                    "options": {"maxConcurrency": CONCURRENCY},
                })
                assert response.status_code == 202, response.text
                batch_id = response.json()["batchId"]
                # Kill while creates are in flight and most items still wait.
                deadline = time.monotonic() + 30
                while collections.Counter(job_states(db).values())["SUBMITTING"] < 3:
                    assert time.monotonic() < deadline, job_states(db)
                    time.sleep(0.02)
                daemon.kill()
                at_kill = collections.Counter(job_states(db).values())
                assert at_kill["WAITING"] > 0, at_kill

                daemon.start()
                batch = wait_for_end(client, batch_id, timeout=180)
        finally:
            daemon.stop()
        stats = fetch_stats(sim_url)

    print(f"states at SIGKILL: {dict(at_kill)}; batch: {batch['status']}; sim: {stats}")
    assert batch["status"] == "COMPLETED", batch
    assert batch["completedTasks"] == ITEMS
    assert sorted(task["customId"] for task in batch["tasks"]) == sorted(
        f"take-{i}" for i in range(ITEMS))
    assert stats.max_submissions_per_input == 1
    assert stats.submissions == ITEMS
    assert stats.max_active_seen <= CONCURRENCY
    assert "SUBMITTING" not in job_states(db).values()
