"""The experiments over HTTP, on a daemon with the sandbox: the admin family
(create, list, read, start/pause/complete, weights, results) in the standard
error shape, submissions enrolled and rewritten to their variant, and the rate
route (only the owning key; a new rating replaces the last).

The sandbox's own fault knob plants an effect: a prompt holding ``[fail]`` fails.
Variant A's template appends ``]``, so a client prompt ending in ``[fail`` fails
under A and succeeds under B.
"""

from __future__ import annotations

from typing import Any

from tests.test_api import FAST_SANDBOX
from tests.test_keys import bearer, make_key

CONFIG = FAST_SANDBOX + """
[models.sandbox-image-b]
provider = "sandbox"
provider_model = "sandbox-image"
kind = "image"
cost = 2
"""

BODY: dict[str, Any] = {
    "name": "closing bracket", "match": "sandbox-image",
    "variants": [{"modelIdentifier": "sandbox-image", "promptTemplate": "{prompt}]"},
                 {"modelIdentifier": "sandbox-image-b"}],
    "metrics": [{"name": "success_rate", "type": "primary", "goal": "maximize"},
                {"name": "cost", "type": "secondary", "goal": "minimize"}],
}
ADMIN = "/api/admin/experiments"


async def test_admin_family_and_enrolment_end_to_end(easel_daemon: Any) -> None:
    easel = await easel_daemon(CONFIG)
    client = easel.client
    refused = await client.post(ADMIN, json={
        "name": "x", "variants": [{"modelIdentifier": "nope"},
                                  {"modelIdentifier": "sandbox-image", "weight": "heavy"}]})
    assert refused.status_code == 422
    problems = refused.json()["error"]["details"]["problems"]
    assert any(p.startswith("variants[0].modelIdentifier") for p in problems)
    assert any(p.startswith("variants[1].weight") for p in problems)

    made = await client.post(ADMIN, json=BODY)
    assert made.status_code == 201, made.text
    experiment = made.json()
    experiment_id = experiment["id"]
    assert experiment["state"] == "DRAFT"
    assert (await client.post(f"{ADMIN}/{experiment_id}/pause")).status_code == 409
    assert (await client.get(f"{ADMIN}/exp_missing")).json()["error"]["code"] == "NOT_FOUND"
    started = await client.post(f"{ADMIN}/{experiment_id}/start")
    assert started.status_code == 200 and started.json()["state"] == "RUNNING"
    listed = (await client.get(ADMIN)).json()["experiments"]
    assert [e["id"] for e in listed] == [experiment_id]

    by_variant: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for n in range(24):
        prompt = f"picture {n} [fail" if n % 2 else f"picture {n}"
        answer = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": prompt,
                                     "userId": f"user-{n}"})
        assert answer.status_code == 202, answer.text
        job = await easel.wait(answer.json()["id"])
        stored = await easel.runtime.get_job(job["id"])
        assert stored.experiment_id == experiment_id
        by_variant[stored.variant_id or ""].append(job)
        if stored.variant_id == "B":
            assert job["modelIdentifier"] == "sandbox-image-b" and job["cost"] == 2
            assert job["status"] == "SUCCESS"
        else:
            assert job["prompt"] == prompt + "]"
            assert job["status"] == ("FAILED" if n % 2 else "SUCCESS")
    assert by_variant["A"] and by_variant["B"]

    results = await client.get(f"{ADMIN}/{experiment_id}/results")
    assert results.status_code == 200, results.text
    assert results.json()["spend"] == 2 * len(by_variant["B"])
    outputs = await easel.runtime.experiments.recent_outputs(experiment_id, per_variant=3)
    assert len(outputs["B"]) == 3 and all(job.variant_id == "B" for job in outputs["B"])

    weights = await client.post(f"{ADMIN}/{experiment_id}/weights",
                                json={"weights": {"A": 1, "B": 3}})
    assert weights.status_code == 200 and weights.json()["phase"] == 1
    assert weights.json()["variants"][1]["share"] == 0.75
    bad = await client.post(f"{ADMIN}/{experiment_id}/weights", json={"weights": {"A": 1}})
    assert bad.status_code == 422
    done = await client.post(f"{ADMIN}/{experiment_id}/complete")
    assert done.json()["state"] == "COMPLETED"
    late = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "late",
                               "userId": "user-1"})
    assert (await easel.runtime.get_job(late.json()["id"])).experiment_id is None
    unknown = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x",
                                  "experiment": "exp_missing"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["details"] == {"param": "experiment"}
    named = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x",
                                "experiment": experiment_id})
    assert named.status_code == 202  # a completed experiment enrols no one
    assert (await easel.runtime.get_job(named.json()["id"])).experiment_id is None


async def test_rating_is_for_the_owning_key_and_replaces(easel_daemon: Any) -> None:
    easel = await easel_daemon(CONFIG)
    admin = bearer(await make_key(easel, "admin"))
    mine, theirs = [bearer(await make_key(easel)) for _ in range(2)]
    made = await easel.client.post(ADMIN, json=BODY, headers=admin)
    await easel.client.post(f"{ADMIN}/{made.json()['id']}/start", headers=admin)
    assert (await easel.client.get(ADMIN, headers=mine)).status_code == 403
    answer = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a cat"},
                                headers=mine)
    job_id = answer.json()["id"]
    with_key = await easel.client.get(f"/api/external/generation/{job_id}",
                                      params={"wait": 30}, headers=mine)
    assert with_key.json()["status"] == "SUCCESS"
    rate = f"/api/external/generation/{job_id}/rate"

    for someone_else in (theirs, admin):
        other = await easel.client.post(rate, json={"rating": 1}, headers=someone_else)
        assert other.status_code == 404 and other.json()["error"]["code"] == "NOT_FOUND"
    missing = await easel.client.post("/api/external/generation/gen_nothing/rate",
                                      json={"rating": 1}, headers=mine)
    assert missing.status_code == 404
    for body in ({"rating": 0}, {"rating": 6}, {"rating": "5"}, {"rating": 3, "extra": 1}):
        refused = await easel.client.post(rate, json=body, headers=mine)
        assert refused.status_code in (400, 422), body

    first = await easel.client.post(rate, json={"rating": 2, "feedback": "blurry"},
                                    headers=mine)
    assert first.status_code == 200, first.text
    assert first.json()["rating"] == 2 and first.json()["variantId"] in ("A", "B")
    second = await easel.client.post(rate, json={"rating": 5}, headers=mine)
    assert (second.json()["rating"], second.json()["feedback"]) == (5, None)
    stored = await easel.runtime.get_job(job_id)
    assert (stored.rating, stored.feedback) == (5, None)
    shown = (await easel.client.get(f"/api/external/generation/{job_id}", headers=mine)).json()
    assert (shown["rating"], shown["variantId"], shown["experimentId"]) == (
        5, first.json()["variantId"], first.json()["experimentId"])
