"""Kling AI's video API (official, and resold under the same paths by Tu-zi).

Owns everything Easel knows about Kling: its parameters (``KlingParameters``), how
a request is authenticated, the create/query/list bodies, the ``{code, message,
request_id, data}`` envelope, the task statuses, and the mapping of Kling's numeric
error codes to Easel's.

- Create: ``POST /v1/videos/text2video``, or ``POST /v1/videos/image2video`` when the
  job has input images. The answer's ``data.task_id`` is a numeric string.
- Query: ``GET /v1/videos/{text2video|image2video}/{task_id}``. A task is only found
  under the endpoint that created it, so the handle Easel stores is
  ``"<task_id> <endpoint>"`` (see ``Adapter.submit``).
- Statuses: submitted, processing, succeed, failed (the reason in
  ``task_status_msg``); videos at ``data.task_result.videos[].url``. No progress.
- Auth: by default a JWT (HS256, ``iss`` = access key, signed with the secret key,
  valid 30 minutes; made with PyJWT), reused until shortly before it expires. With
  ``auth = "bearer"`` the ``api_key`` is sent as the bearer token instead (Tu-zi's
  reseller endpoint, ``https://api.tu-zi.com/kling``).
- Cancel: Kling has no cancel API, so ``cancel`` does nothing.
- Webhooks: Kling POSTs the task to ``callback_url`` on each status change but signs
  nothing, so a delivery is only a hint (``WebhookEvent(task_id, None)``): Easel then
  checks the task with Kling instead of believing the body.
- Lookup: every create carries Easel's job id as ``external_task_id`` (Kling keeps
  it unique per account and echoes it in ``task_info``); when a create's answer was
  lost, the task list (``GET /v1/videos/<endpoint>?pageNum&pageSize``, newest
  first; one page per ``lookup_page`` call, the cursor being the page number) is
  searched for it, which proves whether Kling got the job.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import attrs
import httpx
import jwt
from jwt.warnings import InsecureKeyLengthWarning

from actors.conversion import Between, OneOf, Text
from actors.errors import EaselError, ErrorCode
from actors.images.forms import Form, InputSpec, bare_base64
from actors.parameters import Context, Rules, not_for, present
from actors.providers import http, outcomes
from actors.providers.base import (
    Capabilities,
    JobRequest,
    ListedTask,
    LookupPage,
    Provider,
    ProviderSettings,
    Submitted,
    TaskPage,
    TaskState,
    TaskStatus,
    WebhookEvent,
    missing_of,
)
from actors.redaction import MASK
from actors.retry import parse_retry_after

TEXT2VIDEO = "text2video"
IMAGE2VIDEO = "image2video"
ENDPOINTS = (TEXT2VIDEO, IMAGE2VIDEO)

#: Lifetime Kling's docs give the JWT, and how long before its expiry a new one is made.
TOKEN_LIFETIME = 1800
TOKEN_REFRESH_MARGIN = 300
#: ``nbf`` is set this far in the past, so small clock skew does not reject the token.
TOKEN_NOT_BEFORE_SKEW = 5

#: A lookup reads at most this many list pages of this size.
LOOKUP_PAGES = 5
LOOKUP_PAGE_SIZE = 100
#: How far before SUBMITTING a task may have been created and still be looked at.
LOOKUP_SKEW = 120.0

_STATES = {
    "submitted": TaskState.RUNNING,
    "processing": TaskState.RUNNING,
    "succeed": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
}


#: Body fields Easel fills itself; ``parameters`` cannot override them.
_RESERVED = frozenset({"model_name", "prompt", "image", "callback_url", "external_task_id"})

#: A Kling task makes one video, from at most two images (the first and last frame).
MAX_OUTPUTS = 1
MAX_INPUT_IMAGES = 2
#: Kling wants the duration as a string; these numbers are taken for it.
DURATIONS = {5: "5", 10: "10"}
#: text2video's aspect ratio when none is given; image2video takes the image's.
DEFAULT_ASPECT_RATIO = "16:9"


# -- settings and parameters --------------------------------------------------------


@attrs.frozen
class KlingSettings(ProviderSettings):
    """A Kling section: the shared settings and how requests are authenticated."""

    #: ``"default"``: a JWT made from ``access_key`` and ``secret_key``;
    #: ``"bearer"``: ``api_key`` sent as it is (Tu-zi's reseller endpoint).
    auth: str = attrs.field(default="default", validator=attrs.validators.in_(("default", "bearer")))


def for_endpoint(parameters: dict[str, Any], image2video: bool) -> dict[str, Any]:
    """``parameters`` as the endpoint takes them: image2video has no
    ``aspect_ratio`` (it is dropped), text2video defaults it."""
    out = dict(parameters)
    if image2video:
        out.pop("aspect_ratio", None)
    else:
        out.setdefault("aspect_ratio", DEFAULT_ASPECT_RATIO)
    return out


@attrs.frozen
class KlingParameters:
    """text2video / image2video fields, with Kling's defaults."""

    #: Kling wants the string; 5 and 10 are taken and stored as "5" and "10".
    duration: Annotated[str, OneOf(tuple(DURATIONS.values()), DURATIONS, "5 or 10")] = "5"
    mode: Annotated[str, OneOf(("std", "pro"), {"standard": "std", "professional": "pro"},
                               "std or pro")] = "std"
    #: text2video only (default 16:9); image2video takes the input image's.
    aspect_ratio: Annotated[str, OneOf(("16:9", "9:16", "1:1"))] | None = None
    negative_prompt: Annotated[str, Text(2500)] | None = None
    cfg_scale: Annotated[float, Between(0, 1)] | None = None
    camera_control: dict[str, Any] | None = None
    sound: Annotated[str, OneOf(("on", "off"))] | None = None
    static_mask: str | None = None
    dynamic_masks: list[Any] | None = None
    voice_list: list[Any] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        if ctx.input_images:
            return []
        return not_for(self, ("static_mask", "dynamic_masks", "voice_list"),
                       "only image2video (a job with input_images) takes it")

    def stored(self, ctx: Context) -> dict[str, Any]:
        return for_endpoint(present(self), bool(ctx.input_images))


