"""The ``parameters`` of a submission, checked per provider family.

Owns one attrs class per family (``bfl``, ``openai``, ``kling``, ``pollo``,
``replicate``, ``fal``, ``sandbox``; the family is a provider section's adapter
name) and ``check_parameters``, which structures a client's ``parameters`` into the
family's class with a strict cattrs converter, checks what depends on the model
(sizes, which fields a model takes, how many outputs and input images), and
returns the parameters as they are stored on the job: normalised (``"5"`` and ``5``
are one Kling duration), with the provider's documented defaults filled in, so the
job shows exactly what was asked of the provider.

Every problem is reported with its path (``parameters.duration: must be 5 or
10``), all at once, so a client fixes its request in one round trip. The adapters
(``actors/providers/*.py``) still refuse what slips through; this module refuses
it before anything is stored or paid for.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.v import format_exception

#: Largest JSON text of a free-form ``parameters`` object (sandbox, unknown models).
MAX_FREEFORM_BYTES = 16 * 1024
#: The sandbox ignores its parameters: it takes only a small object.
MAX_SANDBOX_BYTES = 4 * 1024
MAX_SEED = 2**63 - 1


class Invalid(ValueError):
    """A value that cannot be taken; its text is the problem as the client reads it."""


# -- constraints (metadata of ``Annotated`` field types) ------------------------------------


@attrs.frozen
class Between:
    """A number from ``low`` to ``high`` (inclusive). ``from_text`` takes ``"5"`` for 5."""

    low: float
    high: float
    from_text: bool = False


@attrs.frozen
class OneOf:
    """One of ``values``; ``aliases`` are other spellings, stored as their value."""

    values: tuple[Any, ...]
    aliases: Mapping[Any, Any] = attrs.field(factory=dict, eq=False)  # frozen: hashable
    describe: str = ""

    def message(self) -> str:
        if self.describe:
            return f"must be {self.describe}"
        return "must be one of " + ", ".join(str(v) for v in self.values)


@attrs.frozen
class Text:
    """A string of at most ``max_length`` characters."""

    max_length: int


@attrs.frozen
class Pattern:
    """A string matching ``regex``; ``describe`` says what it should look like."""

    regex: str
    describe: str


Seed = Annotated[int, Between(0, MAX_SEED)]
Ratio = Annotated[str, Pattern(r"^\d{1,2}:\d{1,2}$", "a ratio such as 16:9")]


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _structure_annotated(type_: Any) -> Callable[[Any, Any], Any]:
    base, *metadata = get_args(type_)
    constraint = next(m for m in metadata if isinstance(m, (Between, OneOf, Text, Pattern)))

    def structure(value: Any, _: Any) -> Any:
        if isinstance(constraint, OneOf):
            if type(value) in (str, int) and value in constraint.aliases:
                return constraint.aliases[value]
            if type(value) is base and value in constraint.values:
                return value
            raise Invalid(constraint.message())
        if isinstance(constraint, Between):
            if constraint.from_text and type(value) is str and re.fullmatch(r"\d{1,6}", value):
                value = int(value)
            if base is int and type(value) is not int:
                raise Invalid(f"expected an integer, got {type_name(value)}")
            if base is float and not _is_number(value):
                raise Invalid(f"expected a number, got {type_name(value)}")
            if not constraint.low <= value <= constraint.high:
                if constraint.high >= 2**53:  # "0 to 9223372036854775807" reads worse
                    raise Invalid(f"must be at least {_number(constraint.low)} (and below 2**63)")
                raise Invalid(f"must be {_number(constraint.low)} to {_number(constraint.high)}")
            return value
        if type(value) is not str:
            raise Invalid(f"expected a string, got {type_name(value)}")
        if isinstance(constraint, Text) and len(value) > constraint.max_length:
            raise Invalid(f"must be at most {constraint.max_length} characters")
        if isinstance(constraint, Pattern) and not re.fullmatch(constraint.regex, value):
            raise Invalid(f"must be {constraint.describe}")
        return value

    return structure


def strict(type_: type, name: str) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if type(value) is not type_:  # no "true" -> True, no 1 -> True, no "3" -> 3
            raise Invalid(f"expected {name}, got {type_name(value)}")
        return value

    return structure


def strict_object(value: Any, _: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise Invalid(f"expected an object, got {type_name(value)}")
    return value


def _list(value: Any, _: Any) -> list[Any]:
    if type(value) is not list:
        raise Invalid(f"expected a list, got {type_name(value)}")
    return value


converter = cattrs.Converter(forbid_extra_keys=True)
converter.register_structure_hook(str, strict(str, "a string"))
converter.register_structure_hook(int, strict(int, "an integer"))
converter.register_structure_hook(bool, strict(bool, "true or false"))
converter.register_structure_hook_func(lambda t: t == dict[str, Any], strict_object)
converter.register_structure_hook_func(lambda t: t == list[Any], _list)
converter.register_structure_hook_factory(
    lambda t: get_origin(t) is Annotated
    and any(isinstance(m, (Between, OneOf, Text, Pattern)) for m in t.__metadata__),
    _structure_annotated,
)


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, Invalid):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        return "unknown field(s): " + ", ".join(sorted(exc.extra_fields)) + (
            f" (known: {', '.join(known)})" if known else "")
    if isinstance(exc, KeyError):
        return "is required"
    if isinstance(exc, TypeError) and type_ is not None and get_origin(type_) is not Annotated:
        return f"invalid value, expected {getattr(type_, '__name__', type_)}"
    return format_exception(exc, type_)


def problems_of(exc: BaseException, prefix: str) -> list[str]:
    """``prefix.path: message`` for every problem cattrs collected in ``exc``."""
    found = []
    for line in cattrs.transform_error(exc, format_exception=_format):
        message, _, where = line.rpartition(" @ ")
        path = (prefix + where.removeprefix("$")).lstrip(".")
        found.append(f"{path}: {message}" if path else message)
    return found


# -- what every family's class answers ---------------------------------------------------


@attrs.frozen
class Context:
    """What a family's checks may depend on besides the parameters themselves."""

    provider_model: str
    input_images: int
    number_of_outputs: int


