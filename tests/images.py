"""Real images made with Pillow for the tests: photos, alpha, CMYK, 16-bit, animations,
and the inputs that must be refused (bombs, truncated, polyglot, mislabelled)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

#: EXIF tag of the orientation.
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A picture with structure: red grows left to right, green top to bottom."""
    width, height = size
    red = Image.linear_gradient("L").rotate(90).resize(size)
    green = Image.linear_gradient("L").resize(size)
    blue = Image.new("L", size, 90)
    image = Image.merge("RGB", (red.transpose(Image.Transpose.FLIP_LEFT_RIGHT), green, blue))
    assert image.size == (width, height)
    return image.convert(mode) if mode != "RGB" else image


def jpeg(size: tuple[int, int] = (64, 48), orientation: int | None = None, **options: Any) -> bytes:
    image = photo(size)
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif
    return encode(image, "JPEG", quality=90, **options)


def png(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    return encode(photo(size, mode), "PNG")


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


#: A real 8x8 PNG as a data URI, for tests that need any valid inline image.
PNG_URI = data_uri(png())