RULES = Rules(KlingParameters, max_outputs=MAX_OUTPUTS, max_input_images=MAX_INPUT_IMAGES)


# -- authentication ------------------------------------------------------------------


# Kling issues the secret key; its length is not Easel's to choose, so PyJWT's
# warning about short HMAC keys would only repeat on every token.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


def encode_jwt(access_key: str, secret_key: str, now: float, lifetime: int = TOKEN_LIFETIME) -> str:
    """The HS256 JWT Kling expects: ``{iss, exp, nbf}`` signed with the secret key."""
    payload = {"iss": access_key, "exp": int(now) + lifetime, "nbf": int(now) - TOKEN_NOT_BEFORE_SKEW}
    return jwt.encode(payload, secret_key, algorithm="HS256")


@attrs.define
class JwtSigner:
    """Makes Kling's JWT and reuses it until ``TOKEN_REFRESH_MARGIN`` before expiry.

    ``clock`` returns Unix seconds; it must be real wall time in production (Kling
    checks ``exp``/``nbf`` against its own clock), and a fake one in tests.
    """

    access_key: str
    secret_key: str
    clock: Callable[[], float] = time.time
    lifetime: int = TOKEN_LIFETIME
    refresh_margin: int = TOKEN_REFRESH_MARGIN
    _token: str | None = attrs.field(default=None, init=False)
    _expires: float = attrs.field(default=0.0, init=False)

    def token(self) -> str:
        now = self.clock()
        if self._token is None or now >= self._expires - self.refresh_margin:
            self._token = encode_jwt(self.access_key, self.secret_key, now, self.lifetime)
            self._expires = int(now) + self.lifetime
        return self._token


# -- errors --------------------------------------------------------------------------


