"""The provider registry and what each provider module declares about itself.

Also the rough edges a new user met, end to end on an embedded daemon: a provider
without its key is never called, requests take the camelCase the API answers
with, and the sandbox's video model returns a real video.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import av
import pytest
import trio

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.parameters import check_parameters
from actors.providers import PROVIDERS, make_adapter, missing_settings, usable
from actors.providers.base import JobRequest, ProviderSettings, TaskLister
from actors.providers.bfl import TaskHandle, image_inputs, request_body
from actors.providers.kling import KlingSettings
from actors.providers.sandbox import SandboxSettings
from actors.redaction import redact_text
from actors.validation import parse_submission, request_hash, rules_for
from daemon import config as config_module
from tests.images import PNG_URI
from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.bfl import BflSimulator

PNG = PNG_URI


# -- the registry --------------------------------------------------------------------------


def test_every_shipped_section_has_its_providers_settings_class() -> None:
    config = config_module.load(environ={})
    assert isinstance(config.providers["sandbox"], SandboxSettings)
    assert config.providers["sandbox"].video_duration == 20
    for section, settings in config.providers.items():
        family = settings.adapter or section
        assert type(settings) is PROVIDERS[family].settings


def test_sandbox_only_settings_are_refused_elsewhere(tmp_path: Any) -> None:
    path = tmp_path / "easel.toml"
    path.write_text('[providers]\nlone = 5\n[providers.bfl]\nvideo_duration = 3\nauth = "bearer"\n'
                    '[providers.mine]\nadapter = "nope"\n[providers.tuzi-kling]\nauth = "jwt"\n')
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load(path, environ={})
    problems = sorted(caught.value.problems)
    assert problems[0].startswith("providers.bfl: unknown key(s): auth, video_duration (known: ")
    assert problems[1] == "providers.lone: expected a table, got a number"
    assert problems[2].startswith("providers.mine.adapter: unknown adapter 'nope' (known: bfl, fal")
    assert problems[3] == "providers.tuzi-kling.auth: must be in ('default', 'bearer') (got 'jwt')"


async def test_capabilities_say_what_the_adapter_does() -> None:
    for name, provider in PROVIDERS.items():
        adapter = make_adapter(name, provider.settings(base_url="http://127.0.0.1:9"), name)
        try:
            assert hasattr(adapter, "parse_webhook") is provider.capabilities.webhooks, name
            assert isinstance(adapter, TaskLister) is provider.capabilities.lookup, name
        finally:
            await adapter.aclose()


def test_unknown_adapter_is_named() -> None:
    with pytest.raises(ValueError, match="unknown adapter 'nope' \\(known: bfl, fal, kling"):
        make_adapter("nope", ProviderSettings(), "x")


def test_each_provider_declares_what_its_keys_look_like() -> None:
    leaked = "r8_abcdefGHIJ sk-abcdefghijklmnopqrstu Key id123:secret456 eyJhbGc.eyJpc3M.c2ln"
    assert redact_text(leaked) == "r8_*** sk-*** Key *** ***"


# -- required settings -----------------------------------------------------------------------


@pytest.mark.parametrize(("section", "settings", "why"), [
    ("bfl", ProviderSettings(), "providers.bfl.api_key is not set"),
    ("replicate", ProviderSettings(), "providers.replicate.api_token is not set"),
    ("kling", ProviderSettings(access_key="ak"), "providers.kling.secret_key is not set"),
    ("kling", ProviderSettings(),
     "providers.kling.access_key and providers.kling.secret_key are not set"),
    ("tuzi-kling", KlingSettings(adapter="kling", auth="bearer", access_key="ak"),
     "providers.tuzi-kling.api_key is not set"),
    ("fal", ProviderSettings(access_key="id", secret_key="s"), None),
    ("openai", ProviderSettings(api_token="t"), None),
    ("sandbox", SandboxSettings(), None),
])
def test_missing_settings_are_named(section: str, settings: ProviderSettings, why: str | None) -> None:
    assert missing_settings(section, settings) == why


def test_a_section_without_its_key_is_disabled_with_a_warning(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="actors.providers"):
        sections = usable({"bfl": ProviderSettings(), "sandbox": SandboxSettings(),
                           "off": ProviderSettings(adapter="bfl", enabled=False)})
    assert [name for name, s in sections.items() if s.enabled] == ["sandbox"]
    assert caplog.messages == ["provider bfl disabled: providers.bfl.api_key is not set"]


async def test_a_provider_without_its_key_is_never_called(
    easel_daemon: Any, nursery: trio.Nursery, caplog: Any
) -> None:
    sim = BflSimulator(Knobs(duration=0.1))
    url = await nursery.start(serve_simulator, sim)
    with caplog.at_level(logging.WARNING, logger="actors.providers"):
        easel = await easel_daemon(f'[providers.bfl]\nbase_url = "{url}"\napi_key = ""\n')
    assert "provider bfl disabled: providers.bfl.api_key is not set" in caplog.messages
    response = await easel.submit({"modelIdentifier": "flux-pro", "prompt": "a red fox"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST" and not error["isRetryable"]
    assert error["message"] == "model 'flux-pro' cannot be used: providers.bfl.api_key is not set"
    assert error["details"] == {"model": "flux-pro", "missing": "providers.bfl.api_key is not set"}
    assert "bfl" not in easel.runtime.providers
    assert sum(sim.requests.values()) == 0 and sim.submissions == 0


# -- one rule per fact: BFL's input images ----------------------------------------------------


@pytest.mark.parametrize(("model", "count", "base64_only"), [
    # BFL's OpenAPI: FluxPro11Inputs, FluxDevInputs and FluxUltraInput take one
    # optional base64 ``image_prompt`` (Flux Redux); fill and expand one base64 image.
    ("flux-pro-1.1", 1, True),
    ("flux-dev", 1, True),
    ("flux-pro-1.1-ultra", 1, True),
    ("flux-pro-1.0-fill", 1, True),
    # FluxKontextProInputs: input_image .. input_image_4; Flux2Inputs up to 8, klein 4.
    ("flux-kontext-pro", 4, False),
    ("flux-2-pro", 8, False),
    ("flux-2-klein-4b", 4, False),
])
def test_bfl_input_images_are_as_documented(model: str, count: int, base64_only: bool) -> None:
    takes = image_inputs(model)
    assert (len(takes.fields), takes.base64_only) == (count, base64_only)
    rules = rules_for("bfl", model)
    assert rules.max_input_images == count and rules.base64_images is base64_only


def test_flux_1_takes_one_base64_image_prompt_at_submission_and_on_the_wire() -> None:
    """The documented value: FLUX 1.x takes exactly one input image, as base64."""
    def problems(images: list[str]) -> list[str]:
        return check_parameters(rules_for("bfl", "flux-pro-1.1"), "flux-pro-1.1", {},
                                number_of_outputs=1, outputs_given=False,
                                input_images=images).problems

    assert problems([PNG]) == []
    assert problems([PNG, PNG]) == ["input_images: flux-pro-1.1 takes at most 1"]
    assert problems(["https://example.com/a.png"]) == [
        "input_images[0]: flux-pro-1.1 takes a base64 data: URI, not a URL"]
    job = JobRequest(job_id="j", model="flux-pro", prompt="p", input_images=(PNG,),
                     spec=ModelSpec(provider="bfl", provider_model="flux-pro-1.1"))
    assert request_body(job)["image_prompt"] == PNG.partition(",")[2]
    with pytest.raises(EaselError) as caught:
        request_body(JobRequest(job_id="j", model="flux-pro", prompt="p", input_images=(PNG, PNG),
                                spec=job.spec))
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS


# -- snake_case and camelCase --------------------------------------------------------------

CATALOG = {"sandbox-image": ModelSpec(provider="sandbox", provider_model="sandbox-image"),
           "pollo": ModelSpec(provider="pollo", provider_model="pollo/pollo-v1-6")}


def test_camel_case_is_the_same_request_as_snake_case() -> None:
    snake = parse_submission({"modelIdentifier": "sandbox-image", "prompt": "a fox",
                              "number_of_outputs": 2, "input_images": [PNG],
                              "webhook_url": "https://example.com/hook", "user_id": "u1"}, CATALOG)
    camel = parse_submission({"modelIdentifier": "sandbox-image", "prompt": "a fox",
                              "numberOfOutputs": 2, "inputImages": [PNG],
                              "webhookUrl": "https://example.com/hook", "userId": "u1"}, CATALOG)
    assert camel == snake


def test_one_request_in_either_spelling_has_one_fingerprint() -> None:
    snake = {"modelIdentifier": "m", "prompt": "p", "number_of_outputs": 2, "user_id": "u"}
    camel = {"userId": "u", "numberOfOutputs": 2, "prompt": "p", "modelIdentifier": "m"}
    assert request_hash(snake) == request_hash(camel)
    assert request_hash(snake) != request_hash({**snake, "user_id": "v"})


def test_both_spellings_of_one_field_are_refused() -> None:
    with pytest.raises(EaselError) as caught:
        parse_submission({"modelIdentifier": "pollo", "prompt": "a fox", "number_of_outputs": 1,
                          "numberOfOutputs": 1, "parameters": {"aspectRatio": "16:9",
                                                               "aspect_ratio": "16:9"}}, CATALOG)
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS
    assert caught.value.info.details["problems"] == [
        "numberOfOutputs: given twice (also as number_of_outputs)",
        "parameters.aspectRatio: given twice (also as aspect_ratio)",
    ]


async def test_the_api_takes_the_spelling_it_answers_with(easel_daemon: Any) -> None:
    easel = await easel_daemon("[providers.sandbox]\ndelay = 0.01\n")
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "two pears",
                                   "numberOfOutputs": 2, "userId": "u1",
                                   "webhookUrl": "https://example.com/hook"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["numberOfOutputs"], accepted["userId"], accepted["webhookUrl"]) == (
        2, "u1", "https://example.com/hook")
    twice = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "x",
                                "userId": "a", "user_id": "b"})
    assert twice.status_code == 422
    assert twice.json()["error"]["message"] == "userId: given twice (also as user_id)"


# -- the sandbox's video ---------------------------------------------------------------------


async def test_sandbox_video_is_a_decodable_mp4(easel_daemon: Any) -> None:
    easel = await easel_daemon(
        "[providers.sandbox]\nvideo_duration = 0.2\n"
        '[models.sandbox-video]\npolling = { strategy = "fixed", interval = 0.1 }\n')
    response = await easel.submit({"modelIdentifier": "sandbox-video", "prompt": "a blue car"})
    job = await easel.wait(response.json()["id"])
    assert job["status"] == "SUCCESS", job
    [result] = job["results"]
    assert (result["type"], result["contentType"]) == ("video", "video/mp4")
    assert result["url"].endswith("/0.mp4")
    media = await easel.client.get(result["url"])
    assert media.status_code == 200 and media.headers["content-type"].startswith("video/mp4")
    with av.open(io.BytesIO(media.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert len(frames) >= 12 and (frames[0].width, frames[0].height) == (256, 256)


def test_webhooks_find_a_task_by_the_providers_own_id() -> None:
    """A stored handle is ``"<id> <extra>"``; a provider's webhook names only ``<id>``."""
    handle = TaskHandle("task-1", "https://api.eu.bfl.ai/v1/get_result?id=task-1").encode()
    assert PROVIDERS["bfl"].task_id(handle) == "task-1"
    assert PROVIDERS["replicate"].task_id("abc123") == "abc123"
