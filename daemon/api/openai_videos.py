"""The OpenAI-compatible video family, in OpenAI's asynchronous shape, over Easel's
video models (``kind = "video"`` in the catalog: Kling, Pollo, Replicate and fal
video, the sandbox's).

- ``POST /v1/videos`` (multipart, as the SDK sends it, or JSON): ``model`` (an
  Easel video model), ``prompt``, ``seconds``, ``size``, an optional
  ``input_reference`` image (a file, or ``{"image_url": ...}`` in JSON); answers
  the video object at once, its job queued.
- ``GET /v1/videos/{id}``: the video object. Its ``id`` is the Easel job id.
- ``GET /v1/videos/{id}/content``: the MP4 once the job succeeded (``variant``
  ``video`` only; 409 ``conflict`` before it is ready).
- ``GET /v1/videos``: the caller's videos, ``{object: list, data, first_id,
  last_id, has_more}``, paged with ``after`` (a video id), ``limit`` (1 to 100) and
  ``order`` (``desc`` newest first, the default, or ``asc``).

A video object: ``{id, object: "video", model, status (queued, in_progress,
completed, failed), progress (0-100), created_at, completed_at, expires_at,
prompt, seconds, size, error: {code, message} | null, remixed_from_video_id}``.
"""

from __future__ import annotations

from typing import Any

from quart import Response, redirect, request, send_from_directory

from actors.catalog import MediaKind
from actors.errors import EaselError, ErrorCode
from actors.jobs import Job, JobState
from actors.storage.links import local_output
from actors.store import JobQuery
from daemon.api import listing
from daemon.api.auth import caller
from daemon.api.errors import json_response
from daemon.api.generation import absolute, accept, refuse_while_draining
from daemon.api.openai_compat import (
    data_uri,
    invalid,
    openai_blueprint,
    openai_request,
    own_job,
    submission,
)
from daemon.api.services import services

blueprint = openai_blueprint("openai_videos", "/v1/videos")

#: A job's state as a video's ``status``.
STATUSES = {
    JobState.WAITING: "queued",
    JobState.QUEUED: "queued",
    JobState.SUBMITTING: "queued",
    JobState.RESOLVING: "queued",
    JobState.RUNNING: "in_progress",
    JobState.FINALIZING: "in_progress",
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",
}
ORDERS = ("desc", "asc")
LIST_PARAMETERS = ("after", "limit", "order")


def video(job: Job) -> dict[str, Any]:
    """``job`` as OpenAI's video object."""
    progress = 1.0 if job.state is JobState.SUCCEEDED else job.progress or 0.0
    seconds = job.parameters.get("seconds", job.parameters.get("duration", ""))
    return {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": STATUSES[job.state],
        "progress": round(100 * progress),
        "created_at": int(job.created_at),
        "completed_at": int(job.completed_at) if job.completed_at is not None else None,
        "expires_at": None,
        "prompt": job.prompt,
        "seconds": str(seconds),
        "size": str(job.parameters.get("size", "")),
        "error": ({"code": job.error.code.value.lower(), "message": job.error.message}
                  if job.error is not None else None),
        "remixed_from_video_id": None,
    }


def _video_models() -> frozenset[str]:
    return frozenset(name for name, spec in services().runtime.catalog.items()
                     if spec.kind is MediaKind.VIDEO)


async def _own_video(video_id: str) -> Job:
    job = await own_job(video_id)
    if job.model not in _video_models():
        raise EaselError(ErrorCode.NOT_FOUND, f"no video {video_id}")
    return job


@blueprint.post("")
async def create() -> Response:
    refuse_while_draining()
    fields, files = await openai_request()
    images = [data_uri(upload, "input_reference") for upload in files.getlist("input_reference")]
    reference = fields.pop("input_reference", None)
    if reference is not None:
        if not (isinstance(reference, dict) and isinstance(reference.get("image_url"), str)):
            raise invalid("input_reference", "must be an image file or {\"image_url\": URL}")
        images.append(reference["image_url"])
    job, _ = await accept(submission(fields, MediaKind.VIDEO, images))
    return json_response(video(job))


@blueprint.get("/<video_id>")
async def retrieve(video_id: str) -> Response:
    return json_response(video(await _own_video(video_id)))


@blueprint.get("/<video_id>/content")
async def content(video_id: str) -> Response:
    variant = request.args.get("variant", "video")
    if variant != "video":
        raise invalid("variant", "only the video itself is offered (variant=video)")
    job = await _own_video(video_id)
    if job.state is not JobState.SUCCEEDED or not job.results:
        raise EaselError(ErrorCode.CONFLICT, f"video {video_id} is {STATUSES[job.state]}, "
                                             "not completed", {"status": STATUSES[job.state]})
    relative = local_output(job.results[0])
    if relative is None:  # kept by S3 or the provider: its URL, made now
        url = (await absolute(job))["results"][0]["url"]
        return redirect(url, 302)
    return await send_from_directory(services().media_dir, relative)


@blueprint.get("")
async def list_videos() -> Response:
    args = request.args
    unknown = sorted(set(args) - set(LIST_PARAMETERS))
    if unknown:
        raise invalid(unknown[0][:40], f"unknown parameter; known: {', '.join(LIST_PARAMETERS)}")
    order = args.get("order", "desc")
    if order not in ORDERS:
        raise invalid("order", "must be asc or desc")
    after = args.get("after")
    after_seq = None
    if after:
        try:
            after_seq = (await _own_video(after)).seq
        except EaselError:
            raise invalid("after", f"no video {after[:100]}") from None
    query = JobQuery(owner=caller().viewer, models=_video_models(),
                     after_seq=after_seq, ascending=order == "asc",
                     limit=listing.parse_limit(args.get("limit")))
    jobs, cursor = (await listing.page(services().runtime, query)) if query.models else ([], None)
    data = [video(job) for job in jobs]
    return json_response({"object": "list", "data": data,
                          "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None,
                          "has_more": cursor is not None})