def code_for(kling_code: int, call: str) -> ErrorCode | None:
    """Easel's code for one of Kling's documented error codes (``None``: unknown).

    ``call`` is ``create``, ``query`` or ``list``: "resource not found" (1203) is a
    wrong model on a create but a missing task on a query.
    """
    if 1000 <= kling_code <= 1004 or kling_code in (1100, 1103, 1304):
        # 1100 account exception, 1103 no access to the resource, 1304 IP whitelist:
        # the credentials cannot be used as they are; retrying will not help.
        return ErrorCode.AUTHENTICATION_FAILED
    if kling_code in (1101, 1102):  # arrears; resource pack depleted or expired
        return ErrorCode.QUOTA_EXCEEDED
    if kling_code in (1200, 1201):
        return ErrorCode.INVALID_PARAMETERS
    if kling_code == 1202:  # invalid request method: a bug on our side
        return ErrorCode.INVALID_REQUEST
    if kling_code == 1203:
        return ErrorCode.INVALID_PARAMETERS if call == "create" else ErrorCode.NOT_FOUND
    if kling_code in (1300, 1301):
        return ErrorCode.CONTENT_MODERATED
    if kling_code in (1302, 1303):  # request rate; concurrent tasks over the pack's limit
        return ErrorCode.RATE_LIMITED
    if kling_code == 5001:
        return ErrorCode.PROVIDER_UNAVAILABLE
    if kling_code == 5002:
        return ErrorCode.PROVIDER_TIMEOUT
    if 5000 <= kling_code < 6000:
        return ErrorCode.PROVIDER_ERROR
    return None


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def error_for(response: httpx.Response, body: dict[str, Any] | None, provider: str, call: str) -> EaselError:
    """The Easel error for a Kling answer that is not success.

    A body with a Kling ``code`` is mapped by that code; anything else (a proxy's
    HTML 502, a bare 429) falls back to the HTTP status.
    """
    kling_code = body.get("code") if body is not None else None
    if not isinstance(kling_code, int) or isinstance(kling_code, bool):
        if response.status_code < 300:
            return _malformed(provider, "answer has no Kling error code", response)
        return http.error_for_status(response, provider)
    code = code_for(kling_code, call)
    if code is None:
        fallback = http.error_for_status(response, provider) if response.status_code >= 300 else None
        code = fallback.code if fallback is not None else ErrorCode.PROVIDER_ERROR
    message = body.get("message") if body is not None else None
    text = http.redact(message, 200) if isinstance(message, str) and message else f"error code {kling_code}"
    details: dict[str, Any] = {
        "provider": provider,
        "status": response.status_code,
        "providerCode": kling_code,
        "body": http.redact(response.text),
    }
    if body is not None and isinstance(body.get("request_id"), str):
        details["requestId"] = body["request_id"]
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if kling_code in (1302, 1303):
        retry_after = max(retry_after or 0.0, 1.0)  # Kling asks for backoff from >= 1 s
    # A refusal in Kling's own envelope with a 4xx status proves no task was made
    # (only a create that is accepted takes a slot or costs anything), so a
    # rate-limited create may be sent again.
    refused = response.status_code < 500 and code is ErrorCode.RATE_LIMITED
    return EaselError(code, f"{provider}: {text}", details, retry_after=retry_after, sent=not refused)


def _malformed(provider: str, what: str, response: httpx.Response | None = None) -> EaselError:
    details: dict[str, Any] = {"provider": provider}
    if response is not None:
        details.update(status=response.status_code, body=http.redact(response.text))
    return EaselError(ErrorCode.PROVIDER_ERROR, f"{provider}: {what}", details)


# -- bodies ----------------------------------------------------------------------------


def endpoint_for(job: JobRequest) -> str:
    return IMAGE2VIDEO if job.input_images else TEXT2VIDEO


def create_body(job: JobRequest) -> dict[str, Any]:
    """The create body for ``job``.

    ``parameters`` pass through (``duration``, ``mode``, ``aspect_ratio``,
    ``negative_prompt``, ``cfg_scale``, ``camera_control``, ...), with ``duration``
    made the string Kling requires. A second input image becomes ``image_tail``
    (the last frame). image2video has no ``aspect_ratio``, so it is left out there.
    """
    endpoint = endpoint_for(job)
    given = {k: v for k, v in job.parameters.items() if k not in _RESERVED}
    body: dict[str, Any] = for_endpoint(given, endpoint == IMAGE2VIDEO)
    body["model_name"] = job.spec.provider_model
    body["prompt"] = job.prompt
    if "duration" in body and isinstance(body["duration"], int | float) and not isinstance(body["duration"], bool):
        body["duration"] = f"{body['duration']:g}"
    if endpoint == IMAGE2VIDEO:
        body["image"] = bare_base64(job.input_images[0])
        if len(job.input_images) > 1 and "image_tail" not in body:
            body["image_tail"] = bare_base64(job.input_images[1])
    body["external_task_id"] = job.job_id
    if job.callback_url:
        body["callback_url"] = job.callback_url
    return body


def split_handle(handle: str) -> tuple[str, str]:
    """``"<task_id> <endpoint>"`` -> (task_id, endpoint); a bare id is text2video."""
    task_id, _, endpoint = handle.partition(" ")
    return task_id, endpoint if endpoint in ENDPOINTS else TEXT2VIDEO


