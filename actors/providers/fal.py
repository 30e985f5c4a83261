"""fal.ai's queue API: its wire protocol and what Easel knows of its models.

``fal-ai/flux/dev``'s inputs are checked (``FalFluxDevInput``); other models'
inputs are fal's to judge.

Submit: ``POST {base_url}/{owner}/{app}[/{path}]`` with the model input as the JSON
body (``?fal_webhook=<url>`` when Easel has a callback URL); the answer carries
``request_id`` and the ``status_url``, ``response_url`` and ``cancel_url`` to use
from then on. Those URLs drop the model's sub-path, so they are followed exactly as
returned, never rebuilt: the task handle is ``"<request_id> <compact JSON of the
three URLs>"`` (see ``Adapter.submit``), and webhooks find the job by the bare id.
They carry the API key, so each is followed only to ``DOCUMENTED_HOSTS`` (or the
section's ``allowed_hosts``) and the base URL's host; another host fails the job.

Status: ``GET status_url`` answers ``IN_QUEUE`` (with ``queue_position``),
``IN_PROGRESS`` or ``COMPLETED``. There is no failed status: a COMPLETED request's
outcome is what ``GET response_url`` answers, the model output (``images[].url``)
or an error: model errors are ``{detail: [{loc, msg, type}]}`` (422 = validation,
``content_policy_violation`` = moderation), request errors ``{detail, error_type}``.

Cancel: ``PUT cancel_url`` (202 ``CANCELLATION_REQUESTED``; 400 ``ALREADY_COMPLETED``
is not an error). Auth: ``Authorization: Key <FAL_KEY>`` (``KEY_ID:KEY_SECRET`` is
accepted as the key too). fal has no API to list requests, so a lost create's answer
cannot be looked up (no ``lookup_page``). Webhooks are signed with Ed25519 against fal's JWKS, which
Easel does not verify: a delivery is only a hint to check the request at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

import attrs
import httpx

from actors.conversion import Between, Invalid, OneOf, type_name
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.parameters import Context, Rules, Seed, converter, present
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
from actors.redaction import MASK

#: Progress reported for a request that is running (fal gives no percentage).
RUNNING_PROGRESS = 0.1
#: Progress of a queued request at the head of the queue; further back is less.
QUEUED_PROGRESS = 0.05

#: Hosts fal's queue URLs name.
DOCUMENTED_HOSTS = ("queue.fal.run",)

_MODERATION_TYPES = {"content_policy_violation"}
_QUOTA_WORDS = ("exhausted balance", "user is locked", "insufficient balance")


# -- parameters ---------------------------------------------------------------------------


@attrs.frozen
class ImageSize:
    width: Annotated[int, Between(1, 14142)]
    height: Annotated[int, Between(1, 14142)]


FAL_IMAGE_SIZES = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3",
                   "landscape_16_9")


def _image_size(value: Any, _: Any) -> str | ImageSize:
    if type(value) is str:
        if value in FAL_IMAGE_SIZES:
            return value
        raise Invalid("must be one of " + ", ".join(FAL_IMAGE_SIZES) + " or {width, height}")
    if type(value) is dict:
        return converter.structure(value, ImageSize)
    raise Invalid(f"expected a size name or {{width, height}}, got {type_name(value)}")


converter.register_structure_hook_func(lambda t: t == (str | ImageSize), _image_size)


@attrs.frozen
class FalFluxDevInput:
    """``fal-ai/flux/dev``'s inputs, with fal's defaults."""

    image_size: str | ImageSize = "landscape_4_3"
    num_inference_steps: Annotated[int, Between(1, 50)] = 28
    guidance_scale: Annotated[float, Between(1, 20)] = 3.5
    seed: Seed | None = None
    enable_safety_checker: bool = True
    output_format: Annotated[str, OneOf(("jpeg", "png"))] = "jpeg"
    acceleration: Annotated[str, OneOf(("none", "regular", "high"))] | None = None
    #: fal's name for ``number_of_outputs``; folded into it.
    num_images: Annotated[int, Between(1, 4)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = present(self)
        data.pop("num_images", None)
        return data


def rules(provider_model: str) -> Rules:
    if provider_model == "fal-ai/flux/dev":
        return Rules(FalFluxDevInput, max_outputs=4, max_input_images=0, outputs_alias="num_images")
    return Rules(None)


# -- the queue -------------------------------------------------------------------------------


@attrs.frozen
class RequestHandle:
    """What Easel stores of one fal request: its id and the URLs fal handed out."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def encode(self) -> str:
        urls = {"status_url": self.status_url, "response_url": self.response_url,
                "cancel_url": self.cancel_url}
        return f"{self.request_id} {json.dumps(urls, separators=(',', ':'))}"

    @classmethod
    def decode(cls, handle: str, provider: str = "fal") -> RequestHandle:
        request_id, _, extra = handle.partition(" ")
        try:
            urls = json.loads(extra)
            return cls(request_id, *(_url(urls[key]) for key in
                                     ("status_url", "response_url", "cancel_url")))
        except (ValueError, KeyError, TypeError):
            raise EaselError(
                ErrorCode.PROVIDER_ERROR,
                f"{provider}: task handle {handle[:80]!r} carries no request URLs",
                {"provider": provider},
                retryable=False,
            ) from None


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value


