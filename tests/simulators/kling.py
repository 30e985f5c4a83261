"""Kling AI's video API (``docs/providers.md``, "Kling and Tu-zi Kling"), simulated.

Covered: JWT auth (HS256 over ``{iss, exp, nbf}`` with the configured secret key;
401 with codes 1001 empty / 1002 invalid / 1003 not yet valid / 1004 expired), or
``--auth bearer`` with the ``--token`` knob as Tu-zi's reseller does; create, query
and list for ``text2video`` and ``image2video``, served both at the root (official
base URL) and under ``/kling`` (Tu-zi's prefix); the ``{code, message, request_id,
data}`` envelope; statuses ``submitted`` -> ``processing`` -> ``succeed`` (or
``failed`` with ``task_status_msg``); ``external_task_id`` unique per account and
echoed in ``task_info``; callbacks (the bare task object, unsigned) to
``callback_url`` on each status change; outputs are small MP4 files served by the
simulator. Faults answer in Kling's error envelope: 429/1302 for rate limits,
429/1303 for ``--max-active`` (the documented concurrency refusal), 5000/5001/5002
for 5xx.

Test hooks beyond the shared knobs: ``--credits N`` (creates after N accepted ones
get 429/1102, resource pack depleted); a prompt containing ``sim:blocked`` is
refused at create with 400/1301; one containing ``sim:risky`` creates a task that
ends ``failed`` with a risk-control message; ``Simulator.forced_errors`` (in
process) queues ``(http_status, code, message)`` answers for the next creates.

Not simulated: cancel (Kling has none), camera control, masks, sound, the real
limits on image size and aspect, the 30-day retention.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
from collections import deque
from typing import Any

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from tests.simulators.base import Knobs, Phase, SimTask, Simulator, WebhookRequest
from tests.simulators.inputs import image_problem

ENDPOINTS = ("text2video", "image2video")
#: Path prefixes served: the official root and Tu-zi's ``/kling``.
PREFIXES = ("", "/kling")
MODELS = frozenset({
    "kling-v1", "kling-v1-5", "kling-v1-6", "kling-v2-master", "kling-v2-1", "kling-v2-1-master",
    "kling-v2-5-turbo", "kling-v2-6",
})
MAX_PROMPT = 2500
RISK_MESSAGE = "Failure to pass the risk control system (simulated content review)"

_STATUS = {
    Phase.QUEUED: "submitted",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "succeed",
    Phase.FAILED: "failed",
    Phase.CANCELED: "failed",  # Kling has no cancel; never reached
}


class KlingError(Exception):
    """Raised while reading a request; answered in Kling's error envelope."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@attrs.define(kw_only=True)
class KlingTask(SimTask):
    endpoint: str
    model_name: str
    prompt: str
    external_task_id: str | None = None
    duration_field: str = "5"
    #: Creation order; the list is newest first.
    seq: int = 0


