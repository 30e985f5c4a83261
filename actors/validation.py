"""Checking a submission before anything is stored.

The unified request is structured by cattrs into ``SubmissionRequest``, whose field
types carry their own limits (prompt length, output count, image references), so
one pass collects every type and value problem; the model's ``parameters`` are then
checked against the rules its provider declares (``actors/parameters.py``), which
also fill in the provider's defaults. Every problem found is reported with its path
in one INVALID_PARAMETERS error, so a client fixes its request in one round trip.
An unknown model is INVALID_REQUEST and names the models that exist.

Spelling, one rule for every field name of a request, its ``parameters`` included:
snake_case or camelCase, as the API answers (``number_of_outputs`` or
``numberOfOutputs``, ``input_images`` or ``inputImages``, ``webhook_url`` or
``webhookUrl``, ``user_id`` or ``userId``); ``modelIdentifier`` is spelled as
always. A body giving one field in both spellings is refused, naming both.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

import attrs
import cattrs

from actors.catalog import ModelSpec
from actors.conversion import Between, Invalid, Text, make_converter, problems_of, type_name
from actors.errors import EaselError, ErrorCode
from actors.images.presets import PreprocessSettings, preset_problems
from actors.images.source import split_data_uri
from actors.images.validate import ImageRefused, Limits, check_header
from actors.jobs import Job, new_job_id
from actors.parameters import Rules, check_parameters, fold_spellings
from actors.providers import PROVIDERS
from actors.targets import TargetRefused, split_target

MAX_PROMPT = 2000
MAX_OUTPUTS = 10
#: Deepest nesting of ``parameters`` (JSON objects and lists).
MAX_DEPTH = 32

# Sizes of the free fields. Each is stored on the job, shown by every read of it
# and sent in its webhook; without a limit of its own, one could take up a whole
# request body (``daemon.max_body_bytes``), and a few thousand of those, memory.
#: ``user_id``, in characters.
MAX_USER_ID = 256
#: ``webhook_url`` and each http(s) URL in ``input_images``, in characters.
MAX_URL = 2048
#: Entries of ``input_images``.
MAX_INPUT_IMAGES = 16
#: One ``data:`` URI in ``input_images``, in characters (about 6 MiB of image).
MAX_DATA_URI = 8 * 1024 * 1024
#: ``metadata`` as stored (its JSON text), in bytes; its nesting; its keys, at
#: every level together.
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8
MAX_METADATA_KEYS = 256
#: Each string anywhere in ``parameters``, in characters.
MAX_PARAMETER_TEXT = 4000
#: Each key of an object in ``parameters`` or ``metadata``, in characters.
MAX_KEY = 128
#: ``experiment``, in characters (an experiment id).
MAX_EXPERIMENT_ID = 100
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,([A-Za-z0-9+/=\s]+)$")
IMAGE_PROBLEM = "must be an http(s) URL or a data:image/(png|jpeg|jpg|webp);base64 URI"


@attrs.frozen
class _Prompt:
    """Marks the prompt: 1 to MAX_PROMPT characters, not only whitespace."""


@attrs.frozen
class _ImageRef:
    """Marks an input image: an http(s) URL or a base64 ``data:image/...`` URI."""


@attrs.frozen
class _HttpUrl:
    """Marks a URL Easel will call: http(s) only."""


def _structure_prompt(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise Invalid(f"expected a string, got {type_name(value)}")
    if not value.strip() or len(value) > MAX_PROMPT:
        raise Invalid(f"must be 1 to {MAX_PROMPT} characters")
    return value


def _valid_base64(data: str) -> bool:
    try:
        base64.b64decode(re.sub(r"\s", "", data), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _structure_image(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise Invalid(f"expected a string, got {type_name(value)}")
    if value.startswith(("http://", "https://")) and len(value) > len("https://"):
        if len(value) > MAX_URL:
            raise Invalid(f"must be at most {MAX_URL} characters")
        if _has_credentials(value):
            # Said without the URL: the credentials must not reach a log or an answer.
            raise Invalid("must not carry credentials (user:password@host)")
        return value
    if len(value) > MAX_DATA_URI:  # before the regex and the decoding see it
        raise Invalid(f"must be at most {MAX_DATA_URI} characters")
    data = _DATA_IMAGE.match(value)
    if data is None or not _valid_base64(data.group(2)):
        raise Invalid(IMAGE_PROBLEM)
    return value


def _has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url.partition("//")[2].partition("/")[0]
    return parts.username is not None or parts.password is not None


def _structure_http_url(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise Invalid(f"expected a string, got {type_name(value)}")
    if len(value) > MAX_URL:
        raise Invalid(f"must be at most {MAX_URL} characters")
    try:
        # The checks that need no DNS; addresses are checked at each delivery.
        split_target(value)
    except TargetRefused as exc:
        raise Invalid(f"must be an http(s) URL Easel may call: {exc}") from None
    return value


@attrs.frozen
class SubmissionRequest:
    modelIdentifier: str  # noqa: N815 - the wire name
    prompt: Annotated[str, _Prompt()]
    input_images: list[Annotated[str, _ImageRef()]] = attrs.field(factory=list)
    number_of_outputs: Annotated[int, Between(1, MAX_OUTPUTS)] = 1
    parameters: dict[str, Any] = attrs.field(factory=dict)
    priority: Annotated[int, Between(-1000, 1000)] = 0
    webhook_url: Annotated[str, _HttpUrl()] | None = None
    user_id: Annotated[str, Text(MAX_USER_ID)] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: A preset name or an object (``actors/images/presets.py``), checked apart.
    preprocess: Any = None
    #: An experiment to enrol in (``actors/experiments/enroll.py``), besides those
    #: matching the model; the job runs as the variant its unit is assigned.
    experiment: Annotated[str, Text(MAX_EXPERIMENT_ID)] | None = None


_converter = make_converter()
_MARKED = {_Prompt: _structure_prompt, _ImageRef: _structure_image, _HttpUrl: _structure_http_url}
#: The JSON Schema of each mark, beside the hook that enforces it (the OpenAPI
#: document is made from these, ``actors/schemas.py``).
MARK_SCHEMAS: dict[type, dict[str, Any]] = {
    _Prompt: {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT,
              "pattern": r"\S", "description": "not only whitespace"},
    _ImageRef: {"type": "string", "pattern": r"^(https?://.+|data:image/(png|jpeg|jpg|webp);"
                                             r"base64,[A-Za-z0-9+/=\s]+)$",
                "description": IMAGE_PROBLEM.removeprefix("must be ")},
    _HttpUrl: {"type": "string", "format": "uri", "pattern": "^https?://",
               "description": "an http(s) URL Easel may call (no private addresses "
                              "unless allowed)"},
}


def _marked_hook(type_: Any) -> Any:
    return next(_MARKED[type(mark)] for mark in type_.__metadata__ if type(mark) in _MARKED)


def _is_marked(type_: Any) -> bool:
    return any(type(mark) in _MARKED for mark in getattr(type_, "__metadata__", ()))


_converter.register_structure_hook_factory(_is_marked, _marked_hook)
_FIELDS = [field.name for field in attrs.fields(SubmissionRequest)]


_structure_images = _converter.get_structure_hook(list[Annotated[str, _ImageRef()]])


def _strict_list(value: Any, type_: Any) -> list[str]:
    # cattrs would iterate a string or an object: "" -> [], {"https://a": 1} -> [url].
    if type(value) is not list:
        raise Invalid(f"expected a list, got {type_name(value)}")
    if len(value) > MAX_INPUT_IMAGES:
        raise Invalid(f"must hold at most {MAX_INPUT_IMAGES} images")
    return _structure_images(value, type_)  # type: ignore[no-any-return]


_converter.register_structure_hook_func(
    lambda t: t == list[Annotated[str, _ImageRef()]], _strict_list
)


def request_hash(body: Any) -> str:
    """A fingerprint of a request body for idempotency: neither key order nor the
    spelling of the request's own field names (``numberOfOutputs``) matters."""
    if isinstance(body, dict):
        body = fold_spellings(body, _FIELDS)[0]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@attrs.frozen
