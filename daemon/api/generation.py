"""The generation family: submit a job, read it (optionally waiting), its events, cancel it.

``POST /api/external/generation`` answers 202 with the job once its row is durable
(200 with the original job for a repeated ``Idempotency-Key``), and 503
SHUTTING_DOWN with ``Retry-After`` while the daemon drains.

``GET /api/external/generation/<id>?wait=SECONDS`` holds the request until the job
is terminal or the wait is over. The rule for ``wait``: a number of seconds from 0
to ``MAX_WAIT`` (120); anything else (negative, larger, NaN, infinite, not a number)
is refused with 400 INVALID_REQUEST naming the allowed range, never clamped: a
client asking for 999 s would otherwise believe it waited that long.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from quart import Blueprint, Response, request

from actors import context, metrics
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import Job
from actors.validation import job_from, parse_submission, request_hash
from daemon.api.auth import caller
from daemon.api.errors import error_response, json_body, json_response
from daemon.api.services import services

log = logging.getLogger(__name__)

blueprint = Blueprint("generation", __name__, url_prefix="/api/external/generation")

#: The longest ``?wait=`` a status request may hold its connection, in seconds.
MAX_WAIT = 120
#: The longest ``Idempotency-Key`` taken (the column's width in spirit: keys are ids).
MAX_IDEMPOTENCY_KEY = 255


def wait_seconds(text: str | None) -> float:
    """``?wait=`` as seconds, 0 when absent; INVALID_REQUEST outside 0..MAX_WAIT."""
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0.0 <= seconds <= MAX_WAIT:  # NaN fails every comparison
        raise EaselError(
            ErrorCode.INVALID_REQUEST,
            f"wait must be a number of seconds from 0 to {MAX_WAIT}",
            {"wait": text[:100], "min": 0, "max": MAX_WAIT},
        )
    return seconds


async def _absolute(job: Job) -> dict[str, Any]:
    """The job as the API shows it, its result URLs made now (from ``[daemon]
    public_base_url`` or the bind address, or the storage backend: never from the
    request's ``Host``, which the client chooses)."""
    return await services().runtime.present(job)


#: ``easel_jobs_submitted_total``'s child per model, looked up once.
_submitted: dict[str, Any] = {}


def _count_submitted(model: str) -> None:
    child = _submitted.get(model)
    if child is None:
        child = _submitted[model] = metrics.JOBS_SUBMITTED.labels(model=model)
    child.inc()


@blueprint.post("")
async def submit() -> Response:
    api = services()
    runtime = api.runtime
    if runtime.lifecycle.draining:
        return error_response(
            ErrorInfo(ErrorCode.SHUTTING_DOWN, "Easel is shutting down; retry shortly"),
            headers={"Retry-After": str(api.drain_retry_after), "Connection": "close"},
        )
    body = await json_body()
    parsed = parse_submission(body, runtime.catalog, runtime.families, runtime.unavailable)
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise EaselError(ErrorCode.INVALID_REQUEST,
                         f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters")
    job = job_from(parsed, runtime.catalog, idempotency_key=key, body_hash=request_hash(body),
                   owner=caller().owner)
    context.job_id.set(job.id)
    job, created = await runtime.submit(job)
    if created:
        _count_submitted(job.model)
        log.info("job accepted", extra={"model": job.model})
    return json_response(await _absolute(job), 202 if created else 200)


@blueprint.get("/<job_id>")
async def status(job_id: str) -> Response:
    wait = wait_seconds(request.args.get("wait"))
    job = await services().runtime.wait_for_job(job_id, wait)
    return json_response(await _absolute(job))


@blueprint.get("/<job_id>/events")
async def events(job_id: str) -> Response:
    return json_response({"id": job_id, "events": await services().runtime.job_events(job_id)})


@blueprint.post("/<job_id>/cancel")
async def cancel(job_id: str) -> Response:
    context.job_id.set(job_id)
    job = await services().runtime.cancel(job_id)
    log.info("job cancelled", extra={"provider": job.provider})
    return json_response(await _absolute(job))
