"""The API described: an OpenAPI 3.1 document at ``/api/openapi.json`` and a page
listing its operations at ``/api/docs``.

The request schemas are not written here but made from the classes that validate
requests (``actors/schemas.py`` reading ``SubmissionRequest`` and each model's
parameters class, with their limits), the error codes from ``ErrorCode`` and its
status table, the job list's filters from ``daemon/api/listing.py``: one source,
so the document cannot say one thing while validation does another. Each model of
the running daemon's catalog gets its parameters schema (``x-parameters-by-model``
on ``SubmissionRequest`` names it). The responses are described here, and the
tests hold the running app to them (schemathesis) and hold this module's list of
operations to the app's routes (every route documented).

The page is plain HTML made from the document on the server: no script, no CDN.
"""

from __future__ import annotations

import html
import re
from typing import Any

from quart import Blueprint, Response, current_app

from actors.batches.model import MAX_CUSTOM_ID, BatchState
from actors.catalog import MediaKind
from actors.errors import ErrorCode, http_status
from actors.jobs import JobState
from actors.schemas import object_schema
from actors.validation import MARK_SCHEMAS, SubmissionRequest, rules_for
from daemon.api import listing
from daemon.api.auth import Gate, need_of
from daemon.api.errors import json_response
from daemon.api.generation import MAX_WAIT
from daemon.api.openai_images import RESPONSE_FORMATS
from daemon.api.openai_videos import ORDERS, STATUSES
from daemon.api.services import services

blueprint = Blueprint("openapi", __name__, url_prefix="/api")

_CACHE = "easel.openapi"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING, _INTEGER, _NUMBER, _OBJECT = ({"type": t} for t in ("string", "integer", "number",
                                                              "object"))
_TIME = {"type": "string", "format": "date-time"}

#: Statuses Quart answers on its own, besides those of the error codes.
_FRAMEWORK_STATUSES = {405: "method not allowed", 413: "body too large",
                       415: "body of another Content-Type"}


def _error_statuses() -> dict[int, str]:
    """Every error status and the codes (or reasons) it is answered with."""
    statuses: dict[int, list[str]] = {}
    for code in ErrorCode:
        statuses.setdefault(http_status(code), []).append(code.value)
    for status, reason in _FRAMEWORK_STATUSES.items():
        statuses.setdefault(status, []).append(f"INVALID_REQUEST ({reason})")
    return {status: ", ".join(codes) for status, codes in sorted(statuses.items())}


def _openai_statuses() -> dict[int, str]:
    """The statuses of ``/v1`` errors (``openai_compat``: 422 is 400, 402 is 429),
    plus 504 ``job_still_running``."""
    mapped: dict[int, str] = {}
    for status, codes in _error_statuses().items():
        status = {422: 400, 402: 429}.get(status, status)
        mapped[status] = ", ".join(filter(None, (mapped.get(status), codes.lower())))
    mapped[504] += ", job_still_running"
    return dict(sorted(mapped.items()))


def _responses(ok: dict[str, Any], openai: bool = False) -> dict[str, Any]:
    error = _ref("OpenAIError" if openai else "Error")
    statuses = _openai_statuses() if openai else _error_statuses()
    errors = {str(status): {"description": codes,
                            "content": {"application/json": {"schema": error}}}
              for status, codes in statuses.items()}
    return {**errors, **ok}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STRING,
            "description": description}


_JOB_ID = _path("id", "a job id (gen_...)")
_EXPERIMENT_ID = _path("experiment_id", "an experiment id (exp_...)")
_VIDEO_ID = _path("id", "a video id: its Easel job id")


