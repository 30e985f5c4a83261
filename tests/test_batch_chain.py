"""A job's stored output as a later job's input image: the image -> video chain.

A batch item that takes its dependency's output (``{"fromItem": ..., "output":
0}``) is released with ``easel:output/<job_id>/<n>`` in its ``input_images``; the
provider's input preparer reads that output from storage and sends it in the
provider's form. The chain runs through the batch API; the failure cases put the
reference on a job directly (as the batch actor does). The video provider's
simulator shows what arrived: the image's stored bytes, exactly. A client can
never send such a reference itself.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from actors.batches.model import output_ref
from actors.jobs import Job, new_job_id
from tests.conftest import EmbeddedDaemon
from tests.simulators.base import Knobs, Simulator, serve_simulator
from tests.simulators.kling import KlingSimulator
from tests.simulators.pollo import PolloSimulator

POLLO_KEY = "sim-key"
BATCH = "/api/external/generation/batch"
PUBLIC = "https://easel.example"


@pytest.fixture
async def chain(
    nursery: trio.Nursery, easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]]
) -> tuple[EmbeddedDaemon, dict[str, Simulator]]:
    sims: dict[str, Simulator] = {
        "kling": KlingSimulator(Knobs(duration=60), access_key="ak", secret_key="sk"),
        "pollo": PolloSimulator(knobs=Knobs(token=POLLO_KEY, duration=60)),
    }
    url = {name: await nursery.start(serve_simulator, sim) for name, sim in sims.items()}
    easel = await easel_daemon(f"""
[providers.sandbox]
delay = 0.01

[providers.kling]
base_url = "{url['kling']}"
access_key = "ak"
secret_key = "sk"

[providers.pollo]
base_url = "{url['pollo']}/api/platform"
api_key = "{POLLO_KEY}"

