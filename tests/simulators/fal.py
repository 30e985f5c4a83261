"""fal.ai's queue API (``docs/providers.md``, "fal"), simulated.

Served as under ``https://queue.fal.run``: ``POST /{owner}/{app}[/{path}]``
submits (the body is the model input, ``?fal_webhook=`` asks for a webhook) and
answers the request's ``status_url``, ``response_url`` and ``cancel_url``, which use
only ``/{owner}/{app}`` (no sub-path) like fal's: ``GET .../requests/{id}/status``,
``GET .../requests/{id}``, ``PUT .../requests/{id}/cancel``. A request asked for under
another app is unknown (404), so a client that rebuilds URLs instead of following
them finds nothing. Auth is ``Authorization: Key <key>``.

Lifecycle (on the clock alone): ``IN_QUEUE`` with a ``queue_position`` that counts
down to 0 (``--queue-depth`` plus the requests queued ahead at submission), then
``IN_PROGRESS``, then ``COMPLETED`` (status 202 until then, 200 after). The result
of a completed request is ``{images:[{url, content_type, ...}], seed,
has_nsfw_concepts, timings, prompt}`` with the simulator's own PNGs, or an error:

- ``--fail-rate``: 500 with a model error ``{detail:[{loc, msg, type}]}``;
- a prompt containing ``policy-violation``: 422 ``content_policy_violation``;
- a prompt containing ``nsfw``: 200 with ``has_nsfw_concepts`` all true;
- a cancelled request: status ``COMPLETED`` with ``error``/``error_type``
  ``request_cancelled`` and a 400 result of that request-error shape
  (UNCONFIRMED: fal documents no cancelled state).

Validation errors (no prompt, ``num_images`` outside 1-4) are 422 at submit, and
``locked = True`` answers every submit 403 "User is locked. Reason: Exhausted
balance" (what fal says below its credit threshold; the code is UNCONFIRMED).
Faults answer ``{detail: "..."}``, fal's plain error body.

Webhooks: ``{request_id, gateway_request_id, status: OK|ERROR, payload, error?}``
POSTed to ``fal_webhook`` when the request completes or is cancelled, with the
``X-Fal-Webhook-*`` id/user/timestamp headers. Not simulated: the Ed25519
signature (no ``X-Fal-Webhook-Signature``; Easel does not verify it anyway), logs,
the SSE status stream, request priorities and fal's direct ``fal.run`` host.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import re
import uuid
from typing import Any

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from tests.simulators.base import Knobs, Phase, SimTask, Simulator, WebhookRequest, png_bytes

#: Queue positions a request starts behind, besides requests already queued.
QUEUE_DEPTH = 3
#: Fraction of a request's duration spent in the queue.
QUEUE_FRACTION = 0.3
#: fal's FLUX endpoints take 1-4 images per request.
MAX_IMAGES = 4
#: The user id the simulator reports in webhook headers.
USER_ID = "sim-user"

_STATUS = {
    Phase.QUEUED: "IN_QUEUE",
    Phase.RUNNING: "IN_PROGRESS",
    Phase.SUCCEEDED: "COMPLETED",
    Phase.FAILED: "COMPLETED",
    Phase.CANCELED: "COMPLETED",
}


@attrs.define(kw_only=True)
class FalRequest(SimTask):
    """A queued fal request: its app (``owner/app``), endpoint and input."""

    app: str
    endpoint: str
    input: dict[str, Any]
    queue_fraction: float = QUEUE_FRACTION
    #: ``queue_position`` at submission; it falls to 0 by ``started``.
    initial_position: int = 0
    #: ``content_policy`` or ``nsfw`` when the prompt asks for that outcome.
    moderation: str | None = None

    @property
    def started(self) -> float:
        return self.created + self.duration * self.queue_fraction

    def queue_position(self, now: float) -> int:
        waiting = self.started - self.created
        if waiting <= 0 or now >= self.started:
            return 0
        return max(0, math.ceil(self.initial_position * (self.started - now) / waiting))


class ValidationError(Exception):
    def __init__(self, loc: list[str], msg: str, type_: str = "value_error") -> None:
        super().__init__(msg)
        self.item = {"loc": loc, "msg": msg, "type": type_}


class FalSimulator(Simulator):
    """The fal.ai queue simulator; see the module docstring for its scope."""

    name = "fal"

    def __init__(self, *args: Any, queue_depth: int = QUEUE_DEPTH,
                 queue_fraction: float = QUEUE_FRACTION, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_depth = queue_depth
        self.queue_fraction = queue_fraction
        #: When true, every submit is refused as from a locked (out of credit) account.
        self.locked = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument("--queue-depth", type=int, default=QUEUE_DEPTH,
                            help=f"queue positions a request starts behind (default: {QUEUE_DEPTH})")
        parser.add_argument("--queue-fraction", type=float, default=QUEUE_FRACTION,
                            help=f"fraction of a request's duration spent queued (default: {QUEUE_FRACTION})")

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> FalSimulator:
        if args.queue_depth < 0:
            raise ValueError("--queue-depth must be at least 0")
        if not 0 <= args.queue_fraction < 1:
            raise ValueError("--queue-fraction must be in [0, 1)")
        return cls(knobs, queue_depth=args.queue_depth, queue_fraction=args.queue_fraction)

    # -- routes ----------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        route = self.add_route
        base = "/<owner>/<app>/requests/<request_id>"
        route(app, f"{base}/status", self._status, kind="status")
        route(app, base, self._result, kind="status")
        route(app, f"{base}/cancel", self._cancel, kind="cancel", methods=["PUT"])
        route(app, "/<owner>/<app>", self._submit, kind="create", methods=["POST"])
        route(app, "/<owner>/<app>/<path:path>", self._submit, kind="create", methods=["POST"],
              endpoint="submit_path")

    def _find(self, owner: str, app: str, request_id: str) -> FalRequest | None:
        task = self.tasks.get(request_id)
        if isinstance(task, FalRequest) and task.app == f"{owner}/{app}":
            return task
        return None

    async def _submit(self, owner: str, app: str, path: str = "") -> Response:
        if self.locked:
            return self.error_response(
                403, "User is locked. Reason: Exhausted balance. Top up your balance at "
                     "fal.ai/dashboard/billing.")
        raw = await request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return self.validation_error([ValidationError(["body"], "Input should be a valid JSON object",
                                                          "json_invalid")])
        try:
            num_images = self._validate(body)
        except ValidationError as problem:
            return self.validation_error([problem])
        assert isinstance(body, dict)
        webhook = request.args.get("fal_webhook") or None
        endpoint = "/".join(part for part in (owner, app, path) if part)
        prompt = str(body["prompt"]).lower()
        moderation = ("content_policy" if "policy-violation" in prompt
                      else "nsfw" if "nsfw" in prompt else None)
        now = self.clock()
        queued_ahead = sum(1 for t in self.tasks.values() if t.phase(now) is Phase.QUEUED)
        task = self.create_task(
            FalRequest,
            id=str(uuid.uuid4()),
            key=self.submission_key(endpoint, body),
            outputs=num_images,
            app=f"{owner}/{app}",
            endpoint=endpoint,
            input=body,
            webhook=webhook,
            queue_fraction=self.queue_fraction,
            initial_position=self.queue_depth + queued_ahead,
            moderation=moderation,
        )
        await self.create_delay()
        answer = {**self.request_urls(task), "status": "IN_QUEUE",
                  "queue_position": task.queue_position(self.clock())}
        if webhook:
            answer["gateway_request_id"] = task.id
        return self.json_response(200, answer)

    @staticmethod
    def _validate(body: Any) -> int:
        if not isinstance(body, dict):
            raise ValidationError(["body"], "Input should be a valid dictionary", "dict_type")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValidationError(["body", "prompt"], "Field required", "missing")
        num_images = body.get("num_images", 1)
        if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= MAX_IMAGES:
            raise ValidationError(["body", "num_images"],
                                  f"Input should be less than or equal to {MAX_IMAGES}", "less_than_equal")
        return num_images

    async def _status(self, owner: str, app: str, request_id: str) -> Response:
        task = self._find(owner, app, request_id)
        if task is None:
            return self.error_response(404, "Request not found")
        now = self.clock()
        phase = task.phase(now)
        body: dict[str, Any] = {**self.request_urls(task), "status": _STATUS[phase]}
        if phase is Phase.QUEUED:
            body["queue_position"] = task.queue_position(now)
        else:
            body["logs"] = [] if request.args.get("logs") == "1" else None
        if phase.terminal:
            body["metrics"] = {"inference_time": round(max(0.0, task.finished - task.started), 3)}
        if phase is Phase.CANCELED:
            body["error"] = "Request was cancelled by the user."
            body["error_type"] = "request_cancelled"
        return self.json_response(200 if phase.terminal else 202, body)

    async def _result(self, owner: str, app: str, request_id: str) -> Response:
        task = self._find(owner, app, request_id)
        if task is None:
            return self.error_response(404, "Request not found")
        phase = task.phase(self.clock())
        if not phase.terminal:
            return self.error_response(400, "Request is still in progress")
        status, body = self.result_of(task)
        return self.json_response(status, body)

    async def _cancel(self, owner: str, app: str, request_id: str) -> Response:
        task = self._find(owner, app, request_id)
        if task is None:
            return self.json_response(404, {"status": "NOT_FOUND"})
        if not self.cancel_task(task):
            return self.json_response(400, {"status": "ALREADY_COMPLETED"})
        return self.json_response(202, {"status": "CANCELLATION_REQUESTED"})

    # -- answers ------------------------------------------------------------------------

    def request_urls(self, task: FalRequest) -> dict[str, str]:
        """The URLs fal hands out: under ``owner/app`` only, whatever the endpoint."""
        base = f"{self.task_base_url()}/{task.app}/requests/{task.id}"
        return {"request_id": task.id, "response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    def result_of(self, task: FalRequest) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of a terminal request's result."""
        phase = task.phase(self.clock())
        if phase is Phase.CANCELED:
            return 400, {"detail": "Request was cancelled by the user.", "error_type": "request_cancelled"}
        if phase is Phase.FAILED:
            return 500, {"detail": [{"loc": ["body"], "msg": task.error, "type": "internal_server_error"}]}
        if task.moderation == "content_policy":
            return 422, {"detail": [{
                "loc": ["body", "prompt"], "msg": "The content was flagged by a content checker.",
                "type": "content_policy_violation", "input": task.input.get("prompt"),
            }]}
        images = [
            {"url": self.file_url(task, index), "content_type": "image/png",
             "file_name": f"{index}.png",
             "file_size": len(png_bytes(f"{task.id}/{index}")), "width": 8, "height": 8}
            for index in range(task.outputs)
        ]
        return 200, {
            "images": images,
            "seed": task.input.get("seed", 42),
            "has_nsfw_concepts": [task.moderation == "nsfw"] * task.outputs,
            "timings": {"inference": round(task.finished - task.started, 3)},
            "prompt": task.input.get("prompt"),
        }

    @staticmethod
    def validation_error(problems: list[ValidationError]) -> Response:
        body = {"detail": [problem.item for problem in problems]}
        return Response(json.dumps(body), status=422, content_type="application/json")

    # -- webhooks ----------------------------------------------------------------------

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        if not isinstance(task, FalRequest) or task.webhook is None:
            return None
        status, result = self.result_of(task)
        body: dict[str, Any] = {"request_id": task.id, "gateway_request_id": task.id}
        if status < 300:
            body.update(status="OK", payload=result)
        else:
            body.update(status="ERROR", payload=result, error=f"Invalid status code: {status}")
        headers = {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": task.id,
            "X-Fal-Webhook-User-Id": USER_ID,
            "X-Fal-Webhook-Timestamp": str(int(self.clock())),
        }
        return WebhookRequest(task.webhook, json.dumps(body).encode(), headers)

    # -- fal's shapes -------------------------------------------------------------------

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        return {"detail": detail}

    def auth_error_response(self) -> Response:
        # UNCONFIRMED: the exact text fal answers to a wrong key.
        return self.error_response(401, "No user found for Key ID and Secret")

    def too_many_active_response(self) -> Response:
        # fal queues excess requests rather than refusing them; a 429 is what a
        # client would meet if it did (UNCONFIRMED).
        return self.error_response(429, f"Too many concurrent requests (at most {self.knobs.max_active}).")

    def task_failed_message(self) -> str:
        return "Simulated failure: the model raised an error while generating."

    def authorized(self) -> bool:
        token = self.knobs.token
        if token is None:
            return True
        match = re.fullmatch(r"(?i)key\s+(\S+)", request.headers.get("Authorization", "").strip())
        return match is not None and hmac.compare_digest(match.group(1).encode(), token.encode())
