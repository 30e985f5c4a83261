"""Getting an input image's bytes: from a ``data:`` URI, or from a client's URL.

A URL is fetched only through the one pinned, address-checked fetch
(``actors/fetch.py``): each hop's address checked and connected to, redirects
checked at every hop, the body capped while it streams, and (around it, by the
caller) a deadline for the whole fetch. What comes back is the bytes and the
label they came with (the ``data:`` media type or the ``Content-Type``), which
``actors/images/validate.py`` holds against the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

from actors.fetch import Fetcher, FetchFailed, TooLarge, read_capped
from actors.images.validate import ImageRefused
from actors.targets import TargetRefused

_SPACE = re.compile(rb"\s+")


def split_data_uri(uri: str) -> tuple[bytes, str]:
    """The bytes and media type of a base64 ``data:`` URI."""
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise ImageRefused("is not a base64 data: URI")
    try:
        data = base64.b64decode(_SPACE.sub(b"", payload.encode("ascii")), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ImageRefused("is not valid base64") from None
    return data, header[5:].split(";")[0].lower()


async def fetch_image(fetcher: Fetcher, url: str, max_bytes: int) -> tuple[bytes, str | None]:
    """The body of ``url`` and its content type; ``ImageRefused`` for anything but
    a 200 of at most ``max_bytes`` from an address Easel may reach."""
    try:
        async with fetcher.stream("GET", url) as response:
            if response.status_code != 200:
                raise ImageRefused(f"({url}) answered HTTP {response.status_code}")
            label = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return await read_capped(response, max_bytes), label or None
    except TargetRefused as exc:
        raise ImageRefused(f"({url}) is not fetched: {exc}") from None
    except FetchFailed as exc:
        raise ImageRefused(f"({url}) could not be fetched: {exc}") from None
    except TooLarge:
        raise ImageRefused(f"({url}) is larger than {max_bytes} bytes") from None
