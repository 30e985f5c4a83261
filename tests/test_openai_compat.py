"""The OpenAI-compatible ``/v1`` API, held to the protocol by the official ``openai``
SDK (sync client in a thread, async client in the test's trio run) against an
embedded Easel with the sandbox provider (and the OpenAI simulator where a
provider's 429 is needed)."""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import trio
from PIL import Image

from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.openai import OpenaiSimulator
from tests.test_api import FAST_SANDBOX
from tests.test_openai import KEY

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

#: Images that take a second to draw, and an image wait shorter than that.
SLOW_IMAGES = """
[providers.sandbox]
delay = 1.0

[openai_compat]
image_wait = 0.3
"""


def sync_client(easel: Any, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{easel.base_url}/v1", api_key="unused", max_retries=0,
                         **{"timeout": 60, **options})


def async_client(easel: Any, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{easel.base_url}/v1", api_key="unused", max_retries=0,
                              **{"timeout": 60, **options})


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def png(colour: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def image_format(data: bytes) -> str | None:
    return Image.open(io.BytesIO(data)).format


async def test_images_generate_as_urls_and_b64(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    with sync_client(easel) as client:
        by_url = await in_thread(lambda: client.images.generate(
            model="sandbox-image", prompt="a red apple", n=2, size="1024x1024"))
        by_b64 = await in_thread(lambda: client.images.generate(
            model="sandbox-image", prompt="a red apple", response_format="b64_json"))
    assert by_url.created > 0 and len(by_url.data) == 2
    for item in by_url.data:
        assert item.b64_json is None and item.url.startswith(f"{easel.base_url}/media/gen_")
        download = await easel.client.get(item.url)
        assert image_format(download.content) == "PNG"
    [item] = by_b64.data
    assert item.url is None and image_format(base64.b64decode(item.b64_json)) == "PNG"
    # Each request is an Easel job like any other, its OpenAI fields translated.
    job_id = by_url.data[0].url.split("/")[-2]
    job = (await easel.client.get(f"/api/external/generation/{job_id}")).json()
    assert (job["numberOfOutputs"], job["parameters"]) == (2, {"size": "1024x1024"})


async def test_idempotency_key_answers_the_same_job(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    async with async_client(easel) as client:
        answers = [await client.images.generate(
            model="sandbox-image", prompt="a pear", extra_headers={"Idempotency-Key": "k-1"})
            for _ in range(2)]
        other = await client.images.generate(model="sandbox-image", prompt="a pear")
    assert answers[0].data[0].url == answers[1].data[0].url != other.data[0].url


async def test_images_edit_takes_one_or_several_files(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    async with async_client(easel) as client:
        one = await client.images.edit(model="sandbox-image", prompt="add a hat",
                                       image=("a.png", png(), "image/png"))
        many = await client.images.edit(
            model="sandbox-image", prompt="combine", response_format="b64_json", n=2,
            image=[("a.png", png(), "image/png"), ("b.bin", png((9, 9, 9)), "application/x")])
    assert image_format((await easel.client.get(one.data[0].url)).content) == "PNG"
    assert len(many.data) == 2
    assert all(image_format(base64.b64decode(item.b64_json)) == "PNG" for item in many.data)
    [job] = (await easel.client.get("/api/external/generation", params={"limit": 1})).json()[
        "data"]
    assert job["numberOfOutputs"] == 2 and job["prompt"] == "combine"
    stored = await easel.runtime.get_job(job["id"])
    assert [image[:22] for image in stored.input_images] == ["data:image/png;base64,"] * 2


async def test_videos_create_retrieve_download_and_list(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    async with async_client(easel) as client:
        created = await client.videos.create(model="sandbox-video", prompt="a blue car",
                                             seconds="4", size="720x1280")
        assert (created.object, created.status, created.model) == ("video", "queued",
                                                                   "sandbox-video")
        assert (created.seconds, created.size, created.prompt) == ("4", "720x1280", "a blue car")
        with trio.fail_after(30):
            video = created
            while video.status not in ("completed", "failed"):
                await trio.sleep(0.05)
                video = await client.videos.retrieve(created.id)
        assert video.status == "completed" and video.progress == 100, video
        assert video.completed_at is not None and video.error is None
        content = await client.videos.download_content(created.id)
        assert content.content[4:8] == b"ftyp"  # an MP4
    with sync_client(easel) as client:
        second = await in_thread(lambda: client.videos.create(model="sandbox-video",
                                                              prompt="a green car"))
        page = await in_thread(lambda: client.videos.list(limit=1))
        everything = await in_thread(lambda: [v.id for v in client.videos.list(limit=1)])
        oldest = await in_thread(lambda: client.videos.list(order="asc"))
    assert [v.id for v in page.data] == [second.id] and page.has_more
    assert everything == [second.id, created.id]  # the SDK followed the pages
    assert [v.id for v in oldest.data] == [created.id, second.id]


async def test_error_classes_and_envelope(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    async with async_client(easel) as client:
        with pytest.raises(openai.BadRequestError) as unknown_model:
            await client.images.generate(model="dall-e-9", prompt="x")
        with pytest.raises(openai.BadRequestError) as video_model:
            await client.images.generate(model="sandbox-video", prompt="x")
        with pytest.raises(openai.BadRequestError) as too_many:
            await client.images.generate(model="sandbox-image", prompt="x", n=11)
        with pytest.raises(openai.BadRequestError) as no_format:
            await client.images.generate(model="sandbox-image", prompt="x",
                                         response_format="svg")  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as moderated:
            await client.images.generate(model="sandbox-image", prompt="x [moderate]")
        with pytest.raises(openai.BadRequestError) as not_an_image:
            await client.images.edit(model="sandbox-image", prompt="x",
                                     image=("a.png", b"not a picture", "image/png"))
        with pytest.raises(openai.NotFoundError) as missing:
            await client.videos.retrieve("gen_nope")
        with pytest.raises(openai.NotFoundError) as unknown_path:
            await client.get("/nothing/here", cast_to=httpx.Response)
        with pytest.raises(openai.InternalServerError) as failed:
            await client.images.generate(model="sandbox-image", prompt="x [fail]")
        unfinished = await client.videos.create(model="sandbox-video", prompt="slow")
        with pytest.raises(openai.ConflictError) as not_ready:
            await client.videos.download_content(unfinished.id)
    assert unknown_model.value.param == "model" and unknown_model.value.code == "invalid_request"
    assert "sandbox-image" in unknown_model.value.message
    assert video_model.value.param == "model" and "/v1/videos" in video_model.value.message
    assert (too_many.value.param, too_many.value.code) == ("n", "invalid_parameters")
    assert no_format.value.param == "response_format"
    assert moderated.value.code == "content_policy_violation"
    assert moderated.value.body["job_id"].startswith("gen_")
    assert not_an_image.value.param == "image"
    for error in (unknown_model, missing, unknown_path):
        assert error.value.type == "invalid_request_error"
    assert missing.value.code == "not_found" and unknown_path.value.code == "not_found"
    assert failed.value.status_code == 502 and failed.value.type == "server_error"
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert not_ready.value.code == "conflict"
    body = unknown_model.value.response.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}


async def test_rate_limit_from_the_provider_is_a_rate_limit_error(
    easel_daemon, nursery: trio.Nursery
) -> None:
    sim = OpenaiSimulator(Knobs(duration=0.02, token=KEY), quota_exhausted=True)
    url = await nursery.start(serve_simulator, sim)
    easel = await easel_daemon(f"""
[providers.openai]
base_url = "{url}/v1"
api_key = "{KEY}"
""")
    async with async_client(easel) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.images.generate(model="gpt-image-1", prompt="a fox")
    assert (limited.value.type, limited.value.code) == ("insufficient_quota", "insufficient_quota")
    assert limited.value.body["job_id"].startswith("gen_")


async def test_draining_is_a_server_error_the_sdk_may_retry(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    easel.runtime.lifecycle.start_drain()
    async with async_client(easel) as client:
        with pytest.raises(openai.InternalServerError) as draining:
            await client.videos.create(model="sandbox-video", prompt="late")
    assert draining.value.status_code == 503 and draining.value.code == "shutting_down"
    headers = draining.value.response.headers
    assert headers["x-should-retry"] == "true" and int(headers["retry-after"]) >= 1


async def test_a_job_longer_than_the_wait_names_its_id(easel_daemon) -> None:
    easel = await easel_daemon(SLOW_IMAGES)
    with sync_client(easel) as client:
        with pytest.raises(openai.InternalServerError) as waited:
            await in_thread(lambda: client.images.generate(model="sandbox-image", prompt="x"))
    error = waited.value
    assert (error.status_code, error.code, error.type) == (504, "job_still_running",
                                                           "timeout_error")
    assert error.response.headers["x-should-retry"] == "false"
    job = await easel.wait(error.body["job_id"])  # nothing lost: the job goes on
    assert job["status"] == "SUCCESS"


async def test_a_client_timeout_is_an_api_timeout_error(easel_daemon) -> None:
    easel = await easel_daemon(SLOW_IMAGES)
    async with async_client(easel, timeout=0.1) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.images.generate(model="sandbox-image", prompt="x")


@pytest.mark.skipif(importlib.util.find_spec("actors.keys") is None,
                    reason="API keys (actors/keys.py and [auth] require_keys) are not on this "
                           "branch: every request is the anonymous caller, none answers 401")
async def test_a_wrong_key_is_an_authentication_error(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX + "\n[auth]\nrequire_keys = true\n")
    async with async_client(easel) as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.images.generate(model="sandbox-image", prompt="x")
    assert (refused.value.type, refused.value.code) == ("authentication_error",
                                                         "authentication_failed")


@pytest.mark.parametrize(("result", "path"), [
    ({"type": "image", "storage": "local", "key": "gen_1/0.png"}, "gen_1/0.png"),
    ({"type": "image", "key": "gen_1/0.png"}, "gen_1/0.png"),  # local is the default
    ({"type": "video", "storage": "s3", "key": "easel/2026/12/01/gen_1/0.mp4"}, None),
    ({"type": "image", "url": "/media/gen_1/0.png"}, "gen_1/0.png"),  # stored before keys
    ({"type": "image", "url": "https://provider.example/out.png"}, None),  # kept there
    ("not a result", None),
])
def test_only_outputs_in_the_media_directory_are_read_back(result: Any, path: str | None) -> None:
    """b64_json and video downloads read the media directory for these; the others
    (a bucket's, a provider's) are offered by their URL."""
    from actors.storage.links import local_output

    assert local_output(result) == path
