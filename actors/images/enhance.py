"""Optional touch-ups, each a flag of ``Preprocess``: denoise, autocontrast, sharpen.

In that order: noise is removed before contrast is stretched (or the stretch
would amplify it) and sharpening comes last (sharpening noise makes more of it).
Alpha is left as it is: the filters work on the colour channels only.
"""

from __future__ import annotations

from PIL import Image, ImageFilter, ImageOps

from actors.images.presets import Preprocess

#: A light unsharp mask: visible on a downscaled photo, no halos on flat areas.
SHARPEN = ImageFilter.UnsharpMask(radius=1.5, percent=70, threshold=3)
#: Per-channel median of each 3x3 neighbourhood: speckle gone, edges kept.
DENOISE = ImageFilter.MedianFilter(3)
#: Percent of the darkest and lightest pixels ignored when stretching contrast.
AUTOCONTRAST_CUTOFF = 1


def wanted(steps: Preprocess) -> bool:
    return steps.denoise or steps.autocontrast or steps.sharpen


def enhance(image: Image.Image, steps: Preprocess) -> Image.Image:
    """``image`` (``L``, ``RGB`` or ``RGBA``) with the asked-for touch-ups."""
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    colour = image.convert("RGB") if alpha is not None else image
    if steps.denoise:
        colour = colour.filter(DENOISE)
    if steps.autocontrast:
        colour = ImageOps.autocontrast(colour, cutoff=AUTOCONTRAST_CUTOFF)
    if steps.sharpen:
        colour = colour.filter(SHARPEN)
    if alpha is not None:
        colour.putalpha(alpha)
    return colour
