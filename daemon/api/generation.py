"""The generation family: submit a job, list jobs, read one (optionally waiting), its
events, cancel it.

``POST /api/external/generation`` answers 202 with the job once its row is durable
(200 with the original job for a repeated ``Idempotency-Key``), and 503
SHUTTING_DOWN with ``Retry-After`` while the daemon drains.

``GET /api/external/generation`` lists the caller's jobs, newest first, a page at
a time: ``{data, nextCursor, hasMore}``; filters and cursors in
``daemon/api/listing.py``.

``GET /api/external/generation/<id>?wait=SECONDS`` holds the request until the job
is terminal or the wait is over. The rule for ``wait``: a number of seconds from 0
to ``MAX_WAIT`` (120); anything else (negative, larger, NaN, infinite, not a number)
is refused with 400 INVALID_REQUEST naming the allowed range, never clamped: a
client asking for 999 s would otherwise believe it waited that long.

``POST /api/external/generation/<id>/rate`` ``{"rating": 1-5, "feedback": "..."}``
records what the client thought of a finished job (the experiments' rating
metrics read it). It takes the submit scope (it writes, as a submission does),
and only the key that owns the job may rate it: another key's job is 404, as a
missing one, even for an admin key (a rating is the job's client speaking). A second rating replaces the first. Answers ``{id, rating,
feedback, experimentId, variantId}``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from quart import Blueprint, Response, request

from actors import context, metrics
from actors.errors import EaselError, ErrorCode
from actors.jobs import Job
from actors.validation import job_from, parse_submission, request_hash
from daemon.api import listing
from daemon.api.auth import caller
from daemon.api.errors import json_body, json_response
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


async def absolute(job: Job) -> dict[str, Any]:
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


def refuse_while_draining() -> None:
    """SHUTTING_DOWN with ``Retry-After`` (and the connection closed) while the
    daemon drains: checked before a submission's body is read."""
    api = services()
    if api.runtime.lifecycle.draining:
        raise EaselError(ErrorCode.SHUTTING_DOWN, "Easel is shutting down; retry shortly",
                         retry_after=api.drain_retry_after)


async def accept(body: Any) -> tuple[Job, bool]:
    """Validate a submission ``body`` (``actors/validation.py``) and hand the job to
    the runtime, honouring the request's ``Idempotency-Key``: the one way in for
    every front door (this API's and the OpenAI-compatible one), so each gets the
    same checks, store, scheduler and retries. Returns ``(job, created)``."""
    runtime = services().runtime
    parsed = parse_submission(body, runtime.catalog, runtime.families, runtime.unavailable,
                              runtime.preprocess)
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise EaselError(ErrorCode.INVALID_REQUEST,
                         f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters",
                         {"param": "Idempotency-Key"})
    job = job_from(parsed, runtime.catalog, idempotency_key=key, body_hash=request_hash(body),
                   owner=caller().owner)
    context.job_id.set(job.id)
    job, created = await runtime.submit(job)
    if created:
        _count_submitted(job.model)
        log.info("job accepted", extra={"model": job.model})
    return job, created


@blueprint.post("")
async def submit() -> Response:
    refuse_while_draining()
    job, created = await accept(await json_body())
    return json_response(await absolute(job), 202 if created else 200)


@blueprint.get("")
async def list_jobs() -> Response:
    """The caller's jobs (every job for a caller that sees all), newest first; the
    filters and the cursor are read by ``daemon.api.listing``."""
    query = listing.job_query(request.args, caller().viewer)
    jobs, cursor = await listing.page(services().runtime, query)
    return json_response({"data": [await absolute(job) for job in jobs], "nextCursor": cursor,
                          "hasMore": cursor is not None})


@blueprint.get("/<job_id>")
async def status(job_id: str) -> Response:
    wait = wait_seconds(request.args.get("wait"))
    job = await services().runtime.wait_for_job(job_id, wait, caller().viewer)
    return json_response(await absolute(job))


@blueprint.get("/<job_id>/events")
async def events(job_id: str) -> Response:
    events = await services().runtime.job_events(job_id, caller().viewer)
    return json_response({"id": job_id, "events": events})


@blueprint.post("/<job_id>/cancel")
async def cancel(job_id: str) -> Response:
    context.job_id.set(job_id)
    job = await services().runtime.cancel(job_id, caller().viewer)
    log.info("job cancelled", extra={"provider": job.provider})
    return json_response(await absolute(job))


@blueprint.post("/<job_id>/rate")
async def rate(job_id: str) -> Response:
    context.job_id.set(job_id)
    body = await json_body()
    if not isinstance(body, dict):
        raise EaselError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    unknown = sorted(set(body) - {"rating", "feedback"})
    if unknown:
        raise EaselError(ErrorCode.INVALID_REQUEST, f"unknown field {unknown[0][:100]!r}",
                         {"param": unknown[0][:100]})
    job = await services().runtime.experiments.rate(job_id, caller().owner,
                                                     body.get("rating"), body.get("feedback"))
    return json_response({"id": job.id, "rating": job.rating, "feedback": job.feedback,
                          "experimentId": job.experiment_id, "variantId": job.variant_id})