class Bounds:
    """The limits of a free JSON field: nesting, and optionally its JSON text's
    size, its keys (every level together) and the length of each string in it.
    Object keys are held to ``MAX_KEY`` characters in any case."""

    depth: int
    max_bytes: int | None = None
    keys: int | None = None
    text: int | None = None


PARAMETERS_BOUNDS = Bounds(depth=MAX_DEPTH, text=MAX_PARAMETER_TEXT)
METADATA_BOUNDS = Bounds(depth=MAX_METADATA_DEPTH, max_bytes=MAX_METADATA_BYTES,
                         keys=MAX_METADATA_KEYS)

#: A place in a JSON value: ``(parent, key or index)``, made into text only when
#: a problem is reported there.
_Path = tuple[Any, str | int] | None


def _path_text(field: str, path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, step = path
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return field + "".join(reversed(parts))


def bounds_problems(field: str, value: Any, bounds: Bounds) -> list[str]:
    """What in ``value`` (the JSON of ``field``) is past ``bounds``, each naming the
    limit. Iterative, so no nesting can exhaust the stack; the JSON text is sized
    only once the nesting is known to be within bounds."""
    problems: list[str] = []
    deepest = keys = 0
    long_key = False
    stack: list[tuple[Any, int, _Path]] = [(value, 0, None)]
    while stack:
        item, level, path = stack.pop()
        if isinstance(item, dict):
            keys += len(item)
            for key, child in item.items():
                long_key = long_key or len(key) > MAX_KEY
                stack.append((child, level + 1, (path, key[:MAX_KEY])))
        elif isinstance(item, list):
            stack.extend((child, level + 1, (path, i)) for i, child in enumerate(item))
        else:
            if bounds.text is not None and isinstance(item, str) and len(item) > bounds.text:
                problems.append(f"{_path_text(field, path)}: must be at most {bounds.text}"
                                f" characters")
            continue
        deepest = max(deepest, level + 1)
    if long_key:
        problems.append(f"{field}: keys must be at most {MAX_KEY} characters")
    if bounds.keys is not None and keys > bounds.keys:
        problems.append(f"{field}: must have at most {bounds.keys} keys (nested ones counted)")
    if deepest > bounds.depth:
        problems.append(f"{field}: nested deeper than {bounds.depth} levels")
    elif bounds.max_bytes is not None and len(json.dumps(value)) > bounds.max_bytes:
        problems.append(f"{field}: must be at most {bounds.max_bytes} bytes of JSON")
    return problems


def invalid_parameters(problems: list[str]) -> EaselError:
    """The 422 for ``problems``: the message names the first, details list them all."""
    message = problems[0]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more in details.problems)"
    return EaselError(ErrorCode.INVALID_PARAMETERS, message, {"problems": problems})