def mp4_bytes(seed: str) -> bytes:
    """A tiny file that starts like an MP4 (an ``ftyp`` box), distinct per seed."""
    ftyp = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    payload = hashlib.sha256(seed.encode()).digest()
    mdat = (8 + len(payload)).to_bytes(4, "big") + b"mdat" + payload
    return ftyp + mdat


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_problem(token: str, access_key: str | None, secret_key: str, now: float) -> tuple[int, str] | None:
    """Why ``token`` is not a valid Kling JWT at ``now`` (code, message), or ``None``."""
    try:
        header_part, payload_part, signature_part = token.split(".")
        header = json.loads(_b64url_decode(header_part))
        payload = json.loads(_b64url_decode(payload_part))
        signature = _b64url_decode(signature_part)
    except (ValueError, UnicodeDecodeError):
        return 1002, "Authorization is invalid: not a JWT"
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(payload, dict):
        return 1002, "Authorization is invalid: expected an HS256 JWT"
    expected = hmac.new(secret_key.encode(), f"{header_part}.{payload_part}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        return 1002, "Authorization is invalid: bad signature"
    if access_key is not None and payload.get("iss") != access_key:
        return 1002, "Authorization is invalid: unknown access key"
    exp, nbf = payload.get("exp"), payload.get("nbf")
    if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
        return 1002, "Authorization is invalid: exp and nbf are required"
    if now < nbf:
        return 1003, "Authorization is not yet valid"
    if now >= exp:
        return 1004, "Authorization has expired"
    return None


class KlingSimulator(Simulator):
    """The Kling simulator; see the module docstring for its scope."""

    name = "kling"

    def __init__(
        self,
        *args: Any,
        access_key: str | None = None,
        secret_key: str | None = None,
        auth: str = "jwt",
        credits: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``secret_key`` None accepts any bearer (JWT mode); in ``auth="bearer"``
        mode the ``token`` knob is the key (``None`` accepts any)."""
        super().__init__(*args, **kwargs)
        if auth not in ("jwt", "bearer"):
            raise ValueError("auth must be 'jwt' or 'bearer'")
        self.access_key = access_key
        self.secret_key = secret_key
        self.auth = auth
        self.credits = credits
        #: ``(http_status, code, message)`` answers for the next creates, in order.
        self.forced_errors: deque[tuple[int, int, str]] = deque()
        self._auth_problem: tuple[int, str] = (1000, "Authorization failed")
        self._next_seq = 0
        self._next_id = 800_000_000_000_000_000 + secrets.randbelow(10**16)

    # -- command line ------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument("--auth", choices=("jwt", "bearer"), default="jwt",
                            help="jwt (official; --access-key/--secret-key) or bearer (Tu-zi; --token)")
        parser.add_argument("--access-key", default=None, help="JWT iss to require")
        parser.add_argument("--secret-key", default=None, help="JWT signing secret; unset accepts any")
        parser.add_argument("--credits", type=int, default=None,
                            help="accept this many creates, then answer 429/1102 (pack depleted)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> KlingSimulator:
        if args.credits is not None and args.credits < 0:
            raise ValueError("--credits must be >= 0")
        return cls(knobs, access_key=args.access_key, secret_key=args.secret_key,
                   auth=args.auth, credits=args.credits)

    # -- auth ------------------------------------------------------------------------

    def authorized(self) -> bool:
        if self.auth == "bearer":
            self._auth_problem = (1002, "Authorization is invalid")
            return super().authorized()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._auth_problem = (1001, "Authorization is empty")
            return False
        if self.secret_key is None:
            return True
        problem = jwt_problem(token, self.access_key, self.secret_key, self.clock())
        if problem is not None:
            self._auth_problem = problem
            return False
        return True

    def auth_error_response(self) -> Response:
        code, message = self._auth_problem
        return self.kling_error(401, code, message)

    # -- routes ------------------------------------------------------------------------

    def register_routes(self, app: QuartTrio) -> None:
        for prefix in PREFIXES:
            for endpoint in ENDPOINTS:
                base = f"{prefix}/v1/videos/{endpoint}"
                tag = f"{prefix or 'root'}:{endpoint}"
                self.add_route(app, base, self._create_view(endpoint), kind="create", methods=["POST"],
                               endpoint=f"create:{tag}")
                self.add_route(app, base, self._list_view(endpoint), kind="list", endpoint=f"list:{tag}")
                self.add_route(app, f"{base}/<task_id>", self._query_view(endpoint), kind="status",
                               endpoint=f"query:{tag}")
        # Output files are not a provider route: no auth, no faults.
        app.add_url_rule("/_sim/videos/<task_id>/<int:index>.mp4", "sim_video", self._video_file,
                         methods=["GET"])

    def _create_view(self, endpoint: str) -> Any:
        async def create() -> Response:
            try:
                return await self._create(endpoint)
            except KlingError as exc:
                return self.kling_error(exc.status, exc.code, exc.message)
        return create

    def _list_view(self, endpoint: str) -> Any:
        async def list_tasks() -> Response:
            try:
                return self._list(endpoint)
            except KlingError as exc:
                return self.kling_error(exc.status, exc.code, exc.message)
        return list_tasks

    def _query_view(self, endpoint: str) -> Any:
        async def query(task_id: str) -> Response:
            task = self.tasks.get(task_id)
            if not isinstance(task, KlingTask) or task.endpoint != endpoint:
                return self.kling_error(404, 1203, f"task {task_id} does not exist")
            return self.ok(self.task_json(task))
        return query

    async def _create(self, endpoint: str) -> Response:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise KlingError(400, 1200, "request body is not a JSON object")
        if self.forced_errors:
            status, code, message = self.forced_errors.popleft()
            raise KlingError(status, code, message)
        fields = self._validate(endpoint, body)
        if self.credits is not None and self.submissions >= self.credits:
            raise KlingError(429, 1102, "resource pack exhausted")
        error = RISK_MESSAGE if "sim:risky" in fields["prompt"] else None
        task_id = str(self._next_id)
        self._next_id += 1
        extra: dict[str, Any] = {} if error is None else {"error": error}
        key_input = {k: v for k, v in body.items() if k not in ("callback_url", "external_task_id")}
        task = self.create_task(
            KlingTask,
            id=task_id,
            key=self.submission_key(endpoint, key_input),
            endpoint=endpoint,
            webhook=body.get("callback_url"),
            seq=self._next_seq,
            **fields,
            **extra,
        )
        self._next_seq += 1
        await self.create_delay()
        data = self.task_json(task)
        del data["task_result"]
        return self.ok(data)

    def _validate(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model_name", "kling-v1")
        if not isinstance(model, str) or model not in MODELS:
            raise KlingError(404, 1203, f"model {model!r} does not exist")
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT or (endpoint == "text2video" and not prompt):
            raise KlingError(400, 1201, f"prompt is required and at most {MAX_PROMPT} characters")
        if "sim:blocked" in prompt:
            raise KlingError(400, 1301, "prompt triggered the content safety policy")
        duration = body.get("duration", "5")
        if duration not in ("5", "10"):
            raise KlingError(400, 1201, "duration must be the string \"5\" or \"10\"")
        if body.get("mode", "std") not in ("std", "pro"):
            raise KlingError(400, 1201, "mode must be std or pro")
        cfg = body.get("cfg_scale", 0.5)
        if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not 0 <= cfg <= 1:
            raise KlingError(400, 1201, "cfg_scale must be a number from 0 to 1")
        if endpoint == "text2video":
            if body.get("aspect_ratio", "16:9") not in ("16:9", "9:16", "1:1"):
                raise KlingError(400, 1201, "aspect_ratio must be 16:9, 9:16 or 1:1")
        else:
            for field in ("image", "image_tail"):
                if field == "image" or field in body:
                    problem = image_problem(body.get(field), urls=True, bare_base64=True)
                    if problem:
                        raise KlingError(400, 1201, f"{field} {problem}")
                    self.received_images.append(body[field])
        callback = body.get("callback_url")
        if callback is not None and not isinstance(callback, str):
            raise KlingError(400, 1201, "callback_url must be a string")
        external = body.get("external_task_id")
        if external is not None:
            if not isinstance(external, str):
                raise KlingError(400, 1201, "external_task_id must be a string")
            if any(isinstance(t, KlingTask) and t.external_task_id == external for t in self.tasks.values()):
                raise KlingError(400, 1201, f"external_task_id {external!r} already exists")
        return {"model_name": model, "prompt": prompt, "external_task_id": external, "duration_field": duration}

    def _list(self, endpoint: str) -> Response:
        try:
            page = int(request.args.get("pageNum", "1"))
            size = int(request.args.get("pageSize", "30"))
        except ValueError:
            raise KlingError(400, 1201, "pageNum and pageSize must be integers") from None
        if not (1 <= page <= 1000 and 1 <= size <= 500):
            raise KlingError(400, 1201, "pageNum must be 1-1000 and pageSize 1-500")
        tasks = sorted(
            (t for t in self.tasks.values() if isinstance(t, KlingTask) and t.endpoint == endpoint),
            key=lambda t: t.seq, reverse=True,
        )
        chosen = tasks[(page - 1) * size: page * size]
        return self.ok([self.task_json(t) for t in chosen])

    async def _video_file(self, task_id: str, index: int) -> Response:
        task = self.tasks.get(task_id)
        if task is None or index != 0 or task.phase(self.clock()) is not Phase.SUCCEEDED:
            return self.kling_error(404, 1203, "Not found.")
        return Response(mp4_bytes(f"{task_id}/{index}"), status=200, content_type="video/mp4")

    # -- bodies ----------------------------------------------------------------------

    def file_url(self, task: SimTask, index: int) -> str:
        return f"{self.base_url()}/_sim/videos/{task.id}/{index}.mp4"

    def task_json(self, task: KlingTask) -> dict[str, Any]:
        now = self.clock()
        phase = task.phase(now)
        changed = task.created
        if now >= task.started:
            changed = task.started
        if phase.terminal:
            changed = task.completed_at(now) or changed
        videos = []
        if phase is Phase.SUCCEEDED:
            videos = [{"id": f"{task.id}0", "url": self.file_url(task, 0), "duration": task.duration_field}]
        return {
            "task_id": task.id,
            "task_status": _STATUS[phase],
            "task_status_msg": task.error if phase is Phase.FAILED else "",
            "task_info": {"external_task_id": task.external_task_id} if task.external_task_id else {},
            "final_unit_deduction": "1" if phase is Phase.SUCCEEDED else "0",
            "created_at": int(task.created * 1000),
            "updated_at": int(changed * 1000),
            "task_result": {"videos": videos},
        }

    @staticmethod
    def _request_id() -> str:
        return secrets.token_hex(16)

    def ok(self, data: Any) -> Response:
        body = {"code": 0, "message": "SUCCEED", "request_id": self._request_id(), "data": data}
        return self.json_response(200, body)

    def kling_error(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        body = {"code": code, "message": message, "request_id": self._request_id()}
        return self.json_response(status, body, headers)

    # -- faults in Kling's shapes --------------------------------------------------------

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        codes = {400: 1200, 401: 1000, 403: 1103, 404: 1202, 405: 1202, 429: 1302,
                 500: 5000, 502: 5000, 503: 5001, 504: 5002}
        return {"code": codes.get(status, 5000 if status >= 500 else 1200), "message": detail,
                "request_id": self._request_id()}

    def rate_limit_response(self, retry_after: float) -> Response:
        return self.kling_error(429, 1302, "request rate over limit")

    def server_error_response(self, status: int) -> Response:
        code = {503: 5001, 504: 5002}.get(status, 5000)
        messages = {5000: "server internal error", 5001: "server temporarily unavailable",
                    5002: "server internal timeout"}
        return self.kling_error(status, code, messages[code])

    def too_many_active_response(self) -> Response:
        return self.kling_error(429, 1303, "parallel task over resource pack limit")

    def task_failed_message(self) -> str:
        return "video generation failed (simulated failure)"

    # -- callbacks -------------------------------------------------------------------

    def webhook_schedule(self, task: SimTask) -> list[tuple[str, float]]:
        """Kling calls back on every status change: start and finish."""
        if task.webhook is None:
            return []
        return [("start", task.started), ("completed", task.finished)]

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        """The bare task object, unsigned (Kling signs nothing)."""
        if not isinstance(task, KlingTask) or task.webhook is None:
            return None
        body = json.dumps(self.task_json(task)).encode()
        return WebhookRequest(task.webhook, body, {"content-type": "application/json"})
