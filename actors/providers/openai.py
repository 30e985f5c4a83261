"""OpenAI's Images API and the OpenAI-compatible resellers (Tu-zi).

Owns: the parameters each image model takes (``OpenAIParameters``, ``limits``), the
request bodies of ``POST {base_url}/images/generations`` (JSON) and
``POST {base_url}/images/edits`` (multipart, used when a job has input images),
the reading of ``{created, data: [{b64_json | url}]}``, and the mapping of the
``{"error": {message, type, param, code}}`` envelope to Easel's codes. ``base_url``
includes the version prefix (``https://api.openai.com/v1``); auth is
``Authorization: Bearer <api_key>``.

The API is synchronous: ``submit`` answers ``Completed`` with the images, each a
``data:image/...;base64,`` URI (GPT image models always answer ``b64_json``) or,
for dall-e models asked for ``response_format = "url"``, the provider's URL (valid
for an hour; the finalizer fetches it at once). There is no task id, so nothing
is polled or cancelled, no webhook exists, and a submission caught by a crash
cannot be looked up (no ``lookup_page``).

Timeouts matter here more than anywhere: a gpt-image-1 call routinely takes 30 to
90 s, and the whole generation happens inside the one HTTP request, so the
section's ``request_timeout`` must exceed the slowest generation (180 s is a sane
value; the 30 s default is too short). A read timeout after the request was sent
is PROVIDER_TIMEOUT and is not resent: the provider may have generated (and
billed) the images.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any

import attrs
import httpx

from actors.conversion import Between, OneOf, Text
from actors.errors import EaselError, ErrorCode
from actors.fetch import Fetcher
from actors.images.forms import Form, InputSpec
from actors.images.source import fetch_image, split_data_uri
from actors.images.validate import CONTENT_TYPES, ImageRefused, check_bytes
from actors.parameters import Context, Rules, not_for, present
from actors.providers import http
from actors.providers.base import (
    Capabilities,
    Completed,
    JobRequest,
    Provider,
    ProviderSettings,
    TaskStatus,
    missing_of,
)
from actors.redaction import MASK
from actors.retry import parse_retry_after

#: Error ``code`` values OpenAI uses for safety rejections (dall-e answers
#: ``content_policy_violation``, GPT image models ``moderation_blocked``).
MODERATION_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
#: The ``code`` (or ``type``) of a 429 that means "out of credits", not "slow down".
QUOTA_CODE = "insufficient_quota"
#: Largest input image sent to an edit (OpenAI takes files under 50 MB).
MAX_INPUT_BYTES = 50 * 1024 * 1024
#: Redirects followed when fetching an input image, each hop checked.
MAX_REDIRECTS = 5
#: Content types an edit accepts as input images.
INPUT_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
#: Keys of ``JobRequest.parameters`` the adapter sets itself and will not take.
RESERVED_PARAMETERS = frozenset({"model", "prompt", "n", "image", "image[]", "stream"})
#: ``output_format`` -> content type of a ``b64_json`` image.
OUTPUT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


@attrs.frozen
class InputImage:
    """One input image, ready to be a multipart part."""

    data: bytes
    content_type: str

    def part(self, index: int) -> tuple[str, bytes, str]:
        return (f"image-{index}.{INPUT_TYPES[self.content_type]}", self.data, self.content_type)


# -- what each model takes --------------------------------------------------------------

OPENAI_SIZES = {
    "gpt": ("1024x1024", "1536x1024", "1024x1536", "auto"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "edit": ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "auto"),
}
OPENAI_QUALITIES = {
    "gpt": ("auto", "low", "medium", "high"),
    "dall-e-3": ("auto", "hd", "standard"),
    "dall-e-2": ("auto", "standard"),
}
_OPENAI_DEFAULTS = {
    "gpt": {"size": "auto", "quality": "auto"},
    "dall-e-3": {"size": "1024x1024", "quality": "standard", "style": "vivid"},
    "dall-e-2": {"size": "1024x1024"},
}
_ALL_SIZES = tuple(sorted({s for sizes in OPENAI_SIZES.values() for s in sizes}))
_ALL_QUALITIES = tuple(sorted({q for qs in OPENAI_QUALITIES.values() for q in qs}))
#: Images one request makes at most (``n``), per kind of model.
_MAX_OUTPUTS = {"dall-e-3": 1, "dall-e-2": 10, "gpt": 10}
#: Input images an edit takes at most, per kind of model (dall-e-3 cannot edit).
_MAX_INPUT_IMAGES = {"dall-e-3": 0, "dall-e-2": 1, "gpt": 16}


def openai_kind(model: str) -> str:
    """``dall-e-3``, ``dall-e-2`` or ``gpt`` (the GPT image models)."""
    lowered = model.lower()
    if lowered.startswith("dall-e-3"):
        return "dall-e-3"
    if lowered.startswith("dall-e"):
        return "dall-e-2"
    return "gpt"


def is_dalle(model: str) -> bool:
    """dall-e-2/3 take ``response_format``; GPT image models reject it (always b64)."""
    return openai_kind(model) != "gpt"


def limits(model: str) -> tuple[int, int]:
    """``(max outputs, max input images)`` of one request to ``model``."""
    kind = openai_kind(model)
    return _MAX_OUTPUTS[kind], _MAX_INPUT_IMAGES[kind]


@attrs.frozen
class OpenAIParameters:
    """``/images/generations`` and ``/images/edits`` fields."""

    size: Annotated[str, OneOf(_ALL_SIZES)] | None = None
    quality: Annotated[str, OneOf(_ALL_QUALITIES)] | None = None
    style: Annotated[str, OneOf(("vivid", "natural"))] | None = None
    background: Annotated[str, OneOf(("transparent", "opaque", "auto"))] | None = None
    output_format: Annotated[str, OneOf(("png", "jpeg", "webp"))] | None = None
    output_compression: Annotated[int, Between(0, 100)] | None = None
    moderation: Annotated[str, OneOf(("low", "auto"))] | None = None
    response_format: Annotated[str, OneOf(("url", "b64_json"))] | None = None
    input_fidelity: Annotated[str, OneOf(("high", "low"))] | None = None
    user: Annotated[str, Text(256)] | None = None
    #: OpenAI's name for ``number_of_outputs``; folded into it.
    n: Annotated[int, Between(1, 10)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        kind, model = openai_kind(ctx.provider_model), ctx.provider_model
        edit = bool(ctx.input_images)
        found: list[tuple[str, str]] = []
        sizes = OPENAI_SIZES["edit" if edit and kind != "dall-e-3" else kind]
        if self.size is not None and self.size not in sizes:
            found.append(("size", f"{model} takes {', '.join(sizes)}"))
        qualities = OPENAI_QUALITIES[kind] + (("standard",) if edit and kind == "gpt" else ())
        if self.quality is not None and self.quality not in qualities:
            found.append(("quality", f"{model} takes {', '.join(qualities)}"))
        if kind != "dall-e-3":
            found += not_for(self, ("style",), "only dall-e-3 takes a style")
        if kind == "gpt":
            found += not_for(self, ("response_format",), "GPT image models always answer base64")
        else:
            found += not_for(self, ("background", "output_format", "output_compression",
                                    "moderation", "input_fidelity"), f"{model} does not take it")
        if self.background == "transparent" and self.output_format == "jpeg":
            found.append(("background", "transparent needs output_format png or webp"))
        return found

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = present(self)
        data.pop("n", None)
        for key, value in _OPENAI_DEFAULTS[openai_kind(ctx.provider_model)].items():
            data.setdefault(key, value)
        return data


def rules(provider_model: str) -> Rules:
    max_outputs, max_input_images = limits(provider_model)
    return Rules(OpenAIParameters, max_outputs=max_outputs, max_input_images=max_input_images,
                 outputs_alias="n")


# -- request bodies ----------------------------------------------------------------------


def generation_body(job: JobRequest) -> dict[str, Any]:
    """The JSON of ``POST /images/generations`` for ``job``.

    Parameters (``size``, ``quality``, ``style``, ``background``, ``output_format``,
    ``output_compression``, ``moderation``, ``response_format``...) pass through as
    given; dall-e models default to ``b64_json`` so an output survives a restart
    longer than a provider URL's hour would.
    """
    model = job.spec.provider_model
    body: dict[str, Any] = {"model": model, "prompt": job.prompt, "n": job.number_of_outputs}
    body.update({k: v for k, v in job.parameters.items() if k not in RESERVED_PARAMETERS})
    if is_dalle(model):
        body.setdefault("response_format", "b64_json")
    else:
        body.pop("response_format", None)
    return body


def edit_fields(job: JobRequest) -> dict[str, str]:
    """The non-file form fields of ``POST /images/edits`` (multipart values are text)."""
    fields = generation_body(job)
    return {key: _form_value(value) for key, value in fields.items() if value is not None}


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def validate(job: JobRequest) -> None:
    """Refuse, before paying, what the API documents it will refuse (``limits``)."""
    model = job.spec.provider_model
    max_outputs, max_input_images = limits(model)
    if not 1 <= job.number_of_outputs <= max_outputs:
        most = "one image" if max_outputs == 1 else f"1 to {max_outputs} images"
        raise _invalid(f"{model} makes {most} per request "
                       f"(number_of_outputs is {job.number_of_outputs})")
    if not max_input_images and job.input_images:
        raise _invalid(f"{model} cannot edit images; use gpt-image-1 (or dall-e-2) for input_images")
    if len(job.input_images) > max_input_images:
        raise _invalid(f"{model} takes at most {max_input_images} input images")


def _invalid(message: str) -> EaselError:
    return EaselError(ErrorCode.INVALID_PARAMETERS, f"openai: {message}", retryable=False)


# -- errors ---------------------------------------------------------------------------


def error_envelope(response: httpx.Response) -> dict[str, Any]:
    """``body["error"]`` of an OpenAI error answer, or ``{}`` when it has none."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error
    if isinstance(error, str):  # some compatible proxies answer {"error": "text"}
        return {"message": error}
    return {}


