"""One input image through the steps: validate -> format -> resize -> enhance -> encode.

``process`` is plain blocking Pillow code: callers run it in a worker thread
(``trio.to_thread.run_sync`` under a limiter, as ``actors/images/inputs.py``
does), where Pillow releases the GIL for decoding, resampling and encoding, so
two threads prepare close to two images at once.

Without steps (the ``none`` preset), the image is still checked and decoded in
full (a truncated file is found here, not by the provider), and its bytes are
kept as they came.
"""

from __future__ import annotations

import attrs
from PIL import Image

from actors.images import compress, enhance, resize, validate
from actors.images.presets import Preprocess
from actors.images.validate import CONTENT_TYPES, Limits

#: Formats an image can be written in; a GIF kept as it is becomes a PNG (its
#: first frame), since providers do not take GIFs.
_WRITTEN = ("jpeg", "png", "webp")
_EXIF_ORIENTATION = 0x0112


@attrs.frozen
class Prepared:
    """An input image ready to be sent: its bytes and what they are."""

    data: bytes
    content_type: str
    size: tuple[int, int]


def output_format(source: str, steps: Preprocess) -> str:
    if steps.format != "keep":
        return steps.format
    return source if source in _WRITTEN else "png"


def process(data: bytes, label: str | None, steps: Preprocess | None, limits: Limits) -> Prepared:
    """``data`` checked and, with ``steps``, transformed; raises ``ImageRefused``."""
    found = validate.check_bytes(data, label, limits.max_bytes)
    with validate.open_checked(data, found, limits) as opened:
        if steps is not None and found == "jpeg":
            orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
            # Decode at a DCT reduction that still covers the planned size.
            opened.draft(opened.mode, resize.draft_size(opened.size, orientation, steps))
        image = validate.load(opened)
        if steps is None:
            return Prepared(data, CONTENT_TYPES[found], image.size)
        return transform(image, found, steps)


def transform(image: Image.Image, source: str, steps: Preprocess) -> Prepared:
    """A decoded, upright image (``validate.load``) through the steps."""
    fmt = output_format(source, steps)
    image = resize.resize(image, steps)
    if enhance.wanted(steps):
        image = enhance.enhance(image, steps)
    data = compress.encode(image, fmt, steps.quality, steps.max_size_kb)
    return Prepared(data, CONTENT_TYPES[fmt], image.size)