def _schemas(catalog_kinds: dict[str, MediaKind], by_model: dict[str, str],
             parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    submission = object_schema(SubmissionRequest, MARK_SCHEMAS, closed=False)
    submission["properties"]["modelIdentifier"] = {"enum": sorted(catalog_kinds)}
    submission["properties"]["parameters"] = {
        "type": "object",
        "description": "the model's own parameters: x-parameters-by-model names the schema "
                       "of each model",
    }
    submission["x-parameters-by-model"] = {model: _REF + name for model, name in by_model.items()}
    submission["description"] = (
        "A generation request. Field names may also be spelt camelCase (numberOfOutputs); "
        "giving both spellings of one is refused.")
    images = sorted(m for m, kind in catalog_kinds.items() if kind is MediaKind.IMAGE)
    videos = sorted(m for m, kind in catalog_kinds.items() if kind is MediaKind.VIDEO)
    error_info = {
        "type": "object", "required": ["code", "message", "details", "isRetryable"],
        "properties": {"code": {"enum": [code.value for code in ErrorCode]},
                       "message": _STRING, "details": _OBJECT,
                       "isRetryable": {"type": "boolean"}},
    }
    job = {
        "type": "object",
        "properties": {
            "id": _STRING, "status": {"enum": sorted({s.status for s in JobState})},
            "stage": {"enum": [s.value for s in JobState]},
            "stageReason": _nullable(_STRING), "modelIdentifier": _STRING,
            "servedBy": _STRING, "provider": _STRING, "prompt": _STRING,
            "numberOfOutputs": _INTEGER, "parameters": _OBJECT, "priority": _INTEGER,
            "progress": _nullable(_NUMBER),
            "results": {"type": "array", "items": {"type": "object", "required": ["url"],
                                                   "properties": {"type": _STRING,
                                                                  "url": _STRING}}},
            "error": _nullable(_ref("ErrorInfo")), "attempts": _INTEGER,
            "cost": _nullable(_NUMBER), "providerTaskId": _nullable(_STRING),
            "userId": _nullable(_STRING), "metadata": _OBJECT, "batchId": _nullable(_STRING),
            "customId": _nullable(_STRING), "experimentId": _nullable(_STRING),
            "variantId": _nullable(_STRING), "rating": _nullable(_INTEGER),
            "feedback": _nullable(_STRING),
            "webhookUrl": _nullable(_STRING), "createdAt": _TIME, "startedAt": _nullable(_TIME),
            "completedAt": _nullable(_TIME), "updatedAt": _TIME,
        },
    }
    job["required"] = list(job["properties"])
    video = {
        "type": "object",
        "properties": {
            "id": _STRING, "object": {"const": "video"}, "model": _STRING,
            "status": {"enum": sorted(set(STATUSES.values()))},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "created_at": _INTEGER, "completed_at": _nullable(_INTEGER),
            "expires_at": _nullable(_INTEGER), "prompt": _STRING, "seconds": _STRING,
            "size": _STRING, "remixed_from_video_id": _nullable(_STRING),
            "error": _nullable({"type": "object", "required": ["code", "message"],
                                "properties": {"code": _STRING, "message": _STRING}}),
        },
    }
    video["required"] = list(video["properties"])
    openai_fields = {
        "prompt": submission["properties"]["prompt"],
        "n": {"type": "integer", "minimum": 1},
        "user": _STRING,
        "response_format": {"enum": list(RESPONSE_FORMATS)},
    }
    return {
        "SubmissionRequest": submission,
        "Job": job,
        "JobPage": {"type": "object", "required": ["data", "nextCursor", "hasMore"],
                    "properties": {"data": {"type": "array", "items": _ref("Job")},
                                   "nextCursor": _nullable(_STRING),
                                   "hasMore": {"type": "boolean"}}},
        "JobEvents": {"type": "object", "required": ["id", "events"],
                      "properties": {"id": _STRING, "events": {"type": "array",
                                                               "items": _OBJECT}}},
        "ErrorInfo": error_info,
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": _ref("ErrorInfo")}},
        "OpenAIError": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["message", "type", "code", "param"],
                "properties": {"message": _STRING, "type": _STRING,
                               "code": _nullable(_STRING), "param": _nullable(_STRING),
                               "job_id": _STRING}}},
        },
        "ImageGenerationRequest": {
            "type": "object", "required": ["model", "prompt"],
            "description": "Any other field is one of the model's parameters.",
            "properties": {"model": {"enum": images}, **openai_fields},
        },
        "ImageEditRequest": {
            "type": "object", "required": ["model", "prompt", "image"],
            "properties": {
                "model": {"enum": images}, **openai_fields,
                "image": {"type": "string", "contentMediaType": "application/octet-stream"},
                "mask": {"type": "string", "contentMediaType": "application/octet-stream"},
            },
        },
        "ImagesResponse": {
            "type": "object", "required": ["created", "data"],
            "properties": {"created": _INTEGER, "data": {"type": "array", "items": {
                "type": "object", "properties": {"url": _STRING, "b64_json": _STRING}}}},
        },
        "VideoCreateRequest": {
            "type": "object", "required": ["model", "prompt"],
            "description": "Any other field is one of the model's parameters.",
            "properties": {"model": {"enum": videos}, "prompt": openai_fields["prompt"],
                           "seconds": _STRING, "size": _STRING, "user": _STRING,
                           "input_reference": {"type": "string",
                                               "contentMediaType": "application/octet-stream"}},
        },
        **_batch_schemas(),
        "Video": video,
        "VideoList": {"type": "object",
                      "required": ["object", "data", "first_id", "last_id", "has_more"],
                      "properties": {"object": {"const": "list"},
                                     "data": {"type": "array", "items": _ref("Video")},
                                     "first_id": _nullable(_STRING),
                                     "last_id": _nullable(_STRING),
                                     "has_more": {"type": "boolean"}}},
        **parameters,
    }