def retry_after(response: httpx.Response) -> float | None:
    """``retry-after-ms`` first, then ``retry-after`` (what the official SDK honours)."""
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(response.headers.get("retry-after"))


def code_for(status: int, error: dict[str, Any]) -> ErrorCode:
    """The Easel code of an OpenAI error status and envelope."""
    code = str(error.get("code") or "")
    kind = str(error.get("type") or "")
    message = str(error.get("message") or "").lower()
    if status in (401, 403):
        return ErrorCode.AUTHENTICATION_FAILED
    if status == 429:
        if QUOTA_CODE in (code, kind) or "exceeded your current quota" in message:
            return ErrorCode.QUOTA_EXCEEDED
        return ErrorCode.RATE_LIMITED
    if status in (400, 404, 409, 413, 415, 422) and (
        code in MODERATION_CODES or "safety system" in message
    ):
        return ErrorCode.CONTENT_MODERATED
    if status == 408:
        return ErrorCode.PROVIDER_TIMEOUT
    if status >= 500 or status == 409:
        return ErrorCode.PROVIDER_ERROR
    if 400 <= status < 500:
        return ErrorCode.INVALID_PARAMETERS
    return ErrorCode.PROVIDER_ERROR


def error_for(response: httpx.Response, provider: str) -> EaselError:
    """The ``EaselError`` for a non-2xx answer, with the envelope in its details."""
    error = error_envelope(response)
    code = code_for(response.status_code, error)
    message = http.redact(str(error.get("message") or response.reason_phrase or "error"), 300)
    details: dict[str, Any] = {
        "provider": provider,
        "status": response.status_code,
        "body": http.redact(response.text),
    }
    for key in ("type", "code", "param"):
        if error.get(key) is not None:
            details[f"provider_{key}"] = str(error[key])
    request_id = response.headers.get("x-request-id")
    if request_id:
        details["request_id"] = request_id
    return EaselError(
        code,
        f"{provider}: {message}",
        details,
        retry_after=retry_after(response),
        # A plain 429 is a refusal before any work: resending cannot pay twice.
        sent=code is not ErrorCode.RATE_LIMITED,
    )


