"""Encoding: the output format's bytes at a quality, or at the best quality that fits.

``encode`` writes ``image`` as JPEG, PNG or WebP. With ``max_size_kb``, JPEG and
WebP search the quality by bisection, from the asked quality down to
``MIN_QUALITY``, for the highest that fits (about log2(100) = 7 encodings, not
one per step); when even ``MIN_QUALITY`` does not fit, or for PNG (lossless: it
has no quality), the image is scaled down and tried again, at most
``MAX_SHRINKS`` times, before it is refused.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from actors.images.resize import FILTER
from actors.images.validate import ImageRefused

#: The lowest quality a size target may push JPEG or WebP to.
MIN_QUALITY = 40
#: Times an image is scaled down to meet a size target before it is refused.
MAX_SHRINKS = 6


def _save(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _best_quality(image: Image.Image, fmt: str, quality: int, limit: int) -> bytes | None:
    """The highest-quality encoding of at most ``limit`` bytes, or ``None``."""
    best: bytes | None = None
    low, high = MIN_QUALITY, quality
    while low <= high:
        middle = (low + high) // 2
        data = _save(image, fmt, middle)
        if len(data) <= limit:
            best, low = data, middle + 1
        else:
            high = middle - 1
    return best


def encode(image: Image.Image, fmt: str, quality: int, max_size_kb: int | None) -> bytes:
    """``image`` as ``fmt`` (``jpeg``, ``png`` or ``webp``); see the module doc."""
    if image.mode == "RGBA" and fmt == "jpeg":
        image = flatten(image)
    data = _save(image, fmt, quality)
    if max_size_kb is None:
        return data
    limit = max_size_kb * 1024
    for _ in range(MAX_SHRINKS + 1):
        if len(data) <= limit:
            return data
        if fmt != "png":
            found = _best_quality(image, fmt, quality, limit)
            if found is not None:
                return found
        # Pixels scale with area: shrink the sides by the square root of the excess.
        factor = max(0.5, min(0.9, math.sqrt(limit / len(data))))
        size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
        image = image.resize(size, FILTER)
        data = _save(image, fmt, quality)
    if len(data) <= limit:
        return data
    raise ImageRefused(f"cannot be made smaller than {max_size_kb} KB")


def flatten(image: Image.Image) -> Image.Image:
    """An RGBA image on white, as RGB: JPEG has no alpha."""
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    return flat
