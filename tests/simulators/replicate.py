"""Replicate's HTTP API (``docs/providers.md``, "Replicate"), simulated.

Covered: Bearer auth, the three create routes (version, official model,
deployment) answering 201 with the prediction object, get, cancel, and the
newest-first cursor-paginated list the daemon uses to reconcile a submission whose
answer it never saw. Predictions go ``starting`` -> ``processing`` -> ``succeeded``
(or ``failed`` under ``--fail-rate``) on the clock alone; outputs are URLs of the
simulator's own PNGs. Webhooks are delivered signed per Standard Webhooks
(``webhook-id``/``webhook-timestamp``/``webhook-signature``) with the secret of
``--webhook-secret whsec_...``, which ``GET /v1/webhooks/default/secret`` hands
out. The base's fault knobs answer in Replicate's shapes (see the overrides).

Not simulated: ``Prefer: wait`` is ignored; the ``output`` and ``logs`` webhook
events are never sent (only ``start`` when asked for, and ``completed``);
streaming, the real rate limits, the one-hour data retention and ``data:`` URI
outputs are absent.
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
    format_seconds,
    rfc3339,
    standard_webhook_signature,
)

#: Replicate's page size for ``GET /v1/predictions``.
PAGE_SIZE = 100
#: Upper bound on ``input.num_outputs`` (FLUX models on Replicate allow 1-4).
MAX_OUTPUTS = 4
#: Steps reported in the progress logs while a prediction is processing.
PROGRESS_STEPS = 4

_STATUS = {
    Phase.QUEUED: "starting",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "succeeded",
    Phase.FAILED: "failed",
    Phase.CANCELED: "canceled",
}
_WEBHOOK_EVENTS = {"start", "output", "logs", "completed"}


class ProblemError(Exception):
    """Raised by request parsing; becomes an RFC 7807 problem-details response."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


@attrs.define(kw_only=True)
class Prediction(SimTask):
    """A task plus what Replicate echoes back about the request."""

    model: str
    version: str
    input: dict[str, Any]
    #: Creation order; the list endpoint sorts and paginates on it.
    seq: int
    #: The exact ``created_at`` text, fixed once so every later answer (get, list)
    #: repeats it byte for byte: the daemon matches on it when reconciling.
    created_at: str = attrs.field(
        default=attrs.Factory(lambda self: rfc3339(self.created), takes_self=True)
    )
    webhook_events_filter: list[str] | None = None


def new_prediction_id() -> str:
    """A 26-character lowercase base32 id, the shape of Replicate's ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def hidden_version(model: str) -> str:
    """A stable 64-hex version id for requests that name no version.

    Replicate fills in the version of an official model or deployment from its
    catalogue (the exact value it reports there is UNCONFIRMED); the client only
    needs a string, so the simulator derives one from the model name.
    """
    return hashlib.sha256(model.encode()).hexdigest()


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (Standard Webhooks)."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        key = b""
    if not secret.startswith("whsec_") or not key:
        raise ValueError(f"webhook secret {secret!r} is not 'whsec_' followed by base64")
    return key


def progress_logs(done: int, steps: int = PROGRESS_STEPS) -> str:
    """tqdm-style lines the SDK's ``Prediction.Progress.parse`` understands."""
    lines = []
    for step in range(done + 1):
        filled = step * 10 // steps
        lines.append(f"{step * 100 // steps:3d}%|{'█' * filled}{' ' * (10 - filled)}| {step}/{steps}")
    return "\n".join(lines)