def _list_filters() -> list[dict[str, Any]]:
    described = {
        "status": "comma-separated statuses or stages: " + ", ".join(listing.STATUS_STATES),
        "model": "the catalog model submitted", "provider": "a provider section",
        "user_id": "the user_id submitted", "userId": "user_id, spelt camelCase",
        "createdAfter": "created at or after: ISO 8601 with a zone, or Unix seconds",
        "createdBefore": "created before: ISO 8601 with a zone, or Unix seconds",
        "cursor": "the nextCursor of the previous page",
    }
    limit = {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT,
             "default": listing.DEFAULT_LIMIT}
    return [_query(name, limit if name == "limit" else _STRING,
                   described.get(name, "jobs a page")) for name in listing.PARAMETERS]


def _paths() -> dict[str, Any]:
    job = _json(_ref("Job"), "the job")
    openai_json = {"application/json": {"schema": _ref("VideoCreateRequest")},
                   "multipart/form-data": {"schema": _ref("VideoCreateRequest")}}
    binary = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    return {
        "/api/external/generation": {
            "post": {"summary": "Submit a generation",
                     "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                     "schema": {"type": "string", "maxLength": 255}}],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _ref("SubmissionRequest")}}},
                     "responses": _responses({"202": _json(_ref("Job"), "accepted, durably"),
                                              "200": _json(_ref("Job"), "a replayed key's job")})},
            "get": {"summary": "List jobs, newest first", "parameters": _list_filters(),
                    "responses": _responses({"200": _json(_ref("JobPage"), "a page")})},
        },
        "/api/external/generation/{id}": {"get": {
            "summary": "Read a job, optionally waiting until it ends",
            "parameters": [_JOB_ID, _query("wait", {"type": "number", "minimum": 0,
                                                    "maximum": MAX_WAIT}, "seconds to wait")],
            "responses": _responses({"200": job})}},
        "/api/external/generation/{id}/events": {"get": {
            "summary": "A job's events", "parameters": [_JOB_ID],
            "responses": _responses({"200": _json(_ref("JobEvents"), "oldest first")})}},
        "/api/external/generation/{id}/cancel": {"post": {
            "summary": "Cancel a job", "parameters": [_JOB_ID],
            "responses": _responses({"200": job})}},
        "/api/providers/{provider}/webhook": {"post": {
            "summary": "A provider reports a task", "parameters": [_path("provider", "section")],
            "requestBody": {"content": {"application/json": {"schema": _OBJECT}}},
            "responses": _responses({"200": _json(_OBJECT, "taken")})}},
        "/api/health": {"get": {"summary": "Liveness and readiness",
                                "responses": _responses({"200": _json(_OBJECT, "ok")})}},
        "/api/health/detailed": {"get": {"summary": "Actors, slots, queue and store figures",
                                         "responses": _responses({"200": _json(_OBJECT, "")})}},
        "/api/metrics": {"get": {"summary": "Prometheus metrics", "responses": _responses(
            {"200": {"description": "text exposition", "content": {"text/plain": binary}}})}},
        "/api/openapi.json": {"get": {"summary": "This document", "responses": _responses(
            {"200": _json(_OBJECT, "OpenAPI 3.1")})}},
        "/api/docs": {"get": {"summary": "This document as a page", "responses": _responses(
            {"200": {"description": "HTML", "content": {"text/html": binary}}})}},
        "/api/admin/monitoring/stats": {"get": {
            "summary": "Admin: jobs by outcome, success rate, run time, adapters, process",
            "parameters": [_query("from", _STRING, "Unix seconds or ISO 8601 (default: a day"
                                                   " before to)"),
                           _query("to", _STRING, "Unix seconds or ISO 8601 (default: now)")],
            "responses": _responses({"200": _json(_OBJECT, "the figures")})}},
        "/api/admin/monitoring/errors": {"get": {
            "summary": "Admin: the error log, newest first (200 at most)",
            "parameters": [_query("level", {"enum": ["WARN", "ERROR", "CRITICAL"]}, "level"),
                           _query("source", _STRING, "a prefix of the source"),
                           _query("resolved", {"enum": ["true", "false"]}, "resolved or not")],
            "responses": _responses({"200": _json(_OBJECT, "{errors: [...]}")})}},
        "/api/admin/monitoring/alerts": {"get": {
            "summary": "Admin: alerts, newest first (200 at most)",
            "parameters": [_query("state", {"enum": ["firing", "resolved"]}, "their state")],
            "responses": _responses({"200": _json(_OBJECT, "{alerts: [...]}")})}},
        "/api/external/generation/{id}/rate": {"post": {
            "summary": "Rate a finished job 1-5, with optional feedback (only its own key;"
                       " a new rating replaces the last)",
            "parameters": [_JOB_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["rating"], "additionalProperties": False,
                "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5},
                               "feedback": {"type": "string", "maxLength": 4000}}}}}},
            "responses": _responses({"200": _json(_OBJECT, "{id, rating, feedback,"
                                                           " experimentId, variantId}")})}},
        "/api/admin/experiments": {
            "post": {"summary": "Admin: create an experiment (DRAFT), every variant checked"
                                " against the catalog and its parameter rules",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _OBJECT}}},
                     "responses": _responses({"201": _json(_OBJECT, "the experiment")})},
            "get": {"summary": "Admin: every experiment, oldest first",
                    "responses": _responses({"200": _json(_OBJECT, "{experiments: [...]}")})},
        },
        "/api/admin/experiments/{experiment_id}": {"get": {
            "summary": "Admin: one experiment, with its spend",
            "parameters": [_EXPERIMENT_ID],
            "responses": _responses({"200": _json(_OBJECT, "the experiment")})}},
        **{f"/api/admin/experiments/{{experiment_id}}/{action}": {"post": {
            "summary": f"Admin: {action} the experiment (409 from a wrong state)",
            "parameters": [_EXPERIMENT_ID],
            "responses": _responses({"200": _json(_OBJECT, "the experiment")})}}
           for action in ("start", "pause", "complete")},
        "/api/admin/experiments/{experiment_id}/weights": {"post": {
            "summary": "Admin: new traffic weights, starting a new phase (assigned units"
                       " keep their variant)",
            "parameters": [_EXPERIMENT_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["weights"], "properties": {"weights": {
                    "type": "object", "additionalProperties": {"type": "number",
                                                               "minimum": 0}}}}}}},
            "responses": _responses({"200": _json(_OBJECT, "the experiment")})}},
        "/api/admin/experiments/{experiment_id}/results": {"get": {
            "summary": "Admin: the experiment's statistics, computed now from its jobs",
            "parameters": [_EXPERIMENT_ID],
            "responses": _responses({"200": _json(_OBJECT, "the results, with spend")})}},
        "/media/inputs/{name}": {"get": {
            "summary": "An input image published for a URL-only provider (named by its"
                       " SHA-256)",
            "parameters": [_path("name", "<sha256>.<ext>")],
            "responses": _responses({"200": {"description": "the image",
                                             "content": {"image/*": binary}}})}},
        "/media/{job}/{file}": {"get": {
            "summary": "A stored output",
            "parameters": [_path("job", "the job id"), _path("file", "<n>.<ext>")],
            "responses": _responses({"200": {"description": "the file",
                                             "content": {"*/*": binary}}})}},
        "/v1/images/generations": {"post": {
            "summary": "OpenAI: generate images (waits for the job)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("ImageGenerationRequest")}}},
            "responses": _responses({"200": _json(_ref("ImagesResponse"), "the images")}, True)}},
        "/v1/images/edits": {"post": {
            "summary": "OpenAI: edit images (waits for the job)",
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": _ref("ImageEditRequest")}}},
            "responses": _responses({"200": _json(_ref("ImagesResponse"), "the images")}, True)}},
        "/v1/videos": {
            "post": {"summary": "OpenAI: create a video job",
                     "requestBody": {"required": True, "content": openai_json},
                     "responses": _responses({"200": _json(_ref("Video"), "queued")}, True)},
            "get": {"summary": "OpenAI: list videos",
                    "parameters": [_query("after", _STRING, "a video id"),
                                   _query("limit", {"type": "integer", "minimum": 1,
                                                    "maximum": listing.MAX_LIMIT}, "per page"),
                                   _query("order", {"enum": list(ORDERS)}, "by creation")],
                    "responses": _responses({"200": _json(_ref("VideoList"), "a page")}, True)},
        },
        "/v1/videos/{id}": {"get": {
            "summary": "OpenAI: a video", "parameters": [_VIDEO_ID],
            "responses": _responses({"200": _json(_ref("Video"), "the video")}, True)}},
        "/v1/videos/{id}/content": {"get": {
            "summary": "OpenAI: a video's MP4",
            "parameters": [_VIDEO_ID, _query("variant", {"enum": ["video"]}, "the video")],
            "responses": _responses({"200": {"description": "MP4",
                                             "content": {"video/mp4": binary}}}, True)}},
        **_batch_paths(),
    }