def _malformed(provider: str, why: str, response: httpx.Response) -> EaselError:
    return EaselError(
        ErrorCode.PROVIDER_ERROR,
        f"{provider}: malformed images answer ({why})",
        {"provider": provider, "status": response.status_code, "body": http.redact(response.text)},
    )


def outputs_of(body: Any, response: httpx.Response, provider: str) -> tuple[str, ...]:
    """The images of an ``ImagesResponse`` as URLs (``data:`` or http(s))."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise _malformed(provider, "no data[]", response)
    output_format = body.get("output_format") if isinstance(body.get("output_format"), str) else "png"
    content_type = OUTPUT_TYPES.get(output_format.lower(), "image/png")
    outputs = []
    for item in data:
        if not isinstance(item, dict):
            raise _malformed(provider, "data[] item is not an object", response)
        b64, url = item.get("b64_json"), item.get("url")
        if isinstance(b64, str) and b64:
            try:
                base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise _malformed(provider, "b64_json is not base64", response) from None
            outputs.append(f"data:{content_type};base64,{b64}")
        elif isinstance(url, str) and url.startswith(("http://", "https://")):
            outputs.append(url)
        else:
            raise _malformed(provider, "data[] item has neither b64_json nor url", response)
    return tuple(outputs)


# -- input images -------------------------------------------------------------------


def input_image(data: bytes, label: str | None) -> InputImage:
    """Checked input bytes as a multipart file: an allowed format, labelled as what
    it holds (``actors/images/validate.py``)."""
    found = check_bytes(data, label, MAX_INPUT_BYTES)
    content_type = CONTENT_TYPES[found]
    if content_type not in INPUT_TYPES:
        raise ImageRefused(f"is a {found.upper()} image; edits take PNG, JPEG or WebP")
    return InputImage(data, content_type)


# -- the adapter --------------------------------------------------------------------


class OpenaiAdapter:
    """The wire protocol of one OpenAI-compatible images section."""

    def __init__(self, settings: ProviderSettings, name: str = "openai") -> None:
        self.name = name
        key = settings.api_key or settings.api_token
        self.client = http.client_for(settings, {"Authorization": f"Bearer {key}"})
        # Input images come from anywhere: never send them our API key, and fetch
        # them SSRF-checked, every hop's address checked and connected to.
        self.fetcher = Fetcher(
            timeout=httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout),
            allow_private=settings.allow_private_inputs, max_redirects=MAX_REDIRECTS,
        )

    async def submit(self, job: JobRequest) -> Completed:
        """Generate (or edit, with input images) and answer the images at once."""
        validate(job)
        if job.input_images:
            images = [await self._input_image(index, uri)
                      for index, uri in enumerate(job.input_images)]
            field = "image" if len(images) == 1 else "image[]"
            files = [(field, image.part(index)) for index, image in enumerate(images)]
            response = await self._post("/images/edits", data=edit_fields(job), files=files)
        else:
            response = await self._post("/images/generations", json=generation_body(job))
        return Completed(outputs_of(http.json_body(response, self.name), response, self.name))

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await http.send(self.client, "POST", path, provider=self.name, **kwargs)
        if response.status_code >= 300:
            raise error_for(response, self.name)
        return response

    async def _input_image(self, index: int, uri: str) -> InputImage:
        """Input image ``index``: a ``data:`` URI (as prepared before the create,
        ``actors/images/inputs.py``) or, submitted straight to the adapter, a URL
        fetched through the pinned fetch."""
        try:
            if uri.startswith("data:"):
                data, label = split_data_uri(uri)
            else:
                data, label = await fetch_image(self.fetcher, uri, MAX_INPUT_BYTES)
            return input_image(data, label)
        except ImageRefused as exc:
            raise _invalid(f"input_images[{index}] {exc}") from None

    async def check(self, task_id: str) -> TaskStatus:
        """Never called: submissions answer ``Completed``, so there is no task."""
        raise _no_task(self.name, "check", task_id)

    async def cancel(self, task_id: str) -> None:
        """Never called: the API has no task to cancel (a generation cannot be stopped)."""
        raise _no_task(self.name, "cancel", task_id)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.fetcher.aclose()


def _no_task(provider: str, what: str, task_id: str) -> EaselError:
    return EaselError(
        ErrorCode.INTERNAL_ERROR,
        f"{provider}: cannot {what} task {task_id!r}: the images API is synchronous and has no tasks",
        {"provider": provider},
        retryable=False,
    )


PROVIDER = Provider(
    name="openai",
    adapter=OpenaiAdapter,
    capabilities=Capabilities(),
    missing=lambda settings: missing_of(settings, ("api_key",), ("api_token",)),
    rules=rules,
    # Edits are multipart: the files themselves.
    inputs=InputSpec((Form.BYTES,), preset="high"),
    redactions=((re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "sk-" + MASK),),  # API keys
)
