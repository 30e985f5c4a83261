"""Black Forest Labs' FLUX API (``docs/providers.md``, "BFL (FLUX)"), simulated.

Covered: ``x-key`` auth; ``POST /v1/{model}`` for the FLUX models of the spec,
answering 200 ``{id, polling_url, cost, input_mp, output_mp}`` (or, when a
``webhook_url`` is given, the spec's ``{id, status, webhook_url, cost, ...}``);
``GET /v1/get_result?id=`` and the same under a regional prefix
(``/_region/<region>/v1/get_result``), which is what ``polling_url`` points to by
default so a client that rebuilds the URL instead of following it is caught;
``GET /v1/credits``; FastAPI-shaped 422 validation errors; 402 when the
``--credits`` run out; 429 past ``--max-active`` (24 by default, BFL's documented
concurrency). Tasks go ``Pending`` (with ``progress``) -> ``Ready``, or ``Error``
under ``--fail-rate``, ``Content Moderated`` under ``--moderate-rate``; prompts
containing ``[request-moderated]``, ``[content-moderated]`` or ``[error]`` force those
outcomes. ``result.sample`` is a signed delivery URL that really expires
(``--result-ttl``, 600 s like BFL's) and serves a small image in the requested
``output_format``. Webhooks POST the ``get_result`` payload to ``webhook_url`` and
echo ``webhook_secret`` verbatim in ``X-Webhook-Secret``.

Not simulated: finetunes, fill/expand masks, ``image_prompt`` decoding, previews,
the real per-model validation beyond the common fields, task expiry.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import secrets
import uuid
from typing import Any, ClassVar

import attrs
from PIL import Image
from quart import Response, request
from quart_trio import QuartTrio

from tests.simulators.base import (
    Knobs,
    Phase,
    SimTask,
    Simulator,
    WebhookRequest,
    format_seconds,
)
from tests.simulators.inputs import image_problem

#: BFL's default concurrency: active tasks per account.
MAX_ACTIVE = 24
#: How long a delivery URL stays valid (BFL: 10 minutes).
RESULT_TTL = 600.0
#: The region the simulated cluster reports in ``polling_url``.
REGION = "us1"
#: Models served, with what sizes their output: width/height or aspect_ratio.
SIZED_BY_WIDTH = {"flux-pro-1.1", "flux-dev", "flux-pro", "flux-2-pro", "flux-2-max", "flux-2-flex",
                  "flux-2-klein-4b", "flux-2-klein-9b", "flux-2-pro-preview", "flux-2-klein-9b-preview",
                  "flux-pro-1.0-fill", "flux-pro-1.0-expand"}
SIZED_BY_RATIO = {"flux-kontext-pro", "flux-kontext-max", "flux-pro-1.1-ultra"}
#: Models whose ``prompt`` is required (the others default it to "").
PROMPT_REQUIRED = {"flux-kontext-pro", "flux-kontext-max"} | {m for m in SIZED_BY_WIDTH if m.startswith("flux-2")}
#: Body fields that carry an input image.
IMAGE_FIELDS = frozenset({"image_prompt", "image", "input_image",
                          *(f"input_image_{n}" for n in range(2, 9))})
#: Credits one image costs (flux-pro-1.1 is 4 cents).
COST = 4.0
_FORMATS = {"jpeg": ("image/jpeg", "JPEG"), "png": ("image/png", "PNG"), "webp": ("image/webp", "WEBP")}
_MARKERS = {
    "[request-moderated]": "Request Moderated",
    "[content-moderated]": "Content Moderated",
    "[error]": "Error",
}


@attrs.define(kw_only=True)
class BflTask(SimTask):
    """A task plus what BFL needs to answer about it."""

    model: str
    input: dict[str, Any]
    output_format: str = "jpeg"
    #: How a failed task ends: "Error", "Request Moderated" or "Content Moderated".
    failure_status: str = "Error"
    webhook_secret: str | None = None


class Invalid(Exception):
    """A FastAPI validation failure: ``errors`` are ``{loc, msg, type}`` items."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _error(field: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": msg, "type": kind}


