"""The input-image pipeline, step by step and preset by preset, on real images made
here with Pillow; and the inputs it must refuse."""

from __future__ import annotations

import io
import zlib
from typing import Any

import pytest
from PIL import Image, ImageOps

from actors.images import compress, enhance, resize
from actors.images.pipeline import Prepared, process
from actors.images.presets import BUILTIN_PRESETS, Preprocess
from actors.images.validate import ImageRefused, Limits, check_header
from tests.images import encode, jpeg, photo, png

LIMITS = Limits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def run(data: bytes, label: str | None = None, limits: Limits = LIMITS, **steps: Any) -> Prepared:
    return process(data, label, Preprocess(**steps), limits)


def opened(prepared: Prepared) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.data))
    image.load()
    return image


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


# -- validate: what is decoded, and how --------------------------------------------------


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    data = jpeg((60, 40), orientation=orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = opened(run(data, format="png"))
    assert out.size == expected.size == ((60, 40) if orientation == 3 else (40, 60))
    for corner in ((0, 0), (out.width - 1, 0), (0, out.height - 1)):
        assert close(out.getpixel(corner), expected.getpixel(corner)), corner


def test_exif_orientation_is_applied_to_a_drafted_jpeg() -> None:
    """The reduced decode (``draft``) is sized for the image as it will stand."""
    data = jpeg((1600, 800), orientation=6)
    out = opened(run(data, format="jpeg", max_width=200, max_height=400))
    assert out.size == (200, 400)


def test_png_with_alpha_to_jpeg_lands_on_white() -> None:
    image = Image.new("RGBA", (20, 10), (200, 0, 0, 255))
    image.paste((0, 0, 0, 0), (10, 0, 20, 10))  # right half transparent
    out = opened(run(encode(image, "PNG"), format="jpeg"))
    assert out.format == "JPEG" and out.mode == "RGB"
    assert close(out.getpixel((2, 5)), (200, 0, 0))
    assert close(out.getpixel((17, 5)), (255, 255, 255))


def test_png_with_alpha_kept_keeps_its_alpha() -> None:
    image = Image.new("RGBA", (20, 10), (0, 0, 200, 128))
    out = opened(run(encode(image, "PNG"), format="keep"))
    assert out.format == "PNG" and out.mode == "RGBA" and out.getpixel((5, 5))[3] == 128


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    out = opened(run(data, format="keep"))
    assert out.format == "JPEG" and out.mode == "RGB"
    assert close(out.getpixel((8, 8)), (255, 0, 0), tolerance=40)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    wide = (Image.linear_gradient("L").resize((64, 64)).convert("I").point(lambda v: v * 257)
            .convert("I;16"))
    data = encode(wide, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = opened(run(data, format="png"))
    assert out.mode == "L"
    low, high = out.getextrema()
    assert low < 10 and high > 245  # the whole range, not everything at 255


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100,
                   loop=0, **({"lossless": True} if fmt == "WEBP" else {}))
    assert getattr(Image.open(io.BytesIO(buffer.getvalue())), "n_frames", 1) == 2
    out = opened(run(buffer.getvalue(), format="keep"))
    assert out.format == ("PNG" if fmt == "GIF" else "WEBP")  # providers take no GIF
    assert close(out.convert("RGB").getpixel((8, 8)), (255, 0, 0))


def test_none_checks_in_full_and_keeps_the_bytes() -> None:
    data = jpeg()
    kept = process(data, "image/jpeg", None, LIMITS)
    assert kept.data == data and kept.content_type == "image/jpeg" and kept.size == (64, 48)
    with pytest.raises(ImageRefused, match="truncated"):
        process(data[: len(data) // 2], None, None, LIMITS)


# -- format -------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "pillow", "content_type"), [
    ("png", "PNG", "image/png"), ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp"),
    ("keep", "JPEG", "image/jpeg"),
])
def test_format(fmt: str, pillow: str, content_type: str) -> None:
    prepared = run(jpeg(), format=fmt)
    assert prepared.content_type == content_type and opened(prepared).format == pillow


def test_jpg_is_another_name_for_jpeg() -> None:
    from actors.images.presets import structure_preset
    assert structure_preset({"format": "jpg"}).format == "jpeg"


# -- resize -------------------------------------------------------------------------------

WIDE = (200, 100)


@pytest.mark.parametrize(("steps", "size"), [
    ({"fit": "fit", "width": 100, "height": 100}, (100, 50)),
    ({"fit": "fit", "width": 400, "height": 400}, (200, 100)),  # fit never enlarges
    ({"fit": "fill", "width": 100, "height": 100}, (100, 100)),
    ({"fit": "cover", "width": 100, "height": 100}, (100, 100)),
    ({"fit": "contain", "width": 100, "height": 100}, (100, 100)),
    ({"width": 50}, (50, 25)),
    ({"fit": "fill", "height": 50}, (100, 50)),
    ({"max_width": 80}, (80, 40)),
    ({"max_height": 20}, (40, 20)),
    ({"max_width": 500, "max_height": 500}, (200, 100)),  # maximums never enlarge
    ({"fit": "cover", "width": 300, "height": 300, "max_width": 150}, (150, 150)),
])
def test_resize_sizes(steps: dict[str, Any], size: tuple[int, int]) -> None:
    assert opened(run(png(WIDE), format="png", **steps)).size == size


def test_cover_crops_the_middle_and_contain_pads() -> None:
    image = Image.new("RGB", WIDE, (0, 0, 255))
    image.paste((255, 0, 0), (50, 0, 150, 100))  # a red middle between blue sides
    covered = opened(run(encode(image, "PNG"), format="png", fit="cover", width=100, height=100))
    assert {covered.getpixel((x, 50)) for x in (2, 50, 97)} == {(255, 0, 0)}
    contained = opened(run(encode(image, "PNG"), format="png", fit="contain", width=100,
                           height=100))
    assert contained.getpixel((50, 5)) == (255, 255, 255)  # padding above
    assert close(contained.getpixel((50, 50)), (255, 0, 0))
    alpha = opened(run(encode(image.convert("RGBA"), "PNG"), format="png", fit="contain",
                       width=100, height=100))
    assert alpha.getpixel((50, 5))[3] == 0  # transparent padding where there is alpha


def test_draft_size_covers_the_plan() -> None:
    steps = Preprocess(max_width=1024, max_height=1024)
    assert resize.draft_size((4000, 3000), 1, steps) == (1024, 768)
    assert resize.draft_size((4000, 3000), 6, steps) == (1024, 768)  # upright: 768x1024
    assert resize.draft_size((100, 100), 1, steps) == (100, 100)


# -- compress -----------------------------------------------------------------------------


def noisy(size: int = 400) -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise((size, size), 60)] * 3)


