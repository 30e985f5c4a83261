"""JSON Schema (2020-12, as OpenAPI 3.1 uses it) of the types the strict converter
structures.

The request classes (``SubmissionRequest``, every provider's parameters class)
carry their limits in ``Annotated`` field types (``Between``, ``OneOf``, ``Text``,
``Pattern``, ``actors/conversion.py``) or in marks with a structure hook of their
own (``actors.validation.MARK_SCHEMAS``). ``schema_of`` reads the very same
metadata, so the published document says what validation enforces and cannot
drift from it: change a limit and both change.

What JSON Schema cannot say is left to the description: the converter's
strictness (no ``"3"`` for 3) is JSON Schema's own typing, but model-dependent
checks (a size one model takes and another not) are the class's ``check``.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Union, get_args, get_origin

import attrs

from actors.conversion import Between, OneOf, Pattern, Text

#: Schemas of marks (``Annotated`` metadata with a hook of their own), by type.
Marks = Mapping[type, Mapping[str, Any]]


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _constrained(schema: dict[str, Any], mark: Any) -> dict[str, Any]:
    if isinstance(mark, Between):
        schema = {**schema, "minimum": _number(mark.low), "maximum": _number(mark.high)}
        if mark.from_text:
            return {"anyOf": [schema, {"type": "string", "pattern": r"^\d{1,6}$"}]}
        return schema
    if isinstance(mark, OneOf):
        values = [*mark.values, *(alias for alias in mark.aliases if alias not in mark.values)]
        return {"enum": values, **({"description": mark.message()} if mark.describe else {})}
    if isinstance(mark, Text):
        return {**schema, "maxLength": mark.max_length}
    if isinstance(mark, Pattern):
        return {**schema, "pattern": f"^(?:{mark.regex.removeprefix('^').removesuffix('$')})$",
                "description": mark.describe}
    return schema


def schema_of(type_: Any, marks: Marks | None = None) -> dict[str, Any]:
    """The JSON Schema of values the strict converter structures into ``type_``."""
    marks = marks or {}
    origin = get_origin(type_)
    if origin is Annotated:
        base, *metadata = get_args(type_)
        schema = schema_of(base, marks)
        for mark in metadata:
            if type(mark) in marks:
                return dict(marks[type(mark)])
            schema = _constrained(schema, mark)
        return schema
    if origin in (Union, types.UnionType):
        members = [schema_of(arg, marks) for arg in get_args(type_) if arg is not type(None)]
        if type(None) in get_args(type_):
            members.append({"type": "null"})
        return members[0] if len(members) == 1 else {"anyOf": members}
    if origin is list:
        (item,) = get_args(type_) or (Any,)
        return {"type": "array", **({"items": schema_of(item, marks)} if item is not Any else {})}
    if origin is dict or type_ is dict:
        return {"type": "object"}
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return {"enum": [member.value for member in type_]}
    if isinstance(type_, type) and attrs.has(type_):
        return object_schema(type_, marks)
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if type_ in simple:
        return {"type": simple[type_]}
    return {}


def object_schema(cls: type, marks: Marks | None = None, *,
                  closed: bool = True) -> dict[str, Any]:
    """An attrs class as a JSON object: a property per field, the fields without a
    default required; ``closed`` refuses other keys, as the converter does."""
    hints = typing.get_type_hints(cls, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        properties[field.name] = schema_of(hints[field.name], marks)
        if field.default is attrs.NOTHING:
            required.append(field.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    doc = (cls.__doc__ or "").strip()
    if doc:
        schema["description"] = " ".join(doc.split())
    return schema
