"""Resizing: where the pixels go (``plan``), and one resampling to get them there.

``plan`` turns a ``Preprocess``'s box (``width``/``height`` and ``fit``) and its
maximums into one result: the part of the source kept (``cover`` crops the
middle), the size it is resampled to, and the canvas it is padded onto
(``contain``). Everything is done in one resampling, never a resize and then
another for the maximums.

Speed: a JPEG is decoded at the smallest of its built-in reductions (1/2, 1/4,
1/8, applied in the DCT) that still covers the planned size (``draft_size``, given
to ``Image.draft`` before decoding), which is most of the gain on a large photo;
the resampling then uses ``reducing_gap``, shrinking by whole factors first
where the scale allows it, at no visible cost. The filter is bicubic (``FILTER``),
Pillow's own choice for thumbnails: after a DCT reduction the scale left is under
2, where Lanczos's wider kernel sharpens nothing visible and costs half as much
again (measured in ``bench/preprocess.py``).
"""

from __future__ import annotations

import math

import attrs
from PIL import Image

from actors.images.presets import Preprocess

#: The resampling filter (see the module doc).
FILTER = Image.Resampling.BICUBIC
#: ``Image.resize``'s ``reducing_gap``: integer reduction first, while the rest of
#: the scale stays above this factor.
REDUCING_GAP = 3.0
#: EXIF orientations that swap width and height.
_TRANSPOSED = frozenset({5, 6, 7, 8})


@attrs.frozen
class Plan:
    """The source region kept, the size it becomes, the canvas it lands on."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    canvas: tuple[int, int] | None = None

    @property
    def scale(self) -> float:
        """How much the kept region shrinks (below 1) or grows."""
        return max(self.size[0] / (self.box[2] - self.box[0]),
                   self.size[1] / (self.box[3] - self.box[1]))


def _side(value: float) -> int:
    return max(1, round(value))


def plan(size: tuple[int, int], steps: Preprocess) -> Plan:
    """Where the pixels of an image of ``size`` go under ``steps`` (module doc)."""
    width, height = size
    box = (0.0, 0.0, float(width), float(height))
    out = (width, height)
    canvas: tuple[int, int] | None = None
    if steps.width or steps.height:
        box_w = steps.width or _side(width * steps.height / height)  # type: ignore[operator]
        box_h = steps.height or _side(height * steps.width / width)  # type: ignore[operator]
        if steps.fit == "fill":
            out = (box_w, box_h)
        elif steps.fit == "cover":
            scale = max(box_w / width, box_h / height)
            kept_w, kept_h = box_w / scale, box_h / scale
            left, top = (width - kept_w) / 2, (height - kept_h) / 2
            box = (left, top, left + kept_w, top + kept_h)
            out = (box_w, box_h)
        else:
            scale = min(box_w / width, box_h / height)
            if steps.fit == "fit":
                scale = min(scale, 1.0)
            out = (_side(width * scale), _side(height * scale))
            if steps.fit == "contain":
                canvas = (box_w, box_h)
    outer = canvas or out
    limit = min(1.0, (steps.max_width or math.inf) / outer[0],
                (steps.max_height or math.inf) / outer[1])
    if limit < 1.0:
        out = (_side(out[0] * limit), _side(out[1] * limit))
        if canvas is not None:
            canvas = (_side(canvas[0] * limit), _side(canvas[1] * limit))
    return Plan(box, out, canvas)


def draft_size(size: tuple[int, int], orientation: int, steps: Preprocess) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for: the whole stored (not yet turned
    upright) image at the planned scale, so a reduced decode still covers it."""
    upright = (size[1], size[0]) if orientation in _TRANSPOSED else size
    scale = min(1.0, plan(upright, steps).scale)
    return (math.ceil(size[0] * scale), math.ceil(size[1] * scale))


def background(mode: str) -> int | tuple[int, ...]:
    """The padding of ``contain``: transparent where there is alpha, else white."""
    return {"L": 255, "RGB": (255, 255, 255)}.get(mode, (0, 0, 0, 0))


def resize(image: Image.Image, steps: Preprocess) -> Image.Image:
    """``image`` (``L``, ``RGB`` or ``RGBA``) resized as ``plan`` says."""
    where = plan(image.size, steps)
    whole = where.box == (0.0, 0.0, float(image.width), float(image.height))
    if where.size != image.size or not whole:
        image = image.resize(where.size, FILTER, box=where.box,
                             reducing_gap=REDUCING_GAP)
    if where.canvas is not None and where.canvas != image.size:
        padded = Image.new(image.mode, where.canvas, background(image.mode))
        padded.paste(image, ((where.canvas[0] - image.width) // 2,
                             (where.canvas[1] - image.height) // 2))
        image = padded
    return image