class BflSimulator(Simulator):
    """The BFL simulator; see the module docstring for its scope."""

    name = "bfl"
    server_error_statuses: ClassVar[tuple[int, ...]] = (500, 502, 503)

    def __init__(self, knobs: Knobs | None = None, *, result_ttl: float = RESULT_TTL,
                 region: str = REGION, credits: float | None = None, moderate_rate: float = 0.0,
                 not_found_status: int = 200, **kwargs: Any) -> None:
        """``credits`` None is unlimited; ``not_found_status`` is the HTTP status of a
        ``Task not found`` answer (200 or 404: BFL's choice is UNCONFIRMED)."""
        knobs = knobs if knobs is not None else Knobs()
        if knobs.max_active is None:
            knobs = attrs.evolve(knobs, max_active=MAX_ACTIVE)
        super().__init__(knobs, **kwargs)
        self.result_ttl = result_ttl
        self.region = region
        self.credits = credits
        self.moderate_rate = moderate_rate
        self.not_found_status = not_found_status
        self.downloads = 0
        #: Status checks that came in at the regional ``polling_url`` form.
        self.regional_checks = 0
        self.expired_downloads = 0
        self._signing_key = secrets.token_bytes(32)

    # -- command line --------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument("--result-ttl", type=float, default=RESULT_TTL,
                            help=f"seconds a result.sample URL stays valid (default: {RESULT_TTL:g})")
        parser.add_argument("--region", default=REGION,
                            help=f"region named in polling_url (default: {REGION})")
        parser.add_argument("--credits", type=float, default=None,
                            help="account credits; submissions past them get 402 (default: unlimited)")
        parser.add_argument("--moderate-rate", type=float, default=0.0,
                            help="fraction of tasks that end 'Content Moderated' (default: 0)")
        parser.add_argument("--not-found-status", type=int, default=200, choices=(200, 404),
                            help="HTTP status of a 'Task not found' answer (default: 200)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> BflSimulator:
        if args.result_ttl <= 0:
            raise ValueError("--result-ttl must be positive")
        if not 0.0 <= args.moderate_rate <= 1.0:
            raise ValueError("--moderate-rate must be between 0 and 1")
        if not args.region.isalnum():
            raise ValueError("--region must be alphanumeric")
        return cls(knobs, result_ttl=args.result_ttl, region=args.region, credits=args.credits,
                   moderate_rate=args.moderate_rate, not_found_status=args.not_found_status)

    # -- routes ------------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        """BFL's ``/v1`` routes; ``x-key`` auth and faults come with ``add_route``."""
        route = self.add_route
        for model in sorted(SIZED_BY_WIDTH | SIZED_BY_RATIO):
            route(app, f"/v1/{model}", self._create, kind="create", methods=["POST"],
                  endpoint=f"create:{model}")
        route(app, "/v1/get_result", self._get_result, kind="status")
        route(app, "/_region/<region>/v1/get_result", self._get_regional, kind="status")
        route(app, "/v1/credits", self._credits, kind="other")
        # Delivery URLs live on another host at BFL and take no x-key: the signature
        # in the URL is the authorization, so they bypass add_route's auth.
        app.add_url_rule("/_delivery/<task_id>/sample.<ext>", "bfl_delivery", self._delivery,
                         methods=["GET"])

    async def _create(self) -> Response:
        model = request.path.removeprefix("/v1/")
        try:
            body = await self._create_body(model)
        except Invalid as invalid:
            return self.json_response(422, {"detail": invalid.errors})
        if self.credits is not None:
            if self.credits < COST:
                return self.error_response(402, "Insufficient credits. Please add credits to your account.")
            self.credits -= COST
        webhook = body.get("webhook_url")
        inputs = {k: v for k, v in body.items() if k not in ("webhook_url", "webhook_secret")}
        failure_status, forced = self._outcome(str(body.get("prompt", "")))
        fields: dict[str, Any] = {}
        if forced is not None:
            fields["error"] = forced
        elif self.moderate_rate > 0 and self.task_rng.random() < self.moderate_rate:
            failure_status, fields["error"] = "Content Moderated", "output flagged by moderation"
        if failure_status == "Request Moderated":
            fields["duration"] = 0.0  # refused before anything runs
        task = self.create_task(
            BflTask,
            id=str(uuid.uuid4()),
            key=self.submission_key(model, inputs),
            model=model,
            input=inputs,
            output_format=body.get("output_format") or ("png" if model in SIZED_BY_RATIO else "jpeg"),
            failure_status=failure_status,
            webhook=webhook,
            webhook_secret=body.get("webhook_secret"),
            **fields,
        )
        await self.create_delay()
        answer: dict[str, Any] = {"id": task.id, "cost": COST, "input_mp": 0.0, "output_mp": 1.05}
        if webhook:
            answer.update(status="Pending", webhook_url=webhook)
        else:
            answer["polling_url"] = f"{self.task_base_url()}/_region/{self.region}/v1/get_result?id={task.id}"
        return self.json_response(200, answer)

    @staticmethod
    def _outcome(prompt: str) -> tuple[str, str | None]:
        """A failure status forced by a marker in the prompt, and its error text."""
        for marker, status in _MARKERS.items():
            if marker in prompt:
                return status, f"{status} (forced by {marker})"
        return "Error", None

    async def _create_body(self, model: str) -> dict[str, Any]:
        raw = await request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise Invalid([{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]) from None
        if not isinstance(body, dict):
            raise Invalid([{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}])
        errors: list[dict[str, Any]] = []
        if model in PROMPT_REQUIRED and "prompt" not in body:
            errors.append(_error("prompt", "Field required", "missing"))
        if "prompt" in body and not isinstance(body["prompt"], str):
            errors.append(_error("prompt", "Input should be a valid string", "string_type"))
        for name in ("width", "height"):
            if name in body and model in SIZED_BY_WIDTH and not model.startswith("flux-2"):
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, int):
                    errors.append(_error(name, "Input should be a valid integer", "int_type"))
                elif not 256 <= value <= 1440:
                    errors.append(_error(name, "Input should be between 256 and 1440", "less_than_equal"))
                elif value % 32:
                    errors.append(_error(name, "Input should be a multiple of 32", "multiple_of"))
        if "aspect_ratio" in body and model in SIZED_BY_RATIO and not _ratio_ok(body["aspect_ratio"]):
            errors.append(_error("aspect_ratio", "Aspect ratio must be between 21:9 and 9:21", "value_error"))
        tolerance = body.get("safety_tolerance", 2)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 0 <= tolerance <= 6:
            errors.append(_error("safety_tolerance", "Input should be between 0 and 6", "less_than_equal"))
        if body.get("output_format") is not None and body["output_format"] not in _FORMATS:
            errors.append(_error("output_format", "Input should be 'jpeg', 'png' or 'webp'", "enum"))
        # FLUX 1.x takes bare base64 only; Kontext and FLUX.2 a URL too.
        takes_urls = model.startswith(("flux-kontext", "flux-2"))
        for field in [name for name in body if name in IMAGE_FIELDS]:
            problem = image_problem(body[field], urls=takes_urls, bare_base64=True)
            if problem:
                errors.append(_error(field, f"Input image {problem}", "value_error"))
            else:
                self.received_images.append(body[field])
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            errors.append(_error("seed", "Input should be a valid integer", "int_type"))
        webhook = body.get("webhook_url")
        if webhook is not None and not (isinstance(webhook, str) and 1 <= len(webhook) <= 2083
                                        and webhook.startswith(("http://", "https://"))):
            errors.append(_error("webhook_url", "Input should be a valid URL", "url_parsing"))
        if errors:
            raise Invalid(errors)
        return body

    async def _get_result(self) -> Response:
        return self._result_response(request.args.get("id"))

    async def _get_regional(self, region: str) -> Response:
        if region != self.region:
            return self.error_response(404, "Not Found")
        self.regional_checks += 1
        return self._result_response(request.args.get("id"))

    def _result_response(self, task_id: str | None) -> Response:
        if not task_id:
            return self.json_response(422, {"detail": [
                {"loc": ["query", "id"], "msg": "Field required", "type": "missing"}]})
        task = self.tasks.get(task_id)
        if not isinstance(task, BflTask):
            body = {"id": task_id, "status": "Task not found", "result": None, "progress": None,
                    "details": None, "preview": None}
            return self.json_response(self.not_found_status, body)
        return self.json_response(200, self.result_json(task))

    async def _credits(self) -> Response:
        return self.json_response(200, {"credits": 1_000_000.0 if self.credits is None else self.credits})

    async def _delivery(self, task_id: str, ext: str) -> Response:
        task = self.tasks.get(task_id)
        expires, signature = request.args.get("se", ""), request.args.get("sig", "")
        if not isinstance(task, BflTask) or ext != task.output_format:
            return _blob_error(404, "BlobNotFound", "The specified blob does not exist.")
        if not hmac.compare_digest(signature, self._sign(task_id, ext, expires)):
            return _blob_error(403, "AuthenticationFailed", "Signature did not match.")
        if self.clock() >= float(expires):
            self.expired_downloads += 1
            return _blob_error(403, "AuthenticationFailed", "Signed expiry time has passed.")
        self.downloads += 1
        content_type, _ = _FORMATS[task.output_format]
        return Response(image_bytes(task.id, task.output_format), status=200, content_type=content_type)

    # -- rendering ---------------------------------------------------------------------

    def result_json(self, task: BflTask) -> dict[str, Any]:
        """The ``get_result`` payload of ``task`` now (also the webhook body)."""
        now = self.clock()
        phase = task.phase(now)
        body: dict[str, Any] = {"id": task.id, "status": "Pending", "result": None, "progress": None,
                                "details": None, "preview": None}
        if phase is Phase.RUNNING:
            running_for = task.finished - task.started
            fraction = 1.0 if running_for <= 0 else (now - task.started) / running_for
            body["progress"] = round(min(max(fraction, 0.0), 0.99), 2)
        elif phase is Phase.SUCCEEDED:
            body["status"] = "Ready"
            body["progress"] = 1.0
            body["result"] = {"sample": self.sample_url(task), "prompt": task.input.get("prompt", ""),
                              "seed": task.input.get("seed"), "start_time": task.started,
                              "end_time": task.finished, "duration": task.duration}
        elif phase in (Phase.FAILED, Phase.CANCELED):
            body["status"] = task.failure_status if phase is Phase.FAILED else "Error"
            body["details"] = {"message": task.error or "cancelled"}
        return body

    def sample_url(self, task: BflTask) -> str:
        """A delivery URL signed to expire ``result_ttl`` after the task finished."""
        expires = f"{task.finished + self.result_ttl:.3f}"
        signature = self._sign(task.id, task.output_format, expires)
        return (f"{self.base_url()}/_delivery/{task.id}/sample.{task.output_format}"
                f"?se={expires}&sig={signature}")

    def _sign(self, task_id: str, ext: str, expires: str) -> str:
        message = f"{task_id}/{ext}/{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    # -- webhooks ----------------------------------------------------------------------

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        """The finished task's ``get_result`` payload; the secret echoed verbatim."""
        if not isinstance(task, BflTask) or task.webhook is None:
            return None
        headers = {"content-type": "application/json", "user-agent": "BFL-Webhook-Simulator/1.0"}
        if task.webhook_secret:
            headers["X-Webhook-Secret"] = task.webhook_secret
        return WebhookRequest(task.webhook, json.dumps(self.result_json(task)).encode(), headers)

    # -- BFL's error shapes (FastAPI: {"detail": ...}) ------------------------------------

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        return {"detail": detail}

    def rate_limit_response(self, retry_after: float) -> Response:
        # UNCONFIRMED: the exact text of BFL's 429; the SDK reads `detail`.
        return self.error_response(429, "Rate limit exceeded. Please slow down.",
                                   {"Retry-After": format_seconds(retry_after)})

    def too_many_active_response(self) -> Response:
        # UNCONFIRMED body; the status (429) and the limit (24 active tasks) are documented.
        return self.error_response(
            429, f"You have reached the maximum number of active tasks ({self.knobs.max_active}). "
                 "Please wait for some tasks to complete before submitting new ones.")

    def server_error_response(self, status: int) -> Response:
        titles = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                  504: "Gateway Timeout"}
        return self.error_response(status, titles.get(status, "Server Error"))

    def auth_error_response(self) -> Response:
        # A missing key is FastAPI's APIKeyHeader refusal; a wrong one a 401 (UNCONFIRMED text).
        if not request.headers.get("x-key"):
            return self.error_response(403, "Not authenticated")
        return self.error_response(401, "Invalid API key")

    def task_failed_message(self) -> str:
        return "Generation failed: internal error while sampling (simulated)"

    def authorized(self) -> bool:
        token = self.knobs.token
        if token is None:
            return True
        presented = request.headers.get("x-key", "")
        return hmac.compare_digest(presented.encode(), token.encode())


def _ratio_ok(value: Any) -> bool:
    """``W:H`` between 21:9 and 9:21."""
    if not isinstance(value, str):
        return False
    across, _, down = value.partition(":")
    try:
        ratio = float(across) / float(down)
    except (ValueError, ZeroDivisionError):
        return False
    return 9 / 21 - 1e-9 <= ratio <= 21 / 9 + 1e-9


def _blob_error(status: int, code: str, message: str) -> Response:
    """The delivery host's error: a storage-style XML body."""
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status=status, content_type="application/xml")


def image_bytes(seed: str, output_format: str, size: int = 8) -> bytes:
    """A tiny solid-colour image in ``output_format``; the colour depends on ``seed``."""
    red, green, blue = hashlib.sha256(seed.encode()).digest()[:3]
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (red, green, blue)).save(buffer, format=_FORMATS[output_format][1])
    return buffer.getvalue()