def test_quality_trades_size() -> None:
    data = encode(noisy(), "PNG")
    assert len(run(data, format="jpeg", quality=30).data) < len(run(data, format="jpeg",
                                                                  quality=95).data)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_max_size_kb_is_met(fmt: str) -> None:
    data = encode(noisy(), "PNG")
    unbounded = run(data, format=fmt, quality=95)
    assert len(unbounded.data) > 30 * 1024
    bounded = run(data, format=fmt, quality=95, max_size_kb=30)
    assert len(bounded.data) <= 30 * 1024
    if fmt != "png":  # the quality search alone was enough: the size is kept
        assert bounded.size == unbounded.size


def test_max_size_kb_picks_the_highest_quality_that_fits() -> None:
    image = noisy(200)
    limit = len(compress._save(image, "jpeg", 70))
    assert len(compress._save(image, "jpeg", 71)) > limit
    assert compress._best_quality(image, "jpeg", 95, limit) == compress._save(image, "jpeg", 70)
    assert compress._best_quality(image, "jpeg", 95, 100) is None  # not even MIN_QUALITY


# -- enhance ------------------------------------------------------------------------------


def test_autocontrast_stretches() -> None:
    dull = Image.linear_gradient("L").resize((64, 64)).point(lambda v: 100 + v // 8)
    out = opened(run(encode(dull.convert("RGB"), "PNG"), format="png", autocontrast=True))
    low, high = out.convert("L").getextrema()
    assert low < 20 and high > 235


def test_denoise_removes_speckles_and_sharpen_changes_edges() -> None:
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    image.putpixel((16, 16), (255, 255, 255))
    out = opened(run(encode(image, "PNG"), format="png", denoise=True))
    assert out.getpixel((16, 16)) == (0, 0, 0)
    soft = Image.new("RGB", (64, 64), (40, 40, 40))
    soft.paste((220, 220, 220), (32, 0, 64, 64))
    soft = soft.resize((16, 16)).resize((64, 64))  # a blurred edge
    sharpened = enhance.enhance(soft, Preprocess(sharpen=True))
    assert sharpened.tobytes() != soft.tobytes()


def test_enhance_keeps_alpha() -> None:
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 77))
    out = enhance.enhance(image, Preprocess(autocontrast=True, sharpen=True, denoise=True))
    assert out.mode == "RGBA" and out.getpixel((4, 4))[3] == 77


