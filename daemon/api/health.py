"""The health and metrics family: is Easel up, what is it doing, Prometheus figures.

``GET /api/health`` is what load balancers and systemd-style checks poll: 200 with
``status: ok``, or 503 while draining, when the database does not answer, or while
an actor is restarting and reloading its state (``actors`` names them). Its
answer is cached for ``HEALTH_CACHE_SECONDS`` so frequent checks cost one database
ping a second at most. ``/api/health/detailed`` adds the runtime's statistics and
job counts (``storage``: the backend, probed on each call, whether it answered, its
last error, bytes stored, upload latencies); ``/api/metrics`` is the Prometheus registry, with the job and slot
gauges refreshed from the same figures when scraped.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app

from actors import metrics
from daemon.api.errors import json_response
from daemon.api.services import services

blueprint = Blueprint("health", __name__, url_prefix="/api")

HEALTH_CACHE_SECONDS = 1.0


@attrs.define
class _HealthCache:
    """One app's last ``/api/health`` body and the ``time.monotonic()`` it was made at."""

    at: float = -1e9
    body: dict[str, Any] | None = None


async def _health_body() -> dict[str, Any]:
    api = services()
    runtime = api.runtime
    try:
        await runtime.ping_store()
        database = "ok"
    except Exception as exc:  # a failing database is what health is for
        database = f"error: {exc}"
    recovering = runtime.not_running()
    state = "draining" if runtime.lifecycle.draining else "ok"
    if database != "ok" or recovering:
        state = "degraded"
    return {
        "status": state,
        "database": database,
        "actors": f"restarting: {', '.join(recovering)}" if recovering else "ok",
        "uptimeSeconds": round(time.time() - api.started_at, 1),
        "providers": sorted(runtime.providers),
        "models": sorted(runtime.catalog),
    }


@blueprint.get("/health")
async def health() -> Response:
    cache: _HealthCache = current_app.extensions.setdefault("easel.health", _HealthCache())
    now = time.monotonic()
    if cache.body is None or now - cache.at > HEALTH_CACHE_SECONDS:
        cache.body = await _health_body()
        cache.at = now
    body = cache.body
    return json_response(body, 200 if body["status"] == "ok" else 503)


@blueprint.get("/health/detailed")
async def health_detailed() -> Response:
    runtime = services().runtime
    counts = await runtime.count_by_state()
    await runtime.probe_storage()  # "storage" then says whether it answers now
    return json_response({**runtime.statistics(), "jobs": counts})


@blueprint.get("/metrics")
async def prometheus() -> Response:
    runtime = services().runtime
    for state, count in (await runtime.count_by_state()).items():
        metrics.JOBS_BY_STATE.labels(state=state).set(count)
    for name, figures in runtime.statistics()["providers"].items():
        metrics.SLOTS_HELD.labels(provider=name).set(figures["slotsHeld"])
    return Response(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)