_BATCH_ID = _path("batch_id", "a batch id (batch_...)")


def _batch_paths() -> dict[str, Any]:
    """The batch family (``daemon/api/batches.py``)."""
    batch_body = {
        "application/json": {"schema": {
            "type": "object", "required": ["requests"],
            "properties": {"requests": {"type": "array", "items": _ref("BatchRequestItem")},
                           "options": _ref("BatchOptions"), "dryRun": {"type": "boolean"},
                           "metadata": _OBJECT}}},
        "application/x-ndjson": {"schema": {
            "type": "string", "description": "one BatchRequestItem as JSON per line; the "
                                             "options as query parameters"}},
    }
    option_query = [_query(name, schema, "a batch option (JSONL bodies)") for name, schema in (
        ("parallel", {"type": "boolean"}), ("maxConcurrency", _INTEGER),
        ("stopOnError", {"type": "boolean"}), ("priority", _INTEGER), ("notBefore", _STRING),
        ("deadline", _STRING), ("webhookUrl", _STRING), ("itemWebhooks", {"type": "boolean"}),
        ("dryRun", {"type": "boolean"}))]
    batch = _json(_ref("Batch"), "the batch")
    prefix = "/api/external/generation/batch"
    return {
        prefix: {"post": {
            "summary": "Submit a batch (JSON or JSONL), checked and stored whole",
            "parameters": option_query,
            "requestBody": {"required": True, "content": batch_body},
            "responses": _responses({
                "202": _json(_ref("BatchAccepted"), "accepted, durably"),
                "200": _json(_ref("BatchEstimate"), "dryRun: the estimate, nothing stored")})}},
        f"{prefix}/estimate": {"post": {
            "summary": "Estimate a batch's cost from the catalog's prices",
            "parameters": option_query,
            "requestBody": {"required": True, "content": batch_body},
            "responses": _responses({"200": _json(_ref("BatchEstimate"), "the estimate")})}},
        f"{prefix}/{{batch_id}}": {"get": {
            "summary": "A batch: its state, counts and a page of its tasks",
            "parameters": [_BATCH_ID,
                           _query("after", _INTEGER, "the index after which tasks are listed"),
                           _query("limit", {"type": "integer", "minimum": 1,
                                            "maximum": listing.MAX_LIMIT}, "tasks a page")],
            "responses": _responses({"200": batch})}},
        f"{prefix}/{{batch_id}}/results": {"get": {
            "summary": "The finished items as JSONL, in completion order",
            "parameters": [_BATCH_ID],
            "responses": _responses({"200": {
                "description": "one {custom_id, job_id, status, results, error} per line",
                "content": {"application/x-ndjson": {"schema": _STRING}}}})}},
        f"{prefix}/{{batch_id}}/cancel": {"post": {
            "summary": "Cancel a batch: items not started are cancelled",
            "parameters": [_BATCH_ID], "responses": _responses({"200": batch})}},
        f"{prefix}/{{batch_id}}/retry": {"post": {
            "summary": "Run a batch's failed, expired and upstream-failed items again",
            "parameters": [_BATCH_ID],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"items": {"type": "array",
                                                           "items": _STRING}}}}}},
            "responses": _responses({"200": batch})}},
    }


