"""What a provider checks of an input image it is given, shared by the simulators.

Each simulator says which forms its provider takes (an http(s) URL, bare base64
without a ``data:`` prefix) and refuses anything else as the provider would, so a
test against it proves Easel sends each provider its images in that provider's
form. Base64 must decode to an image Pillow can read in full. What a simulator
accepted is kept in its ``received_images`` for tests to look at.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image


def decoded_image(value: str) -> Image.Image:
    """The image bare base64 ``value`` holds (``ValueError`` if none)."""
    try:
        data = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.copy()
    except (binascii.Error, OSError, SyntaxError) as exc:
        raise ValueError(f"not a decodable image: {exc}") from None


def image_problem(value: Any, *, urls: bool, bare_base64: bool) -> str | None:
    """Why the provider would refuse ``value`` as an input image, or ``None``."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if value.startswith(("http://", "https://")):
        return None if urls else "must be base64, not a URL"
    if not bare_base64:
        return "must be an http(s) URL"
    if value.startswith("data:"):
        return "must be base64 without a data: prefix"
    try:
        decoded_image(value)
    except ValueError as exc:
        return f"base64 {exc}"
    return None
