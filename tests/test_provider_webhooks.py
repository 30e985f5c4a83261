"""Provider webhook answers tell nothing about which task ids exist.

fal's and Kling's deliveries carry nothing Easel verifies, so anyone who reaches
the port may send one: if a known task were answered differently from an unknown
one, task ids could be probed. A real daemon with a fal section (and a real fal
simulator holding one long task) answers every well-formed delivery alike.
"""

from __future__ import annotations

from typing import Any

import trio

from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.fal import FalSimulator

KEY = "fal-webhook-key:fal-webhook-secret"


async def test_known_and_unknown_task_ids_get_the_same_answer(
    easel_daemon: Any, nursery: trio.Nursery
) -> None:
    sim_url = await nursery.start(serve_simulator, FalSimulator(Knobs(token=KEY, duration=600)))
    easel = await easel_daemon(f"""
[providers.fal]
base_url = "{sim_url}"
api_key = "{KEY}"

[models.fal-flux-dev]
provider = "fal"
provider_model = "fal-ai/flux/dev"
max_duration = 900
polling = {{ strategy = "fixed", interval = 300 }}
""")
    submitted = await easel.submit({"modelIdentifier": "fal-flux-dev", "prompt": "a lighthouse"})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    with trio.fail_after(20):
        while (job := await easel.runtime.store.get_job(job_id)) is None or not job.provider_task_id:
            await trio.sleep(0.05)
    known = job.provider_task_id.partition(" ")[0]

    answers = []
    for request_id in (known, "0a0a0a0a-unknown-id", known):
        answer = await easel.client.post("/api/providers/fal/webhook",
                                         json={"request_id": request_id, "status": "OK"})
        answers.append((answer.status_code, answer.content))
    assert answers[0] == answers[1] == answers[2] == (200, b'{"received": true}')