def _batch_schemas() -> dict[str, Any]:
    item = {"type": "object",
            "description": "A SubmissionRequest plus custom_id and dependsOn; an input_images "
                           "entry may be {fromItem, output}.",
            "allOf": [_ref("SubmissionRequest")],
            "properties": {"custom_id": {"type": "string", "maxLength": MAX_CUSTOM_ID},
                           "dependsOn": {"type": "array", "items": _STRING}}}
    options = {"type": "object", "properties": {
        "parallel": {"type": "boolean", "default": True},
        "maxConcurrency": {"type": "integer", "minimum": 1, "default": 3},
        "stopOnError": {"type": "boolean", "default": False},
        "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "notBefore": {"description": "ISO 8601 with a zone, or Unix seconds"},
        "deadline": {"description": "ISO 8601 with a zone, or Unix seconds"},
        "webhookUrl": _nullable(_STRING), "itemWebhooks": {"type": "boolean"}}}
    task = {"type": "object", "properties": {"id": _STRING, "customId": _STRING,
                                             "status": _STRING}}
    cost = {"type": "object", "properties": {
        "totalTasks": _INTEGER, "estimatedCost": _NUMBER, "byModel": _OBJECT,
        "unpricedModels": {"type": "array", "items": _STRING},
        "tasks": {"type": "array", "items": _OBJECT}}}
    return {
        "BatchRequestItem": item,
        "BatchOptions": options,
        "BatchAccepted": {"type": "object",
                          "required": ["batchId", "totalTasks", "status", "tasks"],
                          "properties": {"batchId": _STRING, "totalTasks": _INTEGER,
                                         "status": {"enum": [s.value for s in BatchState]},
                                         "estimatedCost": _NUMBER,
                                         "tasks": {"type": "array", "items": task}}},
        "BatchEstimate": cost,
        "Batch": {"type": "object", "required": ["batchId", "status", "totalTasks"],
                  "properties": {"batchId": _STRING,
                                 "status": {"enum": [s.value for s in BatchState]},
                                 "totalTasks": _INTEGER, "completedTasks": _INTEGER,
                                 "failedTasks": _INTEGER, "progress": _NUMBER,
                                 "tasks": {"type": "array", "items": _OBJECT},
                                 "nextAfter": _nullable(_INTEGER)}},
    }


