"""Replicate's predictions API (https://replicate.com/docs/reference/http).

Create: ``POST /v1/models/{owner}/{name}/predictions`` for official models, or
``POST /v1/predictions`` with ``version`` when the catalog names
``owner/name:version``; 201 with the prediction. Get: ``GET /v1/predictions/{id}``.
Cancel: ``POST /v1/predictions/{id}/cancel``. Statuses: starting, processing,
succeeded, failed, canceled. ``output`` is a URL or a list of them. Auth:
``Authorization: Bearer <token>``.

Replicate takes no idempotency key, so a crash between sending a create and
recording its id is looked up in the list of recent predictions
(``GET /v1/predictions``, newest first, cursor-paginated; one page per
``lookup_page`` call, the cursor being the page's ``next`` URL) by the exact input,
the model and a creation time after the job entered SUBMITTING (less
``LOOKUP_SKEW``).

Webhooks are Standard Webhooks signed with the section's ``webhook_secret``
(``actors/signing.py``). API tokens look like ``r8_...``; they are masked in logs.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

import attrs

from actors import signing
from actors.conversion import Between, OneOf
from actors.errors import EaselError, ErrorCode
from actors.parameters import Context, Rules, Seed, present
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

_STATES = {
    "starting": TaskState.RUNNING,
    "processing": TaskState.RUNNING,
    "succeeded": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "canceled": TaskState.CANCELLED,
}

#: How far back of SUBMITTING a matching creation may lie (clock skew with Replicate).
LOOKUP_SKEW = 120.0
#: Pages of the prediction list (100 predictions each) one lookup reads at most.
LOOKUP_PAGES = 10


# -- parameters -----------------------------------------------------------------------


@attrs.frozen
class FluxSchnellInput:
    """``black-forest-labs/flux-schnell``'s documented inputs, with their defaults."""

    aspect_ratio: Annotated[str, OneOf(("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4",
                                        "3:4", "4:3", "9:16", "9:21"))] = "1:1"
    #: Replicate's name for ``number_of_outputs``; folded into it.
    num_outputs: Annotated[int, Between(1, 4)] | None = None
    seed: Seed | None = None
    output_format: Annotated[str, OneOf(("webp", "jpg", "png"))] = "webp"
    output_quality: Annotated[int, Between(0, 100)] = 80
    go_fast: bool = True
    megapixels: Annotated[str, OneOf(("1", "0.25"))] = "1"
    num_inference_steps: Annotated[int, Between(1, 4)] = 4
    disable_safety_checker: bool = False

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = present(self)
        data.pop("num_outputs", None)
        return data


def rules(provider_model: str) -> Rules:
    """The models Easel knows the inputs of; any other is the provider's to judge."""
    if provider_model.partition(":")[0] == "black-forest-labs/flux-schnell":
        return Rules(FluxSchnellInput, max_outputs=4, max_input_images=0,
                     outputs_alias="num_outputs")
    return Rules(None)


# -- bodies and answers ---------------------------------------------------------------


def prediction_input(job: JobRequest) -> dict[str, Any]:
    """The ``input`` object sent for ``job``; a lookup matches on it exactly."""
    body: dict[str, Any] = {"prompt": job.prompt}
    if job.number_of_outputs != 1:
        body["num_outputs"] = job.number_of_outputs
    body.update(job.parameters)
    return body


def listed_key(model: Any, input: Any) -> str:
    """What a listed prediction is matched on: its model and exact input."""
    return json.dumps([model, input], sort_keys=True, separators=(",", ":"))


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _outputs(output: Any) -> tuple[str, ...]:
    if output is None:
        return ()
    if isinstance(output, str):
        return (output,)
    if isinstance(output, list):
        return tuple(o for o in output if isinstance(o, str))
    if isinstance(output, dict):  # some models answer {"image": url, ...}
        return tuple(v for v in output.values() if isinstance(v, str))
    return ()


def status_of(prediction: dict[str, Any], provider: str = "replicate") -> TaskStatus:
    """Map a prediction object to a ``TaskStatus``."""
    state = _STATES.get(prediction.get("status", ""))
    if state is None:
        raise EaselError(
            ErrorCode.PROVIDER_ERROR,
            f"{provider}: unknown prediction status {prediction.get('status')!r}",
            {"provider": provider},
        )
    if state is TaskState.SUCCEEDED:
        return outcomes.succeeded(_outputs(prediction.get("output")), provider)
    if state is TaskState.FAILED:
        return outcomes.failed(str(prediction.get("error") or "prediction failed"), provider)
    return TaskStatus(state)


#: Hosts a prediction list's ``next`` URL names.
DOCUMENTED_HOSTS = ("api.replicate.com",)