# -- presets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_PRESETS))
def test_each_preset_on_a_large_photo(name: str) -> None:
    steps = BUILTIN_PRESETS[name]
    data = jpeg((2400, 1600), orientation=6)  # upright: 1600 wide, 2400 high
    prepared = process(data, "image/jpeg", steps, LIMITS)
    out = opened(prepared)
    assert out.format == ("JPEG" if steps.format in ("jpeg", "keep") else steps.format.upper())
    assert out.height > out.width  # turned upright
    assert out.width <= (steps.max_width or 10**6) and out.height <= (steps.max_height or 10**6)
    assert out.height == min(2400, steps.max_height or 2400)
    if steps.max_size_kb:
        assert len(prepared.data) <= steps.max_size_kb * 1024


def test_high_keeps_a_png_lossless() -> None:
    source = png((300, 200))
    out = opened(process(source, "image/png", BUILTIN_PRESETS["high"], LIMITS))
    assert out.format == "PNG" and out.tobytes() == Image.open(io.BytesIO(source)).tobytes()


# -- refused ------------------------------------------------------------------------------


def _with_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (CRC fixed up)."""
    ihdr = bytearray(data[16:29])  # the IHDR chunk's data
    ihdr[0:4], ihdr[4:8] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    crc = zlib.crc32(b"IHDR" + bytes(ihdr)).to_bytes(4, "big")
    return data[:16] + bytes(ihdr) + crc + data[33:]


def test_pixel_cap_is_checked_from_the_header() -> None:
    bomb = _with_size(png(), 9_000, 9_000)
    with pytest.raises(ImageRefused, match="9000x9000, more than the 50000000 pixels"):
        check_header(bomb, "image/png", LIMITS)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_bomb_warning_is_an_error() -> None:
    bomb = _with_size(png(), 10_000, 10_000)  # above Pillow's 89 M pixels, under our cap
    generous = Limits(LIMITS.max_bytes, max_pixels=10**10)
    with pytest.raises(ImageRefused, match="decompression bomb"):
        process(bomb, None, Preprocess(), generous)


def test_bytes_cap() -> None:
    with pytest.raises(ImageRefused, match="more than the 100 taken"):
        process(png((64, 64)), None, Preprocess(), Limits(max_bytes=100, max_pixels=10**6))


@pytest.mark.parametrize("data", [
    jpeg((200, 200))[:-300],
    png((64, 64))[:-40],
    encode(photo((64, 64)), "WEBP")[:-50],
])
def test_truncated(data: bytes) -> None:
    with pytest.raises(ImageRefused, match="truncated|cannot be decoded"):
        process(data, None, Preprocess(), LIMITS)


ZIP = b"PK\x03\x04" + b"\x00" * 26 + b"evil.php" + b"<?php system($_GET['c']); ?>"


@pytest.mark.parametrize("data", [png() + ZIP, jpeg() + ZIP, encode(photo(), "WEBP") + ZIP,
                                  png() + b"<html><script>alert(1)</script></html>"])
def test_polyglot(data: bytes) -> None:
    with pytest.raises(ImageRefused, match="bytes after the end of its"):
        check_header(data, None, LIMITS)


def test_a_multi_picture_jpeg_is_not_a_polyglot() -> None:
    check_header(jpeg() + jpeg((8, 8)), "image/jpeg", LIMITS)


def test_progressive_and_restart_marked_jpegs_are_read_to_their_end() -> None:
    for data in (jpeg((300, 200), progressive=True), jpeg((300, 200), restart_marker_blocks=1)):
        check_header(data, "image/jpeg", LIMITS)
        with pytest.raises(ImageRefused, match="bytes after the end"):
            check_header(data + ZIP, "image/jpeg", LIMITS)


@pytest.mark.parametrize(("data", "label", "problem"), [
    (jpeg(), "image/png", "is labelled image/png but holds a JPEG image"),
    (png(), "image/webp", "is labelled image/webp but holds a PNG image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/png",
     "is not a PNG, JPEG, WebP or GIF image"),
    (encode(photo(), "BMP"), None, "is not a PNG, JPEG, WebP or GIF image"),
])
def test_mislabelled_or_not_allowed(data: bytes, label: str | None, problem: str) -> None:
    with pytest.raises(ImageRefused, match=problem):
        check_header(data, label, LIMITS)


def test_jpg_label_is_jpeg() -> None:
    check_header(jpeg(), "image/jpg", LIMITS)
