"""The OpenAI-compatible image family: ``POST /v1/images/generations`` (JSON) and
``POST /v1/images/edits`` (multipart: ``image`` or ``image[]`` files, optional
``mask``), answering in OpenAI's shape: ``{created, data: [{url} | {b64_json}]}``.

Each request becomes an Easel job (``generation.accept``: the same validation,
store, scheduler, retries, fallbacks and ``Idempotency-Key``) and is answered
synchronously: the request waits for its job up to ``[openai_compat] image_wait``
seconds. Past that it answers 504 ``job_still_running`` with the job's id in
``error.job_id`` and ``x-should-retry: false``: the job goes on and is paid once;
``GET /api/external/generation/{id}`` gives its result later, and repeating the
request with the same ``Idempotency-Key`` waits on the same job again. A job that
fails answers its own error (a provider's 429 as 429 ``rate_limited``, a
moderated prompt as 400 ``content_policy_violation``) with the job's id.

``response_format`` is ``url`` (absolute ``/media/`` URLs, the default) or
``b64_json`` (the stored file, base64). Streaming is not offered.
"""

from __future__ import annotations

import base64
from typing import Any

import trio
from quart import Response
from werkzeug.security import safe_join

from actors.catalog import MediaKind
from actors.errors import EaselError, ErrorCode
from actors.jobs import Job, JobState
from actors.storage.links import local_output
from daemon.api.errors import error_response, json_response
from daemon.api.generation import absolute, accept, refuse_while_draining
from daemon.api.openai_compat import (
    data_uri,
    failed,
    invalid,
    openai_blueprint,
    openai_request,
    submission,
)
from daemon.api.services import services

blueprint = openai_blueprint("openai_images", "/v1/images")

RESPONSE_FORMATS = ("url", "b64_json")
#: Stored outputs read at once for ``b64_json`` answers.
_reads = trio.CapacityLimiter(4)


@blueprint.post("/generations")
async def generations() -> Response:
    refuse_while_draining()
    fields, _ = await openai_request()
    return await _generate(fields, [])


@blueprint.post("/edits")
async def edits() -> Response:
    refuse_while_draining()
    fields, files = await openai_request()
    uploads = files.getlist("image") + files.getlist("image[]")
    if not uploads:
        raise invalid("image", "required: one or more image files (multipart/form-data)")
    images = [data_uri(upload, "image") for upload in uploads]
    if "mask" in files:
        fields["mask"] = data_uri(files["mask"], "mask")
    return await _generate(fields, images)


async def _generate(fields: dict[str, Any], images: list[str]) -> Response:
    answer_as = fields.pop("response_format", None) or "url"
    if answer_as not in RESPONSE_FORMATS:
        raise invalid("response_format", f"must be one of {', '.join(RESPONSE_FORMATS)}")
    if fields.pop("stream", False) not in (False, "false"):
        raise invalid("stream", "streaming is not offered: leave it out or false")
    job, _ = await accept(submission(fields, MediaKind.IMAGE, images))
    api = services()
    job = await api.runtime.wait_for_job(job.id, api.image_wait)
    if job.state is JobState.SUCCEEDED:
        return json_response(await _images(job, answer_as))
    if job.state.terminal:
        return error_response(failed(job))
    return json_response({"error": {
        "message": f"job {job.id} is still {job.state.status} after {api.image_wait:g} s; it "
                   f"goes on: GET /api/external/generation/{job.id} gives its result, or "
                   f"repeat this request with the same Idempotency-Key to wait for it again",
        "type": "timeout_error",
        "code": "job_still_running",
        "param": None,
        "job_id": job.id,
    }}, 504, {"x-should-retry": "false"})


async def _images(job: Job, answer_as: str) -> dict[str, Any]:
    if answer_as == "url":
        data = [{"url": result["url"]} for result in (await absolute(job))["results"]]
    else:
        data = [{"b64_json": base64.b64encode(await _stored(job, result)).decode()}
                for result in job.results]
    return {"created": int(job.created_at), "data": data}


async def _stored(job: Job, result: Any) -> bytes:
    """The bytes of an output kept on local storage. Outputs kept elsewhere (an S3
    bucket, the provider) are offered by URL only: Easel does not fetch them back."""
    relative = local_output(result)
    path = None if relative is None else safe_join(str(services().media_dir), relative)
    if path is None:
        raise EaselError(
            ErrorCode.INVALID_REQUEST,
            f"job {job.id}'s outputs are not on local storage: b64_json is offered for "
            "local storage only; ask for response_format=url (the job is done and kept)",
            {"param": "response_format", "jobId": job.id})
    return await trio.to_thread.run_sync(_read, path, limiter=_reads)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()