class ReplicateAdapter:
    lookup_pages = LOOKUP_PAGES

    def __init__(self, settings: ProviderSettings, name: str = "replicate") -> None:
        self.name = name
        self.webhook_secret = settings.webhook_secret
        self.hosts = http.AllowedHosts.of(settings, name, DOCUMENTED_HOSTS)
        self.client = http.client_for(settings, {"Authorization": f"Bearer {settings.api_token}"})

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await http.send(self.client, method, url, provider=self.name, **kwargs)
        if response.status_code >= 300:
            raise http.error_for_status(response, self.name)
        return http.json_body(response, self.name)

    async def submit(self, job: JobRequest) -> Submitted:
        model = job.spec.provider_model
        body: dict[str, Any] = {"input": prediction_input(job)}
        if job.callback_url and self.webhook_secret:
            # Without a secret the webhook could not be verified: poll only.
            body["webhook"] = job.callback_url
            body["webhook_events_filter"] = ["completed"]
        if ":" in model:
            body["version"] = model.split(":", 1)[1]
            url = "/v1/predictions"
        else:
            url = f"/v1/models/{model}/predictions"
        prediction = await self._call("POST", url, json=body)
        task_id = prediction.get("id") if isinstance(prediction, dict) else None
        if not isinstance(task_id, str):
            raise EaselError(
                ErrorCode.PROVIDER_ERROR,
                f"{self.name}: create answered without a prediction id",
                {"provider": self.name},
                retryable=False,
            )
        return Submitted(task_id)

    async def check(self, task_id: str) -> TaskStatus:
        prediction = await self._call("GET", f"/v1/predictions/{task_id}")
        if not isinstance(prediction, dict):
            raise EaselError(ErrorCode.PROVIDER_ERROR, f"{self.name}: malformed prediction")
        return status_of(prediction, self.name)

    async def cancel(self, task_id: str) -> None:
        await self._call("POST", f"/v1/predictions/{task_id}/cancel")

    async def lookup_page(self, job: JobRequest, cursor: str | None) -> LookupPage:
        """One page of ``GET /v1/predictions`` (newest first): the predictions of
        ``job``'s model with exactly its input, created since ``submitting_at`` less
        ``LOOKUP_SKEW``."""
        page = await self.recent_page(cursor, job.submitting_at - LOOKUP_SKEW)
        return page.matching(self.match_keys(job))

    async def recent_page(self, cursor: str | None, since: float) -> TaskPage:
        """One page of ``GET /v1/predictions``: the predictions created at or after
        ``since``. The next cursor is the page's ``next`` URL, or ``None`` once the
        page reaches older predictions."""
        # A next page's URL is Replicate's answer: followed, with the token, only
        # to its own hosts.
        page = await self._call("GET", self.hosts.check(cursor) if cursor else "/v1/predictions")
        if not isinstance(page, dict):
            raise EaselError(ErrorCode.PROVIDER_ERROR, f"{self.name}: malformed prediction list",
                             {"provider": self.name})
        tasks: list[ListedTask] = []
        reached_end = False
        for prediction in page.get("results") or ():
            created = parse_time(prediction.get("created_at")) if isinstance(prediction, dict) else None
            if created is None or not isinstance(prediction.get("id"), str):
                continue
            if created < since:
                reached_end = True
                continue
            # The list may omit ``input`` (UNCONFIRMED in Replicate's docs); then
            # the key matches no job and the prediction proves nothing.
            key = listed_key(prediction.get("model"), prediction.get("input"))
            tasks.append(ListedTask(prediction["id"], key, created))
        following = page.get("next")
        next_cursor = following if isinstance(following, str) and following and not reached_end else None
        return TaskPage(tuple(tasks), next_cursor)

    def match_keys(self, job: JobRequest) -> tuple[str, ...]:
        """A prediction of ``job`` names its model with or without the version (or
        not at all) and carries exactly its input."""
        model = job.spec.provider_model
        expected = prediction_input(job)
        return tuple(dict.fromkeys(
            listed_key(name, expected) for name in (model, model.split(":")[0], None)))

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """A Replicate webhook: Standard Webhooks signed, the body a prediction."""
        if not self.webhook_secret:
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED,
                             f"{self.name}: no webhook_secret configured to verify webhooks")
        try:
            signing.verify(self.webhook_secret, headers, body)
        except signing.SignatureError as exc:
            raise EaselError(ErrorCode.AUTHENTICATION_FAILED, f"{self.name} webhook: {exc}") from None
        try:
            prediction = json.loads(body)
            task_id = prediction["id"]
        except (ValueError, KeyError, TypeError):
            raise EaselError(ErrorCode.INVALID_REQUEST,
                             f"{self.name} webhook: body is not a prediction") from None
        return WebhookEvent(task_id=str(task_id), status=status_of(prediction, self.name))

    async def aclose(self) -> None:
        await self.client.aclose()


PROVIDER = Provider(
    name="replicate",
    adapter=ReplicateAdapter,
    capabilities=Capabilities(cancel=True, lookup=True, webhooks=True),
    missing=lambda settings: missing_of(settings, ("api_token",)),
    rules=rules,
    redactions=((re.compile(r"\br8_[A-Za-z0-9]+"), "r8_" + MASK),),  # API tokens
)
