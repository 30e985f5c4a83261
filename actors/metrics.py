"""Prometheus metrics, in one registry the daemon exposes at ``/api/metrics``.

A registry of Easel's own (not the global default) so tests that build several
daemons in one process do not collide, and so ``/api/metrics`` holds only Easel.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_SUBMITTED = Counter(
    "easel_jobs_submitted", "Jobs accepted over HTTP", ["model"], registry=REGISTRY
)
JOBS_FINISHED = Counter(
    "easel_jobs_finished", "Jobs that reached a terminal state", ["provider", "outcome"],
    registry=REGISTRY,
)
PROVIDER_CALLS = Counter(
    "easel_provider_calls", "Calls to providers", ["provider", "call", "outcome"],
    registry=REGISTRY,
)
PROVIDER_LATENCY = Histogram(
    "easel_provider_call_seconds", "Latency of provider calls", ["provider", "call"],
    registry=REGISTRY,
)
ACTOR_RESTARTS = Counter(
    "easel_actor_restarts", "Actor crashes restarted by the supervisor", ["actor"],
    registry=REGISTRY,
)
MONITOR_DROPPED = Counter(
    "easel_monitor_dropped_events", "Monitor events dropped on a full mailbox",
    registry=REGISTRY,
)
JOBS_BY_STATE = Gauge(
    "easel_jobs", "Jobs by state (refreshed on scrape)", ["state"], registry=REGISTRY
)
SLOTS_HELD = Gauge(
    "easel_provider_slots_held", "In-flight slots held", ["provider"], registry=REGISTRY
)
CIRCUIT_STATE = Gauge(
    "easel_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", ["provider"],
    registry=REGISTRY,
)
CIRCUIT_TRANSITIONS = Counter(
    "easel_circuit_transitions", "Circuit breaker changes of state", ["provider", "state"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "easel_webhook_deliveries", "Client webhook attempts by outcome (delivered, retry, failed)",
    ["outcome", "reason"], registry=REGISTRY,
)
ORPHANS = Counter(
    "easel_orphans", "Provider tasks no job holds, found by the sweep, by what was done "
    "(cancelled, cancel_failed, kept)", ["provider", "action"], registry=REGISTRY,
)
FALLBACKS = Counter(
    "easel_fallbacks", "Jobs moved to a fallback model", ["model", "to", "reason"],
    registry=REGISTRY,
)
ALERTS_FIRING = Gauge(
    "easel_alerts_firing", "Alerts firing now (the monitor's built-in rules)", registry=REGISTRY,
)
ALERT_NOTIFICATIONS = Counter(
    "easel_alert_notifications", "Alert notification attempts by channel and outcome "
    "(sent, retry, failed)", ["channel", "outcome"], registry=REGISTRY,
)

#: Run time and queue wait buckets: 1 s to 30 min.
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800)
JOBS_COMPLETED = Counter(
    "easel_jobs_completed", "Jobs that reached a terminal state, by model, state and error code",
    ["model", "state", "code"], registry=REGISTRY,
)
JOB_ATTEMPTS_RETRIED = Counter(
    "easel_job_retries", "Submission attempts beyond the first, by model, of finished jobs",
    ["model"], registry=REGISTRY,
)
JOB_RUN_SECONDS = Histogram(
    "easel_job_run_seconds", "From a job's start at the provider to its end", ["model"],
    buckets=DURATION_BUCKETS, registry=REGISTRY,
)
JOB_QUEUE_SECONDS = Histogram(
    "easel_job_queue_wait_seconds", "From a job's acceptance to its submission", ["model"],
    buckets=DURATION_BUCKETS, registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "easel_queue_oldest_age_seconds", "Age of the oldest QUEUED job (0: none queued)",
    registry=REGISTRY,
)
