"""What the OpenAI-compatible families (``openai_images``, ``openai_videos``) share.

- OpenAI's error envelope, ``{error: {message, type, code, param}}``, written for
  every error under ``/v1/`` (those of the app-wide hooks and of Quart included),
  mapped from Easel's codes: ``type`` from the status (``invalid_request_error``,
  ``authentication_error``, ``permission_error``, ``rate_limit_error``,
  ``insufficient_quota``, ``server_error``), ``code`` Easel's code in lower case
  (``content_policy_violation`` for a moderated prompt), ``param`` the request field
  at fault. Invalid parameters and moderated prompts are 400 here, as OpenAI answers
  them (Easel's own API says 422), and a quota is 429 ``insufficient_quota``. Every
  error carries ``x-should-retry``, which the official SDKs obey: ``false`` for what
  a repeat cannot fix, so a client never pays twice for its own retries.
- Turning an OpenAI request (JSON or multipart form) into an Easel submission body,
  which then goes through the same validation and ``Runtime.submit`` as
  ``POST /api/external/generation`` (``generation.accept``). ``model`` is an Easel
  catalog name; ``n`` is ``number_of_outputs``, ``user`` is ``user_id``, uploaded
  images are input images, and every other field is one of the model's
  ``parameters`` (``seconds`` becomes ``duration`` and ``size`` an
  ``aspect_ratio`` for a model that takes those and not the OpenAI names).
- Reading a caller's own job by id: another key's job is NOT_FOUND, never "not
  yours".
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import attrs
from quart import Blueprint, Response, request
from werkzeug.datastructures import FileStorage, MultiDict

from actors.catalog import MediaKind
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.jobs import Job
from actors.validation import rules_for
from daemon.api.auth import caller
from daemon.api.errors import json_body, json_response, speak_under
from daemon.api.services import services

#: Where the OpenAI-compatible API lives.
PREFIX = "/v1/"

#: OpenAI's ``error.type`` for each status Easel answers under ``/v1/``.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}
#: Statuses OpenAI answers otherwise than Easel's own API: ``status -> status``.
_STATUSES = {422: 400, 402: 429}
#: Codes OpenAI names otherwise.
_CODES = {ErrorCode.CONTENT_MODERATED: "content_policy_violation",
          ErrorCode.QUOTA_EXCEEDED: "insufficient_quota"}

#: OpenAI request fields that are the submission's own fields.
_FIELDS = {"model": "modelIdentifier", "prompt": "prompt", "n": "number_of_outputs",
           "user": "user_id"}
#: The submission's field names as an OpenAI client knows them (for ``param``).
_OPENAI_NAMES = {easel: openai for openai, easel in _FIELDS.items()} | {"input_images": "image"}


def _param(info: ErrorInfo) -> str | None:
    """The request field an error is about, in the request's own naming."""
    details = info.details
    if isinstance(details.get("param"), str):
        return str(details["param"])
    if "knownModels" in details or "model" in details:
        return "model"
    problems = details.get("problems")
    if isinstance(problems, list) and problems and isinstance(problems[0], str):
        path = problems[0].split(":", 1)[0].removeprefix("parameters.")
        field = path.split(".", 1)[0].split("[", 1)[0]
        return _OPENAI_NAMES.get(field, field)
    return None


def _message(info: ErrorInfo) -> str:
    """The message with what Easel's envelope says in ``details`` and OpenAI's has
    no room for: every problem found, and the models there are."""
    problems = info.details.get("problems")
    if isinstance(problems, list) and len(problems) > 1:
        return "; ".join(str(problem) for problem in problems)
    known = info.details.get("knownModels")
    if isinstance(known, list):
        return f"{info.message}; models: {', '.join(str(name) for name in known)}"
    return info.message


def openai_error(info: ErrorInfo, status: int, headers: dict[str, str] | None = None) -> Response:
    """``info`` in OpenAI's error envelope (the ``Envelope`` of paths under ``/v1/``)."""
    status = _STATUSES.get(status, status)
    kind = "insufficient_quota" if info.code is ErrorCode.QUOTA_EXCEEDED else _TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {
        "message": _message(info),
        "type": kind,
        "code": _CODES.get(info.code, info.code.value.lower()),
        "param": _param(info),
    }
    if isinstance(info.details.get("jobId"), str):
        error["job_id"] = info.details["jobId"]
    retry = "true" if info.is_retryable else "false"
    return json_response({"error": error}, status, {**(headers or {}), "x-should-retry": retry})