[models.kling-v2-1-master]
polling = {{ strategy = "fixed", interval = 0.05 }}
""", daemon_toml=f'public_base_url = "{PUBLIC}"')
    return easel, sims


async def received(sim: Simulator) -> str:
    with trio.fail_after(20):
        while not sim.received_images:
            await trio.sleep(0.02)
    [value] = sim.received_images
    return value


async def batch_end(easel: EmbeddedDaemon, batch_id: str, seconds: float = 60) -> dict[str, Any]:
    """The batch (``GET .../batch/{id}``) once it is no longer PROCESSING."""
    with trio.fail_after(seconds):
        while (batch := (await easel.client.get(f"{BATCH}/{batch_id}")).json())[
                "status"] == "PROCESSING":
            await trio.sleep(0.05)
    return batch  # type: ignore[no-any-return]


async def an_image(easel: EmbeddedDaemon, prompt: str = "a red pear") -> tuple[str, bytes]:
    """A sandbox image made through the API: its job id and its stored bytes."""
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": prompt})
    job = await easel.wait(response.json()["id"])
    assert job["status"] == "SUCCESS", job
    [stored] = (await easel.runtime.get_job(job["id"])).results
    return job["id"], (easel.state_dir / "media" / stored["key"]).read_bytes()


async def fed(easel: EmbeddedDaemon, model: str, image: str, **fields: Any) -> str:
    """A job whose input image is ``image``, stored as the batch actor releases it
    (past validation, which refuses such references from clients)."""
    spec = easel.runtime.catalog[model]
    job, _ = await easel.runtime.submit(Job(
        id=new_job_id(), model=model, provider=spec.provider,
        provider_model=spec.provider_model, prompt="make it move", input_images=[image],
        **fields))
    return job.id


async def test_an_image_then_a_video_of_it_as_one_batch(
    chain: tuple[EmbeddedDaemon, dict[str, Simulator]],
) -> None:
    easel, sims = chain
    sims["kling"].knobs = attrs.evolve(sims["kling"].knobs, duration=0.2)
    response = await easel.client.post(BATCH, json={"requests": [
        {"custom_id": "move", "modelIdentifier": "kling-v2-1-master", "prompt": "make it move",
         "input_images": [{"fromItem": "still", "output": 0}], "preprocess": "none"},
        {"custom_id": "still", "modelIdentifier": "sandbox-image", "prompt": "a green pear"},
    ]})
    assert response.status_code == 202, response.text
    batch_id = response.json()["batchId"]
    batch = await batch_end(easel, batch_id)
    assert batch["status"] == "COMPLETED", batch
    tasks = {task["customId"]: task for task in batch["tasks"]}
    # In completion order: the video waited for its image.
    lines = (await easel.client.get(f"{BATCH}/{batch_id}/results")).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == ["still", "move"]
    still = tasks["still"]["id"]
    [stored] = (await easel.runtime.get_job(still)).results
    image = (easel.state_dir / "media" / stored["key"]).read_bytes()
    # Kling received the image as stored, to the byte (bare base64, its form).
    assert base64.b64decode(await received(sims["kling"])) == image
    video = await easel.runtime.get_job(tasks["move"]["id"])
    assert video.input_images == [output_ref(still, 0)]
    assert tasks["move"]["results"][0]["type"] == "video"


async def test_the_video_provider_receives_the_images_stored_bytes(
    chain: tuple[EmbeddedDaemon, dict[str, Simulator]],
) -> None:
    easel, sims = chain
    image_id, stored = await an_image(easel)
    # "none": no steps, so the stored file goes as it is (checked, not re-encoded),
    # as bare base64: Kling's form.
    await fed(easel, "kling-v2-1-master", output_ref(image_id, 0), preprocess="none")
    assert base64.b64decode(await received(sims["kling"])) == stored


async def test_a_url_only_provider_gets_the_stored_output_published(
    chain: tuple[EmbeddedDaemon, dict[str, Simulator]],
) -> None:
    easel, sims = chain
    image_id, stored = await an_image(easel, "a blue plum")
    await fed(easel, "pollo-v1-6", output_ref(image_id, 0), preprocess="none")
    url = await received(sims["pollo"])
    assert url.startswith(f"{PUBLIC}/media/inputs/")
    served = await easel.client.get(url.removeprefix(PUBLIC))
    assert served.status_code == 200 and served.content == stored


@pytest.mark.parametrize(("reference", "says"), [
    ("easel:output/gen_0000/0", "names job gen_0000, which does not exist"),
    ("{image}/1", "is output 1 of job {image_id}, which has 1 output(s)"),
    ("easel:item/pear/0", "is not an image Easel can read"),
    ("{image}/0 removed", "is output 0 of job {image_id}, which is no longer stored"),
])
async def test_an_output_that_is_not_stored_fails_the_job_saying_why(
    chain: tuple[EmbeddedDaemon, dict[str, Simulator]], reference: str, says: str,
) -> None:
    easel, sims = chain
    image_id, _ = await an_image(easel)
    image, _, removed = reference.format(image=f"easel:output/{image_id}").partition(" ")
    if removed:
        [stored] = (await easel.runtime.get_job(image_id)).results
        (easel.state_dir / "media" / stored["key"]).unlink()
    job = await easel.wait(await fed(easel, "kling-v2-1-master", image))
    assert job["status"] == "FAILED"
    assert job["error"]["code"] == "INVALID_PARAMETERS"
    assert job["error"]["message"] == f"input_images[0] {says.format(image_id=image_id)}"
    assert job["error"]["isRetryable"] is False
    assert not sims["kling"].received_images


async def test_storage_that_does_not_answer_fails_the_job_as_retryable(
    chain: tuple[EmbeddedDaemon, dict[str, Simulator]],
) -> None:
    easel, sims = chain
    image_id, _ = await an_image(easel)
    media = easel.state_dir / "media"
    media.rename(media.with_name("media.away"))
    media.write_bytes(b"not a directory")  # every read under it fails
    job = await easel.wait(await fed(easel, "kling-v2-1-master", output_ref(image_id, 0)))
    assert job["error"]["code"] == "STORAGE_ERROR" and job["error"]["isRetryable"] is True
    assert job["error"]["message"] == "input_images[0]: the storage backend did not answer"
    assert not sims["kling"].received_images


async def test_a_client_cannot_send_a_reference(
    chain: tuple[EmbeddedDaemon, dict[str, Simulator]],
) -> None:
    easel, sims = chain
    image_id, _ = await an_image(easel)
    response = await easel.submit({"modelIdentifier": "kling-v2-1-master", "prompt": "p",
                                   "input_images": [output_ref(image_id, 0)]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_PARAMETERS"
    assert error["details"]["problems"] == [
        "input_images[0]: must be an http(s) URL or a data:image/(png|jpeg|jpg|webp);base64 URI"]
    jobs = (await easel.client.get("/api/external/generation")).json()
    assert [job["id"] for job in jobs["data"]] == [image_id]
