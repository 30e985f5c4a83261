"""Pollo AI's generation API (``docs/providers.md``, "Pollo"), simulated.

Served under ``/api/platform`` (the documented base URL is
``https://pollo.ai/api/platform``), so ``base_url = <simulator>/api/platform``:

- ``POST /api/platform/generation/{brand}/{model}`` (the current form) and
  ``POST /api/platform/v1/generation/{brand}/{model}/video`` (the older docs form),
  body ``{"input": {...}, "webhookUrl"?}``, answer ``{taskId, status}``;
- ``GET /api/platform/generation/{taskId}/status``, answer ``{taskId, credit,
  generations: [{id, status, failMsg, url, mediaType}]}``;
- auth by the ``x-api-key`` header; errors as ``{"code": "...", "message": "..."}``
  (401 UNAUTHORIZED, 403 FORBIDDEN "Not enough credits" when ``credits`` run out,
  400 BAD_REQUEST for a bad body, 429 TOO_MANY_REQUESTS, 5xx);
- signed webhooks to ``webhookUrl`` when the task ends: ``X-Webhook-Id``,
  ``X-Webhook-Timestamp``, ``X-Webhook-Signature`` = Base64 HMAC-SHA256 of
  ``"{id}.{timestamp}.{body}"``.

Pollo's docs disagree on several shapes; ``PolloStyle`` picks which variant the
simulator answers in (bare or ``{code, message, data}`` envelope, ``taskId`` or
``task_id``, status case, ``waiting`` or ``pending`` while queued, webhook bodies
with or without generations, HMAC keyed with the secret text or its Base64
decoding), so tests can hold an adapter to every one of them.

Tasks go queued -> ``processing`` -> ``succeed`` (or ``failed`` under
``--fail-rate``, or when the prompt contains ``MODERATION_MARKER``, with a
moderation ``failMsg``). Outputs are tiny ``video/mp4`` files the simulator serves
itself. Not simulated: cancel and task listing (Pollo documents neither), real
rate limits and the per-model parameter rules beyond a ``duration`` range check.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
from typing import Any

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from tests.simulators.base import (
    Knobs,
    Phase,
    SimTask,
    Simulator,
    WebhookRequest,
    hmac_signature,
)
from tests.simulators.inputs import image_problem

#: The path prefix of the documented base URL.
PREFIX = "/api/platform"
#: A prompt containing this ends FAILED with ``MODERATION_MESSAGE``.
MODERATION_MARKER = "[nsfw]"
#: UNCONFIRMED: Pollo's moderation failMsg is not documented; this one reads like it.
MODERATION_MESSAGE = "Your input was flagged by content moderation (sensitive content)."
#: Credits a task costs (Pollo charges at submit; the real prices vary per model).
CREDITS_PER_TASK = 10.0
#: ``duration`` values the simulator accepts (real ranges are per model).
MAX_DURATION = 20

_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


@attrs.define
class PolloStyle:
    """Which of the documented answer shapes the simulator uses."""

    #: Wrap 2xx answers in ``{"code": "SUCCESS", "message": "success", "data": ...}``.
    envelope: bool = False
    #: Name of the task id field: ``taskId`` (status docs) or ``task_id`` (quick-start).
    id_field: str = attrs.field(default="taskId", validator=attrs.validators.in_(("taskId", "task_id")))
    #: ``lower`` (``succeed``) or ``upper`` (``SUCCEED``).
    status_case: str = attrs.field(default="lower", validator=attrs.validators.in_(("lower", "upper")))
    #: Status of a queued task: ``waiting`` or ``pending``.
    queued_status: str = attrs.field(
        default="waiting", validator=attrs.validators.in_(("waiting", "pending"))
    )
    #: Webhook bodies carry the generations (URLs) too, not only taskId and status.
    webhook_generations: bool = False
    #: The HMAC key: the secret's text (``raw``) or its Base64 decoding (``base64``).
    webhook_key: str = attrs.field(default="raw", validator=attrs.validators.in_(("raw", "base64")))


@attrs.define(kw_only=True)
class Generation(SimTask):
    """A Pollo task: the model it ran and the input it was given."""

    model: str
    input: dict[str, Any]
    credit: float = CREDITS_PER_TASK


def mp4_bytes(seed: str) -> bytes:
    """A tiny file that starts like an MP4 (an ``ftyp`` box) and differs per seed."""
    ftyp = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    payload = hashlib.sha256(seed.encode()).digest()
    return ftyp + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


class BadRequest(Exception):
    """A create body Pollo would refuse with 400."""


class PolloSimulator(Simulator):
    """The Pollo simulator; see the module docstring for its scope."""

    name = "pollo"

    def __init__(self, *args: Any, style: PolloStyle | None = None, credits: float | None = None,
                 **kwargs: Any) -> None:
        """``style``: answer shapes (``PolloStyle``); ``credits``: the account's
        balance (``None``: unlimited). Other arguments are ``Simulator``'s."""
        super().__init__(*args, **kwargs)
        self.style = style or PolloStyle()
        self.credits = credits

    # -- command line --------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument("--envelope", action="store_true", help="wrap answers in {code, message, data}")
        parser.add_argument("--id-field", default="taskId", choices=["taskId", "task_id"])
        parser.add_argument("--status-case", default="lower", choices=["lower", "upper"])
        parser.add_argument("--queued-status", default="waiting", choices=["waiting", "pending"])
        parser.add_argument("--webhook-generations", action="store_true",
                            help="webhook bodies carry the generations too")
        parser.add_argument("--webhook-key", default="raw", choices=["raw", "base64"],
                            help="HMAC key: the secret's text or its Base64 decoding")
        parser.add_argument("--credits", type=float, default=None,
                            help="account balance (default: unlimited)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> PolloSimulator:
        style = PolloStyle(
            envelope=args.envelope, id_field=args.id_field, status_case=args.status_case,
            queued_status=args.queued_status, webhook_generations=args.webhook_generations,
            webhook_key=args.webhook_key,
        )
        return cls(knobs, style=style, credits=args.credits)

    # -- routes ----------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        route = self.add_route
        route(app, f"{PREFIX}/generation/<brand>/<model>", self._create, kind="create", methods=["POST"])
        route(app, f"{PREFIX}/v1/generation/<brand>/<model>/video", self._create, kind="create",
              methods=["POST"], endpoint="create_v1")
        route(app, f"{PREFIX}/generation/<task_id>/status", self._status, kind="status")
        # Simulator-only routes (no auth, no faults): output files and the style.
        app.add_url_rule("/_sim/pollo/files/<task_id>/<int:index>.mp4", "pollo_file", self._file,
                         methods=["GET"])
        app.add_url_rule("/_sim/pollo/style", "pollo_style", self._style_route, methods=["GET", "POST"])

    def authorized(self) -> bool:
        token = self.knobs.token
        if token is None:
            return True
        presented = request.headers.get("x-api-key", "")
        return secrets.compare_digest(presented.encode(), token.encode())

    async def _create(self, brand: str, model: str) -> Response:
        try:
            body = await self._create_body()
        except BadRequest as exc:
            return self.error_response(400, str(exc))
        if self.credits is not None and self.credits < CREDITS_PER_TASK:
            return self.error_response(403, "Not enough credits. Please top up your account.")
        if self.credits is not None:
            self.credits -= CREDITS_PER_TASK
        identity = f"{brand}/{model}"
        prompt = body["input"].get("prompt")
        error = MODERATION_MESSAGE if isinstance(prompt, str) and MODERATION_MARKER in prompt else None
        fields: dict[str, Any] = {"error": error} if error else {}
        task = self.create_task(
            Generation,
            id=secrets.token_hex(12),
            key=self.submission_key(identity, body["input"]),
            model=identity,
            input=body["input"],
            webhook=body.get("webhookUrl"),
            **fields,
        )
        await self.create_delay()
        return self.ok({self.style.id_field: task.id, "status": self._status_text(Phase.QUEUED)})

    async def _create_body(self) -> dict[str, Any]:
        raw = await request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise BadRequest("Request body is not valid JSON.") from None
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise BadRequest("input is required and must be an object.")
        given = body["input"]
        if not any(isinstance(given.get(key), str) and given[key] for key in ("prompt", "image")):
            raise BadRequest("input.prompt or input.image is required.")
        for field in ("image", "imageTail"):
            if field in given:  # Pollo fetches its images itself: URLs only
                problem = image_problem(given[field], urls=True, bare_base64=False)
                if problem:
                    raise BadRequest(f"input.{field} {problem}.")
                self.received_images.append(given[field])
        duration = given.get("duration")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= MAX_DURATION
        ):
            raise BadRequest(f"input.duration must be an integer from 1 to {MAX_DURATION}.")
        if body.get("webhookUrl") is not None and not isinstance(body["webhookUrl"], str):
            raise BadRequest("webhookUrl must be a URL string.")
        return body

    async def _status(self, task_id: str) -> Response:
        task = self.tasks.get(task_id)
        if not isinstance(task, Generation):
            return self.error_response(404, "Task not found.")
        return self.ok(self.status_json(task))

    async def _file(self, task_id: str, index: int) -> Response:
        task = self.tasks.get(task_id)
        if task is None or index != 0 or task.phase(self.clock()) is not Phase.SUCCEEDED:
            return self.error_response(404, "Not found.")
        return Response(mp4_bytes(f"{task_id}/{index}"), status=200, content_type="video/mp4")

    async def _style_route(self) -> Response:
        if request.method == "POST":
            changes = await request.get_json(force=True, silent=True)
            try:
                self.style = attrs.evolve(self.style, **(changes or {}))
            except (TypeError, ValueError) as exc:
                return self.error_response(422, str(exc))
        return self.json_response(200, attrs.asdict(self.style))

    # -- rendering --------------------------------------------------------------------

    def ok(self, payload: dict[str, Any]) -> Response:
        if self.style.envelope:
            payload = {"code": "SUCCESS", "message": "success", "data": payload}
        return self.json_response(200, payload)

    def _status_text(self, phase: Phase) -> str:
        text = {
            Phase.QUEUED: self.style.queued_status,
            Phase.RUNNING: "processing",
            Phase.SUCCEEDED: "succeed",
            Phase.FAILED: "failed",
            Phase.CANCELED: "failed",  # Pollo has no cancel; never reached
        }[phase]
        return text.upper() if self.style.status_case == "upper" else text

    def generation_json(self, task: Generation) -> dict[str, Any]:
        phase = task.phase(self.clock())
        return {
            "id": f"{task.id}-0",
            "status": self._status_text(phase),
            "failMsg": task.error if phase is Phase.FAILED else None,
            "url": self.file_url_of(task) if phase is Phase.SUCCEEDED else None,
            "mediaType": "video",
        }

    def status_json(self, task: Generation) -> dict[str, Any]:
        """The status answer: ``{taskId, credit, generations}`` as of now."""
        return {
            self.style.id_field: task.id,
            "credit": task.credit,
            "generations": [self.generation_json(task)],
        }

    def file_url_of(self, task: Generation) -> str:
        """Absolute URL of the task's video (served once it has succeeded)."""
        return f"{self.base_url()}/_sim/pollo/files/{task.id}/0.mp4"

    # -- webhooks -----------------------------------------------------------------------

    def generate_webhook_secret(self) -> str:
        """Base64 text, the shape of the secrets Pollo's dashboard hands out."""
        return base64.b64encode(secrets.token_bytes(32)).decode()

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        if not isinstance(task, Generation) or task.webhook is None:
            return None
        phase = task.phase(self.clock())
        payload: dict[str, Any] = {self.style.id_field: task.id, "status": self._status_text(phase)}
        if self.style.webhook_generations:
            payload["generations"] = [self.generation_json(task)]
        body = json.dumps(payload).encode()
        webhook_id = "wh_" + secrets.token_hex(12)
        timestamp = int(self.clock())
        secret = self.webhook_secret
        key = base64.b64decode(secret) if self.style.webhook_key == "base64" else secret.encode()
        headers = {
            "content-type": "application/json",
            "X-Webhook-Id": webhook_id,
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": hmac_signature(key, webhook_id, timestamp, body),
        }
        return WebhookRequest(task.webhook, body, headers)

    # -- faults in Pollo's shapes -------------------------------------------------------------

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        """``{"code": "UNAUTHORIZED", "message": "..."}``, the shape seen from Pollo."""
        return {"code": _ERROR_CODES.get(status, "ERROR"), "message": detail}

    def rate_limit_response(self, retry_after: float) -> Response:
        return self.error_response(429, "Too many requests, please slow down.")

    def too_many_active_response(self) -> Response:
        return self.error_response(
            429, f"Too many concurrent tasks (at most {self.knobs.max_active}); try again later."
        )

    def auth_error_response(self) -> Response:
        return self.error_response(401, "Invalid or missing API key.")

    def task_failed_message(self) -> str:
        # Not a moderation text: the adapter maps those to CONTENT_MODERATED.
        return "Video generation failed due to an internal model error (simulated)."
