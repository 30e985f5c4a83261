"""Replicate's HTTP API (``shared/providers.md`` section 4), simulated.

Covered: Bearer auth, the three create routes (version, official model,
deployment) answering 201 with the prediction object, get, cancel, and the
newest-first cursor-paginated list the daemon uses to reconcile a submission whose
answer it never saw. Predictions go ``starting`` -> ``processing`` -> ``succeeded``
on the clock alone; outputs are URLs of the simulator's own PNGs.

Not simulated: webhooks are stored but never delivered; ``Prefer: wait`` is
ignored; streaming, rate limits, the one-hour data retention and ``data:`` URI
outputs are absent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from tests.simulators.base import Phase, SimTask, Simulator, rfc3339

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
    #: The exact ``created_at`` text, fixed once so every later answer (get, list)
    #: repeats it byte for byte: the daemon matches on it when reconciling.
    created_at: str
    #: Creation order; the list endpoint sorts and paginates on it.
    seq: int
    webhook: str | None = None
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

    # -- routes ----------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        """Replicate's ``/v1`` prediction routes, behind Bearer auth."""
        app.before_request(self._check_auth)
        app.add_url_rule("/v1/predictions", "create_version", self._create_version, methods=["POST"])
        app.add_url_rule(
            "/v1/models/<owner>/<name>/predictions", "create_model", self._create_model, methods=["POST"]
        )
        app.add_url_rule(
            "/v1/deployments/<owner>/<name>/predictions",
            "create_deployment",
            self._create_deployment,
            methods=["POST"],
        )
        app.add_url_rule("/v1/predictions", "list_predictions", self._list, methods=["GET"])
        app.add_url_rule("/v1/predictions/<prediction_id>", "get_prediction", self._get, methods=["GET"])
        app.add_url_rule(
            "/v1/predictions/<prediction_id>/cancel", "cancel_prediction", self._cancel, methods=["POST"]
        )

    async def _check_auth(self) -> Response | None:
        token = self.knobs.token
        if token is None or not request.path.startswith("/v1/"):
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return self.problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return None

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
        self.record_status_check()
        prediction = self.tasks.get(prediction_id)
        if not isinstance(prediction, Prediction):
            return self.problem(404, "Not found", "Not found.")
        return self.json_response(200, self.prediction_json(prediction))

    async def _cancel(self, prediction_id: str) -> Response:
        prediction = self.tasks.get(prediction_id)
        if not isinstance(prediction, Prediction):
            return self.problem(404, "Not found", "Not found.")
        self.cancels += 1
        # Canceling a finished prediction is a no-op that still answers 200.
        prediction.cancel(self.clock())
        return self.json_response(200, self.prediction_json(prediction))

    async def _list(self) -> Response:
        self.list_calls += 1
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
            next_url = f"{self.base_url()}/v1/predictions?cursor={self._encode_cursor(page[-1].seq)}"
        # Paging is forward only (newest to oldest), so ``previous`` stays null.
        body = {"previous": None, "next": next_url, "results": [self.prediction_json(p) for p in page]}
        return self.json_response(200, body)

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
        now = self.clock()
        prediction = Prediction(
            id=new_prediction_id(),
            key=self.submission_key(identity, body["input"]),
            created=now,
            created_at=rfc3339(now),
            duration=self.knobs.duration,
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
        self.add_task(prediction)
        await self.create_delay()
        return self.json_response(201, self.prediction_json(prediction))

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

    @staticmethod
    def json_response(status: int, body: dict[str, Any]) -> Response:
        """A JSON response with an explicit status (201 for creates)."""
        return Response(json.dumps(body), status=status, content_type="application/json")

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
