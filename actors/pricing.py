"""What a job costs, from the catalog's price for its model.

Providers bill differently: per image, per second of video, per megapixel. A
model's entry says which (``cost_per``) and how much (``cost``, in the operator's
own units: cents, credits); ``job_cost`` turns a request into a figure. The same
figure is stamped on the job at submission (``Job.cost``), adds up to a key's
``daily_spend``, a batch's estimate and an experiment's spend.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

#: Seconds of video assumed when a request names no ``duration``.
DEFAULT_SECONDS = 5.0
#: Megapixels assumed when a request names no size.
DEFAULT_MEGAPIXELS = 1.0
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX*]\s*(\d{1,5})\s*$")


class CostUnit(str, enum.Enum):
    #: ``cost`` per output (an image, a video).
    OUTPUT = "output"
    #: ``cost`` per second of each output (video billed by length).
    SECOND = "second"
    #: ``cost`` per megapixel of each output.
    MEGAPIXEL = "megapixel"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number > 0 else None


def seconds_of(parameters: Mapping[str, Any]) -> float:
    """The length of video a request asks for (``duration``, as sent: a number or
    a numeric string), ``DEFAULT_SECONDS`` when it names none."""
    return _number(parameters.get("duration")) or DEFAULT_SECONDS


def megapixels_of(parameters: Mapping[str, Any]) -> float:
    """The size of each image a request asks for: ``width`` x ``height``, or a
    ``size`` such as ``"1024x1536"``; ``DEFAULT_MEGAPIXELS`` when it names neither."""
    width, height = _number(parameters.get("width")), _number(parameters.get("height"))
    if width and height:
        return width * height / 1e6
    size = parameters.get("size")
    if isinstance(size, str) and (match := _SIZE.match(size)):
        return int(match.group(1)) * int(match.group(2)) / 1e6
    return DEFAULT_MEGAPIXELS


def job_cost(cost: float, unit: CostUnit, number_of_outputs: int,
             parameters: Mapping[str, Any]) -> float:
    """The price of a request: ``cost`` per ``unit``, for each of its outputs."""
    if not cost:
        return 0.0
    if unit is CostUnit.SECOND:
        each = cost * seconds_of(parameters)
    elif unit is CostUnit.MEGAPIXEL:
        each = cost * megapixels_of(parameters)
    else:
        each = cost
    return each * number_of_outputs