class ReplicateSimulator(Simulator):
    """The Replicate simulator; see the module docstring for its scope."""

    name = "replicate"

    def __init__(self, *args: Any, page_size: int = PAGE_SIZE, **kwargs: Any) -> None:
        """``page_size`` is Replicate's 100 unless a test wants to exercise paging
        cheaply; other arguments are ``Simulator``'s."""
        super().__init__(*args, **kwargs)
        self.page_size = page_size
        self._next_seq = 0

    # -- command line --------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument(
            "--page-size", type=int, default=PAGE_SIZE,
            help=f"predictions per list page (default: {PAGE_SIZE})",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> ReplicateSimulator:
        if knobs.webhook_secret is not None:
            webhook_key(knobs.webhook_secret)  # raises ValueError early for a malformed secret
        if args.page_size < 1:
            raise ValueError("--page-size must be at least 1")
        return cls(knobs, page_size=args.page_size)

    # -- routes ----------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        """Replicate's ``/v1`` routes (Bearer auth and faults come with ``add_route``)."""
        route = self.add_route
        route(app, "/v1/predictions", self._create_version, kind="create", methods=["POST"])
        route(
            app, "/v1/models/<owner>/<name>/predictions", self._create_model, kind="create", methods=["POST"]
        )
        route(
            app, "/v1/deployments/<owner>/<name>/predictions", self._create_deployment,
            kind="create", methods=["POST"],
        )
        route(app, "/v1/predictions", self._list, kind="list")
        route(app, "/v1/predictions/<prediction_id>", self._get, kind="status")
        route(app, "/v1/predictions/<prediction_id>/cancel", self._cancel, kind="cancel", methods=["POST"])
        route(app, "/v1/webhooks/default/secret", self._webhook_secret, kind="other")

    async def _create_version(self) -> Response:
        try:
            body = await self._create_body()
            version_ref = body.get("version")
            if not isinstance(version_ref, str) or not version_ref:
                raise ProblemError(422, "Input validation failed", "- version: version is required")
            # Replicate also accepts "owner/name:version" and "owner/name" here.
            model, _, version = version_ref.rpartition(":")
            if not model and "/" in version:
                model, version = version, hidden_version(version)
            # For a bare version id the real service looks up the owning model; the
            # simulator has no catalogue, so it reports a placeholder.
            return await self._create(
                body, model or "unknown/unknown", version, identity=f"version:{version_ref}"
            )
        except ProblemError as problem:
            return self.problem(problem.status, problem.title, problem.detail)

    async def _create_model(self, owner: str, name: str) -> Response:
        model = f"{owner}/{name}"
        try:
            body = await self._create_body()
            return await self._create(body, model, hidden_version(model), identity=f"model:{model}")
        except ProblemError as problem:
            return self.problem(problem.status, problem.title, problem.detail)

    async def _create_deployment(self, owner: str, name: str) -> Response:
        # A deployment runs some model; the simulator reports the deployment's name.
        deployment = f"{owner}/{name}"
        try:
            body = await self._create_body()
            return await self._create(
                body, deployment, hidden_version(deployment), identity=f"deployment:{deployment}"
            )
        except ProblemError as problem:
            return self.problem(problem.status, problem.title, problem.detail)

    async def _get(self, prediction_id: str) -> Response:
        prediction = self.tasks.get(prediction_id)
        if not isinstance(prediction, Prediction):
            return self.problem(404, "Not found", "Not found.")
        return self.json_response(200, self.prediction_json(prediction))

    async def _cancel(self, prediction_id: str) -> Response:
        prediction = self.tasks.get(prediction_id)
        if not isinstance(prediction, Prediction):
            return self.problem(404, "Not found", "Not found.")
        # Canceling a finished prediction is a no-op that still answers 200.
        self.cancel_task(prediction)
        return self.json_response(200, self.prediction_json(prediction))

    async def _list(self) -> Response:
        predictions = sorted(
            (task for task in self.tasks.values() if isinstance(task, Prediction)),
            key=lambda prediction: prediction.seq,
            reverse=True,
        )
        cursor = request.args.get("cursor")
        if cursor is not None:
            before = self._decode_cursor(cursor)
            if before is None:
                return self.problem(400, "Bad request", "Invalid cursor.")
            predictions = [prediction for prediction in predictions if prediction.seq < before]
        page = predictions[: self.page_size]
        next_url = None
        if len(predictions) > self.page_size:
            next_url = f"{self.task_base_url()}/v1/predictions?cursor={self._encode_cursor(page[-1].seq)}"
        # Paging is forward only (newest to oldest), so ``previous`` stays null.
        body = {"previous": None, "next": next_url, "results": [self.prediction_json(p) for p in page]}
        return self.json_response(200, body)

    async def _webhook_secret(self) -> Response:
        """``GET /v1/webhooks/default/secret``: the key webhooks are signed with."""
        return self.json_response(200, {"key": self.webhook_secret})

    # -- creation ---------------------------------------------------------------------

    async def _create_body(self) -> dict[str, Any]:
        """Parse and validate a create body (the fields common to all three routes).

        ``Prefer: wait`` is deliberately ignored: answering at once with a
        ``starting`` prediction is one of the answers Replicate itself gives when the
        model is not done within the wait, and clients must then poll anyway.
        """
        raw = await request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise ProblemError(400, "Bad request", "Request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ProblemError(422, "Input validation failed", "- (root): expected a JSON object")
        if not isinstance(body.get("input"), dict):
            raise ProblemError(
                422, "Input validation failed", "- input: input is required and must be an object"
            )
        for field in ("webhook", "webhook_completed"):
            if body.get(field) is not None and not isinstance(body[field], str):
                raise ProblemError(422, "Input validation failed", f"- {field}: must be a URL string")
        events = body.get("webhook_events_filter")
        if events is not None and (not isinstance(events, list) or not set(events) <= _WEBHOOK_EVENTS):
            raise ProblemError(
                422,
                "Input validation failed",
                f"- webhook_events_filter: must be a subset of {sorted(_WEBHOOK_EVENTS)}",
            )
        num_outputs = body["input"].get("num_outputs", 1)
        if (
            isinstance(num_outputs, bool)
            or not isinstance(num_outputs, int)
            or not 1 <= num_outputs <= MAX_OUTPUTS
        ):
            raise ProblemError(
                422,
                "Input validation failed",
                f"- input.num_outputs: must be an integer from 1 to {MAX_OUTPUTS}",
            )
        return body

    async def _create(self, body: dict[str, Any], model: str, version: str, *, identity: str) -> Response:
        """Record the prediction, then (after any create latency) answer 201."""
        prediction = self.create_task(
            Prediction,
            id=new_prediction_id(),
            key=self.submission_key(identity, body["input"]),
            outputs=body["input"].get("num_outputs", 1),
            model=model,
            version=version,
            input=body["input"],
            seq=self._next_seq,
            # The legacy ``webhook_completed`` field is stored as the webhook too.
            webhook=body.get("webhook") or body.get("webhook_completed"),
            webhook_events_filter=body.get("webhook_events_filter"),
        )
        self._next_seq += 1
        await self.create_delay()
        return self.json_response(201, self.prediction_json(prediction))

    # -- webhooks -----------------------------------------------------------------------

    def generate_webhook_secret(self) -> str:
        """``whsec_`` and 32 random bytes in base64, the shape of Replicate's secrets."""
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

    def webhook_schedule(self, task: SimTask) -> list[tuple[str, float]]:
        """``completed`` at the finish (unless filtered out), ``start`` when asked for.

        With no ``webhook_events_filter`` Replicate sends every event; the
        simulator sends only ``completed`` then (``output`` and ``logs`` are not
        simulated). A cancel sends ``completed`` at once (``cancel_task``).
        """
        if task.webhook is None:
            return []
        events = getattr(task, "webhook_events_filter", None)
        schedule = []
        if events is not None and "start" in events:
            schedule.append(("start", task.started))
        if events is None or "completed" in events:
            schedule.append(("completed", task.finished))
        return schedule

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        """The prediction as of now, signed per Standard Webhooks."""
        if not isinstance(task, Prediction) or task.webhook is None:
            return None
        events = task.webhook_events_filter
        if events is not None and event not in events:
            return None  # e.g. the completed webhook of a cancel, filtered to "start"
        phase = task.phase(self.clock())
        if event == "start" and phase is Phase.CANCELED:
            return None
        body = json.dumps(self.prediction_json(task)).encode()
        msg_id = "msg_" + secrets.token_urlsafe(18)
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "user-agent": "Replicate-Webhook-Simulator/1.0",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_webhook_signature(
                webhook_key(self.webhook_secret), msg_id, timestamp, body
            ),
        }
        return WebhookRequest(task.webhook, body, headers)

    # -- rendering --------------------------------------------------------------------

    def prediction_json(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction object as Replicate serialises it, at the current time."""
        now = self.clock()
        phase = prediction.phase(now)
        # A canceled prediction is frozen at its cancel time.
        as_of = min(now, prediction.completed_at(now) or now)
        started = prediction.started if as_of >= prediction.started else None
        completed = prediction.completed_at(now)
        output = None
        if phase is Phase.SUCCEEDED:
            output = [self.file_url(prediction, index) for index in range(prediction.outputs)]
        metrics: dict[str, float] = {}
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            metrics = {
                "predict_time": round(prediction.finished - prediction.started, 6),
                "total_time": round(prediction.finished - prediction.created, 6),
            }
        base = self.base_url()
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.input,
            "output": output,
            "logs": self._logs(prediction, as_of),
            "error": prediction.error if phase is Phase.FAILED else None,
            "status": _STATUS[phase],
            "source": "api",
            "data_removed": False,
            "created_at": prediction.created_at,
            "started_at": rfc3339(started) if started is not None else None,
            "completed_at": rfc3339(completed) if completed is not None else None,
            "urls": {
                "get": f"{base}/v1/predictions/{prediction.id}",
                "cancel": f"{base}/v1/predictions/{prediction.id}/cancel",
            },
            "metrics": metrics,
        }

    @staticmethod
    def _logs(prediction: Prediction, as_of: float) -> str:
        """Progress logs as of ``as_of``: empty while starting, full when done."""
        if as_of < prediction.started:
            return ""
        running_for = prediction.finished - prediction.started
        fraction = 1.0 if running_for <= 0 else min(1.0, (as_of - prediction.started) / running_for)
        return progress_logs(int(fraction * PROGRESS_STEPS))

    def problem(self, status: int, title: str, detail: str) -> Response:
        """An RFC 7807 problem-details response, Replicate's error shape."""
        body = {"title": title, "detail": detail, "status": status}
        return Response(json.dumps(body), status=status, content_type="application/problem+json")

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        """Unknown routes and wrong methods answer in problem-details shape too."""
        return {"title": "Error", "detail": detail, "status": status}

    # -- faults in Replicate's shapes ----------------------------------------------------------

    def rate_limit_response(self, retry_after: float) -> Response:
        """The documented 429 body ("Rate limits" docs), plus the ``ratelimit-*``
        headers seen in the SDK's cassettes."""
        seconds = format_seconds(retry_after)
        body = {"detail": f"Request was throttled. Your rate limit resets in ~{seconds}s."}
        headers = {"Retry-After": seconds, "ratelimit-remaining": "0", "ratelimit-reset": seconds}
        return self.json_response(429, body, headers)

    def server_error_response(self, status: int) -> Response:
        # UNCONFIRMED: what Replicate's 5xx bodies look like; problem details are the
        # documented error shape, so clients must read those at least.
        titles = {
            500: "Internal Server Error",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }
        title = titles.get(status, "Server Error")
        return self.problem(status, title, f"{title}: the simulated server failed. Try again later.")

    def too_many_active_response(self) -> Response:
        # UNCONFIRMED: Replicate queues rather than refusing; a throttling 429 is
        # what a client would meet if it did.
        return self.problem(
            429, "Too Many Requests",
            f"You have reached the limit of {self.knobs.max_active} concurrent predictions.",
        )

    def auth_error_response(self) -> Response:
        return self.problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    def task_failed_message(self) -> str:
        # Deliberately not an NSFW/safety text: the daemon maps those to
        # CONTENT_MODERATED, and this knob simulates plain model failures.
        return "CUDA out of memory. Tried to allocate 2.00 GiB (simulated failure)"

    @staticmethod
    def _encode_cursor(seq: int) -> str:
        return base64.urlsafe_b64encode(f"before:{seq}".encode()).decode().rstrip("=")

    @staticmethod
    def _decode_cursor(cursor: str) -> int | None:
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            prefix, _, seq = text.partition(":")
            return int(seq) if prefix == "before" else None
        except (ValueError, UnicodeDecodeError):
            return None
