"""Checking an input image before any of it is decoded, then decoding it safely.

The checks, cheapest first: the byte count; the format by its magic bytes (PNG,
JPEG, WebP, GIF; nothing else is opened, and only by that format's decoder, so a
file that would pass as another format is never read as one); the label it came
with (a ``data:image/png`` URI or a ``Content-Type`` naming another format than
the bytes hold is refused, not guessed at); nothing hidden after the image's end
(a PNG past ``IEND``, a WebP past its RIFF size, a JPEG past its last ``EOI``
unless what follows is another JPEG, as phones append); then the header's width
times height against the pixel cap, before a pixel is decoded. Pillow's
``DecompressionBombWarning`` is an error in this process (the filter is set when
this module is imported), so no image Pillow itself finds suspicious is decoded.

``load`` decodes the first frame (an animated GIF or WebP gives its first), with a
truncated file an error, turns the image upright per its EXIF orientation, and
brings its mode to ``L``, ``RGB`` or ``RGBA`` (palette, CMYK, 16-bit grey...), so
the later steps see only those three.
"""

from __future__ import annotations

import io
import re
import warnings

import attrs
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow warns for images over MAX_IMAGE_PIXELS (and raises at twice that); here
# the warning is an error too. Process-wide: nothing in Easel wants such images.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

#: Format name -> content type, for the formats an input image may be in.
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp",
                 "gif": "image/gif"}
#: Content type as labelled -> format name.
LABELS = {**{v: k for k, v in CONTENT_TYPES.items()}, "image/jpg": "jpeg"}
_PILLOW_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
#: A JPEG marker after entropy-coded data: 0xFF then neither a stuffed 0x00 nor a
#: restart marker (which may appear inside a scan).
_JPEG_MARKER = re.compile(rb"\xff(?![\x00\xd0-\xd7\xff])")


class ImageRefused(Exception):
    """An input image that is not taken; its text says why, as a client reads it."""


@attrs.frozen
class Limits:
    max_bytes: int
    max_pixels: int


def sniff(data: bytes) -> str | None:
    """The format the magic bytes say, or ``None`` for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def check_bytes(data: bytes, label: str | None, max_bytes: int) -> str:
    """The format of ``data`` once its size, magic bytes, label and end are checked
    (``label``: the content type it came with, or ``None``)."""
    if len(data) > max_bytes:
        raise ImageRefused(f"is {len(data)} bytes, more than the {max_bytes} taken")
    found = sniff(data)
    if found is None:
        raise ImageRefused("is not a PNG, JPEG, WebP or GIF image")
    if label is not None:
        labelled = LABELS.get(label.lower())
        if labelled != found:
            raise ImageRefused(f"is labelled {label} but holds a {found.upper()} image")
    trailing = _trailing(data, found)
    if trailing:
        raise ImageRefused(f"holds {trailing} bytes after the end of its {found.upper()} image")
    return found


def _trailing(data: bytes, found: str) -> int:
    """How many bytes follow the image's end that should not (0 when none)."""
    if found == "png":
        end = _png_end(data)
    elif found == "webp":
        end = 8 + int.from_bytes(data[4:8], "little")
        end += end % 2  # RIFF pads odd chunks
        if end > len(data):
            raise ImageRefused("is truncated: shorter than its RIFF header says")
    elif found == "jpeg":
        end = _jpeg_end(data)
        rest = data[end:]
        if rest.startswith(b"\xff\xd8") or not rest.strip(b"\x00\xff"):
            return 0  # a multi-picture JPEG's next image, or padding
    else:
        return 0  # GIF: always decoded and re-encoded before it goes anywhere
    return max(0, len(data) - end)


def _png_end(data: bytes) -> int:
    position = 8
    while position + 12 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        position += 12 + length
        if kind == b"IEND":
            return position
    raise ImageRefused("is truncated: its PNG has no IEND chunk")


def _jpeg_end(data: bytes) -> int:
    """The offset just past the JPEG's end of image (its ``EOI`` marker)."""
    position = 2
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            raise ImageRefused("is not a well-formed JPEG (a marker was expected)")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return position + 2
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length
            position += 2
            continue
        if position + 4 > len(data):
            break
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    raise ImageRefused("is truncated: its JPEG has no end-of-image marker")


def open_checked(data: bytes, found: str, limits: Limits) -> Image.Image:
    """``data`` opened (header read, nothing decoded) by its own format's decoder,
    its pixel count checked."""
    try:
        image = Image.open(io.BytesIO(data), formats=[_PILLOW_NAMES[found]])
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRefused("is too large to decode safely (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused(f"cannot be read as {found.upper()}: {exc}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise ImageRefused(f"is {width}x{height}, more than the {limits.max_pixels} pixels taken")
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        # Where Pillow warns: refused even where the warnings filter was reset
        # (it is per process, and a test runner replaces it).
        image.close()
        raise ImageRefused("is too large to decode safely (a decompression bomb?)")
    return image


def check_header(data: bytes, label: str | None, limits: Limits) -> None:
    """Everything that can be known without decoding: quick enough to run on a
    submission's inline images before the job is stored."""
    open_checked(data, check_bytes(data, label, limits.max_bytes), limits).close()


def load(image: Image.Image) -> Image.Image:
    """The first frame decoded, upright, in ``L``, ``RGB`` or ``RGBA`` (module doc)."""
    try:
        image.seek(0)
        image.load()
        # In place: no copy of an image that is upright already (most are).
        ImageOps.exif_transpose(image, in_place=True)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRefused("is too large to decode safely (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRefused(f"cannot be decoded: {exc}") from None
    return normalise(image)


def normalise(image: Image.Image) -> Image.Image:
    """``image`` in ``L``, ``RGB`` or ``RGBA``: what every later step expects."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return image
    if mode.startswith("I"):  # 16-bit or 32-bit grey: scaled, not clipped, to 8 bits
        wide = image if mode == "I" else image.convert("I")
        return wide.point(lambda value: value * (1 / 256)).convert("L")
    if mode == "F":
        return image.convert("L")
    if mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # P, CMYK (Adobe's inverted kind too), YCbCr, LAB, HSV
