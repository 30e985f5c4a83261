"""Checking a submission's ``parameters`` against a model's ``Rules``.

Each provider module declares, per model, ``Rules``: an attrs class of the
parameters it takes (the fields' ``Annotated`` types carry their limits, see
``actors/conversion.py``), how many outputs and input images a job may ask for,
and which parameter is the provider's own name for ``number_of_outputs``. This
module owns only the shared machinery: ``check_parameters`` structures a client's
``parameters`` into the class with the strict converter, runs the class's
model-dependent ``check``, and returns the parameters as they are stored on the
job, normalised (``"5"`` and ``5`` are one Kling duration) and with the provider's
documented defaults filled in, so the job shows exactly what was asked of the
provider.

Every problem is reported with its path (``parameters.duration: must be 5 or
10``), all at once, so a client fixes its request in one round trip. The adapters
still refuse what slips through; this module refuses it before anything is stored
or paid for.

Field names follow one rule, the same as for the request's own fields
(``actors/validation.py``): a parameter may be spelled in snake_case or in
camelCase (``negative_prompt`` or ``negativePrompt``); giving both is refused.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Protocol

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError

from actors.conversion import Between, Pattern, make_converter, problems_of

#: Largest JSON text of a free-form ``parameters`` object (a model with no schema).
MAX_FREEFORM_BYTES = 16 * 1024
MAX_SEED = 2**63 - 1

Seed = Annotated[int, Between(0, MAX_SEED)]
Ratio = Annotated[str, Pattern(r"^\d{1,2}:\d{1,2}$", "a ratio such as 16:9")]

#: The converter every parameters class is structured with. A provider whose
#: class has a field type of its own (fal's ``str | ImageSize``) registers its hook
#: here when its module is imported.
converter = make_converter()


# -- snake_case and camelCase ----------------------------------------------------------------

_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


@functools.lru_cache(maxsize=4096)
def snake_case(name: str) -> str:
    """``numberOfOutputs`` -> ``number_of_outputs``; a snake_case name is unchanged.

    Cached: every request spells the same few field names."""
    return _HUMP.sub(r"_\1", name).lower()


def fold_spellings(
    given: dict[str, Any], fields: Iterable[str], prefix: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """``given`` with camelCase keys of ``fields`` renamed to their snake_case field.

    A key that names no field is kept as it is (the converter then refuses it as
    unknown). A field given in both spellings is a problem, never a silent choice.
    """
    names = set(fields)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in given.items():
        snake = snake_case(key)
        if snake == key or snake not in names:
            out.setdefault(key, value)
            continue
        if snake in given:
            problems.append(f"{prefix}{key}: given twice (also as {snake})")
            continue
        out[snake] = value
    return out, problems


# -- what a model's parameters class answers ---------------------------------------------


@attrs.frozen
class Context:
    """What a parameters class's checks may depend on besides the parameters."""

    provider_model: str
    #: The job's input images (URLs or ``data:`` URIs), in order.
    input_images: tuple[str, ...]
    number_of_outputs: int


class ParametersClass(Protocol):
    """What ``Rules.parameters`` instances answer."""

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        """``(field, problem)`` for what depends on the model or the rest of the job."""
        ...

    def stored(self, ctx: Context) -> dict[str, Any]:
        """The parameters as stored on the job, defaults filled in."""
        ...


@attrs.frozen
class Rules:
    """What one model takes: its parameters class (None: a free-form object of at
    most ``max_bytes``), how many outputs and input images (None: not limited
    here; the provider judges), and the parameter that is another name for
    ``number_of_outputs``."""

    parameters: type | None
    max_outputs: int = 10
    max_input_images: int | None = None
    outputs_alias: str | None = None
    max_bytes: int = MAX_FREEFORM_BYTES
    #: Input images must be base64 ``data:`` URIs: the model takes no URL.
    base64_images: bool = False


@attrs.frozen
class Checked:
    """The outcome of ``check_parameters``."""

    parameters: dict[str, Any]
    number_of_outputs: int
    problems: list[str]


def present(instance: Any) -> dict[str, Any]:
    """The fields as stored: unset optional fields (``None``) are left out."""
    data = converter.unstructure(instance)
    return {k: v for k, v in data.items() if v is not None}


def not_for(instance: Any, names: tuple[str, ...], why: str) -> list[tuple[str, str]]:
    """``(name, why)`` for each of ``names`` that ``instance`` has set."""
    return [(name, why) for name in names if getattr(instance, name) is not None]


def _failed_fields(exc: cattrs.BaseValidationError) -> set[str]:
    """Top-level keys that failed to structure (or were unknown) in ``exc``."""
    failed: set[str] = set()
    with_notes, without = exc.group_exceptions() if isinstance(
        exc, cattrs.ClassValidationError) else ([], list(exc.exceptions))
    for _, note in with_notes:
        failed.add(note.name)
    for error in without:
        if isinstance(error, ForbiddenExtraKeysError):
            failed |= error.extra_fields
    return failed


def _structure_without(given: dict[str, Any], cls: type, failed: set[str]) -> Any:
    try:
        return converter.structure({k: v for k, v in given.items() if k not in failed}, cls)
    except cattrs.BaseValidationError:
        return None  # a failure that names no field; its problems are already listed


def check_parameters(
    rules: Rules,
    provider_model: str,
    parameters: dict[str, Any],
    *,
    number_of_outputs: int,
    outputs_given: bool,
    input_images: Sequence[str],
) -> Checked:
    """Check ``parameters`` for ``provider_model`` under ``rules``; see the module doc.

    ``outputs_given`` says whether the client set ``number_of_outputs`` itself: only
    then does a provider's own name for it (``n``, ``num_outputs``) conflict with it.
    """
    problems: list[str] = []
    stored: dict[str, Any] = dict(parameters)
    outputs = number_of_outputs
    if rules.parameters is None:
        if parameters and len(json.dumps(parameters)) > rules.max_bytes:
            problems.append(f"parameters: must be at most {rules.max_bytes} bytes of JSON")
    else:
        fields = [f.name for f in attrs.fields(rules.parameters)]
        given, problems = fold_spellings(parameters, fields, "parameters.")
        instance: ParametersClass | None = None
        try:
            instance = converter.structure(given, rules.parameters)
        except cattrs.BaseValidationError as exc:
            problems += problems_of(exc, "parameters")
            # The fields that were fine still get their model checks: every problem
            # is reported at once, not the type problems first and the rest later.
            instance = _structure_without(given, rules.parameters, _failed_fields(exc))
        if instance is not None:
            ctx = Context(provider_model, tuple(input_images), number_of_outputs)
            problems += [f"parameters.{path}: {message}" for path, message in instance.check(ctx)]
            alias = getattr(instance, rules.outputs_alias) if rules.outputs_alias else None
            if alias is not None:
                if outputs_given and alias != number_of_outputs:
                    problems.append(f"parameters.{rules.outputs_alias}: {alias} conflicts with "
                                    f"number_of_outputs {number_of_outputs}")
                outputs = alias
            stored = instance.stored(ctx)
    if outputs > rules.max_outputs:
        problems.append(f"number_of_outputs: {provider_model} makes at most {rules.max_outputs}"
                        f" per job")
    if rules.max_input_images is not None and len(input_images) > rules.max_input_images:
        problems.append(f"input_images: {provider_model} takes at most {rules.max_input_images}")
    if rules.base64_images:
        problems += [f"input_images[{index}]: {provider_model} takes a base64 data: URI, not a URL"
                     for index, image in enumerate(input_images) if not image.startswith("data:")]
    return Checked(stored, outputs, problems)
