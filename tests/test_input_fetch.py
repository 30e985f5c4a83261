"""A client's input URL, as ``InputPreparer`` fetches it: only through the pinned,
address-checked fetch (every redirect hop checked too), capped in size, its label
held against its bytes, and the result in the provider's form."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.images.forms import Form, InputSpec
from actors.images.inputs import InputPreparer
from actors.images.presets import PreprocessSettings
from actors.images.publish import LocalInputs
from actors.providers.base import JobRequest
from actors.targets import IPAddress
from tests.images import jpeg, png
from tests.simulators.base import serve_simulator

PHOTO = jpeg((400, 300))
OUTSIDE = ipaddress.ip_address("127.0.0.1")  # stands for a public address here


async def resolve(host: str, port: int) -> list[str]:
    return {"images.example": ["127.0.0.1"], "inside.example": ["127.0.0.2"]}[host]


def public(address: IPAddress) -> bool:
    return address == OUTSIDE


@pytest.fixture
async def server(nursery: trio.Nursery) -> str:
    app = QuartTrio("images")

    @app.route("/<name>")
    async def image(name: str) -> tuple[bytes, int, dict[str, str]]:
        if name == "redirect":
            return b"", 302, {"location": request.args["to"]}
        body, label = {"photo.jpg": (PHOTO, "image/jpeg"), "lying.png": (PHOTO, "image/png"),
                       "big.png": (png((600, 600)), "image/png")}[name]
        return body, 200, {"content-type": label}

    url: str = await nursery.start(serve_simulator, app, "127.0.0.1", 0)
    return url.replace("127.0.0.1", "images.example")


def preparer(tmp_path: Path, form: Form = Form.BASE64, base_url: str = "https://easel.example",
             **settings: int) -> InputPreparer:
    return InputPreparer(
        "kling", InputSpec((form,), preset="fast"), PreprocessSettings(**settings),
        publisher=LocalInputs(tmp_path, base_url, 1),
        limiter=trio.CapacityLimiter(1), resolve_address=resolve, public=public)


def request_for(*images: str) -> JobRequest:
    spec = ModelSpec(provider="kling", provider_model="m")
    return JobRequest(job_id="j", model="m", spec=spec, prompt="p", input_images=images)


async def refusal(prepare: InputPreparer, url: str) -> str:
    with pytest.raises(EaselError) as refused:
        await prepare.prepare(request_for(url), None)
    assert refused.value.code is ErrorCode.INVALID_PARAMETERS and not refused.value.sent
    assert refused.value.info.details["image"] == "input_images[0]"
    return refused.value.info.message


async def test_a_public_url_is_fetched_and_prepared(server: str, tmp_path: Path) -> None:
    prepared = await preparer(tmp_path).prepare(request_for(f"{server}/photo.jpg"), None)
    [value] = prepared.input_images
    assert base64.b64decode(value).startswith(b"\xff\xd8\xff")  # bare base64 of a JPEG
    published = await preparer(tmp_path, Form.URL).prepare(
        request_for(f"{server}/photo.jpg"), None)
    assert published.input_images[0].startswith("https://easel.example/media/inputs/")


async def test_a_redirect_inside_is_refused_at_its_hop(server: str, tmp_path: Path) -> None:
    inside = server.replace("images.example", "inside.example")
    message = await refusal(preparer(tmp_path), f"{server}/redirect?to={inside}/photo.jpg")
    assert "is not fetched" in message and "not a public address" in message


async def test_size_cap_and_label_are_held(server: str, tmp_path: Path) -> None:
    message = await refusal(preparer(tmp_path, max_input_bytes=2048), f"{server}/big.png")
    assert message.endswith("is larger than 2048 bytes")
    message = await refusal(preparer(tmp_path), f"{server}/lying.png")
    assert message == "input_images[0] is labelled image/png but holds a JPEG image"


async def test_without_a_public_url_a_url_only_provider_gets_the_clients_url(
    server: str, tmp_path: Path,
) -> None:
    prepare = preparer(tmp_path, Form.URL, base_url="")  # no [daemon] public_base_url
    url = f"{server}/photo.jpg"
    assert (await prepare.prepare(request_for(url), None)).input_images == (url,)
    message = await refusal(prepare, "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode())
    assert "takes input images only as URLs" in message
