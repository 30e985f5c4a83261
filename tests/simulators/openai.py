"""OpenAI's Images API (``docs/providers.md``, "OpenAI-compatible"), simulated.

Served under ``/v1`` exactly as at ``https://api.openai.com/v1``, so a client's
``base_url`` is this simulator's root plus ``/v1`` (the official SDK included):

- ``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits``
  (multipart/form-data; one ``image`` or repeated ``image[]`` parts, as the SDK
  sends them). Both are synchronous: the request is held for the task's duration
  (``--duration``), then answered ``{created, data: [...]}``. GPT image models
  answer ``b64_json`` and refuse ``response_format``; dall-e models answer
  ``url`` by default (a file this simulator serves) or ``b64_json`` when asked.
- ``GET /v1/models``: a small model list.

Bearer auth and every error in OpenAI's envelope ``{"error": {message, type,
param, code}}``: 401 ``invalid_api_key``, 429 ``rate_limit_exceeded`` (fault knob)
or ``insufficient_quota`` (``--quota-exhausted``), 400 ``invalid_request_error``
for bad parameters, 400 ``moderation_blocked`` (GPT image) or
``content_policy_violation`` (dall-e) for prompts containing a moderated word
(``--moderated-word``, default ``forbidden``), 500 ``server_error`` for 5xx
faults and for ``--fail-rate`` generations.

Stats: every accepted generation is one task, so ``submissions`` and
``max_submissions_per_input`` count generations and ``active`` is the number of
requests being generated right now; ``status_checks`` stays 0 (nothing to poll).

Not simulated: streaming (``stream``/``partial_images``), masks (accepted, not
applied), ``usage`` token counts beyond a plausible shape, real sizes (outputs
are tiny PNGs whatever ``size`` says), organisation/project headers, per-model
rate limits.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import secrets
from typing import Any

import attrs
from PIL import Image, UnidentifiedImageError
from quart import Response, request
from quart_trio import QuartTrio

from tests.simulators.base import Knobs, Phase, SimTask, Simulator, format_seconds, png_bytes

GPT_IMAGE_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
DALLE_MODELS = ("dall-e-2", "dall-e-3")
MODELS = GPT_IMAGE_MODELS + DALLE_MODELS

#: Sizes per model family (``auto`` is GPT image only).
SIZES = {
    "gpt": {"1024x1024", "1536x1024", "1024x1536", "auto"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
}
EDIT_SIZES = {"256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "auto"}
QUALITIES = {
    "gpt": {"auto", "low", "medium", "high"},
    "dall-e-3": {"auto", "hd", "standard"},
    "dall-e-2": {"auto", "standard"},
}
MAX_PROMPT = {"gpt": 32000, "dall-e-3": 4000, "dall-e-2": 1000}
#: Input image formats an edit accepts (by Pillow's name).
EDIT_FORMATS = {"PNG", "JPEG", "WEBP"}
MAX_EDIT_IMAGES = 16


class OpenAIError(Exception):
    """Raised by request parsing; becomes an OpenAI error envelope."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


@attrs.define(kw_only=True)
class ImageTask(SimTask):
    """One generation (or edit) request."""

    model: str
    response_format: str
    output_format: str = "png"
    #: sha256 of each input image of an edit, in order (empty for generations).
    input_digests: list[str] = attrs.field(factory=list)


def family(model: str) -> str:
    """``gpt`` for GPT image models, else the dall-e model name."""
    return model if model in DALLE_MODELS else "gpt"


def envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenaiSimulator(Simulator):
    """The OpenAI Images simulator; see the module docstring for its scope."""

    name = "openai"

    def __init__(self, *args: Any, quota_exhausted: bool = False, moderated_word: str = "forbidden",
                 **kwargs: Any) -> None:
        """``quota_exhausted`` answers every generation 429 ``insufficient_quota``;
        prompts containing ``moderated_word`` are refused by the "safety system"."""
        super().__init__(*args, **kwargs)
        self.quota_exhausted = quota_exhausted
        self.moderated_word = moderated_word

    # -- command line --------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument("--quota-exhausted", action="store_true",
                            help="answer every generation 429 insufficient_quota")
        parser.add_argument("--moderated-word", default="forbidden",
                            help="prompts containing this word are refused by moderation (default: forbidden)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> OpenaiSimulator:
        if not args.moderated_word:
            raise ValueError("--moderated-word must not be empty")
        return cls(knobs, quota_exhausted=args.quota_exhausted, moderated_word=args.moderated_word)

    # -- routes ----------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        self.add_route(app, "/v1/images/generations", self._generations, kind="create", methods=["POST"])
        self.add_route(app, "/v1/images/edits", self._edits, kind="create", methods=["POST"])
        self.add_route(app, "/v1/models", self._models, kind="other")

    async def _models(self) -> Response:
        data = [{"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
                for model in MODELS]
        return self.json_response(200, {"object": "list", "data": data})

    async def _generations(self) -> Response:
        try:
            body = await self._json_body()
            params = self._check_params(body, edit=False)
            return await self._generate(params, [])
        except OpenAIError as error:
            return self.openai_error(error)

    async def _edits(self) -> Response:
        try:
            if not (request.content_type or "").startswith("multipart/form-data"):
                raise OpenAIError(400, "Invalid Content-Type header: expected multipart/form-data.")
            form = await request.form
            files = await request.files
            body: dict[str, Any] = {key: form.get(key) for key in form}
            images = [*files.getlist("image"), *files.getlist("image[]")]
            if not images:
                raise OpenAIError(400, "Missing required parameter: 'image'.", param="image",
                                  code="missing_required_parameter")
            if "n" in body:
                body["n"] = _int_field(body["n"], "n")
            params = self._check_params(body, edit=True)
            if params["model"] == "dall-e-3":
                raise OpenAIError(400, "Invalid value: 'dall-e-3'. Value must be 'dall-e-2' or a GPT image model.",
                                  param="model", code="invalid_value")
            limit = 1 if params["model"] == "dall-e-2" else MAX_EDIT_IMAGES
            if len(images) > limit:
                raise OpenAIError(400, f"Too many images: at most {limit} for {params['model']}.",
                                  param="image", code="invalid_value")
            datas = [_check_image(image.read(), index) for index, image in enumerate(images)]
            self.received_images.extend(base64.b64encode(data).decode() for data in datas)
            return await self._generate(params, datas)
        except OpenAIError as error:
            return self.openai_error(error)

    # -- parsing ----------------------------------------------------------------------

    async def _json_body(self) -> dict[str, Any]:
        raw = await request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise OpenAIError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise OpenAIError(400, "The request body must be a JSON object.")
        return body

    def _check_params(self, body: dict[str, Any], *, edit: bool) -> dict[str, Any]:
        """Validate the fields both routes share; answer the normalised parameters."""
        model = body.get("model") or "dall-e-2"
        if model not in MODELS:
            raise OpenAIError(400, f"Invalid value: '{model}'. Supported values are: {', '.join(MODELS)}.",
                              param="model", code="invalid_value")
        fam = family(model)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError(400, "Missing required parameter: 'prompt'.", param="prompt",
                              code="missing_required_parameter")
        if len(prompt) > MAX_PROMPT[fam]:
            raise OpenAIError(400, f"Invalid 'prompt': string too long. Expected at most {MAX_PROMPT[fam]}.",
                              param="prompt", code="string_above_max_length")
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
            raise OpenAIError(400, "Invalid 'n': must be an integer from 1 to 10.", param="n",
                              code="invalid_value")
        if model == "dall-e-3" and n != 1:
            raise OpenAIError(400, "You must provide n=1 for this model.", param="n", code="invalid_value")
        size = body.get("size")
        allowed_sizes = EDIT_SIZES if edit else SIZES[fam]
        if size is not None and size not in allowed_sizes:
            raise OpenAIError(400, f"Invalid value: '{size}'. Supported values are: "
                              f"{', '.join(sorted(allowed_sizes))}.", param="size", code="invalid_value")
        quality = body.get("quality")
        if quality is not None and quality not in QUALITIES[fam] | ({"standard"} if edit else set()):
            raise OpenAIError(400, f"Invalid value: '{quality}'.", param="quality", code="invalid_value")
        style = body.get("style")
        if style is not None and (model != "dall-e-3" or style not in ("vivid", "natural")):
            raise OpenAIError(400, "Invalid value for 'style': only 'vivid' or 'natural' with dall-e-3.",
                              param="style", code="invalid_value")
        response_format = body.get("response_format")
        if fam == "gpt":
            if response_format is not None:
                raise OpenAIError(400, "Unknown parameter: 'response_format'.", param="response_format",
                                  code="unknown_parameter")
            response_format = "b64_json"
        elif response_format is None:
            response_format = "url"
        elif response_format not in ("url", "b64_json"):
            raise OpenAIError(400, f"Invalid value: '{response_format}'. Supported values are: 'url' and "
                              "'b64_json'.", param="response_format", code="invalid_value")
        output_format = body.get("output_format") or "png"
        if output_format not in ("png", "jpeg", "webp") or (fam != "gpt" and "output_format" in body):
            raise OpenAIError(400, f"Invalid value for 'output_format': '{output_format}'.",
                              param="output_format", code="invalid_value")
        if body.get("stream") not in (None, False, "false"):
            raise OpenAIError(400, "Streaming is not supported by this simulator.", param="stream",
                              code="unsupported_value")
        if self.moderated_word.lower() in prompt.lower():
            if fam == "gpt":
                raise OpenAIError(400, "Your request was rejected by the safety system. If you believe this "
                                  "is an error, contact us at help.openai.com.",
                                  type="image_generation_user_error", code="moderation_blocked")
            raise OpenAIError(400, "Your request was rejected as a result of our safety system. Your prompt "
                              "may contain text that is not allowed by our safety system.",
                              code="content_policy_violation")
        if self.quota_exhausted:
            raise OpenAIError(429, "You exceeded your current quota, please check your plan and billing "
                              "details.", type="insufficient_quota", code="insufficient_quota")
        return {
            "model": model,
            "prompt": prompt,
            "n": n,
            "size": size,
            "quality": quality,
            "style": style,
            "response_format": response_format,
            "output_format": output_format,
            "background": body.get("background"),
        }

    # -- generation --------------------------------------------------------------------

    async def _generate(self, params: dict[str, Any], images: list[bytes]) -> Response:
        """Record the generation, hold the request for its duration, answer it."""
        digests = [hashlib.sha256(data).hexdigest() for data in images]
        identity = {"route": "edits" if images else "generations", "model": params["model"]}
        task = self.create_task(
            ImageTask,
            id="img_" + secrets.token_hex(12),
            key=self.submission_key(identity, {**params, "images": digests}),
            outputs=params["n"],
            model=params["model"],
            response_format=params["response_format"],
            output_format=params["output_format"],
            input_digests=digests,
        )
        await self.sleep_until(task.finished)
        await self.create_delay()
        if task.phase(self.clock()) is Phase.FAILED:
            return self.openai_error(OpenAIError(500, task.error or "generation failed", type="server_error"))
        return self.json_response(200, self.images_response(task, params))

    def images_response(self, task: ImageTask, params: dict[str, Any]) -> dict[str, Any]:
        """``ImagesResponse`` as OpenAI serialises it."""
        data = []
        for index in range(task.outputs):
            if task.response_format == "url":
                item: dict[str, Any] = {"url": self.file_url(task, index)}
            else:
                item = {"b64_json": base64.b64encode(png_bytes(f"{task.id}/{index}")).decode()}
            if task.model == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of: {params['prompt']}"
            data.append(item)
        body: dict[str, Any] = {"created": int(task.created), "data": data}
        if family(task.model) == "gpt":
            # The images are PNG whatever was asked: report what is served.
            body.update({
                "background": params.get("background") or "opaque",
                "output_format": "png",
                "quality": params.get("quality") or "medium",
                "size": params.get("size") or "1024x1024",
                "usage": {
                    "input_tokens": 50, "output_tokens": 1056 * task.outputs,
                    "total_tokens": 50 + 1056 * task.outputs,
                    "input_tokens_details": {"image_tokens": 0 if not task.input_digests else 323,
                                             "text_tokens": 50},
                },
            })
        return body

    # -- errors in OpenAI's shape ---------------------------------------------------------

    def openai_error(self, error: OpenAIError) -> Response:
        return self.json_response(error.status, envelope(error.message, error.type, error.param, error.code))

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return envelope(detail, kind)

    def rate_limit_response(self, retry_after: float) -> Response:
        seconds = format_seconds(retry_after)
        body = envelope(
            f"Rate limit reached for images per minute. Please try again in {seconds}s.",
            "requests", code="rate_limit_exceeded",
        )
        milliseconds = str(int(retry_after * 1000))
        return self.json_response(429, body, {"Retry-After": seconds, "retry-after-ms": milliseconds,
                                              "x-ratelimit-remaining-requests": "0"})

    def server_error_response(self, status: int) -> Response:
        message = ("The server had an error while processing your request. Sorry about that!"
                   if status == 500 else "The engine is currently overloaded, please try again later.")
        return self.json_response(status, envelope(message, "server_error"))

    def too_many_active_response(self) -> Response:
        return self.json_response(429, envelope(
            f"Rate limit reached: at most {self.knobs.max_active} concurrent image requests.",
            "requests", code="rate_limit_exceeded",
        ))

    def auth_error_response(self) -> Response:
        presented = request.headers.get("Authorization", "")
        if not presented.strip():
            message = ("You didn't provide an API key. You need to provide your API key in an "
                       "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        else:
            message = "Incorrect API key provided. You can find your API key in your account settings."
        return self.json_response(401, envelope(message, "invalid_request_error", code="invalid_api_key"))

    def task_failed_message(self) -> str:
        return "The server had an error processing your request (simulated generation failure)."


def _int_field(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OpenAIError(400, f"Invalid '{name}': expected an integer.", param=name,
                          code="invalid_type") from None


def _check_image(data: bytes, index: int) -> bytes:
    """An edit's input must be a PNG, JPEG or WebP image."""
    try:
        with Image.open(io.BytesIO(data), formats=sorted(EDIT_FORMATS)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise OpenAIError(400, f"Invalid image file or mode for image {index + 1}, please check your image "
                          "file.", param="image", code="invalid_image_format") from None
    return data