def parse_submission(
    body: Any,
    catalog: Mapping[str, ModelSpec],
    families: Mapping[str, str] | None = None,
    unavailable: Mapping[str, str] | None = None,
    preprocess: PreprocessSettings | None = None,
) -> SubmissionRequest:
    """Check ``body`` and return it structured, with the model's parameters normalised.

    ``families`` maps a provider section to its adapter (``tuzi-kling`` -> ``kling``);
    a section missing from it is its own adapter's name. ``unavailable`` maps the
    models of providers disabled for a missing setting to that setting's
    problem: such a model is refused naming it, not as unknown. ``preprocess``:
    the presets and input-image limits (the defaults without it). Problems of the
    unified fields and of the parameters are collected together, whichever fails
    first.
    """
    if not isinstance(body, dict):
        raise EaselError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    body, problems = fold_spellings(body, _FIELDS)
    model = body.get("modelIdentifier")
    if type(model) is str and unavailable and model in unavailable:
        raise EaselError(
            ErrorCode.INVALID_REQUEST,
            f"model {model!r} cannot be used: {unavailable[model]}",
            {"model": model, "missing": unavailable[model]},
            retryable=False,
        )
    if type(model) is str and model not in catalog:
        raise EaselError(
            ErrorCode.INVALID_REQUEST,
            f"unknown model {model[:200]!r}",
            {"knownModels": sorted(catalog)},
        )
    request: SubmissionRequest | None = None
    try:
        request = _converter.structure(body, SubmissionRequest)
    except cattrs.BaseValidationError as exc:
        problems += problems_of(exc)
    oversized: list[str] = []
    for field, bounds in (("parameters", PARAMETERS_BOUNDS), ("metadata", METADATA_BOUNDS)):
        if body.get(field):
            oversized += bounds_problems(field, body[field], bounds)
    if oversized:  # refused before the rules read it, or their messages repeat it
        raise invalid_parameters(problems + oversized)
    images = body.get("input_images")
    problems += image_problems(images if type(images) is list else [], body.get("preprocess"),
                               preprocess or PreprocessSettings())
    checked = None
    parameters = body.get("parameters", {})
    if type(model) is str and type(parameters) is dict:
        spec = catalog[model]
        family = (families or {}).get(spec.provider, spec.provider)
        given = body.get("number_of_outputs")
        valid_outputs = type(given) is int and 1 <= given <= MAX_OUTPUTS
        checked = check_parameters(
            rules_for(family, spec.provider_model),
            spec.provider_model,
            parameters,
            number_of_outputs=given if valid_outputs else 1,
            outputs_given=valid_outputs,
            input_images=[i for i in images if type(i) is str] if type(images) is list else [],
        )
        problems += checked.problems
    if problems:
        raise invalid_parameters(problems)
    assert request is not None and checked is not None
    return attrs.evolve(
        request, parameters=checked.parameters, number_of_outputs=checked.number_of_outputs
    )


