"""Black Forest Labs (FLUX): everything Easel knows about BFL.

Owns BFL's parameters per model (``FluxParameters``, which models take which
input images), its wire protocol, and its ``PROVIDER`` record:

- Submit: ``POST {base_url}/v1/{provider_model}`` with header ``x-key``; a JSON body
  of the model's inputs. The 200 answer carries ``id`` and ``polling_url``; when a
  ``webhook_url`` was sent, the spec's answer is ``{id, status, webhook_url}`` and may
  lack ``polling_url``.
- Poll: GET the returned ``polling_url`` exactly as given. BFL routes it to the
  cluster that took the task (regional hosts), so it is never rebuilt; the task
  handle Easel stores is ``"<id> <polling_url>"``. Only a handle without a URL falls
  back to ``GET /v1/get_result?id=<id>`` on the configured base URL. The polling URL
  gets the ``x-key`` header, so it is followed only to ``DOCUMENTED_HOSTS`` (or the
  section's ``allowed_hosts``) and the base URL's host; another host fails the job.
- Statuses: ``Pending`` (running, with ``progress`` when given), ``Ready``
  (``result.sample`` is a signed URL that expires after about 10 minutes, which is
  why the finalizer fetches outputs at once), ``Error``, ``Request Moderated`` /
  ``Content Moderated`` (CONTENT_MODERATED) and ``Task not found``.
- Errors: 401/403 auth, 402 out of credits, 404, 422 FastAPI validation
  (``{detail: [{loc, msg, type}]}``), 429 over the concurrency limit (24 active tasks
  by default), 5xx.
- Webhooks: ``webhook_url`` + ``webhook_secret`` in the submit body; BFL POSTs the
  finished task and echoes the secret verbatim in ``X-Webhook-Secret`` (a shared
  secret, not a signature), which ``parse_webhook`` compares in constant time.
- Input images (BFL's OpenAPI schemas): FLUX 1.x text-to-image models
  (``flux-pro-1.1``, ``flux-dev``, ``flux-pro-1.1-ultra``) take one base64 image as
  ``image_prompt`` (Flux Redux); fill and expand take one base64 ``image``; Kontext
  takes ``input_image`` .. ``input_image_4`` (base64 or URL), FLUX.2 up to 8 (klein
  4). ``image_inputs`` is the one table of this, for checking and for the body.

Not offered by BFL, so not here: cancel (a no-op) and any way to list or find tasks
(no ``lookup_page``: a submission whose answer was lost cannot be proven either
way).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

import attrs
import httpx

from actors import signing
from actors.conversion import Between, OneOf
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.images.forms import Form, InputSpec, bare_base64
from actors.parameters import Context, Rules, Seed, not_for, present
from actors.providers import http
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

#: Hosts BFL's ``polling_url`` names: the global endpoint and its regional ones.
DOCUMENTED_HOSTS = ("api.bfl.ai", "api.eu.bfl.ai", "api.us.bfl.ai")
#: Header BFL echoes the submission's ``webhook_secret`` back in.
WEBHOOK_SECRET_HEADER = "x-webhook-secret"
#: Statuses that end a task as blocked by moderation: the prompt/inputs (Request) or
#: the generated image (Content).
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
#: Input fields passed through from a job's ``parameters`` as they are, besides the
#: ones mapped explicitly (size, images). Anything else is not sent.
PASSTHROUGH = (
    "width", "height", "aspect_ratio", "seed", "prompt_upsampling", "safety_tolerance",
    "output_format", "steps", "guidance", "raw", "image_prompt_strength", "interval",
)
#: Target area when a ratio must become width/height (about one megapixel).
_TARGET_PIXELS = 1024 * 1024
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


@attrs.frozen
class TaskHandle:
    """What Easel stores of a BFL task: its id and the URL to poll it at."""

    id: str
    polling_url: str | None = None

    def encode(self) -> str:
        return self.id if not self.polling_url else f"{self.id} {self.polling_url}"

    @classmethod
    def decode(cls, handle: str) -> TaskHandle:
        task_id, _, url = handle.strip().partition(" ")
        return cls(task_id, url.strip() or None)


# -- what each model takes --------------------------------------------------------------

#: BFL makes one image per task.
MAX_OUTPUTS = 1
FLUX_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21", "3:2", "2:3")
FLUX_FORMATS = OneOf(("jpeg", "png", "webp"))
_WXH = re.compile(r"^(\d{1,5})[xX](\d{1,5})$")


def size_kind(provider_model: str) -> str:
    """How a model sizes its output: ``ratio`` (Kontext, Ultra: ``aspect_ratio``),
    ``flux2`` (width/height of at least 64) or ``sized`` (width/height, 256-1440)."""
    if "kontext" in provider_model or "ultra" in provider_model:
        return "ratio"
    if provider_model.startswith("flux-2"):
        return "flux2"
    return "sized"


@attrs.frozen
class ImageInputs:
    """Where a model takes input images: its body fields in order, and whether
    they must be base64 (a ``data:`` URI's payload) rather than URLs."""

    fields: tuple[str, ...]
    base64_only: bool


def _numbered(count: int) -> tuple[str, ...]:
    return ("input_image", *(f"input_image_{n}" for n in range(2, count + 1)))


def image_inputs(provider_model: str) -> ImageInputs:
    """The input images ``provider_model`` takes (see the module doc)."""
    if "kontext" in provider_model or provider_model.startswith("flux-2-klein"):
        return ImageInputs(_numbered(4), base64_only=False)
    if provider_model.startswith("flux-2"):
        return ImageInputs(_numbered(8), base64_only=False)
    if "fill" in provider_model or "expand" in provider_model:
        return ImageInputs(("image",), base64_only=True)
    # FLUX 1.x text-to-image: one optional base64 image prompt (Flux Redux).
    return ImageInputs(("image_prompt",), base64_only=True)


@attrs.frozen
class FluxParameters:
    """BFL's inputs (``FluxPro11Inputs``, ``FluxDevInputs``, ``FluxKontextProInputs``...)."""

    #: ``"16:9"`` (one of FLUX_RATIOS) or ``"1024x768"``; the adapter turns it into
    #: width/height or aspect_ratio, whichever the model takes.
    size_or_ratio: str | None = None
    seed: Seed | None = None
    prompt_upsampling: bool = False
    safety_tolerance: Annotated[int, Between(0, 6)] = 2
    #: Default per model: jpeg, but png for Kontext (as BFL documents).
    output_format: Annotated[str, FLUX_FORMATS] | None = None
    steps: Annotated[int, Between(1, 50)] | None = None
    guidance: Annotated[float, Between(1.5, 5)] | None = None
    raw: bool | None = None
    image_prompt_strength: Annotated[float, Between(0, 1)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        model, kind = ctx.provider_model, size_kind(ctx.provider_model)
        found: list[tuple[str, str]] = []
        if self.size_or_ratio is not None:
            found += [("size_or_ratio", p) for p in self._size_problems(kind)]
        if kind == "flux2" and self.safety_tolerance > 5:
            found.append(("safety_tolerance", f"must be 0 to 5 for {model}"))
        if not any(word in model for word in ("dev", "flex", "fill", "expand")):
            found += not_for(self, ("steps", "guidance"), f"{model} takes no steps or guidance")
        if "ultra" not in model:
            found += not_for(self, ("raw", "image_prompt_strength"),
                             f"only FLUX ultra models take it, not {model}")
        return found

    def _size_problems(self, kind: str) -> list[str]:
        value = self.size_or_ratio or ""
        if value in FLUX_RATIOS:
            return []
        size = _WXH.match(value)
        if size is None:
            return [f"must be a ratio ({', '.join(FLUX_RATIOS)}) or WIDTHxHEIGHT"]
        width, height = int(size.group(1)), int(size.group(2))
        if kind == "flux2":
            ok = width >= 64 and height >= 64 and width * height <= 4_194_304
            return [] if ok else ["width and height must be at least 64, at most 4 megapixels"]
        if kind == "ratio":
            ok = width > 0 and height > 0 and 9 / 21 <= width / height <= 21 / 9
            return [] if ok else ["must have an aspect between 21:9 and 9:21"]
        if not (256 <= width <= 1440 and 256 <= height <= 1440):
            return ["width and height must be 256 to 1440"]
        if width % 32 or height % 32:
            return ["width and height must be multiples of 32"]
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = present(self)
        data.setdefault("output_format", "png" if "kontext" in ctx.provider_model else "jpeg")
        return data


def rules(provider_model: str) -> Rules:
    images = image_inputs(provider_model)
    return Rules(FluxParameters, max_outputs=MAX_OUTPUTS, max_input_images=len(images.fields),
                 base64_images=images.base64_only)


# -- request body ----------------------------------------------------------------------


def _size_fields(value: str, provider_model: str) -> dict[str, Any]:
    """``size_or_ratio`` (``"1024x768"`` or ``"16:9"``) in the fields the model takes."""
    size, ratio = _SIZE.match(value), _RATIO.match(value)
    if size is None and ratio is None:
        raise EaselError(ErrorCode.INVALID_PARAMETERS,
                         f"size_or_ratio {value!r} is neither WIDTHxHEIGHT nor W:H")
    if size_kind(provider_model) == "ratio":
        if size is not None:
            width, height = int(size.group(1)), int(size.group(2))
            divisor = math.gcd(width, height) or 1
            return {"aspect_ratio": f"{width // divisor}:{height // divisor}"}
        return {"aspect_ratio": value.replace(" ", "")}
    if size is not None:
        return {"width": int(size.group(1)), "height": int(size.group(2))}
    assert ratio is not None
    across, down = float(ratio.group(1)), float(ratio.group(2))
    if across <= 0 or down <= 0:
        raise EaselError(ErrorCode.INVALID_PARAMETERS, f"size_or_ratio {value!r} is not a ratio")
    width = math.sqrt(_TARGET_PIXELS * across / down)
    return {"width": _multiple_of_32(width), "height": _multiple_of_32(width * down / across)}


def _multiple_of_32(pixels: float) -> int:
    """Nearest multiple of 32 within the 256-1440 range FLUX 1.x models accept."""
    return int(min(1440, max(256, round(pixels / 32) * 32)))


def _image_fields(job: JobRequest) -> dict[str, Any]:
    images = list(job.input_images)
    if not images:
        return {}
    model = job.spec.provider_model
    takes = image_inputs(model)
    if len(images) > len(takes.fields):
        raise EaselError(ErrorCode.INVALID_PARAMETERS,
                         f"{model} takes at most {len(takes.fields)} input images, got {len(images)}")
    if takes.base64_only and any(image.startswith(("http://", "https://")) for image in images):
        raise EaselError(ErrorCode.INVALID_PARAMETERS,
                         f"{model} takes its input image as base64 (a data: URI), not a URL")
    # A data: URI (or base64 prepared bare, actors/images) goes as bare base64.
    return {name: bare_base64(image) for name, image in zip(takes.fields, images, strict=False)}


def request_body(job: JobRequest, webhook_url: str | None = None,
                 webhook_secret: str | None = None) -> dict[str, Any]:
    """The JSON body of ``POST /v1/{provider_model}`` for ``job``."""
    if job.number_of_outputs > MAX_OUTPUTS:
        raise EaselError(ErrorCode.INVALID_PARAMETERS,
                         "BFL makes one image per task: number_of_outputs must be 1")
    model = job.spec.provider_model
    parameters = dict(job.parameters)
    body: dict[str, Any] = {"prompt": job.prompt}
    size = parameters.pop("size_or_ratio", None)
    if size is not None:
        body.update(_size_fields(str(size), model))
    for name in PASSTHROUGH:
        if name in parameters and parameters[name] is not None:
            body[name] = parameters[name]
    body.update(_image_fields(job))
    if webhook_url:
        body["webhook_url"] = webhook_url
        if webhook_secret:
            body["webhook_secret"] = webhook_secret
    return body


# -- answers ---------------------------------------------------------------------------


def _provider_error(provider: str, message: str, payload: Any = None) -> EaselError:
    """A malformed answer: retryable PROVIDER_ERROR carrying a redacted excerpt."""
    details: dict[str, Any] = {"provider": provider}
    if payload is not None:
        details["body"] = http.redact(json.dumps(payload, default=str))
    return EaselError(ErrorCode.PROVIDER_ERROR, f"{provider}: {message}", details)


def handle_from_submit(answer: Any, provider: str, base_url: str = "") -> TaskHandle:
    """The task handle in a submit answer (``AsyncResponse`` or ``AsyncWebhookResponse``)."""
    task_id = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(task_id, str) or not task_id.strip() or " " in task_id.strip():
        raise _provider_error(provider, "submit answered without a task id", answer)
    polling_url = answer.get("polling_url")
    if not isinstance(polling_url, str) or not polling_url.strip():
        return TaskHandle(task_id.strip())  # the webhook form; polled by id
    polling_url = polling_url.strip()
    if polling_url.startswith("/"):
        polling_url = base_url.rstrip("/") + polling_url
    if not polling_url.startswith(("http://", "https://")) or " " in polling_url:
        raise _provider_error(provider, "submit answered an unusable polling_url", answer)
    return TaskHandle(task_id.strip(), polling_url)


def _progress(value: Any) -> float | None:
    """BFL's ``progress`` as a 0-1 fraction. Its scale is not documented: values
    above 1 are read as percentages (UNCONFIRMED)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    fraction = value / 100 if value > 1 else value
    return max(0.0, min(1.0, float(fraction)))


def _failure_text(payload: dict[str, Any]) -> str:
    """The reason BFL gives for a failed task (``details`` is a free-form object)."""
    details = payload.get("details")
    if isinstance(details, dict):
        for key in ("message", "error", "reason", "detail"):
            if isinstance(details.get(key), str):
                return http.redact(details[key], 200)
        if details:
            return http.redact(json.dumps(details, default=str), 200)
    if isinstance(details, str) and details:
        return http.redact(details, 200)
    return ""


def status_of(payload: Any, provider: str = "bfl") -> TaskStatus:
    """Map a ``get_result`` answer (or webhook body) to a ``TaskStatus``."""
    if not isinstance(payload, dict):
        raise _provider_error(provider, "status answer is not an object", payload)
    status = payload.get("status")
    if status == "Pending":
        return TaskStatus(TaskState.RUNNING, progress=_progress(payload.get("progress")))
    if status == "Ready":
        result = payload.get("result")
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise _provider_error(provider, "Ready without result.sample", payload)
        return TaskStatus(TaskState.SUCCEEDED, outputs=(sample,), progress=1.0)
    if status in MODERATED or status in ("Error", "Task not found"):
        code = ErrorCode.CONTENT_MODERATED if status in MODERATED else ErrorCode.TASK_FAILED
        reason = _failure_text(payload)
        message = f"{provider}: {status}" + (f": {reason}" if reason else "")
        details = {"provider": provider, "provider_status": status,
                   "body": http.redact(json.dumps(payload, default=str))}
        return TaskStatus(TaskState.FAILED, error=ErrorInfo(code, message, details))
    raise _provider_error(provider, f"unknown task status {status!r}", payload)


def _validation_message(response: httpx.Response) -> str:
    """``loc: msg`` of a FastAPI 422 body, or ``""`` when it is not one."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(detail, list):
        return ""
    parts = []
    for item in detail[:5]:
        if isinstance(item, dict):
            loc = item.get("loc")
            where = ".".join(str(part) for part in loc if part != "body") if isinstance(loc, list) else ""
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return http.redact("; ".join(parts), 300)


def error_for(response: httpx.Response, provider: str) -> EaselError:
    """The Easel error for a non-2xx BFL answer (codes per ``http.error_for_status``)."""
    return http.error_for_status(response, provider, _validation_message(response))


# -- the adapter -----------------------------------------------------------------------


class BflAdapter:
    """The BFL wire protocol; see the module docstring."""

    def __init__(self, settings: ProviderSettings, name: str = "bfl") -> None:
        self.name = name
        self.base_url = settings.base_url.rstrip("/")
        self.webhook_secret = settings.webhook_secret
        self.hosts = http.AllowedHosts.of(settings, name, DOCUMENTED_HOSTS)
        self.client = http.client_for(
            settings, {"x-key": settings.api_key, "accept": "application/json"}
        )

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await http.send(self.client, method, url, provider=self.name, **kwargs)
        if response.status_code >= 300:
            raise error_for(response, self.name)
        return http.json_body(response, self.name)

    async def submit(self, job: JobRequest) -> Submitted:
        webhook_url = job.callback_url if job.callback_url and self.webhook_secret else None
        body = request_body(job, webhook_url, self.webhook_secret or None)
        answer = await self._call("POST", f"/v1/{job.spec.provider_model}", json=body)
        return Submitted(handle_from_submit(answer, self.name, self.base_url).encode())

    async def check(self, task_id: str) -> TaskStatus:
        """Poll the task at the ``polling_url`` BFL gave, never a rebuilt one."""
        handle = TaskHandle.decode(task_id)
        if handle.polling_url:
            # The x-key header goes along: only to BFL's own (regional) hosts.
            payload = await self._call("GET", self.hosts.check(handle.polling_url))
        else:
            payload = await self._call("GET", "/v1/get_result", params={"id": handle.id})
        return status_of(payload, self.name)

    async def cancel(self, task_id: str) -> None:
        """BFL has no cancel endpoint: a task runs to its end (and is paid for)."""

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """A BFL completion webhook, verified by the echoed ``X-Webhook-Secret``.

        The body's shape is not documented (probably the ``get_result`` payload):
        when its status cannot be read, the event is only a hint to check now.
        """
        if not self.webhook_secret:
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED,
                             f"{self.name}: no webhook_secret configured to verify webhooks")
        presented = signing.header(headers, WEBHOOK_SECRET_HEADER)
        if presented is None or not signing.same(presented, self.webhook_secret):
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED,
                             f"{self.name} webhook: missing or wrong {WEBHOOK_SECRET_HEADER}")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise EaselError(ErrorCode.INVALID_REQUEST, f"{self.name} webhook: body is not JSON") from None
        task_id = None
        if isinstance(payload, dict):
            task_id = payload.get("id", payload.get("task_id"))
        if not isinstance(task_id, str) or not task_id:
            raise EaselError(ErrorCode.INVALID_REQUEST, f"{self.name} webhook: body names no task id")
        try:
            status: TaskStatus | None = status_of(payload, self.name)
        except EaselError:
            status = None
        return WebhookEvent(task_id=task_id, status=status)

    async def credits(self) -> float:
        """``GET /v1/credits``: the account's remaining credits (1 credit = $0.01)."""
        answer = await self._call("GET", "/v1/credits")
        value = answer.get("credits") if isinstance(answer, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _provider_error(self.name, "credits answer has no number", answer)
        return float(value)

    async def aclose(self) -> None:
        await self.client.aclose()


PROVIDER = Provider(
    name="bfl",
    adapter=BflAdapter,
    capabilities=Capabilities(webhooks=True),
    missing=lambda settings: missing_of(settings, ("api_key",)),
    rules=rules,
    # Bare base64 (FLUX 1.x takes nothing else), or a URL for Kontext and FLUX.2.
    inputs=InputSpec((Form.BASE64, Form.URL), preset="standard"),
)
