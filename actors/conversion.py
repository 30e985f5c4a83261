"""The one strict cattrs converter: JSON requests and TOML configuration alike.

``make_converter()`` builds a converter that takes values as they are written:
unknown keys are refused (``forbid_extra_keys``), scalars are not coerced (no
``"true"`` -> True, no ``1`` -> True, no ``"3"`` -> 3, no ``5.5`` -> 5; an integer
is taken where a number is expected), a ``dict[str, Any]`` must be an object and a
``list`` a list. ``Annotated`` field types carry their own limits (``Between``,
``OneOf``, ``Text``, ``Pattern``), so one structuring pass finds every problem.

``problems_of(exc)`` turns cattrs' collected errors into ``a.b.c: message`` lines
(``providers.kling.rate: expected a number, got a string``,
``parameters.duration: must be 5 or 10``), one vocabulary for the API and the
configuration, so an operator and a client read the same kind of message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.v import format_exception


class Invalid(ValueError):
    """A value that cannot be taken; its text is the problem as the reader reads it."""


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


_CONSTRAINTS = (Between, OneOf, Text, Pattern)


def type_name(value: Any) -> str:
    """How a JSON or TOML value's type reads in a message: ``a string``, ``a list``."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _structure_annotated(type_: Any) -> Callable[[Any, Any], Any]:
    base, *metadata = get_args(type_)
    constraint = next(m for m in metadata if isinstance(m, _CONSTRAINTS))

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
    """A hook taking only values whose type is exactly ``type_`` (``name`` in messages).

    A ``float`` also takes an integer (TOML's ``rate = 5``) and stores it as a float;
    a bool is never a number.
    """
    accepted = (int, float) if type_ is float else (type_,)

    def structure(value: Any, target: Any) -> Any:
        if target is not type_:  # a str-based enum: its own constructor checks
            return target(value)
        if type(value) not in accepted or (type_ is float and not math.isfinite(value)):
            raise Invalid(f"expected {name}, got {type_name(value)}")
        return type_(value)

    return structure


def strict_object(value: Any, _: Any) -> dict[str, Any]:
    """A JSON object or TOML table, as is (cattrs would copy any mapping-like value)."""
    if type(value) is not dict:
        raise Invalid(f"expected an object, got {type_name(value)}")
    return value


def _list(value: Any, _: Any) -> list[Any]:
    if type(value) is not list:
        raise Invalid(f"expected a list, got {type_name(value)}")
    return value


def _str_list(value: Any, _: Any) -> list[str]:
    # cattrs would happily turn "127.0.0.1:8700" into a list of characters.
    if type(value) is not list or not all(type(v) is str for v in value):
        raise Invalid("expected a list of strings")
    return list(value)


def make_converter() -> cattrs.Converter:
    """A new strict converter (see the module doc); callers add their own hooks."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, strict(str, "a string"))
    converter.register_structure_hook(int, strict(int, "an integer"))
    converter.register_structure_hook(float, strict(float, "a number"))
    converter.register_structure_hook(bool, strict(bool, "true or false"))
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], strict_object)
    converter.register_structure_hook_func(lambda t: t == list[Any], _list)
    converter.register_structure_hook_func(lambda t: t == list[str], _str_list)
    converter.register_structure_hook_factory(
        lambda t: get_origin(t) is Annotated
        and any(isinstance(m, _CONSTRAINTS) for m in t.__metadata__),
        _structure_annotated,
    )
    return converter


# -- problems as ``a.b.c: message`` -----------------------------------------------------------

#: An attrs validator's message names its field (``'rate' must be > 0: -1``).
_VALIDATOR = re.compile(r"^'(\w+)' must be (.*)$")


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, Invalid):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        return "unknown key(s): " + ", ".join(sorted(exc.extra_fields)) + (
            f" (known: {', '.join(known)})" if known else "")
    if isinstance(exc, KeyError):
        return "is required"
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    if isinstance(exc, ValueError) and _VALIDATOR.match(text):
        return text  # an attrs validator's; problems_of moves its key onto the path
    if isinstance(exc, ValueError) and isinstance(type_, type) and hasattr(type_, "__members__"):
        return "must be one of " + ", ".join(repr(m.value) for m in type_)  # an enum
    if isinstance(exc, TypeError) and type_ is not None and get_origin(type_) is not Annotated:
        return f"invalid value, expected {getattr(type_, '__name__', type_)}"
    return format_exception(exc, type_)


def format_path(prefix: str, cattrs_path: str) -> str:
    """``$.providers['kling'].rate`` under ``prefix`` as ``prefix.providers.kling.rate``."""
    path = re.sub(r"\['([^']*)'\]", r".\1", cattrs_path.removeprefix("$"))
    return (prefix + path).lstrip(".")


def problems_of(exc: BaseException, prefix: str = "") -> list[str]:
    """``path: message`` for every problem cattrs collected in ``exc``."""
    found = []
    for line in cattrs.transform_error(exc, format_exception=_format):
        message, _, where = line.rpartition(" @ ")
        path = format_path(prefix, where)
        validator = _VALIDATOR.match(message)
        if validator:  # a validator fails for the whole class; the key goes on the path
            path = f"{path}.{validator.group(1)}".lstrip(".")
            message = f"must be {validator.group(2)}"
        found.append(f"{path}: {message}" if path else message)
    return found