def image_problems(images: list[Any], preprocess: Any,
                   settings: PreprocessSettings) -> list[str]:
    """Problems of the ``preprocess`` asked for and of each inline (``data:``) image,
    found from its header alone (format, label, hidden trailing data, pixel count):
    cheap enough for the request path (the body is capped at ``max_body_bytes``),
    so a bad inline image is refused here rather than fail its job later. URLs are
    checked when fetched, before the create."""
    problems = [] if preprocess is None else preset_problems(
        preprocess, settings.presets, "preprocess")
    limits = Limits(settings.max_input_bytes, settings.max_pixels)
    for index, image in enumerate(images):
        too_long = type(image) is str and len(image) > MAX_DATA_URI
        inline = None if too_long else _DATA_IMAGE.match(image) if type(image) is str else None
        if inline is None or not _valid_base64(inline.group(2)):
            continue  # not inline, or already reported by the structuring
        try:
            data, label = split_data_uri(image)
            check_header(data, label, limits)
        except ImageRefused as exc:
            problems.append(f"input_images[{index}]: {exc}")
    return problems


def job_from(
    request: SubmissionRequest,
    catalog: dict[str, ModelSpec],
    *,
    idempotency_key: str | None,
    body_hash: str,
    owner: str | None = None,
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
        owner=owner,
        preprocess=request.preprocess,
        experiment_id=request.experiment,
    )


@functools.lru_cache(maxsize=1024)
def rules_for(family: str, provider_model: str) -> Rules:
    """The rules of ``provider_model`` served by the provider named ``family``.

    Made once per model: a provider's rules are fixed in its module, and the same
    few models are asked about on every submission."""
    provider = PROVIDERS.get(family)
    return provider.rules(provider_model) if provider is not None else Rules(None)


def fits(job: Job, provider_model: str, family: str) -> bool:
    """Whether ``job``'s stored request is valid for ``provider_model`` of ``family``:
    a fallback that would refuse (or misread) the job's parameters is no fallback."""
    checked = check_parameters(
        rules_for(family, provider_model), provider_model, job.parameters,
        number_of_outputs=job.number_of_outputs, outputs_given=True,
        input_images=job.input_images,
    )
    return not checked.problems
