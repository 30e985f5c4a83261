"""The HTTP API end to end, on an embedded daemon and the sandbox provider."""

from __future__ import annotations

import io

import pytest
import trio
import trio.testing
from PIL import Image

FAST_SANDBOX = """
[providers.sandbox]
delay = 0.05
video_duration = 0.5

[models.sandbox-video]
provider = "sandbox"
provider_model = "sandbox-video"
kind = "video"
expected_duration = 0.5
max_duration = 30
resubmit_on_uncertain = true
polling = { strategy = "fixed", interval = 0.1 }
"""


def assert_error_shape(body: dict, code: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "isRetryable"}
    assert error["code"] == code
    assert error["message"]


async def test_image_job_produces_a_png(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a red apple"})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    job = await easel.wait(accepted["id"])
    assert job["status"] == "SUCCESS", job
    assert job["stage"] == "SUCCEEDED"
    assert job["attempts"] == 1
    assert job["completedAt"] and job["createdAt"]
    [result] = job["results"]
    assert result["type"] == "image"
    media = await easel.client.get(result["url"])
    assert media.status_code == 200
    image = Image.open(io.BytesIO(media.content))
    assert image.format == "PNG" and image.size == (512, 512)
    # The stored file is what was served.
    stored = easel.state_dir / "media" / accepted["id"] / "0.png"
    assert stored.read_bytes() == media.content


async def test_several_outputs(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.submit(
        {"modelIdentifier": "sandbox-image", "prompt": "three pears", "number_of_outputs": 3}
    )
    job = await easel.wait(response.json()["id"])
    assert [r["url"].rsplit("/", 1)[1] for r in job["results"]] == ["0.png", "1.png", "2.png"]


async def test_async_video_task_is_polled_to_success(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.submit({"modelIdentifier": "sandbox-video", "prompt": "a blue car"})
    job_id = response.json()["id"]
    job = await easel.wait(job_id)
    assert job["status"] == "SUCCESS", job
    assert job["providerTaskId"].startswith("sbv:")
    events = (await easel.client.get(f"/api/external/generation/{job_id}/events")).json()
    states = [e["state"] for e in events["events"] if e["kind"] == "state"]
    assert states == ["SUBMITTING", "RUNNING", "FINALIZING", "SUCCEEDED"]


async def test_failed_and_moderated_tasks_are_classified(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    failed = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x [fail]"})
    moderated = await easel.submit({"modelIdentifier": "sandbox-video", "prompt": "[moderate]"})
    job = await easel.wait(failed.json()["id"])
    assert job["status"] == "FAILED"
    assert job["error"]["code"] == "TASK_FAILED"
    job = await easel.wait(moderated.json()["id"])
    assert job["error"]["code"] == "CONTENT_MODERATED"
    assert job["error"]["isRetryable"] is False


async def test_idempotency_key(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    body = {"modelIdentifier": "sandbox-image", "prompt": "same"}
    first = await easel.submit(body, headers={"Idempotency-Key": "k1"})
    again = await easel.submit(dict(reversed(body.items())), headers={"Idempotency-Key": "k1"})
    other = await easel.submit({**body, "prompt": "different"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert_error_shape(other.json(), "CONFLICT")


async def test_wait_long_polls_until_terminal(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.submit({"modelIdentifier": "sandbox-video", "prompt": "slow"})
    job_id = response.json()["id"]
    polled = await easel.client.get(f"/api/external/generation/{job_id}", params={"wait": 20})
    assert polled.json()["status"] == "SUCCESS"
    # wait=0 answers at once with whatever state the job is in.
    quick = await easel.client.get(f"/api/external/generation/{job_id}", params={"wait": 0})
    assert quick.status_code == 200


async def test_cancel(easel_daemon) -> None:
    easel = await easel_daemon(
        FAST_SANDBOX.replace("video_duration = 0.5", "video_duration = 60")
    )
    response = await easel.submit({"modelIdentifier": "sandbox-video", "prompt": "long"})
    job_id = response.json()["id"]
    with trio.fail_after(10):
        while (await easel.client.get(f"/api/external/generation/{job_id}")).json()["stage"] != "RUNNING":
            await trio.sleep(0.02)
    cancelled = await easel.client.post(f"/api/external/generation/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["error"]["code"] == "TASK_CANCELLED"
    again = await easel.client.post(f"/api/external/generation/{job_id}/cancel")
    assert again.status_code == 409
    assert_error_shape(again.json(), "CONFLICT")
    missing = await easel.client.post("/api/external/generation/gen_nope/cancel")
    assert missing.status_code == 404
    # The slot it held is free again.
    await trio.testing.wait_all_tasks_blocked()
    assert easel.runtime.statistics()["providers"]["sandbox"]["slotsHeld"] == 0


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "INVALID_REQUEST"),
        (b'{"a": 1}', {"content-type": "text/plain"}, 415, "INVALID_REQUEST"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "INVALID_REQUEST"),
        (b'{"modelIdentifier": "nope", "prompt": "x"}', {"content-type": "application/json"},
         400, "INVALID_REQUEST"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": ""}',
         {"content-type": "application/json"}, 422, "INVALID_PARAMETERS"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": "x", "number_of_outputs": "2"}',
         {"content-type": "application/json"}, 422, "INVALID_PARAMETERS"),
        (b'{"modelIdentifier": "sandbox-image", "prompt": "' + b"x" * 2_000_000 + b'"}',
         {"content-type": "application/json"}, 413, "INVALID_REQUEST"),
    ],
)
async def test_bad_submissions_get_clear_errors(easel_daemon, content, headers, status, code) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.client.post("/api/external/generation", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert_error_shape(response.json(), code)


async def test_unknown_model_names_the_known_ones(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.submit({"modelIdentifier": "nope", "prompt": "x"})
    assert "sandbox-image" in response.json()["error"]["details"]["knownModels"]


async def test_unknown_paths_and_methods_use_the_error_shape(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    missing = await easel.client.get("/api/nothing")
    assert missing.status_code == 404
    assert_error_shape(missing.json(), "NOT_FOUND")
    wrong = await easel.client.delete("/api/external/generation")
    assert wrong.status_code == 405
    assert_error_shape(wrong.json(), "INVALID_REQUEST")
    job = await easel.client.get("/api/external/generation/gen_missing")
    assert job.status_code == 404
    assert_error_shape(job.json(), "NOT_FOUND")


async def test_draining_refuses_submissions_with_retry_after(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    easel.runtime.lifecycle.start_drain()
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "late"})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert_error_shape(response.json(), "SHUTTING_DOWN")
    assert response.json()["error"]["isRetryable"] is True
    health = await easel.client.get("/api/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy" and health.json()["draining"] is True


async def test_health_and_metrics(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    job = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "m"})
    await easel.wait(job.json()["id"])
    health = await easel.client.get("/api/health")
    assert health.status_code == 200
    assert set(health.json()) >= {"status", "timestamp", "uptime", "version"}
    assert health.json()["status"] == "healthy"
    detailed = (await easel.client.get("/api/health/detailed")).json()
    components = detailed["components"]
    assert components["database"]["status"] == "up"
    assert components["adapters"]["sandbox"]["status"] == "up"
    assert components["adapters"]["sandbox"]["lastSuccess"] is not None
    assert components["adapters"]["sandbox"]["responseTime"] >= 0
    assert set(components) == {"database", "storage", "adapters", "pollingService"}
    metrics = await easel.client.get("/api/metrics")
    assert 'easel_jobs{state="SUCCEEDED"}' in metrics.text
    assert "easel_provider_calls_total" in metrics.text


async def test_priority_order_when_the_provider_is_busy(easel_daemon) -> None:
    easel = await easel_daemon(
        FAST_SANDBOX.replace("video_duration = 0.5", "video_duration = 60")
        .replace("[providers.sandbox]", "[providers.sandbox]\nmax_in_flight = 1")
    )
    # One slot, held while the jobs queue up: once it is free, the queue is
    # served by priority, then age, whatever the order of arrival.
    # One slot, taken by a job that waits at the provider until cancelled.
    settings = easel.runtime.providers["sandbox"].settings
    assert settings.max_in_flight == 1
    busy = (await easel.submit({"modelIdentifier": "sandbox-video", "prompt": "busy"})).json()
    with trio.fail_after(10):
        while (await easel.client.get(f"/api/external/generation/{busy['id']}")).json()["stage"] != "RUNNING":
            await trio.sleep(0.02)
    ids = {}
    for name, priority in [("first", 0), ("low", 1), ("high", 9), ("mid", 5), ("low2", 1)]:
        response = await easel.submit(
            {"modelIdentifier": "sandbox-image", "prompt": name, "priority": priority}
        )
        ids[name] = response.json()["id"]
    await easel.client.post(f"/api/external/generation/{busy['id']}/cancel")
    finished = {name: (await easel.wait(job_id))["completedAt"] for name, job_id in ids.items()}
    order = sorted(finished, key=lambda name: finished[name])
    assert order == ["high", "mid", "low", "low2", "first"]