@attrs.frozen
class Checked:
    """The outcome of ``check_parameters``."""

    parameters: dict[str, Any]
    number_of_outputs: int
    problems: list[str]


def _present(instance: Any) -> dict[str, Any]:
    """The fields as stored: unset optional fields (``None``) are left out."""
    data = converter.unstructure(instance)
    return {k: v for k, v in data.items() if v is not None}


def _not_for(instance: Any, names: tuple[str, ...], why: str) -> list[tuple[str, str]]:
    return [(name, why) for name in names if getattr(instance, name) is not None]


# -- FLUX on Black Forest Labs -----------------------------------------------------------

FLUX_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21", "3:2", "2:3")
FLUX_FORMATS = OneOf(("jpeg", "png", "webp"))
_WXH = re.compile(r"^(\d{1,5})[xX](\d{1,5})$")


def _bfl_kind(model: str) -> str:
    """How a BFL model sizes its output: the families differ in their input fields."""
    if "kontext" in model or "ultra" in model:
        return "ratio"
    if model.startswith("flux-2"):
        return "flux2"
    return "sized"


@attrs.frozen
class FluxParameters:
    """BFL's inputs (``FluxPro11Inputs``, ``FluxDevInputs``, ``FluxKontextProInputs``...)."""

    #: ``"16:9"`` (one of FLUX_RATIOS) or ``"1024x768"``; the adapter turns it into
    #: width/height or aspect_ratio, whichever the model takes.
    size_or_ratio: str | None = None
    seed: Seed | None = None
    prompt_upsampling: bool = False
    safety_tolerance: Annotated[int, Between(0, 6)] = 2
    #: Default per model: jpeg, but png for Kontext (as BFL documents).
    output_format: Annotated[str, FLUX_FORMATS] | None = None
    steps: Annotated[int, Between(1, 50)] | None = None
    guidance: Annotated[float, Between(1.5, 5)] | None = None
    raw: bool | None = None
    image_prompt_strength: Annotated[float, Between(0, 1)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        model, kind = ctx.provider_model, _bfl_kind(ctx.provider_model)
        found: list[tuple[str, str]] = []
        if self.size_or_ratio is not None:
            found += [("size_or_ratio", p) for p in self._size_problems(kind)]
        if kind == "flux2" and self.safety_tolerance > 5:
            found.append(("safety_tolerance", f"must be 0 to 5 for {model}"))
        if "dev" not in model and "flex" not in model and "fill" not in model and "expand" not in model:
            found += _not_for(self, ("steps", "guidance"), f"{model} takes no steps or guidance")
        if "ultra" not in model:
            found += _not_for(self, ("raw", "image_prompt_strength"), f"only FLUX ultra models take it, not {model}")
        return found

    def _size_problems(self, kind: str) -> list[str]:
        value = self.size_or_ratio or ""
        if value in FLUX_RATIOS:
            return []
        size = _WXH.match(value)
        if size is None:
            return [f"must be a ratio ({', '.join(FLUX_RATIOS)}) or WIDTHxHEIGHT"]
        width, height = int(size.group(1)), int(size.group(2))
        if kind == "flux2":
            ok = width >= 64 and height >= 64 and width * height <= 4_194_304
            return [] if ok else ["width and height must be at least 64, at most 4 megapixels"]
        if kind == "ratio":
            ok = width > 0 and height > 0 and 9 / 21 <= width / height <= 21 / 9
            return [] if ok else ["must have an aspect between 21:9 and 9:21"]
        if not (256 <= width <= 1440 and 256 <= height <= 1440):
            return ["width and height must be 256 to 1440"]
        if width % 32 or height % 32:
            return ["width and height must be multiples of 32"]
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = _present(self)
        data.setdefault("output_format", "png" if "kontext" in ctx.provider_model else "jpeg")
        return data


def _bfl_images(model: str) -> int:
    """Input images a BFL model takes (one base64 Redux image prompt for FLUX 1.x)."""
    if "kontext" in model:
        return 4
    if model.startswith("flux-2"):
        return 8
    return 1


# -- OpenAI-compatible images ---------------------------------------------------------------

OPENAI_SIZES = {
    "gpt": ("1024x1024", "1536x1024", "1024x1536", "auto"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "edit": ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "auto"),
}
OPENAI_QUALITIES = {
    "gpt": ("auto", "low", "medium", "high"),
    "dall-e-3": ("auto", "hd", "standard"),
    "dall-e-2": ("auto", "standard"),
}
_OPENAI_DEFAULTS = {
    "gpt": {"size": "auto", "quality": "auto"},
    "dall-e-3": {"size": "1024x1024", "quality": "standard", "style": "vivid"},
    "dall-e-2": {"size": "1024x1024"},
}
_ALL_SIZES = tuple(sorted({s for sizes in OPENAI_SIZES.values() for s in sizes}))
_ALL_QUALITIES = tuple(sorted({q for qs in OPENAI_QUALITIES.values() for q in qs}))


def openai_kind(model: str) -> str:
    lowered = model.lower()
    if lowered.startswith("dall-e-3"):
        return "dall-e-3"
    if lowered.startswith("dall-e"):
        return "dall-e-2"
    return "gpt"


@attrs.frozen
class OpenAIParameters:
    """``/images/generations`` and ``/images/edits`` fields (providers.md section 5)."""

    size: Annotated[str, OneOf(_ALL_SIZES)] | None = None
    quality: Annotated[str, OneOf(_ALL_QUALITIES)] | None = None
    style: Annotated[str, OneOf(("vivid", "natural"))] | None = None
    background: Annotated[str, OneOf(("transparent", "opaque", "auto"))] | None = None
    output_format: Annotated[str, OneOf(("png", "jpeg", "webp"))] | None = None
    output_compression: Annotated[int, Between(0, 100)] | None = None
    moderation: Annotated[str, OneOf(("low", "auto"))] | None = None
    response_format: Annotated[str, OneOf(("url", "b64_json"))] | None = None
    input_fidelity: Annotated[str, OneOf(("high", "low"))] | None = None
    user: Annotated[str, Text(256)] | None = None
    #: OpenAI's name for ``number_of_outputs``; folded into it.
    n: Annotated[int, Between(1, 10)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        kind, model = openai_kind(ctx.provider_model), ctx.provider_model
        edit = ctx.input_images > 0
        found: list[tuple[str, str]] = []
        sizes = OPENAI_SIZES["edit" if edit and kind != "dall-e-3" else kind]
        if self.size is not None and self.size not in sizes:
            found.append(("size", f"{model} takes {', '.join(sizes)}"))
        qualities = OPENAI_QUALITIES[kind] + (("standard",) if edit and kind == "gpt" else ())
        if self.quality is not None and self.quality not in qualities:
            found.append(("quality", f"{model} takes {', '.join(qualities)}"))
        if kind != "dall-e-3":
            found += _not_for(self, ("style",), "only dall-e-3 takes a style")
        if kind == "gpt":
            found += _not_for(self, ("response_format",), "GPT image models always answer base64")
        else:
            found += _not_for(self, ("background", "output_format", "output_compression",
                                     "moderation", "input_fidelity"), f"{model} does not take it")
        if self.background == "transparent" and self.output_format == "jpeg":
            found.append(("background", "transparent needs output_format png or webp"))
        return found

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = _present(self)
        data.pop("n", None)
        for key, value in _OPENAI_DEFAULTS[openai_kind(ctx.provider_model)].items():
            data.setdefault(key, value)
        return data


# -- Kling ----------------------------------------------------------------------------------


@attrs.frozen
class KlingParameters:
    """text2video / image2video fields (providers.md section 2)."""

    #: Kling wants the string; 5 and 10 are taken and stored as "5" and "10".
    duration: Annotated[str, OneOf(("5", "10"), {5: "5", 10: "10"}, "5 or 10")] = "5"
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
        return _not_for(self, ("static_mask", "dynamic_masks", "voice_list"),
                        "only image2video (a job with input_images) takes it")

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = _present(self)
        if ctx.input_images:
            data.pop("aspect_ratio", None)  # image2video has none; the adapter drops it too
        else:
            data.setdefault("aspect_ratio", "16:9")
        return data


# -- Pollo ----------------------------------------------------------------------------------

#: Pollo's camelCase input names, taken and stored as the snake_case the adapter maps.
POLLO_ALIASES = {"negativePrompt": "negative_prompt", "aspectRatio": "aspect_ratio",
                 "generateAudio": "generate_audio"}


@attrs.frozen
class PolloParameters:
    """Pollo's ``input`` fields. Allowed values are per model and undocumented, so
    only the shapes are checked and no defaults are filled in (Pollo's own apply)."""

    duration: Annotated[int, Between(1, 20, from_text=True)] | None = None
    negative_prompt: Annotated[str, Text(2500)] | None = None
    seed: Seed | None = None
    aspect_ratio: Ratio | None = None
    resolution: Annotated[str, OneOf(("480p", "720p", "1080p"))] | None = None
    generate_audio: bool | None = None
    mode: Annotated[str, OneOf(("std", "pro"))] | None = None
    strength: Annotated[int, Between(0, 100)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        return _present(self)


# -- Replicate ------------------------------------------------------------------------------


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
        data = _present(self)
        data.pop("num_outputs", None)
        return data


# -- fal.ai ---------------------------------------------------------------------------------


@attrs.frozen
class ImageSize:
    width: Annotated[int, Between(1, 14142)]
    height: Annotated[int, Between(1, 14142)]


FAL_IMAGE_SIZES = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3",
                   "landscape_16_9")


def _image_size(value: Any, _: Any) -> str | ImageSize:
    if type(value) is str:
        if value in FAL_IMAGE_SIZES:
            return value
        raise Invalid("must be one of " + ", ".join(FAL_IMAGE_SIZES) + " or {width, height}")
    if type(value) is dict:
        return converter.structure(value, ImageSize)
    raise Invalid(f"expected a size name or {{width, height}}, got {type_name(value)}")


converter.register_structure_hook_func(lambda t: t == (str | ImageSize), _image_size)


@attrs.frozen
class FalFluxDevInput:
    """``fal-ai/flux/dev``'s inputs, with fal's defaults."""

    image_size: str | ImageSize = "landscape_4_3"
    num_inference_steps: Annotated[int, Between(1, 50)] = 28
    guidance_scale: Annotated[float, Between(1, 20)] = 3.5
    seed: Seed | None = None
    enable_safety_checker: bool = True
    output_format: Annotated[str, OneOf(("jpeg", "png"))] = "jpeg"
    acceleration: Annotated[str, OneOf(("none", "regular", "high"))] | None = None
    #: fal's name for ``number_of_outputs``; folded into it.
    num_images: Annotated[int, Between(1, 4)] | None = None

    def check(self, ctx: Context) -> list[tuple[str, str]]:
        return []

    def stored(self, ctx: Context) -> dict[str, Any]:
        data = _present(self)
        data.pop("num_images", None)
        return data


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


# -- the rules per family and model ----------------------------------------------------------


@attrs.frozen
class Rules:
    """What one model takes: its parameters class (None: a free-form object of at
    most ``max_bytes``), how many outputs and input images, and the parameter that
    is another name for ``number_of_outputs``."""

    parameters: type | None
    max_outputs: int = 10
    max_input_images: int | None = None
    outputs_alias: str | None = None
    max_bytes: int = MAX_FREEFORM_BYTES


def _base_model(provider_model: str) -> str:
    return provider_model.partition(":")[0]  # Replicate's owner/name:version


def rules_for(family: str, provider_model: str) -> Rules:
    """The rules of ``provider_model`` served by an adapter of ``family``."""
    if family == "bfl":
        return Rules(FluxParameters, max_outputs=1, max_input_images=_bfl_images(provider_model))
    if family == "openai":
        kind = openai_kind(provider_model)
        return Rules(OpenAIParameters, max_outputs=1 if kind == "dall-e-3" else 10,
                     max_input_images={"dall-e-3": 0, "dall-e-2": 1}.get(kind, 16),
                     outputs_alias="n")
    if family == "kling":
        return Rules(KlingParameters, max_outputs=1, max_input_images=2)
    if family == "pollo":
        return Rules(PolloParameters, max_outputs=1, max_input_images=2)
    if family == "replicate" and _base_model(provider_model) == "black-forest-labs/flux-schnell":
        return Rules(FluxSchnellInput, max_outputs=4, max_input_images=0, outputs_alias="num_outputs")
    if family == "fal" and provider_model == "fal-ai/flux/dev":
        return Rules(FalFluxDevInput, max_outputs=4, max_input_images=0, outputs_alias="num_images")
    if family == "sandbox":
        return Rules(None, max_bytes=MAX_SANDBOX_BYTES)
    return Rules(None)  # a model Easel knows no schema for: its provider judges


def check_parameters(
    family: str,
    provider_model: str,
    parameters: dict[str, Any],
    *,
    number_of_outputs: int,
    outputs_given: bool,
    input_images: int,
) -> Checked:
    """Check ``parameters`` for ``provider_model`` of ``family``; see the module doc.

    ``outputs_given`` says whether the client set ``number_of_outputs`` itself: only
    then does a family's own name for it (``n``, ``num_outputs``) conflict with it.
    """
    rules = rules_for(family, provider_model)
    problems: list[str] = []
    stored: dict[str, Any] = dict(parameters)
    outputs = number_of_outputs
    if rules.parameters is None:
        if len(json.dumps(parameters)) > rules.max_bytes:
            problems.append(f"parameters: must be at most {rules.max_bytes} bytes of JSON")
    else:
        given = dict(parameters)
        if rules.parameters is PolloParameters:
            for camel, snake in POLLO_ALIASES.items():
                if camel in given:
                    if snake in given:
                        problems.append(f"parameters.{camel}: given twice (also as {snake})")
                    given[snake] = given.pop(camel)
        instance = None
        try:
            instance = converter.structure(given, rules.parameters)
        except cattrs.BaseValidationError as exc:
            problems += problems_of(exc, "parameters")
            # The fields that were fine still get their model checks: every problem
            # is reported at once, not the type problems first and the rest later.
            instance = _structure_without(given, rules.parameters, _failed_fields(exc))
        if instance is not None:
            ctx = Context(provider_model, input_images, number_of_outputs)
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
    if rules.max_input_images is not None and input_images > rules.max_input_images:
        problems.append(f"input_images: {provider_model} takes at most {rules.max_input_images}")
    return Checked(stored, outputs, problems)