def model_input(job: JobRequest) -> dict[str, Any]:
    """The JSON body of a submission: the model's input."""
    body: dict[str, Any] = {"prompt": job.prompt}
    if job.number_of_outputs != 1:
        body["num_images"] = job.number_of_outputs
    if len(job.input_images) == 1:
        body["image_url"] = job.input_images[0]
    elif job.input_images:
        body["image_urls"] = list(job.input_images)
    body.update(job.parameters)
    return body


def outputs_of(result: Any) -> tuple[str, ...]:
    """Output URLs of a model result: ``images[].url``, or ``image``/``video`` objects."""
    if not isinstance(result, dict):
        return ()
    found: list[str] = []
    images = result.get("images")
    for item in images if isinstance(images, list) else ():
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str):
            found.append(url)
    for key in ("image", "video"):
        item = result.get(key)
        url = item.get("url") if isinstance(item, dict) else None
        if isinstance(url, str):
            found.append(url)
    return tuple(found)


def _detail_text(detail: Any) -> str:
    """A one-line summary of fal's ``detail``: a string or a list of ``{loc, msg, type}``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                msg = str(item.get("msg") or item.get("type") or "error")
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return ""


def _detail_types(detail: Any) -> set[str]:
    if not isinstance(detail, list):
        return set()
    return {str(item.get("type")) for item in detail if isinstance(item, dict) and item.get("type")}


def _is_cancel(error_type: Any, text: str) -> bool:
    # UNCONFIRMED: fal documents no cancelled state; a cancelled request is
    # recognised by an error_type or message that says so.
    return "cancel" in str(error_type or "").lower() or "cancelled" in text.lower()


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def error_for_response(response: httpx.Response, provider: str) -> EaselError:
    """The ``EaselError`` of a non-2xx answer, in fal's error shapes."""
    body = _body(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    text = _detail_text(detail)
    error = http.error_for_status(response, provider, text)
    lowered = (text or response.text).lower()
    code = error.code
    if _detail_types(detail) & _MODERATION_TYPES:
        code = ErrorCode.CONTENT_MODERATED
    elif any(word in lowered for word in _QUOTA_WORDS):
        code = ErrorCode.QUOTA_EXCEEDED
    if code is not error.code:
        error = EaselError(code, str(error), error.info.details, retry_after=error.retry_after)
    if isinstance(body, dict) and body.get("error_type"):
        error.info.details["errorType"] = str(body["error_type"])
    return error


def failed_result(response: httpx.Response, provider: str) -> TaskStatus | None:
    """The final ``TaskStatus`` a COMPLETED request's error answer stands for, or
    ``None`` when the answer is not fal's account of the request (a gateway hiccup,
    auth, throttling): then it is raised and the check is repeated."""
    status = response.status_code
    body = _body(response)
    if status in (401, 403, 429) or not isinstance(body, dict):
        return None
    detail, error_type = body.get("detail"), body.get("error_type")
    if not isinstance(detail, list) and not error_type:
        return None  # neither a model error nor a request error
    text = _detail_text(detail) or str(body.get("error") or "request failed")
    details = {"provider": provider, "status": status, "body": http.redact(response.text)}
    if error_type:
        details["errorType"] = str(error_type)
    if _is_cancel(error_type, text):
        return TaskStatus(TaskState.CANCELLED)
    if _detail_types(detail) & _MODERATION_TYPES or outcomes.looks_moderated(text):
        code = ErrorCode.CONTENT_MODERATED
    elif status == 422:
        code = ErrorCode.INVALID_PARAMETERS
    else:
        code = ErrorCode.TASK_FAILED
    message = f"{provider}: {http.redact(text, 300)}"
    return TaskStatus(TaskState.FAILED, error=ErrorInfo(code, message, details))


def succeeded_result(result: Any, provider: str) -> TaskStatus:
    """The ``TaskStatus`` of a COMPLETED request's 2xx result."""
    outputs = outputs_of(result)
    flags = result.get("has_nsfw_concepts") if isinstance(result, dict) else None
    if isinstance(flags, list) and flags and all(flag is True for flag in flags):
        # The safety checker blanked every image: nothing usable came back.
        return TaskStatus(TaskState.FAILED, error=ErrorInfo(
            ErrorCode.CONTENT_MODERATED, f"{provider}: every image was flagged NSFW",
            {"provider": provider}))
    if not outputs:
        return TaskStatus(TaskState.FAILED, error=ErrorInfo(
            ErrorCode.TASK_FAILED, f"{provider}: completed without output",
            {"provider": provider, "body": http.redact(json.dumps(result))}))
    return TaskStatus(TaskState.SUCCEEDED, outputs=outputs, progress=1.0)


def queue_progress(position: Any) -> float | None:
    """A progress hint from ``queue_position``: closer to the head, higher."""
    if isinstance(position, bool) or not isinstance(position, int | float) or position < 0:
        return None
    return round(QUEUED_PROGRESS / (1 + position), 4)


class FalAdapter:
    """fal.ai's queue; see the module docstring."""

    def __init__(self, settings: ProviderSettings, name: str = "fal") -> None:
        self.name = name
        key = settings.api_key or settings.api_token
        if not key and settings.access_key:
            key = f"{settings.access_key}:{settings.secret_key}"
        base_url = settings.base_url or "https://queue.fal.run"
        self.hosts = http.AllowedHosts.of(settings, name, DOCUMENTED_HOSTS, base_url)
        self.client = http.client_for(settings, {"Authorization": f"Key {key}"}, base_url=base_url)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await http.send(self.client, method, url, provider=self.name, **kwargs)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        body = http.json_body(response, self.name)
        if not isinstance(body, dict):
            raise EaselError(ErrorCode.PROVIDER_ERROR, f"{self.name}: answer is not a JSON object",
                             {"provider": self.name, "status": response.status_code,
                              "body": http.redact(response.text)})
        return body

    async def submit(self, job: JobRequest) -> Submitted:
        params = {"fal_webhook": job.callback_url} if job.callback_url else None
        response = await self._send("POST", f"/{job.spec.provider_model.strip('/')}",
                                    json=model_input(job), params=params)
        if response.status_code >= 300:
            raise error_for_response(response, self.name)
        body = self._json(response)
        request_id = body.get("request_id")
        try:
            if not isinstance(request_id, str) or not request_id or " " in request_id:
                raise ValueError("no request_id")
            handle = RequestHandle(request_id, _url(body.get("status_url")),
                                   _url(body.get("response_url")), _url(body.get("cancel_url")))
        except ValueError as exc:
            raise EaselError(
                ErrorCode.PROVIDER_ERROR,
                f"{self.name}: submit answered without a request id and its URLs ({exc})",
                {"provider": self.name, "body": http.redact(response.text)},
            ) from None
        return Submitted(handle.encode())

    async def check(self, task_id: str) -> TaskStatus:
        handle = RequestHandle.decode(task_id, self.name)
        response = await self._send("GET", self.hosts.check(handle.status_url))
        if response.status_code >= 300:
            raise error_for_response(response, self.name)
        body = self._json(response)
        status = body.get("status")
        if status == "IN_QUEUE":
            return TaskStatus(TaskState.RUNNING, progress=queue_progress(body.get("queue_position")))
        if status == "IN_PROGRESS":
            return TaskStatus(TaskState.RUNNING, progress=RUNNING_PROGRESS)
        if status in ("CANCELLED", "CANCELED"):  # tolerated; not a documented status
            return TaskStatus(TaskState.CANCELLED)
        if status != "COMPLETED":
            raise EaselError(ErrorCode.PROVIDER_ERROR, f"{self.name}: unknown status {status!r}",
                             {"provider": self.name, "body": http.redact(response.text)})
        if _is_cancel(body.get("error_type"), str(body.get("error") or "")):
            return TaskStatus(TaskState.CANCELLED)
        return await self._result(handle)

    async def _result(self, handle: RequestHandle) -> TaskStatus:
        response = await self._send("GET", self.hosts.check(handle.response_url))
        if response.status_code >= 300:
            final = failed_result(response, self.name)
            if final is None:
                raise error_for_response(response, self.name)
            return final
        return succeeded_result(self._json(response), self.name)

    async def cancel(self, task_id: str) -> None:
        """``PUT cancel_url``: a queued request is dropped, a running one is signalled.

        A request that already finished (400 ``ALREADY_COMPLETED``) or is unknown
        (``NOT_FOUND``) needs no cancel, so those answers are not errors.
        """
        handle = RequestHandle.decode(task_id, self.name)
        response = await self._send("PUT", self.hosts.check(handle.cancel_url))
        if response.status_code < 300:
            return
        body = _body(response)
        if isinstance(body, dict) and body.get("status") in ("ALREADY_COMPLETED", "NOT_FOUND"):
            return
        raise error_for_response(response, self.name)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """A fal webhook, taken as a hint only.

        fal signs deliveries with Ed25519 (keys from its JWKS); Easel does not verify
        that signature, so the body is not believed: the request is checked with fal
        at once (``status=None``). Only its ``request_id`` is read.
        """
        try:
            delivery = json.loads(body)
            request_id = delivery["request_id"]
        except (ValueError, KeyError, TypeError):
            raise EaselError(ErrorCode.INVALID_REQUEST,
                             f"{self.name} webhook: body is not a fal delivery") from None
        if not isinstance(request_id, str) or not request_id or " " in request_id:
            raise EaselError(ErrorCode.INVALID_REQUEST, f"{self.name} webhook: no request_id")
        return WebhookEvent(task_id=request_id, status=None)

    async def aclose(self) -> None:
        await self.client.aclose()


PROVIDER = Provider(
    name="fal",
    adapter=FalAdapter,
    capabilities=Capabilities(cancel=True, webhooks=True),
    missing=lambda settings: missing_of(
        settings, ("api_key",), ("api_token",), ("access_key", "secret_key")),
    rules=rules,
    redactions=((re.compile(r"\b(Key)\s+[A-Za-z0-9._-]+:[A-Za-z0-9._-]+"), r"\1 " + MASK),),
)
