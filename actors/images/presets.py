"""What to do to an input image: ``Preprocess``, the named presets, and the settings.

``Preprocess`` is one set of steps (format, resize, compress, enhance) as a
client gives it in a submission's ``preprocess`` object or an operator writes it
in a ``[preprocess.presets.NAME]`` table: the same strict structuring for both
(``actors/conversion.py``), so a bad value reads the same in either place.

A submission's ``preprocess`` is a preset name, ``"none"`` (send the images as
given, only converted to the form the provider takes), or an object of these
fields, optionally starting from a preset (``{"preset": "fast", "maxWidth":
512}``). Without it, the serving provider's default preset applies
(``InputSpec.preset`` in its ``PROVIDER`` record).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import attrs
import cattrs

from actors.conversion import Between, Invalid, OneOf, make_converter, problems_of, type_name
from actors.parameters import fold_spellings

#: Longest side a resize may ask for, in pixels.
MAX_SIDE = 16384
#: Largest ``max_size_kb``: 50 MiB, what the most generous provider takes.
MAX_SIZE_KB = 51200
#: The preset name that turns preprocessing off.
NONE = "none"

FORMATS = ("png", "jpeg", "webp", "keep")
FITS = ("fit", "fill", "cover", "contain")

Side = Annotated[int, Between(1, MAX_SIDE)]


@attrs.frozen
class Preprocess:
    """One pipeline run's steps, in order: format, resize, compress, enhance.

    Resize: ``width``/``height`` are the box (one alone keeps the aspect ratio);
    ``fit`` says how the image meets it: ``fit`` scales it down to lie inside the
    box (never up), ``contain`` scales it to lie inside and pads to the box,
    ``cover`` scales it to cover the box and crops the middle, ``fill`` stretches it
    to the box. ``max_width``/``max_height`` then scale it down (never up) to lie
    within them. Compress: ``quality`` for JPEG and WebP, or, with
    ``max_size_kb``, the highest quality whose output fits (PNG: the smallest
    encoding, then scaled down until it fits).
    """

    format: Annotated[str, OneOf(FORMATS, aliases={"jpg": "jpeg"})] = "keep"
    fit: Annotated[str, OneOf(FITS)] = "fit"
    width: Side | None = None
    height: Side | None = None
    max_width: Side | None = None
    max_height: Side | None = None
    quality: Annotated[int, Between(1, 100)] = 85
    max_size_kb: Annotated[int, Between(1, MAX_SIZE_KB)] | None = None
    sharpen: bool = False
    denoise: bool = False
    autocontrast: bool = False


#: The shipped presets; ``[preprocess.presets.NAME]`` in config overrides them
#: field by field and may add others.
BUILTIN_PRESETS: dict[str, Preprocess] = {
    # Small and quick: previews, cheap models.
    "fast": Preprocess(format="jpeg", max_width=1024, max_height=1024, quality=75),
    # What most image-to-image and image-to-video models work at.
    "standard": Preprocess(format="jpeg", max_width=2048, max_height=2048, quality=85),
    # Detail kept: the source format (PNG stays lossless), up to 4096 px.
    "high": Preprocess(format="keep", max_width=4096, max_height=4096, quality=95),
    # Pollo fetches the image itself: a JPEG at most 1920 px and 2 MB.
    "pollo-optimized": Preprocess(format="jpeg", max_width=1920, max_height=1920, quality=85,
                                  max_size_kb=2048),
}


def _in_range(low: int, high: int) -> Any:
    return [attrs.validators.ge(low), attrs.validators.le(high)]


@attrs.frozen
class PreprocessSettings:
    """``[preprocess]``: limits on every input image, and the presets."""

    #: Largest input image, in bytes, as given or fetched.
    max_input_bytes: int = attrs.field(default=25 * 1024 * 1024,
                                       validator=attrs.validators.ge(1024))
    #: Largest input image, in pixels (width x height), read from its header
    #: before anything is decoded.
    max_pixels: int = attrs.field(default=50_000_000, validator=attrs.validators.ge(1))
    #: Days an input image published for a provider that takes only URLs stays
    #: served at ``/media/inputs/`` (1 to 7).
    input_url_days: int = attrs.field(default=1, validator=_in_range(1, 7))
    #: Images prepared at once (worker threads: Pillow releases the GIL).
    threads: int = attrs.field(default=2, validator=_in_range(1, 64))
    #: Seconds a fetch of a client's input URL may take in all.
    fetch_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    presets: dict[str, Preprocess] = attrs.field(factory=lambda: dict(BUILTIN_PRESETS))


_converter = make_converter()
_FIELDS = [field.name for field in attrs.fields(Preprocess)]


def structure_preset(table: Any, base: Preprocess | None = None) -> Preprocess:
    """A ``Preprocess`` from a JSON object or TOML table (camelCase or snake_case
    keys), starting from ``base``; ``Invalid``-style problems raise
    ``cattrs.BaseValidationError``."""
    if type(table) is not dict:
        raise Invalid(f"expected an object, got {type_name(table)}")
    given, twice = fold_spellings(table, _FIELDS)
    if twice:
        raise Invalid("; ".join(twice))
    if base is not None:
        given = {**attrs.asdict(base), **given}
    return _converter.structure(given, Preprocess)


def preset_problems(value: Any, presets: Mapping[str, Preprocess], prefix: str) -> list[str]:
    """What is wrong with a submission's ``preprocess`` (``prefix.field: message``)."""
    try:
        resolve(value, presets)
    except cattrs.BaseValidationError as exc:
        return problems_of(exc, prefix)
    except Invalid as exc:
        return [f"{prefix}: {exc}"]
    return []


def resolve(value: Any, presets: Mapping[str, Preprocess]) -> Preprocess | None:
    """The steps a submission's ``preprocess`` asks for (see the module doc);
    ``None`` for ``"none"``. Raises ``Invalid`` or ``cattrs.BaseValidationError``."""
    if type(value) is str:
        if value == NONE:
            return None
        if value not in presets:
            raise Invalid("must be none, an object, or a preset: " + ", ".join(sorted(presets)))
        return presets[value]
    if type(value) is not dict:
        raise Invalid(f"expected a preset name or an object, got {type_name(value)}")
    given = dict(value)
    base_name = given.pop("preset", None)
    base = None
    if base_name is not None:
        if type(base_name) is not str or base_name not in presets:
            raise Invalid("preset must be one of " + ", ".join(sorted(presets)))
        base = presets[base_name]
    return structure_preset(given, base)


def structure_presets(converter: cattrs.Converter) -> None:
    """Teach ``converter`` to read ``[preprocess.presets]``: each table over the
    built-in preset of its name (so an override sets only what it changes)."""

    def presets(value: Any, _: Any) -> dict[str, Preprocess]:
        if type(value) is not dict:
            raise Invalid(f"expected a table, got {type_name(value)}")
        out = dict(BUILTIN_PRESETS)
        for name, table in value.items():
            if name == NONE:
                raise Invalid(f"{NONE!r} is reserved: it turns preprocessing off")
            out[name] = structure_preset(table, BUILTIN_PRESETS.get(name))
        return out

    converter.register_structure_hook_func(lambda t: t == dict[str, Preprocess], presets)