def _videos(task: dict[str, Any]) -> tuple[str, ...]:
    result = task.get("task_result")
    videos = result.get("videos") if isinstance(result, dict) else None
    if not isinstance(videos, list):
        return ()
    return tuple(v["url"] for v in videos if isinstance(v, dict) and isinstance(v.get("url"), str))


def status_of(task: dict[str, Any], provider: str = "kling") -> TaskStatus:
    """Map a Kling task object (``data`` of a query) to a ``TaskStatus``."""
    raw = task.get("task_status")
    state = _STATES.get(raw) if isinstance(raw, str) else None
    if state is None:
        raise _malformed(provider, f"unknown task_status {task.get('task_status')!r}")
    if state is TaskState.SUCCEEDED:
        return outcomes.succeeded(_videos(task), provider)
    if state is TaskState.FAILED:
        return outcomes.failed(str(task.get("task_status_msg") or "task failed"), provider)
    return TaskStatus(state)


def _created_seconds(task: dict[str, Any]) -> float | None:
    created = task.get("created_at")
    if isinstance(created, int | float) and not isinstance(created, bool):
        return created / 1000.0  # Kling's timestamps are milliseconds
    return None


# -- the adapter -----------------------------------------------------------------------


class KlingAdapter:
    """Kling's video API; see the module docstring."""

    lookup_pages = LOOKUP_PAGES

    def __init__(
        self, settings: KlingSettings, name: str = "kling", *, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = name
        self.bearer = settings.auth == "bearer"
        self.api_key = settings.api_key or settings.api_token
        self.signer = JwtSigner(settings.access_key, settings.secret_key, clock)
        self.client = http.client_for(settings, {})

    def authorization(self) -> str:
        """The ``Authorization`` header for the next request."""
        if self.bearer:
            if not self.api_key:
                raise EaselError(ErrorCode.AUTHENTICATION_FAILED,
                                 f"{self.name}: no api_key configured (auth = \"bearer\")",
                                 {"provider": self.name}, sent=False)
            return f"Bearer {self.api_key}"
        if not (self.signer.access_key and self.signer.secret_key):
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED,
                             f"{self.name}: access_key and secret_key must both be configured",
                             {"provider": self.name}, sent=False)
        return f"Bearer {self.signer.token()}"

    async def _call(self, method: str, url: str, call: str, **kwargs: Any) -> Any:
        """One request; the ``data`` of a ``code == 0`` envelope, or an error."""
        headers = {"Authorization": self.authorization()}
        response = await http.send(self.client, method, url, provider=self.name, headers=headers, **kwargs)
        if response.status_code >= 300:
            raise error_for(response, _envelope(response), self.name, call)
        body = http.json_body(response, self.name)
        if not isinstance(body, dict):
            raise _malformed(self.name, "answer is not a JSON object", response)
        if body.get("code") != 0:
            raise error_for(response, body, self.name, call)
        if "data" not in body:
            raise _malformed(self.name, "answer has no data", response)
        return body["data"]

    async def submit(self, job: JobRequest) -> Submitted:
        if job.number_of_outputs > MAX_OUTPUTS:
            raise EaselError(ErrorCode.INVALID_PARAMETERS,
                             f"{self.name}: a Kling video task makes one video (number_of_outputs must be 1)",
                             {"provider": self.name}, sent=False)
        endpoint = endpoint_for(job)
        data = await self._call("POST", f"/v1/videos/{endpoint}", "create", json=create_body(job))
        task_id = data.get("task_id") if isinstance(data, dict) else None
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            task_id = str(task_id)
        if not isinstance(task_id, str) or not task_id or " " in task_id:
            # The task may exist; reconciliation cannot run for this job now, so
            # resending could pay twice: not retryable.
            raise EaselError(ErrorCode.PROVIDER_ERROR, f"{self.name}: create answered without a task_id",
                             {"provider": self.name}, retryable=False)
        return Submitted(f"{task_id} {endpoint}")

    async def check(self, task_id: str) -> TaskStatus:
        bare, endpoint = split_handle(task_id)
        data = await self._call("GET", f"/v1/videos/{endpoint}/{bare}", "query")
        if not isinstance(data, dict):
            raise _malformed(self.name, "query answered without a task object")
        return status_of(data, self.name)

    async def cancel(self, task_id: str) -> None:
        """Kling has no cancel API: the task runs (and is paid for) to its end."""

    async def lookup_page(self, job: JobRequest, cursor: str | None) -> LookupPage:
        """One page of the task list of ``job``'s endpoint (newest first): the
        handles of the tasks whose ``external_task_id`` is ``job``'s id. The cursor
        is the next page number."""
        number = int(cursor) if cursor else 1
        page = await self._list_page(endpoint_for(job), number, job.submitting_at - LOOKUP_SKEW)
        return page.matching(self.match_keys(job))

    async def recent_page(self, cursor: str | None, since: float) -> TaskPage:
        """One page of text2video's list, then of image2video's; the cursor is
        ``"<endpoint> <page number>"``."""
        endpoint, _, number = (cursor or f"{TEXT2VIDEO} 1").partition(" ")
        page = await self._list_page(endpoint, int(number), since)
        if page.next_cursor is not None:
            return attrs.evolve(page, next_cursor=f"{endpoint} {page.next_cursor}")
        if endpoint == TEXT2VIDEO:
            return attrs.evolve(page, next_cursor=f"{IMAGE2VIDEO} 1")
        return page

    def match_keys(self, job: JobRequest) -> tuple[str, ...]:
        return (job.job_id,)

    async def _list_page(self, endpoint: str, number: int, since: float) -> TaskPage:
        """Page ``number`` of ``endpoint``'s list: its tasks created at or after
        ``since``, keyed by ``external_task_id``. The next cursor is the next page
        number, or ``None`` after a short page or one reaching older tasks."""
        params = {"pageNum": number, "pageSize": LOOKUP_PAGE_SIZE}
        data = await self._call("GET", f"/v1/videos/{endpoint}", "list", params=params)
        if not isinstance(data, list):
            raise _malformed(self.name, "task list is not a list")
        tasks: list[ListedTask] = []
        oldest: float | None = None
        for task in data:
            if not isinstance(task, dict):
                continue
            created = _created_seconds(task)
            if created is not None:
                oldest = created if oldest is None else min(oldest, created)
                if created < since:
                    continue
            info = task.get("task_info")
            external = info.get("external_task_id") if isinstance(info, dict) else None
            task_id = task.get("task_id")
            if isinstance(task_id, str | int) and not isinstance(task_id, bool):
                key = external if isinstance(external, str) else ""
                tasks.append(ListedTask(f"{task_id} {endpoint}", key, created))
        ended = len(data) < LOOKUP_PAGE_SIZE or (oldest is not None and oldest < since)
        return TaskPage(tuple(tasks), None if ended else str(number + 1))

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """A Kling callback: unsigned, so only a hint to check the task now.

        The body is the bare task object; a copy of the docs shows it wrapped in the
        ``{code, data}`` envelope instead (UNCONFIRMED), so both are read.
        """
        try:
            task = json.loads(body)
            if isinstance(task, dict) and isinstance(task.get("data"), dict) and "task_id" not in task:
                task = task["data"]
            task_id = task["task_id"]
        except (ValueError, KeyError, TypeError):
            raise EaselError(ErrorCode.INVALID_REQUEST,
                             f"{self.name} callback: body is not a Kling task") from None
        if isinstance(task_id, bool) or not isinstance(task_id, str | int) or not str(task_id):
            raise EaselError(ErrorCode.INVALID_REQUEST, f"{self.name} callback: task_id is not an id")
        return WebhookEvent(task_id=str(task_id), status=None)

    async def aclose(self) -> None:
        await self.client.aclose()


def missing(settings: KlingSettings) -> tuple[str, ...]:
    """A bearer token with ``auth = "bearer"`` (Tu-zi), else both JWT keys."""
    if settings.auth == "bearer":
        return missing_of(settings, ("api_key",), ("api_token",))
    return missing_of(settings, ("access_key", "secret_key"))


PROVIDER = Provider(
    name="kling",
    adapter=KlingAdapter,
    capabilities=Capabilities(lookup=True, webhooks=True),
    missing=missing,
    rules=lambda provider_model: RULES,
    settings=KlingSettings,
    # Bare base64 in the JSON body (no data: prefix), or a URL Kling fetches.
    inputs=InputSpec((Form.BASE64, Form.URL), preset="standard"),
    redactions=((re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+"), MASK),),  # the JWTs it signs with
)
