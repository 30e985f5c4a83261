"""The batch family: many generations submitted, read, cancelled and repaired as one.

- ``POST /api/external/generation/batch``: a batch as JSON (``{requests, options,
  dryRun, metadata}``) or JSONL (``Content-Type: application/x-ndjson``, one
  request per line, the options in the query string); checked whole
  (``actors/batches/requests.py``), then stored in one transaction and answered
  202 ``{batchId, totalTasks, status, estimatedCost, tasks: [{id, customId,
  status}]}``. With ``dryRun`` nothing is stored: 200 with the estimate.
- ``POST .../batch/estimate``: the estimate alone (``actors/batches/estimate.py``).
- ``GET .../batch/{id}``: the batch's counts and state, and a page of its tasks
  by index (``?after=<index>&limit=``; ``nextAfter`` is the next page's ``after``).
- ``GET .../batch/{id}/results``: JSONL ``{custom_id, job_id, status, results,
  error}``, one line per finished item in completion order, streamed a page at a
  time from the store (never the whole batch in memory).
- ``POST .../batch/{id}/cancel``, ``POST .../batch/{id}/retry`` (``{items?:
  [custom_id]}``): the batch engine's cancel and repair run.

A batch body may be larger than other requests' (``[batches] max_body_bytes``,
against ``[daemon] max_body_bytes``): ``install`` gives the two submitting routes
their own limit. Reading and checking a batch of thousands of items takes CPU
time, so it runs in a worker thread, one batch at a time, and the event loop goes
on serving meanwhile. Submitting and repairing are refused while the daemon drains,
as a single submission is.

Routes are under ``/api/external/generation/batch``: the generation family's
``/<job_id>`` routes would take ``batch`` as a job id, but a rule's static
segment wins over a variable one, so every path here reaches this family.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Quart, Response, request
from quart.wrappers import Request

from actors.batches.estimate import estimate
from actors.batches.model import Batch, item_status, new_batch_id
from actors.batches.requests import (
    BatchLimits,
    Checks,
    ParsedBatch,
    batch_jobs,
    parse_batch,
    parse_jsonl,
    split_lines,
)
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import Job
from actors.redaction import SECRETS
from daemon.api import listing
from daemon.api.auth import caller
from daemon.api.errors import Refused, json_response, parse_json
from daemon.api.generation import refuse_while_draining
from daemon.api.services import services

log = logging.getLogger(__name__)

PREFIX = "/api/external/generation/batch"
blueprint = Blueprint("batches", __name__, url_prefix=PREFIX)

#: The Content-Types of a JSONL batch.
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")
#: Finished items read from the store per chunk of ``/results``.
RESULTS_PAGE = 500
_KEY = "easel.batches"
#: The paths whose bodies may be a whole batch.
_BATCH_BODIES = (PREFIX, PREFIX + "/estimate")


def install(app: Quart, limits: BatchLimits) -> None:
    """The batch limits for the routes, and the larger body limit of the two
    routes that take a batch (every other route keeps the app's)."""
    app.extensions[_KEY] = (limits, trio.CapacityLimiter(1))
    base: type[Request] = app.request_class

    class BatchSizedRequest(base):  # type: ignore[valid-type,misc]
        def __init__(self, method: str, scheme: str, path: str, *args: Any,
                     max_content_length: int | None = None, **kwargs: Any) -> None:
            if method == "POST" and path in _BATCH_BODIES:
                max_content_length = limits.max_body_bytes
            super().__init__(method, scheme, path, *args,
                             max_content_length=max_content_length, **kwargs)
            self.max_content_length = max_content_length

    app.request_class = BatchSizedRequest


def _limits() -> tuple[BatchLimits, trio.CapacityLimiter]:
    from quart import current_app

    found: tuple[BatchLimits, trio.CapacityLimiter] = current_app.extensions[_KEY]
    return found


def _wrong_type(expected: str) -> Refused:
    info = ErrorInfo(ErrorCode.INVALID_REQUEST, f"Content-Type must be {expected}",
                     {"contentType": (request.content_type or "")[:200], "httpStatus": 415})
    return Refused(info, 415)


def _line(raw: bytes) -> Any:
    try:
        return parse_json(raw)
    except EaselError as exc:
        return exc


async def _parsed() -> ParsedBatch:
    """The request's batch, read and checked in a worker thread."""
    raw = await request.get_data(cache=False)
    mimetype = request.mimetype
    runtime = services().runtime
    checks = Checks(runtime.catalog, runtime.families, runtime.unavailable, runtime.preprocess)
    limits, one_at_a_time = _limits()
    if mimetype == "application/json":
        def read() -> ParsedBatch:
            return parse_batch(parse_json(raw), checks, limits)
    elif mimetype in JSONL_TYPES:
        query = dict(request.args)

        def read() -> ParsedBatch:
            lines, numbers = split_lines(raw)
            return parse_jsonl([_line(line) for line in lines], numbers, query, checks, limits)
    else:
        raise _wrong_type("application/json or application/x-ndjson")
    return await trio.to_thread.run_sync(read, limiter=one_at_a_time)


@blueprint.post("")
async def submit() -> Response:
    refuse_while_draining()
    began = time.perf_counter()
    parsed = await _parsed()
    checked = time.perf_counter()
    runtime = services().runtime
    if parsed.dry_run:
        return json_response({"dryRun": True, **estimate(parsed, runtime.catalog).to_api()})
    owner = caller().owner
    batch_id = new_batch_id()
    jobs = batch_jobs(parsed, runtime.catalog, batch_id=batch_id, owner=owner)
    batch = Batch(id=batch_id, options=parsed.options, total=len(jobs), owner=owner,
                  estimated_cost=round(sum(job.cost or 0.0 for job in jobs), 6),
                  metadata=parsed.metadata)
    built = time.perf_counter()
    batch = await runtime.batches.create(batch, jobs)
    # Where an acceptance's time went (bench/batch.py reads it from the log).
    log.info("batch accepted", extra={
        "batch": batch.id, "items": batch.total, "checkSeconds": round(checked - began, 4),
        "buildSeconds": round(built - checked, 4),
        "storeSeconds": round(time.perf_counter() - built, 4)})
    return json_response({
        "batchId": batch.id, "totalTasks": batch.total, "status": batch.state.value,
        "estimatedCost": batch.estimated_cost,
        "tasks": [{"id": job.id, "customId": job.custom_id, "status": item_status(job)}
                  for job in jobs],
    }, 202)


@blueprint.post("/estimate")
async def estimate_cost() -> Response:
    parsed = await _parsed()
    return json_response(estimate(parsed, services().runtime.catalog).to_api())


async def _task(job: Job) -> dict[str, Any]:
    shown = await services().runtime.present(job)
    return {"id": job.id, "customId": job.custom_id, "index": job.batch_index,
            "status": item_status(job), "results": shown["results"], "error": shown["error"]}


def _after(text: str | None) -> int:
    if text is None:
        return -1
    if not text.lstrip("-").isdigit() or not -1 <= int(text[:12]) < 10**9:
        raise EaselError(ErrorCode.INVALID_REQUEST, "after: must be a task's index (or -1)",
                         {"param": "after"})
    return int(text)


@blueprint.get("/<batch_id>")
async def status(batch_id: str) -> Response:
    after = _after(request.args.get("after"))
    limit = listing.parse_limit(request.args.get("limit"))
    viewer = caller().viewer
    batches = services().runtime.batches
    batch, counts = await batches.get(batch_id, viewer)
    jobs = await batches.items(batch_id, viewer, after=after, limit=limit)
    more = len(jobs) == limit and jobs[-1].batch_index is not None \
        and jobs[-1].batch_index < batch.total - 1
    return json_response({**batch.to_api(counts), "tasks": [await _task(job) for job in jobs],
                          "nextAfter": jobs[-1].batch_index if more else None})


@blueprint.get("/<batch_id>/results")
async def results(batch_id: str) -> Response:
    viewer = caller().viewer
    runtime = services().runtime
    await runtime.batches.get(batch_id, viewer)  # NOT_FOUND before the stream starts

    async def lines() -> AsyncIterator[bytes]:
        cursor: str | None = None
        while True:
            jobs, cursor = await runtime.batches.finished(batch_id, viewer, after=cursor,
                                                          limit=RESULTS_PAGE)
            chunk = []
            for job in jobs:
                shown = await runtime.present(job)
                chunk.append(json.dumps({
                    "custom_id": job.custom_id, "job_id": job.id, "status": item_status(job),
                    "results": shown["results"], "error": shown["error"]}) + "\n")
            if chunk:
                yield SECRETS.mask("".join(chunk)).encode()
            if len(jobs) < RESULTS_PAGE:  # every item finished by now has been sent
                return

    return Response(lines(), content_type="application/x-ndjson")


@blueprint.post("/<batch_id>/cancel")
async def cancel(batch_id: str) -> Response:
    batch, counts = await services().runtime.batches.cancel(batch_id, caller().viewer)
    log.info("batch cancelled", extra={"batch": batch.id})
    return json_response(batch.to_api(counts))


@blueprint.post("/<batch_id>/retry")
async def retry(batch_id: str) -> Response:
    refuse_while_draining()
    raw = await request.get_data(cache=False)
    named = _retry_items(raw) if raw.strip() else None
    batch, counts = await services().runtime.batches.retry(batch_id, caller().viewer, named)
    log.info("batch repair run", extra={"batch": batch.id, "repairs": batch.repairs})
    return json_response(batch.to_api(counts))


def _retry_items(raw: bytes) -> list[str] | None:
    """``{items?: [custom_id]}``: the items to run again besides those that failed."""
    if request.mimetype != "application/json":
        raise _wrong_type("application/json")
    body = parse_json(raw)
    if not isinstance(body, dict) or set(body) - {"items"}:
        raise EaselError(ErrorCode.INVALID_REQUEST, "the body must be {\"items\": [custom_id]}",
                         {"param": "items"})
    items = body.get("items")
    if items is None:
        return None
    if type(items) is not list or not all(type(i) is str for i in items):
        raise EaselError(ErrorCode.INVALID_REQUEST, "items: expected a list of custom_id "
                         "strings", {"param": "items"})
    return items
