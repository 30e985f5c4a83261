"""Input images end to end: an embedded daemon in front of the provider simulators.

Each simulator refuses an input image in a form its provider does not take
(``tests/simulators/inputs.py``), so a job that reaches it with its image proves
the form; the tests then look at what arrived: its format and size after the
provider's default preset (or the job's own ``preprocess``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from PIL import Image

from tests.conftest import EmbeddedDaemon
from tests.images import data_uri, jpeg, png
from tests.simulators.base import Knobs, Simulator, serve_simulator
from tests.simulators.bfl import BflSimulator
from tests.simulators.kling import KlingSimulator
from tests.simulators.openai import OpenaiSimulator
from tests.simulators.pollo import PolloSimulator

KEY = "sim-key"
OPENAI_KEY = "sk-simulated-key-0123456789"
PUBLIC = "https://easel.example"

Sims = dict[str, Simulator]


@pytest.fixture
async def providers(
    nursery: trio.Nursery, easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]]
) -> tuple[EmbeddedDaemon, Sims]:
    sims: Sims = {
        "kling": KlingSimulator(Knobs(duration=60), access_key="ak", secret_key="sk"),
        "pollo": PolloSimulator(knobs=Knobs(token=KEY, duration=60)),
        "bfl": BflSimulator(Knobs(token=KEY, duration=60)),
        "openai": OpenaiSimulator(Knobs(token=OPENAI_KEY, duration=0.02)),
    }
    url = {name: await nursery.start(serve_simulator, sim) for name, sim in sims.items()}
    easel = await easel_daemon(f"""
[preprocess]
input_url_days = 2

[providers.kling]
base_url = "{url['kling']}"
access_key = "ak"
secret_key = "sk"
# Input URLs below are the daemon's own, on loopback.
allow_private_inputs = true

[providers.pollo]
base_url = "{url['pollo']}/api/platform"
api_key = "{KEY}"

[providers.bfl]
base_url = "{url['bfl']}"
api_key = "{KEY}"

[providers.openai]
base_url = "{url['openai']}/v1"
api_key = "{OPENAI_KEY}"
""")
    return easel, sims


async def received(sim: Simulator, count: int = 1) -> list[str]:
    with trio.fail_after(20):
        while len(sim.received_images) < count:
            await trio.sleep(0.02)
    return sim.received_images


def image_of(value: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(value, validate=True)))
    image.load()
    return image


#: A portrait photo stored sideways (EXIF orientation 6): upright it is 1800x2600.
PHOTO = jpeg((2600, 1800), orientation=6)


async def submit(easel: EmbeddedDaemon, model: str, images: list[str], **extra: Any) -> str:
    response = await easel.submit({"modelIdentifier": model, "prompt": "make it move",
                                   "input_images": images, **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_each_provider_receives_its_declared_form(
    providers: tuple[EmbeddedDaemon, Sims],
) -> None:
    easel, sims = providers
    inline = data_uri(PHOTO, "image/jpeg")
    for model in ("kling-v2-1-master", "flux-pro", "gpt-image-1"):
        await submit(easel, model, [inline])

    # Kling and BFL: bare base64 (no data: prefix) of the "standard" preset's JPEG.
    for name in ("kling", "bfl"):
        [value] = await received(sims[name])
        image = image_of(value)
        assert image.format == "JPEG" and image.size == (1418, 2048), name  # upright, <= 2048
    # OpenAI: the file itself in the multipart edit; "high" keeps a JPEG a JPEG.
    [value] = await received(sims["openai"])
    assert image_of(value).format == "JPEG" and image_of(value).size == (1800, 2600)


async def test_pollo_without_a_public_base_url_fails_the_job(
    providers: tuple[EmbeddedDaemon, Sims],
) -> None:
    easel, sims = providers
    # No [daemon] public_base_url: an inline image cannot become a URL Pollo fetches.
    job_id = await submit(easel, "pollo-v1-6", [data_uri(PHOTO, "image/jpeg")])
    job = await easel.wait(job_id)
    assert job["error"]["code"] == "INVALID_PARAMETERS"
    assert job["error"]["message"].startswith("input_images[0]: pollo takes input images only as URLs")
    assert not sims["pollo"].received_images


async def test_pollo_gets_a_published_url(
    nursery: trio.Nursery, easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    sim = PolloSimulator(knobs=Knobs(token=KEY, duration=60))
    url = await nursery.start(serve_simulator, sim)
    toml = f"""
