"""How a provider takes its input images, declared in its ``PROVIDER`` record.

``InputSpec.forms`` lists what the provider's API accepts, the first being the
form Easel makes when it prepares an image (after preprocessing, or to convert
one the provider cannot take as given):

- ``url``: an http(s) URL the provider fetches itself (Pollo takes nothing else):
  a prepared image is published under ``/media/inputs/`` for a limited time;
- ``base64``: the bare base64 of the file in a JSON body, no ``data:`` prefix
  (Kling, BFL);
- ``data_uri``: a ``data:image/...;base64,`` URI (Replicate, fal);
- ``bytes``: the file itself, as a part of a multipart body (OpenAI's edits). It
  travels to the adapter as a ``data:`` URI, which the adapter decodes into the
  part.

``InputSpec.preset`` is the preset applied when a submission names none.
"""

from __future__ import annotations

import enum

import attrs


class Form(str, enum.Enum):
    URL = "url"
    BASE64 = "base64"
    DATA_URI = "data_uri"
    BYTES = "bytes"


@attrs.frozen
class InputSpec:
    """What a provider accepts as input images, and the preset it gets by default."""

    forms: tuple[Form, ...] = (Form.URL, Form.DATA_URI)
    preset: str | None = None

    @property
    def made(self) -> Form:
        """The form a prepared image is made in."""
        return self.forms[0]

    def accepts(self, image: str) -> bool:
        """Whether ``image`` (an http(s) URL or a ``data:`` URI, as submitted) can go
        to the provider as it is. A ``data:`` URI serves the base64 form too: the
        adapter sends its payload without the prefix."""
        if image.startswith("data:"):
            return bool({Form.DATA_URI, Form.BASE64} & set(self.forms))
        return Form.URL in self.forms


def bare_base64(image: str) -> str:
    """An input image for a ``base64`` field: a ``data:`` URI's payload without its
    prefix (and without the whitespace a client may have wrapped it in); a URL, or
    base64 already bare, as it is."""
    if image.startswith("data:"):
        return "".join(image.partition(",")[2].split())
    return image
