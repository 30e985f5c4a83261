"""Presets and ``[preprocess]``: the shipped ones, an operator's overrides, a
submission's ``preprocess``; and where prepared inputs are published."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.conversion import Invalid
from actors.images.presets import BUILTIN_PRESETS, NONE, Preprocess, preset_problems, resolve
from actors.images.publish import LocalInputs, NotPublishable
from daemon.config import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "easel.toml"
    path.write_text(text)
    return path


def test_shipped_config_holds_the_builtin_presets(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), environ={})
    assert config.preprocess.presets == BUILTIN_PRESETS
    assert config.preprocess.input_url_days == 1


def test_an_operator_overrides_a_preset_key_by_key_and_adds_one(tmp_path: Path) -> None:
    config = load(write(tmp_path, """
[preprocess.presets.fast]
quality = 60

[preprocess.presets.thumb]
format = "webp"
fit = "cover"
width = 256
height = 256
maxSizeKB = 40
"""), environ={})
    presets = config.preprocess.presets
    assert presets["fast"] == Preprocess(format="jpeg", max_width=1024, max_height=1024, quality=60)
    assert presets["thumb"] == Preprocess(format="webp", fit="cover", width=256, height=256,
                                          max_size_kb=40)
    assert presets["standard"] == BUILTIN_PRESETS["standard"]


@pytest.mark.parametrize(("text", "problem"), [
    ("[preprocess]\ninput_url_days = 8\n", "input_url_days"),
    ("[preprocess.presets.fast]\nquality = 0\n", "must be 1 to 100"),
    ("[preprocess.presets.fast]\nformat = \"tiff\"\n", "must be one of png, jpeg, webp, keep"),
    ("[preprocess.presets.none]\nquality = 50\n", "'none' is reserved"),
])
def test_bad_preprocess_config_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ={})
    assert problem in str(caught.value)


def test_a_submissions_preprocess() -> None:
    assert resolve("fast", BUILTIN_PRESETS) is BUILTIN_PRESETS["fast"]
    assert resolve(NONE, BUILTIN_PRESETS) is None
    assert resolve({"preset": "standard", "maxWidth": 512, "sharpen": True}, BUILTIN_PRESETS) == (
        Preprocess(format="jpeg", max_width=512, max_height=2048, quality=85, sharpen=True))
    assert resolve({"fit": "cover", "width": 10, "height": 10}, BUILTIN_PRESETS) == Preprocess(
        fit="cover", width=10, height=10)
    with pytest.raises(Invalid, match="preset must be one of"):
        resolve({"preset": "nope"}, BUILTIN_PRESETS)


@pytest.mark.parametrize(("value", "problems"), [
    ("fast", []),
    (3, ["preprocess: expected a preset name or an object, got a number"]),
    ({"quality": "high"}, ["preprocess.quality: expected an integer, got a string"]),
    ({"max_width": 10, "maxWidth": 20}, ["preprocess: maxWidth: given twice (also as max_width)"]),
    ({"colour": "red"}, ["preprocess: unknown key(s): colour (known: format, fit, width, height, "
                         "max_width, max_height, quality, max_size_kb, sharpen, denoise, "
                         "autocontrast)"]),
])
def test_preprocess_problems(value: object, problems: list[str]) -> None:
    assert preset_problems(value, BUILTIN_PRESETS, "preprocess") == problems


async def test_local_inputs_publish_by_content_and_expire(tmp_path: Path) -> None:
    now = [1_000_000.0]
    inputs = LocalInputs(tmp_path, "https://easel.example/", days=2, clock=lambda: now[0])
    url = await inputs.publish_input(b"\xff\xd8\xffjpeg", "image/jpeg")
    assert url.startswith("https://easel.example/media/inputs/") and url.endswith(".jpg")
    assert await inputs.publish_input(b"\xff\xd8\xffjpeg", "image/jpeg") == url  # one file
    path = tmp_path / "inputs" / url.rsplit("/", 1)[1]
    assert path.read_bytes() == b"\xff\xd8\xffjpeg"
    os.utime(path, (now[0] - 2 * 86400 - 1,) * 2)  # published more than two days ago
    fresh = await inputs.publish_input(b"\x89PNGpng", "image/png")
    assert path.exists()  # the sweep runs at most once an hour
    now[0] += 3600
    await inputs.publish_input(b"\x89PNGpng", "image/png")
    assert not path.exists() and (tmp_path / "inputs" / fresh.rsplit("/", 1)[1]).exists()


async def test_nothing_is_published_without_a_public_base_url(tmp_path: Path) -> None:
    with pytest.raises(NotPublishable, match="public_base_url is not set"):
        await LocalInputs(tmp_path, "", days=1).publish_input(b"x", "image/png")
    assert not (tmp_path / "inputs").exists()