def openapi_path(rule: str) -> str:
    """A route's rule as the document writes its path (``<job_id>`` as ``{id}``)."""
    path = re.sub(r"<path:[^>]+>", "{job}/{file}", rule)
    path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", path)
    return path.replace("{job_id}", "{id}").replace("{video_id}", "{id}")


def _secure(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with ``security: []`` on each operation the auth table leaves open
    (``auth.NEEDS``): the rest take the document's default, a bearer API key."""
    for rule in current_app.url_map.iter_rules():
        if need_of(rule.endpoint) is Gate.OPEN:
            item = paths.get(openapi_path(rule.rule), {})
            for method in rule.methods or ():
                if method.lower() in item:
                    item[method.lower()]["security"] = []
    return paths


def document() -> dict[str, Any]:
    """The document for the running app's catalog (made once per app)."""
    cached = current_app.extensions.get(_CACHE)
    if cached is not None:
        return dict(cached)
    runtime = services().runtime
    by_model: dict[str, str] = {}
    parameters: dict[str, dict[str, Any]] = {}
    for model, spec in sorted(runtime.catalog.items()):
        rules = rules_for(runtime.families.get(spec.provider, spec.provider), spec.provider_model)
        if rules.parameters is None:
            name = f"FreeFormParameters{rules.max_bytes}"
            parameters[name] = {"type": "object", "description": (
                f"any JSON object of at most {rules.max_bytes} bytes: the provider judges it")}
        else:
            name = rules.parameters.__name__
            parameters[name] = object_schema(rules.parameters, closed=False)
        by_model[model] = name
    made = {
        "openapi": "3.1.0",
        "info": {"title": "Easel", "version": "1",
                 "description": "Self-hosted AI image and video generation."},
        "paths": _secure(_paths()),
        # Without keys (a loopback daemon) every route is open; with them, a key.
        "security": [{"apiKey": []}],
        "components": {
            "schemas": _schemas({model: spec.kind for model, spec in runtime.catalog.items()},
                                by_model, parameters),
            "securitySchemes": {"apiKey": {
                "type": "http", "scheme": "bearer",
                "description": "an Easel API key (easel keys create)"}},
        },
    }
    current_app.extensions[_CACHE] = made
    return dict(made)


@blueprint.get("/openapi.json")
async def openapi_json() -> Response:
    return json_response(document())


@blueprint.get("/docs")
async def docs() -> Response:
    """Each operation of the document: method, path, summary, responses."""
    made = document()
    rows = "".join(
        f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
        f"<td>{html.escape(operation.get('summary', ''))}</td>"
        f"<td>{', '.join(sorted(operation['responses']))}</td></tr>"
        for path, item in made["paths"].items() for method, operation in item.items())
    models = "".join(f"<li><code>{html.escape(m)}</code>: {html.escape(n.rsplit('/', 1)[-1])}"
                     "</li>" for m, n in made["components"]["schemas"]["SubmissionRequest"][
                         "x-parameters-by-model"].items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Easel API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em;"
        "vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(made['info']['title'])} API</h1>"
        "<p>The full document: <a href='/api/openapi.json'>/api/openapi.json</a>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Statuses</th></tr>"
        f"{rows}</table><h2>Models and their parameters</h2><ul>{models}</ul></body></html>")
    return Response(page, content_type="text/html; charset=utf-8")
