"""Checking a submission before anything is stored.

The unified request is structured by cattrs into ``SubmissionRequest``; every
problem found is reported with its path in one INVALID_PARAMETERS error, so a
client fixes its request in one round trip. An unknown model is INVALID_REQUEST and
names the models that exist.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import attrs
import cattrs

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.jobs import Job, new_job_id

MAX_PROMPT = 2000
MAX_OUTPUTS = 10
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,[A-Za-z0-9+/=\s]+$")


@attrs.frozen
class SubmissionRequest:
    modelIdentifier: str  # noqa: N815 - the wire name
    prompt: str
    input_images: list[str] = attrs.field(factory=list)
    number_of_outputs: int = 1
    parameters: dict[str, Any] = attrs.field(factory=dict)
    priority: int = 0
    webhook_url: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)


_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(type_: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if type(value) is not type_:  # no "3" -> 3, no True -> 1
            raise TypeError(f"expected {type_.__name__}")
        return value

    return structure


for _t in (str, int):
    _converter.register_structure_hook(_t, _strict(_t))

_structure_list_of_str = _converter.get_structure_hook(list[str])


def _strict_list(value: Any, type_: Any) -> list[str]:
    # cattrs would iterate a string or an object: "" -> [], {"https://a": 1} -> [url].
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return _structure_list_of_str(value, type_)  # type: ignore[no-any-return]


_converter.register_structure_hook_func(lambda t: t == list[str], _strict_list)


def _cattrs_problems(exc: cattrs.BaseValidationError) -> list[str]:
    problems = []
    for line in cattrs.transform_error(exc):
        message, _, where = line.rpartition(" @ ")
        path = where.removeprefix("$").lstrip(".")
        path = re.sub(r"\[(\d+)\]", r"[\1]", path)
        message = message.replace("required field missing", "is required")
        problems.append(f"{path}: {message}" if path else message)
    return problems


def request_hash(body: Any) -> str:
    """A fingerprint of a request body for idempotency: key order does not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_submission(body: Any, catalog: dict[str, ModelSpec]) -> SubmissionRequest:
    if not isinstance(body, dict):
        raise EaselError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    try:
        request = _converter.structure(body, SubmissionRequest)
    except cattrs.BaseValidationError as exc:
        problems = _cattrs_problems(exc)
        raise EaselError(
            ErrorCode.INVALID_PARAMETERS, "; ".join(problems), {"problems": problems}
        ) from None
    problems = []
    if request.modelIdentifier not in catalog:
        raise EaselError(
            ErrorCode.INVALID_REQUEST,
            f"unknown model {request.modelIdentifier!r}",
            {"knownModels": sorted(catalog)},
        )
    if not 1 <= len(request.prompt.strip()) <= MAX_PROMPT or len(request.prompt) > MAX_PROMPT:
        problems.append(f"prompt: must be 1 to {MAX_PROMPT} characters")
    if not 1 <= request.number_of_outputs <= MAX_OUTPUTS:
        problems.append(f"number_of_outputs: must be 1 to {MAX_OUTPUTS}")
    if not -1000 <= request.priority <= 1000:
        problems.append("priority: must be -1000 to 1000")
    for i, image in enumerate(request.input_images):
        if not (image.startswith(("http://", "https://")) or _DATA_IMAGE.match(image)):
            problems.append(
                f"input_images[{i}]: must be an http(s) URL or a data:image/(png|jpeg|webp);base64 URI"
            )
    if request.webhook_url is not None and not request.webhook_url.startswith(("http://", "https://")):
        problems.append("webhook_url: must be an http(s) URL")
    if problems:
        raise EaselError(ErrorCode.INVALID_PARAMETERS, "; ".join(problems), {"problems": problems})
    return request


def job_from(
    request: SubmissionRequest,
    catalog: dict[str, ModelSpec],
    *,
    idempotency_key: str | None,
    body_hash: str,
) -> Job:
    spec = catalog[request.modelIdentifier]
    return Job(
        id=new_job_id(),
        model=request.modelIdentifier,
        provider=spec.provider,
        provider_model=spec.provider_model,
        prompt=request.prompt,
        number_of_outputs=request.number_of_outputs,
        input_images=list(request.input_images),
        parameters=dict(request.parameters),
        priority=request.priority,
        webhook_url=request.webhook_url,
        user_id=request.user_id,
        metadata=dict(request.metadata),
        idempotency_key=idempotency_key,
        request_hash=body_hash,
    )
