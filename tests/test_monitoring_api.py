"""The monitoring HTTP surface of a running daemon: ``/api/metrics`` parsed by
``prometheus_client``'s own parser, with every series the README documents; the
admin stats in their documented shape; the shipped Grafana dashboard and
Prometheus rules query only series Easel exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from actors import metrics
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


CONFIG = Path(__file__).resolve().parent.parent / "config"
SERIES = re.compile(r"\beasel_[a-z_]+")


def exported() -> set[str]:
    """Every series name Easel's registry exports (with counter and histogram
    suffixes)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + end for end in ("_bucket", "_count", "_sum"))
    return names


def test_the_grafana_dashboard_loads_and_queries_exported_series() -> None:
    dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    assert {"title", "uid", "schemaVersion", "panels"} <= set(dashboard)
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("queue depth", "throughput", "success ratio", "p50", "p95", "circuit",
                  "alerts"):
        assert topic in titles, topic
    names = exported()
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos", "targets", "datasource"} <= set(panel)
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            used = set(SERIES.findall(target["expr"]))
            assert used and used <= names, (panel["title"], used - names)


def test_the_prometheus_rules_name_exported_series() -> None:
    text = (CONFIG / "prometheus-alerts.yml").read_text()
    rules = re.findall(r"^\s+- alert: (\w+)", text, re.M)
    assert {"failure_rate", "timeout_rate", "job_retried", "crash_loop", "circuit_open",
            "queue_lag", "webhook_failing"} <= set(rules)
    exprs = text.split("expr:")[1:]
    assert len(exprs) == len(rules)
    names = exported()
    for expr in exprs:
        used = set(SERIES.findall(expr.split("labels:")[0]))
        assert used and used <= names, used - names
