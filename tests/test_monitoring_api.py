"""The monitoring HTTP surface of a running daemon: ``/api/metrics`` parsed by
``prometheus_client``'s own parser, with every series the README documents; the
admin stats in their documented shape."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.test_api import FAST_SANDBOX

#: The series the README lists (family names, as the parser gives them).
DOCUMENTED = {
    "easel_jobs_submitted", "easel_jobs_finished", "easel_jobs_completed", "easel_job_retries",
    "easel_job_run_seconds", "easel_job_queue_wait_seconds", "easel_jobs",
    "easel_queue_oldest_age_seconds", "easel_provider_calls", "easel_provider_call_seconds",
    "easel_provider_slots_held", "easel_circuit_state", "easel_alerts_firing",
}


async def test_metrics_parse_and_hold_the_documented_series(easel_daemon: Any) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    job = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "m"})
    await easel.wait(job.json()["id"])
    text = (await easel.client.get("/api/metrics")).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert DOCUMENTED <= set(families), DOCUMENTED - set(families)
    run = families["easel_job_run_seconds"]
    buckets = {s.labels["le"] for s in run.samples if s.name.endswith("_bucket")}
    assert {"1.0", "1800.0", "+Inf"} <= buckets
    completed = [s for s in families["easel_jobs_completed"].samples
                 if s.name == "easel_jobs_completed_total"]
    assert any(s.labels == {"model": "sandbox-image", "state": "SUCCEEDED", "code": ""}
               for s in completed)


async def test_stats_cover_jobs_adapters_and_the_process(easel_daemon: Any) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    job = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "m"})
    await easel.wait(job.json()["id"])
    stats = (await easel.client.get("/api/admin/monitoring/stats")).json()
    assert stats["totals"]["jobs"] == 1 and stats["totals"]["succeeded"] == 1
    assert stats["successRate"] == 1.0 and stats["averageDuration"] >= 0
    assert stats["adapters"]["sandbox"]["calls"] >= 1
    assert stats["process"]["memoryBytes"] > 0
    assert set(stats) >= {"timeRange", "totals", "rates", "lastError"}
    empty = (await easel.client.get("/api/admin/monitoring/stats",
                                    params={"from": "2001-01-01T00:00:00Z",
                                            "to": "2001-01-02T00:00:00Z"})).json()
    assert empty["totals"]["jobs"] == 0 and empty["successRate"] is None
    bad = await easel.client.get("/api/admin/monitoring/stats", params={"from": "yesterday"})
    assert bad.status_code == 400
    listed = (await easel.client.get("/api/admin/monitoring/alerts")).json()
    assert listed == {"alerts": []}
    assert "errors" in (await easel.client.get("/api/admin/monitoring/errors")).json()
