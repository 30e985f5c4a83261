"""A batch's ``maxConcurrency`` seen from the provider's side: the most tasks a
simulator ever had running at once (``SimStats.max_active_seen``) never passes
it, and reaches it when the batch has more items than that.

An embedded daemon in front of an in-process Replicate simulator; every task
runs long enough that the items released together are all running together.
"""

from __future__ import annotations

from typing import Any

import trio

from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.replicate import ReplicateSimulator
from tests.test_batch_chain import BATCH, batch_end

TOKEN = "r8_test"


async def test_max_concurrency_is_never_passed(easel_daemon: Any, nursery: trio.Nursery) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=1.0))
    url = await nursery.start(serve_simulator, sim)
    easel = await easel_daemon(f"""
[providers.replicate]
base_url = "{url}"
api_token = "{TOKEN}"

[models.flux]
provider = "replicate"
provider_model = "owner/flux"
kind = "image"
polling = {{ strategy = "fixed", interval = 0.05 }}
""")
    requests = [{"modelIdentifier": "flux", "prompt": f"a lantern, take {i}"} for i in range(7)]
    response = await easel.client.post(BATCH, json={
        "requests": requests, "options": {"maxConcurrency": 3}})
    assert response.status_code == 202, response.text
    batch = await batch_end(easel, response.json()["batchId"])
    assert batch["status"] == "COMPLETED", batch
    stats = sim.stats()
    assert stats.submissions == 7 and stats.max_submissions_per_input == 1
    # Never more than three at once; and three, since the items released together
    # run together for a second each.
    assert stats.max_active_seen <= 3, stats
    assert stats.max_active_seen == 3, stats
