"""Pollo AI: everything Easel knows about Pollo's generation API.

Owns: its parameters (``PolloParameters``), building ``POST {base}/generation/{brand}/{model}`` bodies (``{"input": {...},
"webhookUrl": ...}``) from a job, reading the task id out of the submit answer,
mapping ``GET {base}/generation/{taskId}/status`` (``generations[].status`` and
``.url``) to a ``TaskStatus``, mapping Pollo's error answers to Easel codes, and
verifying Pollo's signed webhooks. Auth is the ``x-api-key`` header. The catalog's
``provider_model`` is ``"brand/model"``, e.g. ``"pollo/pollo-v1-6"``.

Pollo's documentation disagrees with itself (and with integrations) on several
shapes, so the reader here is deliberately tolerant (UNCONFIRMED points):

- answers may be bare (``{"taskId": ..., "status": ...}``) or wrapped in a
  ``{"code": "SUCCESS", "message": ..., "data": {...}}`` envelope; an envelope
  whose ``code`` is not a success is an error even on HTTP 200;
- the task id may be ``taskId``, ``task_id`` or ``id``;
- status values are compared case-insensitively: ``waiting``/``pending``/
  ``processing`` are running, ``succeed`` (also ``succeeded``/``success``) is done,
  ``failed`` (also ``fail``/``error``) failed;
- webhooks carry ``taskId`` and ``status``; when they do not also carry the
  generations with their URLs, a ``succeed`` webhook is only a hint to check now.

Pollo has no cancel endpoint (``cancel`` does nothing: the remote task runs to the
end and is charged at submit anyway) and no way to list or find tasks
(no ``lookup_page``: a create whose answer was lost cannot be resolved).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Annotated, Any

import attrs
import httpx

from actors import signing
from actors.conversion import Between, OneOf, Text
from actors.errors import EaselError, ErrorCode
from actors.images.forms import Form, InputSpec
from actors.parameters import Context, Ratio, Rules, Seed, present
from actors.providers import http, outcomes
from actors.providers.base import (
    Capabilities,
    JobRequest,
    Provider,
    ProviderSettings,
    Submitted,
    TaskState,
    TaskStatus,
    WebhookEvent,
    missing_of,
)

#: Pollo makes one video per task, from at most two images (first and last frame).
MAX_OUTPUTS = 1
MAX_INPUT_IMAGES = 2

_RUNNING = {"waiting", "pending", "queued", "queuing", "processing", "running"}
_SUCCEEDED = {"succeed", "succeeded", "success", "completed"}
_FAILED = {"failed", "fail", "error"}

#: Envelope ``code`` values that mean the call worked.
_SUCCESS_CODES = {"success", "ok", "0", "200"}

#: Envelope/error ``code`` values (upper-cased) and what they mean. Only
#: UNAUTHORIZED and FORBIDDEN are seen in an integration; the rest are guesses at
#: the obvious names, with the HTTP status deciding when the code is unknown.
_CODES = {
    "UNAUTHORIZED": ErrorCode.AUTHENTICATION_FAILED,
    "INVALID_API_KEY": ErrorCode.AUTHENTICATION_FAILED,
    "FORBIDDEN": ErrorCode.AUTHENTICATION_FAILED,
    "INSUFFICIENT_CREDITS": ErrorCode.QUOTA_EXCEEDED,
    "PAYMENT_REQUIRED": ErrorCode.QUOTA_EXCEEDED,
    "TOO_MANY_REQUESTS": ErrorCode.RATE_LIMITED,
    "RATE_LIMITED": ErrorCode.RATE_LIMITED,
    "BAD_REQUEST": ErrorCode.INVALID_PARAMETERS,
    "VALIDATION_ERROR": ErrorCode.INVALID_PARAMETERS,
    "INVALID_PARAMETER": ErrorCode.INVALID_PARAMETERS,
    "NOT_FOUND": ErrorCode.NOT_FOUND,
    "INTERNAL_SERVER_ERROR": ErrorCode.PROVIDER_ERROR,
    "SERVICE_UNAVAILABLE": ErrorCode.PROVIDER_UNAVAILABLE,
}

#: Words in a message that mean the provider is out of the account's credits.
_CREDIT_WORDS = ("credit", "balance", "insufficient fund")

#: Client parameter names -> Pollo's ``input`` keys. Names not listed pass as given.
_PARAMETER_NAMES = {
    "negative_prompt": "negativePrompt",
    "aspect_ratio": "aspectRatio",
    "generate_audio": "generateAudio",
    "image_tail": "imageTail",
}


# -- parameters ---------------------------------------------------------------------------


@attrs.frozen
class PolloParameters:
    """Pollo's ``input`` fields. Allowed values are per model and undocumented, so
    only the shapes are checked and no defaults are filled in (Pollo's own apply).
    Taken in snake_case or in Pollo's camelCase (``negativePrompt``), as every
    field name; sent in camelCase (``_PARAMETER_NAMES``)."""

    duration: Annotated[int, Between(1, 20, from_text=True)] | None = None
    negative_prompt: Annotated[str, Text(2500)] | None = None
    seed: Seed | None = None
    aspect_ratio: Ratio | None = None
    resolution: Annotated[str, OneOf(("480p", "720p", "1080p"))] | None = None
    generate_audio: bool | None = None
    mode: Annotated[str, OneOf(("std", "pro"))] | None = None
    strength: Annotated[int, Between(0, 100)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        return present(self)


RULES = Rules(PolloParameters, max_outputs=MAX_OUTPUTS, max_input_images=MAX_INPUT_IMAGES)


# -- request bodies ---------------------------------------------------------------------


def generation_input(job: JobRequest) -> dict[str, Any]:
    """The ``input`` object of a submit: prompt, image(s) and camelCased parameters.

    The first input image is ``image`` and a second one ``imageTail`` (the last
    frame, as in the kling-v1-5 example); Pollo makes one video per task.
    """
    body: dict[str, Any] = {"prompt": job.prompt}
    if job.input_images:
        body["image"] = job.input_images[0]
    if len(job.input_images) > 1:
        body["imageTail"] = job.input_images[1]
    for name, value in job.parameters.items():
        body[_PARAMETER_NAMES.get(name, name)] = value
    return body


def submit_path(provider_model: str) -> str:
    """``/generation/{brand}/{model}`` for ``"brand/model"``."""
    brand, _, model = provider_model.strip("/").partition("/")
    if not brand or not model:
        raise EaselError(
            ErrorCode.INVALID_REQUEST,
            f"pollo: provider_model {provider_model!r} is not 'brand/model'",
            retryable=False,
        )
    return f"/generation/{brand}/{model}"


# -- reading answers ----------------------------------------------------------------------


def _malformed(provider: str, what: str, body: Any = None) -> EaselError:
    details: dict[str, Any] = {"provider": provider}
    if body is not None:
        details["body"] = http.redact(json.dumps(body, default=str))
    return EaselError(ErrorCode.PROVIDER_ERROR, f"{provider}: {what}", details)


def _code_error(code: str, message: str, status: int, body: Any, provider: str) -> EaselError:
    """The Easel error for Pollo's ``{code, message}`` error shape."""
    lowered = message.lower()
    if any(word in lowered for word in _CREDIT_WORDS) or status == 402:
        easel_code = ErrorCode.QUOTA_EXCEEDED
    else:
        easel_code = _CODES.get(code.upper(), ErrorCode.PROVIDER_ERROR)
    return EaselError(
        easel_code,
        f"{provider}: {http.redact(message or code, 200)}",
        {"provider": provider, "status": status, "code": code,
         "body": http.redact(json.dumps(body, default=str))},
    )


def error_for_response(response: httpx.Response, provider: str) -> EaselError:
    """The Easel error for a non-2xx answer.

    Pollo answers errors as ``{"code": "...", "message": "..."}`` (seen in an
    integration: 401 UNAUTHORIZED, 403 FORBIDDEN "Not enough credits"). Running out
    of credits is QUOTA_EXCEEDED whatever the status (402 or 403); otherwise the
    HTTP status decides, as for every provider.
    """
    error = http.error_for_status(response, provider)
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error
    if not isinstance(body, dict):
        return error
    message = body.get("message") if isinstance(body.get("message"), str) else ""
    code = body.get("code") if isinstance(body.get("code"), str) else ""
    if response.status_code == 402 or any(word in message.lower() for word in _CREDIT_WORDS):
        return EaselError(
            ErrorCode.QUOTA_EXCEEDED,
            f"{provider}: {http.redact(message or 'out of credits', 200)}",
            {**error.info.details, "code": code},
            retry_after=error.retry_after,
        )
    if code:
        error.info.details["code"] = code
    return error


def unwrap(body: Any, provider: str, status: int = 200) -> dict[str, Any]:
    """The payload of a 2xx answer, with or without the ``{code, message, data}``
    envelope. An envelope whose code is not a success is raised as an error."""
    if not isinstance(body, dict):
        raise _malformed(provider, "answer is not a JSON object", body)
    code = body.get("code")
    if "data" in body and (code is not None or "message" in body):
        if code is not None and str(code).lower() not in _SUCCESS_CODES:
            message = body.get("message") if isinstance(body.get("message"), str) else ""
            raise _code_error(str(code), message, status, body, provider)
        data = body["data"]
        if not isinstance(data, dict):
            raise _malformed(provider, "envelope has no data object", body)
        return data
    if isinstance(code, str) and code.lower() not in _SUCCESS_CODES and "message" in body:
        # An error shape on a 2xx answer (no data at all).
        message = body["message"] if isinstance(body["message"], str) else ""
        raise _code_error(code, message, status, body, provider)
    return body


def task_id_of(payload: dict[str, Any]) -> str | None:
    """``taskId`` (status/webhook docs), ``task_id`` (quick-start) or ``id``."""
    for key in ("taskId", "task_id", "id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _state_of(value: Any) -> TaskState | None:
    if not isinstance(value, str):
        return None
    status = value.strip().lower()
    if status in _RUNNING:
        return TaskState.RUNNING
    if status in _SUCCEEDED:
        return TaskState.SUCCEEDED
    if status in _FAILED:
        return TaskState.FAILED
    return None


def status_of(payload: dict[str, Any], provider: str = "pollo") -> TaskStatus:
    """Map a task status payload (``{taskId, credit, generations: [...]}``) to a
    ``TaskStatus``.

    One failed generation fails the task; the task succeeded when every
    generation did and each has a URL. A payload with no generations yet but a
    task-level ``status`` is read from that; with neither it is still queued.
    """
    generations = payload.get("generations")
    if generations is None:
        generations = []
    if not isinstance(generations, list) or not all(isinstance(g, dict) for g in generations):
        raise _malformed(provider, "generations is not a list of objects", payload)
    if not generations:
        if "status" not in payload:
            if "generations" not in payload:
                raise _malformed(provider, "status answer has neither generations nor status", payload)
            return TaskStatus(TaskState.RUNNING)
        state = _state_of(payload.get("status"))
        if state is None:
            raise _malformed(provider, f"unknown task status {payload.get('status')!r}", payload)
        if state is TaskState.FAILED:
            return outcomes.failed(_fail_message(payload), provider)
        if state is TaskState.SUCCEEDED:
            return outcomes.failed("task succeeded without any generation", provider)
        return TaskStatus(TaskState.RUNNING, progress=_progress(payload))
    states = [_state_of(generation.get("status")) for generation in generations]
    if None in states:
        unknown = [g.get("status") for g, s in zip(generations, states, strict=True) if s is None]
        raise _malformed(provider, f"unknown generation status {unknown[0]!r}", payload)
    for generation, state in zip(generations, states, strict=True):
        if state is TaskState.FAILED:
            return outcomes.failed(_fail_message(generation), provider)
    if all(state is TaskState.SUCCEEDED for state in states):
        urls = [generation.get("url") for generation in generations]
        if not all(isinstance(url, str) and url for url in urls):
            return outcomes.failed("generation succeeded without a url", provider)
        return TaskStatus(TaskState.SUCCEEDED, outputs=tuple(urls), progress=1.0)  # type: ignore[arg-type]
    progresses = [p for p in (_progress(g) for g in generations) if p is not None]
    progress = sum(progresses) / len(progresses) if progresses else None
    return TaskStatus(TaskState.RUNNING, progress=progress)


def _fail_message(item: dict[str, Any]) -> str:
    for key in ("failMsg", "fail_msg", "error", "message"):
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return "generation failed"


def _progress(item: dict[str, Any]) -> float | None:
    """``progress`` as a fraction, when given (0-1 or a percentage; UNCONFIRMED)."""
    value = item.get("progress")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    fraction = value / 100 if value > 1 else value
    return max(0.0, min(1.0, float(fraction)))


# -- webhooks --------------------------------------------------------------------------------


def _signing_keys(secret: str) -> list[bytes]:
    """The HMAC keys a secret may stand for: Pollo's docs key the HMAC with the
    secret as given (it is Base64 text); one client Base64-decodes it first
    (UNCONFIRMED which is right), so both are accepted."""
    keys = [secret.encode()]
    raw = secret.removeprefix("whsec_")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded and decoded not in keys:
        keys.append(decoded)
    return keys


def _timestamp_seconds(value: str) -> float:
    stamp = float(value)
    return stamp / 1000 if stamp > 1e11 else stamp  # milliseconds (UNCONFIRMED unit)


def verify_webhook(
    secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> None:
    """Raise ``SignatureError`` unless the ``X-Webhook-*`` headers sign ``body`` with
    ``secret`` within ``signing.TOLERANCE`` of ``now``: a Base64 HMAC-SHA256 of
    ``"{id}.{timestamp}.{body}"``, as Standard Webhooks but with Pollo's headers."""
    webhook_id = signing.header(headers, "x-webhook-id")
    timestamp = signing.header(headers, "x-webhook-timestamp")
    signatures = signing.header(headers, "x-webhook-signature")
    if not (webhook_id and timestamp and signatures):
        raise signing.SignatureError(
            "missing X-Webhook-Id, X-Webhook-Timestamp or X-Webhook-Signature")
    try:
        sent_at = _timestamp_seconds(timestamp)
    except ValueError:
        raise signing.SignatureError("X-Webhook-Timestamp is not a number") from None
    signing.fresh(sent_at, now, "X-Webhook-Timestamp")
    expected = [signing.signature(key, webhook_id, timestamp, body) for key in _signing_keys(secret)]
    if not signing.any_matches(signatures, expected):
        raise signing.SignatureError("no X-Webhook-Signature matches")


def webhook_status(payload: dict[str, Any], provider: str) -> TaskStatus | None:
    """What a verified webhook body proves, or ``None`` when the task should be
    checked instead (a ``succeed`` without the generations' URLs)."""
    if isinstance(payload.get("generations"), list) and payload["generations"]:
        try:
            return status_of(payload, provider)
        except EaselError:
            return None  # unreadable generations: let a check decide
    state = _state_of(payload.get("status"))
    if state is TaskState.FAILED:
        return outcomes.failed(_fail_message(payload), provider)
    return None


# -- the adapter -------------------------------------------------------------------------------


class PolloAdapter:
    """Pollo AI: submit, check, webhooks. No cancel, no lookup (see module doc)."""

    def __init__(self, settings: ProviderSettings, name: str = "pollo") -> None:
        self.name = name
        self.webhook_secret = settings.webhook_secret
        self.client = http.client_for(
            settings, {"x-api-key": settings.api_key, "Accept": "application/json"}
        )

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = await http.send(self.client, method, url, provider=self.name, **kwargs)
        if response.status_code >= 300:
            raise error_for_response(response, self.name)
        return unwrap(http.json_body(response, self.name), self.name, response.status_code)

    async def submit(self, job: JobRequest) -> Submitted:
        if job.number_of_outputs > MAX_OUTPUTS:
            raise EaselError(
                ErrorCode.INVALID_PARAMETERS,
                f"{self.name}: makes one video per task (number_of_outputs must be 1)",
                {"provider": self.name},
            )
        body: dict[str, Any] = {"input": generation_input(job)}
        if job.callback_url and self.webhook_secret:
            # Without a secret Pollo's signature could not be checked: poll only.
            body["webhookUrl"] = job.callback_url
        payload = await self._call("POST", submit_path(job.spec.provider_model), json=body)
        task_id = task_id_of(payload)
        if task_id is None:
            # Pollo took the job (2xx) but we cannot name it: resending could pay
            # twice, so this is not retried.
            raise EaselError(
                ErrorCode.PROVIDER_ERROR,
                f"{self.name}: submit answered without a task id",
                {"provider": self.name, "body": http.redact(json.dumps(payload, default=str))},
                retryable=False,
            )
        return Submitted(task_id)

    async def check(self, task_id: str) -> TaskStatus:
        bare_id = task_id.split(" ", 1)[0]
        payload = await self._call("GET", f"/generation/{bare_id}/status")
        return status_of(payload, self.name)

    async def cancel(self, task_id: str) -> None:
        """Pollo documents no cancel: nothing is sent, the task runs to its end."""
        return None

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """A Pollo webhook: signed with the dashboard's webhook secret (see
        ``verify_webhook``); the body has ``taskId`` and ``status``."""
        if not self.webhook_secret:
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED,
                             f"{self.name}: no webhook_secret configured to verify webhooks")
        try:
            verify_webhook(self.webhook_secret, headers, body)
        except signing.SignatureError as exc:
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED, f"{self.name} webhook: {exc}") from None
        try:
            payload = unwrap(json.loads(body), self.name)
        except (ValueError, EaselError):
            payload = None
        task_id = task_id_of(payload) if payload is not None else None
        if payload is None or task_id is None:
            raise EaselError(ErrorCode.INVALID_REQUEST,
                             f"{self.name} webhook: body has no taskId")
        return WebhookEvent(task_id=task_id, status=webhook_status(payload, self.name))

    async def aclose(self) -> None:
        await self.client.aclose()


PROVIDER = Provider(
    name="pollo",
    adapter=PolloAdapter,
    capabilities=Capabilities(webhooks=True),
    missing=lambda settings: missing_of(settings, ("api_key",)),
    rules=lambda provider_model: RULES,
    # Pollo fetches its images itself: URLs only (an inline image is published).
    inputs=InputSpec((Form.URL,), preset="pollo-optimized"),
)
