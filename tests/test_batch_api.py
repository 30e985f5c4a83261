"""The batch family over HTTP, against an embedded daemon with the sandbox: plan A's
shapes and statuses, the estimate and dryRun, the quota on the estimate, a
50,000-line JSONL accepted and its results streamed back with every custom_id
once, cancel, retry, and each key seeing only its own batches."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from tests.conftest import EmbeddedDaemon
from tests.test_api import FAST_SANDBOX
from tests.test_keys import bearer, make_key

BATCH = "/api/external/generation/batch"
#: Fast sandbox, no quota in the way, large batches allowed to run wide.
CONFIG = FAST_SANDBOX.replace("[providers.sandbox]", """[providers.sandbox]
rate = 100000
burst = 1000
max_in_flight = 200""") + """
[limits]
max_queue_depth = 0
max_active_jobs = 0
rate = 0

[models.sandbox-image]
cost = 0.04

[batches]
max_concurrency = 200
"""
#: A video that takes an hour: items that are certainly still running.
SLOW = CONFIG.replace("video_duration = 0.5", "video_duration = 3600")


def item(custom_id: str, prompt: str = "a red fox", **fields: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "modelIdentifier": "sandbox-image", "prompt": prompt,
            **fields}


async def post(easel: EmbeddedDaemon, body: dict[str, Any], path: str = BATCH,
               **kwargs: Any) -> httpx.Response:
    return await easel.client.post(path, json=body, **kwargs)


async def ended(easel: EmbeddedDaemon, batch_id: str, **kwargs: Any) -> dict[str, Any]:
    """The batch once it is no longer PROCESSING."""
    with trio.fail_after(60):
        while True:
            batch = (await easel.client.get(f"{BATCH}/{batch_id}", **kwargs)).json()
            if batch["status"] != "PROCESSING":
                return batch  # type: ignore[no-any-return]
            await trio.sleep(0.05)


async def results(easel: EmbeddedDaemon, batch_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    response = await easel.client.get(f"{BATCH}/{batch_id}/results", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


async def test_plan_a_a_batch_runs_to_completed(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    response = await post(easel, {"requests": [item("a"), item("b"), item("c")],
                                  "options": {"maxConcurrency": 2}})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"batchId", "totalTasks", "status", "estimatedCost", "tasks"}
    assert accepted["totalTasks"] == 3 and accepted["status"] == "PROCESSING"
    assert accepted["estimatedCost"] == 0.12
    assert [task["customId"] for task in accepted["tasks"]] == ["a", "b", "c"]
    assert {task["status"] for task in accepted["tasks"]} == {"WAITING"}
    batch = await ended(easel, accepted["batchId"])
    assert batch["status"] == "COMPLETED"
    assert (batch["completedTasks"], batch["failedTasks"], batch["progress"]) == (3, 0, 100.0)
    assert batch["options"]["maxConcurrency"] == 2
    tasks = batch["tasks"]
    assert [(t["index"], t["customId"], t["status"]) for t in tasks] == [
        (0, "a", "SUCCESS"), (1, "b", "SUCCESS"), (2, "c", "SUCCESS")]
    assert all(t["results"][0]["url"].startswith("http") for t in tasks)
    assert [t["id"] for t in tasks] == [t["id"] for t in accepted["tasks"]]
    # Each item is a job too, readable on its own.
    job = (await easel.client.get(f"/api/external/generation/{tasks[0]['id']}")).json()
    assert job["batchId"] == accepted["batchId"] and job["customId"] == "a"


async def test_a_failed_item_makes_partial_failed_and_its_error_is_in_the_results(
        easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    accepted = (await post(easel, {"requests": [item("ok"), item("bad", "x [fail]")]})).json()
    batch = await ended(easel, accepted["batchId"])
    assert batch["status"] == "PARTIAL_FAILED" and batch["failedTasks"] == 1
    lines = {line["custom_id"]: line for line in await results(easel, accepted["batchId"])}
    assert set(lines) == {"ok", "bad"}
    assert lines["bad"]["status"] == "FAILED" and lines["bad"]["error"]["code"] == "TASK_FAILED"
    assert lines["ok"]["status"] == "SUCCESS" and lines["ok"]["results"][0]["url"]
    assert set(lines["ok"]) == {"custom_id", "job_id", "status", "results", "error"}


async def test_every_faulty_item_is_named_and_nothing_is_stored(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    response = await post(easel, {"requests": [
        item("a"), item("b", ""), item("c", dependsOn=["nope"]), item("a")]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_PARAMETERS"
    assert [(i["index"], i["customId"]) for i in error["details"]["items"]] == [
        (1, "b"), (2, "c"), (3, "a")]
    cycle = await post(easel, {"requests": [item("x", dependsOn=["y"]),
                                            item("y", dependsOn=["x"])]})
    assert "a dependency cycle: x -> y -> x" in cycle.json()["error"]["details"]["items"][0][
        "problems"][0]
    listed = (await easel.client.get("/api/external/generation")).json()
    assert listed["data"] == []


async def test_dry_run_and_estimate_price_the_batch_and_store_nothing(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    body = {"requests": [item("a", number_of_outputs=2), item("b"),
                         {"custom_id": "v", "modelIdentifier": "sandbox-video", "prompt": "p"}]}
    dry = await post(easel, {**body, "dryRun": True})
    assert dry.status_code == 200
    estimate = await post(easel, body, f"{BATCH}/estimate")
    assert estimate.status_code == 200
    found = estimate.json()
    assert dry.json() == {"dryRun": True, **found}
    assert found["estimatedCost"] == 0.12 and found["totalTasks"] == 3
    assert found["byModel"]["sandbox-image"] == {"tasks": 2, "cost": 0.12}
    assert found["unpricedModels"] == ["sandbox-video"]
    assert [t["estimatedCost"] for t in found["tasks"]] == [0.08, 0.04, 0.0]
    assert (await easel.client.get("/api/external/generation")).json()["data"] == []


async def test_the_daily_spend_applies_to_the_estimate_at_submit(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    token = await make_key(easel, daily_spend=0.1)
    over = await post(easel, {"requests": [item(f"i{n}") for n in range(3)]},
                      headers=bearer(token))
    assert over.status_code == 429
    assert over.json()["error"]["details"]["limit"] == "daily_spend"
    under = await post(easel, {"requests": [item("one"), item("two")]}, headers=bearer(token))
    assert under.status_code == 202


async def test_fifty_thousand_jsonl_lines_accepted_and_every_custom_id_streamed_once(
        easel_daemon) -> None:
    easel = await easel_daemon(SLOW)
    count = 50_000
    lines = "\n".join(json.dumps({"custom_id": f"row-{n}", "modelIdentifier": "sandbox-video",
                                  "prompt": f"clip {n}"}) for n in range(count))
    assert len(lines) > 1_048_576  # past the body limit of every other route
    response = await easel.client.post(
        BATCH, content=lines.encode(), params={"maxConcurrency": "50", "stopOnError": "false"},
        headers={"Content-Type": "application/x-ndjson"}, timeout=120)
    assert response.status_code == 202, response.text[:500]
    accepted = response.json()
    assert accepted["totalTasks"] == count and len(accepted["tasks"]) == count
    batch_id = accepted["batchId"]
    running = (await easel.client.get(f"{BATCH}/{batch_id}", params={"limit": 2})).json()
    assert running["options"]["maxConcurrency"] == 50 and len(running["tasks"]) == 2
    assert running["nextAfter"] == 1
    cancelled = (await easel.client.post(f"{BATCH}/{batch_id}/cancel", timeout=120)).json()
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["cancelledTasks"] == count
    streamed = await results(easel, batch_id, timeout=120)
    ids = [line["custom_id"] for line in streamed]
    assert len(ids) == count and set(ids) == {f"row-{n}" for n in range(count)}
    assert {line["status"] for line in streamed} == {"CANCELLED"}


async def test_a_jsonl_problem_names_its_line_and_other_bodies_are_refused(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG + "max_body_bytes = 4096\n")
    body = (json.dumps(item("a")) + "\n\n{not json\n" + json.dumps(item("b", ""))).encode()
    response = await easel.client.post(BATCH, content=body,
                                       headers={"Content-Type": "application/x-ndjson"})
    assert response.status_code == 422
    assert [(i["index"], i["line"]) for i in response.json()["error"]["details"]["items"]] == [
        (1, 3), (2, 4)]
    text = await easel.client.post(BATCH, content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    big = await easel.client.post(BATCH, content=b"x" * 5000,
                                  headers={"Content-Type": "application/x-ndjson"})
    assert big.status_code == 413
    assert "4096 bytes" in big.json()["error"]["message"]


async def test_cancel_ends_the_items_not_finished(easel_daemon) -> None:
    easel = await easel_daemon(SLOW)
    accepted = (await post(easel, {"requests": [
        {"custom_id": f"v{n}", "modelIdentifier": "sandbox-video", "prompt": "slow"}
        for n in range(5)], "options": {"maxConcurrency": 2}})).json()
    batch_id = accepted["batchId"]
    with trio.fail_after(30):
        while (await easel.client.get(f"{BATCH}/{batch_id}")).json()["runningTasks"] < 2:
            await trio.sleep(0.05)
    response = await easel.client.post(f"{BATCH}/{batch_id}/cancel")
    assert response.status_code == 200
    batch = await ended(easel, batch_id)
    assert batch["status"] == "CANCELLED" and batch["cancelledTasks"] == 5
    again = await easel.client.post(f"{BATCH}/{batch_id}/cancel")
    assert again.status_code == 409


async def test_retry_runs_only_what_did_not_succeed(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    accepted = (await post(easel, {"requests": [item("ok"), item("bad", "x [fail]")]})).json()
    batch_id = accepted["batchId"]
    first = await ended(easel, batch_id)
    before = {t["customId"]: t["id"] for t in first["tasks"]}
    unknown = await easel.client.post(f"{BATCH}/{batch_id}/retry", json={"items": ["ghost"]})
    assert unknown.status_code == 400
    response = await easel.client.post(f"{BATCH}/{batch_id}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["repairs"] == 1
    second = await ended(easel, batch_id)
    after = {t["customId"]: t["id"] for t in second["tasks"]}
    assert after["ok"] == before["ok"] and after["bad"] != before["bad"]
    assert second["status"] == "PARTIAL_FAILED" and second["repairs"] == 1
    named = await easel.client.post(f"{BATCH}/{batch_id}/retry", json={"items": ["ok"]})
    assert named.status_code == 200
    third = await ended(easel, batch_id)
    assert {t["customId"]: t["id"] for t in third["tasks"]}["ok"] != before["ok"]


async def test_a_key_sees_only_its_own_batches(easel_daemon) -> None:
    easel = await easel_daemon(SLOW)
    mine, theirs = await make_key(easel), await make_key(easel)
    reader = await make_key(easel, "read")
    body = {"requests": [{"modelIdentifier": "sandbox-video", "prompt": "slow"}]}
    accepted = await post(easel, body, headers=bearer(mine))
    assert accepted.status_code == 202
    batch_id = accepted.json()["batchId"]
    assert (await easel.client.get(f"{BATCH}/{batch_id}", headers=bearer(mine))).status_code \
        == 200
    for path in ("", "/results"):
        other = await easel.client.get(f"{BATCH}/{batch_id}{path}", headers=bearer(theirs))
        assert other.status_code == 404 and other.json()["error"]["code"] == "NOT_FOUND"
    for action in ("cancel", "retry"):
        other = await easel.client.post(f"{BATCH}/{batch_id}/{action}", headers=bearer(theirs))
        assert other.status_code == 404
    refused = await post(easel, body, headers=bearer(reader))
    assert refused.status_code == 403
    assert (await post(easel, body, f"{BATCH}/estimate", headers=bearer(reader))).status_code \
        == 403


async def test_a_draining_daemon_refuses_a_batch(easel_daemon) -> None:
    easel = await easel_daemon(CONFIG)
    easel.runtime.lifecycle.draining = True
    response = await post(easel, {"requests": [item("a")]})
    assert response.status_code == 503 and response.headers["Retry-After"]