[providers.pollo]
base_url = "{url}/api/platform"
api_key = "{KEY}"
"""
    # A public name (Pollo would fetch from it); the test reads the same path
    # through the daemon's own address.
    easel = await easel_daemon(toml, daemon_toml=f'public_base_url = "{PUBLIC}"')
    await submit(easel, "pollo-v1-6", [data_uri(PHOTO, "image/jpeg")])
    [value] = await received(sim)
    assert value.startswith(f"{PUBLIC}/media/inputs/") and value.endswith(".jpg")
    served = await easel.client.get(value.removeprefix(PUBLIC))
    assert served.status_code == 200
    image = Image.open(io.BytesIO(served.content))
    assert image.format == "JPEG" and max(image.size) == 1920  # pollo-optimized
    assert len(served.content) <= 2048 * 1024


async def test_a_clients_url_is_fetched_checked_and_sent_in_the_providers_form(
    providers: tuple[EmbeddedDaemon, Sims],
) -> None:
    easel, sims = providers
    source = easel.state_dir / "media" / "sources"
    source.mkdir(parents=True)
    (source / "photo.jpg").write_bytes(PHOTO)
    (source / "cut.jpg").write_bytes(PHOTO[: len(PHOTO) // 2])
    await submit(easel, "kling-v2-1-master", [f"{easel.base_url}/media/sources/photo.jpg"],
                 preprocess={"preset": "fast", "maxWidth": 300})
    [value] = await received(sims["kling"])
    image = image_of(value)
    assert image.format == "JPEG" and image.width == 300 and image.height > image.width

    # A truncated image fails its job before anything is sent, naming the image.
    job = await easel.wait(await submit(
        easel, "kling-v2-1-master", [f"{easel.base_url}/media/sources/cut.jpg"]))
    assert job["status"] == "FAILED"
    assert job["error"]["code"] == "INVALID_PARAMETERS"
    assert job["error"]["message"].startswith("input_images[0] is truncated")
    assert job["error"]["details"]["image"] == "input_images[0]"
    assert len(sims["kling"].received_images) == 1


async def test_private_addresses_are_not_fetched_without_leave(
    providers: tuple[EmbeddedDaemon, Sims],
) -> None:
    easel, sims = providers
    (easel.state_dir / "media").mkdir(parents=True, exist_ok=True)
    (easel.state_dir / "media" / "photo.jpg").write_bytes(PHOTO)
    # BFL's section does not allow private inputs: the daemon's own address is refused.
    job = await easel.wait(await submit(
        easel, "flux-kontext-pro", [f"{easel.base_url}/media/photo.jpg"]))
    assert job["error"]["code"] == "INVALID_PARAMETERS"
    assert "is not fetched" in job["error"]["message"]
    assert not sims["bfl"].received_images


async def test_bad_inline_images_and_preprocess_are_refused_at_submission(
    providers: tuple[EmbeddedDaemon, Sims],
) -> None:
    easel, sims = providers
    response = await easel.submit({
        "modelIdentifier": "kling-v2-1-master", "prompt": "p",
        "input_images": [data_uri(png(), "image/png"), data_uri(jpeg(), "image/png")],
        "preprocess": {"format": "gif", "maxWidth": 0},
    })
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_PARAMETERS"
    assert sorted(error["details"]["problems"]) == [
        "input_images[1]: is labelled image/png but holds a JPEG image",
        "preprocess.format: must be one of png, jpeg, webp, keep",
        "preprocess.max_width: must be 1 to 16384",
    ]
    unknown = await easel.submit({"modelIdentifier": "kling-v2-1-master", "prompt": "p",
                                  "preprocess": "huge"})
    assert unknown.json()["error"]["details"]["problems"] == [
        "preprocess: must be none, an object, or a preset: fast, high, pollo-optimized, standard"]
    assert not sims["kling"].received_images


async def test_none_sends_an_accepted_image_as_given(
    providers: tuple[EmbeddedDaemon, Sims],
) -> None:
    easel, sims = providers
    inline = data_uri(PHOTO, "image/jpeg")
    await submit(easel, "kling-v2-1-master", [inline], preprocess="none")
    [value] = await received(sims["kling"])
    assert value == inline.partition(",")[2]  # the same bytes, bare base64