def openai_blueprint(name: str, url_prefix: str) -> Blueprint:
    """A family under ``/v1/``: registering it makes the app answer every error
    under ``/v1/`` in OpenAI's envelope."""
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)
    blueprint.record_once(lambda state: speak_under(state.app, PREFIX, openai_error))
    return blueprint


def invalid(param: str, message: str) -> EaselError:
    return EaselError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", {"param": param})


async def openai_request() -> tuple[dict[str, Any], MultiDict[str, FileStorage]]:
    """The request's fields and uploaded files: a multipart form (every value a
    string; ``n`` read as a number) or a JSON object (no files)."""
    if request.mimetype == "multipart/form-data":
        form = await request.form
        files = await request.files
        fields: dict[str, Any] = {name: form[name] for name in form}
        if "n" in fields:
            fields["n"] = int(fields["n"]) if fields["n"].isdigit() else fields["n"]
        return fields, files
    body = await json_body()
    if not isinstance(body, dict):
        raise EaselError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    return body, MultiDict()


#: Magic numbers of the image types an input image may be.
_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def data_uri(upload: FileStorage, param: str) -> str:
    """An uploaded image as a ``data:`` URI input image; its type is read from its
    first bytes, not from what the client called it."""
    data = upload.read()
    mime = next((mime for magic, mime in _IMAGE_TYPES if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise invalid(param, "must be a PNG, JPEG or WebP image")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _aspect_ratio(size: Any) -> Any:
    """``"1280x720"`` as ``"16:9"``; anything else as it is (validation judges it)."""
    width, _, height = str(size).partition("x")
    if not (width.isdigit() and height.isdigit()) or not int(width) or not int(height):
        return size
    divisor = math.gcd(int(width), int(height))
    return f"{int(width) // divisor}:{int(height) // divisor}"


#: OpenAI parameter -> (a model's own name for it, how its value reads there).
_RENAMES = {"seconds": ("duration", lambda value: value), "size": ("aspect_ratio", _aspect_ratio)}


def submission(fields: Mapping[str, Any], kind: MediaKind, images: list[str]) -> dict[str, Any]:
    """The Easel submission body of an OpenAI request's ``fields`` (see the module
    doc); a model of the other kind is refused naming the endpoint it belongs to."""
    runtime = services().runtime
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise EaselError(ErrorCode.INVALID_REQUEST,
                         "model: required: a model of Easel's catalog",
                         {"param": "model", "knownModels": sorted(
                             name for name, spec in runtime.catalog.items() if spec.kind is kind)})
    spec = runtime.catalog.get(model)
    if spec is not None and spec.kind is not kind:
        where = "/v1/videos" if spec.kind is MediaKind.VIDEO else "/v1/images/generations"
        raise invalid("model", f"{model} makes {spec.kind.value}s: use {where}")
    taken: set[str] | None = None
    if spec is not None:
        rules = rules_for(runtime.families.get(spec.provider, spec.provider), spec.provider_model)
        if rules.parameters is not None:
            taken = {field.name for field in attrs.fields(rules.parameters)}
    body: dict[str, Any] = {"parameters": {}}
    for name, value in fields.items():
        if name in _FIELDS:
            body[_FIELDS[name]] = value
            continue
        if taken is not None and name not in taken and name in _RENAMES:
            own, convert = _RENAMES[name]
            if own in taken:
                name, value = own, convert(value)
        body["parameters"][name] = value
    if images:
        body["input_images"] = images
    return body



async def own_job(job_id: str) -> Job:
    """The caller's job ``job_id`` (any job for a caller that sees all), or NOT_FOUND."""
    return await services().runtime.get_job(job_id, caller().viewer)


def failed(job: Job) -> ErrorInfo:
    """The error of a job that ended without results, naming the job."""
    info = job.error or ErrorInfo(ErrorCode.TASK_FAILED, f"job {job.id} ended {job.state.value}")
    return attrs.evolve(info, details={**info.details, "jobId": job.id})
