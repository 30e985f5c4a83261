"""actors/validation.py: checking a submission body before anything is stored."""

from __future__ import annotations

from typing import Any

import pytest

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.jobs import JobState
from actors.validation import (
    MAX_DATA_URI,
    MAX_INPUT_IMAGES,
    MAX_KEY,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEYS,
    MAX_OUTPUTS,
    MAX_PARAMETER_TEXT,
    MAX_PROMPT,
    MAX_URL,
    MAX_USER_ID,
    SubmissionRequest,
    job_from,
    parse_submission,
    request_hash,
)
from tests.images import PNG_URI, data_uri, jpeg

CATALOG = {
    "sandbox-image": ModelSpec(provider="sandbox", provider_model="sandbox-image"),
    "flux": ModelSpec(provider="replicate", provider_model="bfl/flux"),
}


def body(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"modelIdentifier": "sandbox-image", "prompt": "a red fox"}
    out.update(fields)
    return out


def problems(data: Any) -> list[str]:
    with pytest.raises(EaselError) as caught:
        parse_submission(data, CATALOG)
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS
    found = caught.value.info.details["problems"]
    message = caught.value.info.message
    if len(found) == 1:
        assert message == found[0]
    else:  # the message names the first problem and points at the rest
        assert message == f"{found[0]} (and {len(found) - 1} more in details.problems)"
    return list(found)


# -- accepted ---------------------------------------------------------------


def test_minimal_body_gets_defaults() -> None:
    request = parse_submission(body(), CATALOG)
    assert request == SubmissionRequest(modelIdentifier="sandbox-image", prompt="a red fox")
    assert request.input_images == []
    assert request.number_of_outputs == 1
    assert request.parameters == {}
    assert request.priority == 0
    assert request.webhook_url is None and request.user_id is None
    assert request.metadata == {}


def test_full_body_is_kept() -> None:
    data = body(
        modelIdentifier="flux",
        input_images=["https://example.com/a.png", PNG_URI],
        number_of_outputs=MAX_OUTPUTS,
        parameters={"seed": 3, "aspect_ratio": "16:9", "nested": {"x": [1]}},
        priority=-1000,
        webhook_url="http://127.0.0.1:9/hook",
        user_id="u1",
        metadata={"campaign": "spring"},
    )
    request = parse_submission(data, CATALOG)
    assert request.modelIdentifier == "flux"
    assert request.input_images == data["input_images"]
    assert request.number_of_outputs == MAX_OUTPUTS
    assert request.parameters == data["parameters"]
    assert request.priority == -1000
    assert request.webhook_url == "http://127.0.0.1:9/hook"
    assert request.user_id == "u1"
    assert request.metadata == {"campaign": "spring"}


def test_prompt_length_bounds_accepted() -> None:
    assert parse_submission(body(prompt="x"), CATALOG).prompt == "x"
    assert len(parse_submission(body(prompt="y" * MAX_PROMPT), CATALOG).prompt) == MAX_PROMPT
    assert MAX_PROMPT == 2000


# -- rejected ---------------------------------------------------------------


@pytest.mark.parametrize("data", [[], "text", None, 3, [body()]])
def test_non_object_is_invalid_request(data: Any) -> None:
    with pytest.raises(EaselError) as caught:
        parse_submission(data, CATALOG)
    assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_missing_fields_are_all_listed() -> None:
    assert sorted(problems({})) == ["modelIdentifier: is required", "prompt: is required"]
    assert problems({"modelIdentifier": "flux"}) == ["prompt: is required"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("number_of_outputs", "3"),
        ("number_of_outputs", 3.0),
        ("number_of_outputs", True),
        ("priority", "1"),
        ("priority", False),
        ("prompt", 5),
        ("prompt", None),
        ("modelIdentifier", ["flux"]),
        ("user_id", 7),
        ("webhook_url", 1),
    ],
)
def test_wrong_scalar_types_are_not_coerced(field: str, value: Any) -> None:
    found = problems(body(**{field: value}))
    assert len(found) == 1
    assert found[0].startswith(f"{field}: ")
    assert "expected" in found[0]


@pytest.mark.parametrize(("field", "value"), [("parameters", [1]), ("metadata", "x")])
def test_wrong_container_types(field: str, value: Any) -> None:
    found = problems(body(**{field: value}))
    assert len(found) == 1 and found[0].startswith(f"{field}: ")


def test_wrong_item_type_names_its_index() -> None:
    assert problems(body(input_images=["https://a/b.png", 3])) == [
        "input_images[1]: expected a string, got a number"
    ]


def test_unknown_model_is_invalid_request_listing_known_models() -> None:
    with pytest.raises(EaselError) as caught:
        parse_submission(body(modelIdentifier="nope"), CATALOG)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "nope" in caught.value.info.message
    assert caught.value.info.details == {"knownModels": ["flux", "sandbox-image"]}


@pytest.mark.parametrize("prompt", ["", "   \n\t", "z" * (MAX_PROMPT + 1)])
def test_prompt_length_out_of_bounds(prompt: str) -> None:
    assert problems(body(prompt=prompt)) == [f"prompt: must be 1 to {MAX_PROMPT} characters"]


@pytest.mark.parametrize("n", [0, -1, MAX_OUTPUTS + 1])
def test_number_of_outputs_out_of_bounds(n: int) -> None:
    assert problems(body(number_of_outputs=n)) == [f"number_of_outputs: must be 1 to {MAX_OUTPUTS}"]


@pytest.mark.parametrize("priority", [-1001, 1001])
def test_priority_out_of_bounds(priority: int) -> None:
    assert problems(body(priority=priority)) == ["priority: must be -1000 to 1000"]


def test_bad_input_images_are_listed_by_index() -> None:
    images = [
        "https://ok.example/a.png",
        "ftp://example.com/a.png",
        "data:image/gif;base64,R0lGOD",
        "data:image/png;base64,not base64!",
        "/etc/passwd",
        "data:image/jpeg;base64,/9j/4AAQ",
    ]
    found = problems(body(input_images=images))
    assert [p.split(":")[0] for p in found] == [
        "input_images[1]",
        "input_images[2]",
        "input_images[3]",
        "input_images[4]",
        "input_images[5]",  # a JPEG that ends after its header
    ]


@pytest.mark.parametrize(("url", "why"), [
    ("javascript:alert(1)", "scheme 'javascript' is not http or https"),
    ("https://user:pw@hooks.example/x", "credentials"),
    ("https:///no-host", "host"),
])
def test_bad_webhook_url(url: str, why: str) -> None:
    [problem] = problems(body(webhook_url=url))
    assert problem.startswith("webhook_url: must be an http(s) URL Easel may call")
    assert why in problem


def test_unknown_keys_are_named() -> None:
    found = problems(body(model="flux", numberOfOutput=2))
    assert len(found) == 1
    assert "model" in found[0] and "numberOfOutput" in found[0]


def test_every_problem_is_listed_with_its_path() -> None:
    found = problems(
        body(
            prompt="",
            number_of_outputs=11,
            priority=5000,
            input_images=["nope"],
            webhook_url="ftp://x",
        )
    )
    assert sorted(p.split(":")[0] for p in found) == [
        "input_images[0]",
        "number_of_outputs",
        "priority",
        "prompt",
        "webhook_url",
    ]


def test_type_problems_in_several_fields_are_listed_together() -> None:
    found = problems(body(number_of_outputs="2", priority=1.5, metadata=[], extra=1))
    assert len(found) == 4
    assert sorted(p.split(":")[0] for p in found if not p.startswith("unknown key")) == [
        "metadata",
        "number_of_outputs",
        "priority",
    ]
    assert any(p.startswith("unknown key(s): extra (known: modelIdentifier") for p in found)


@pytest.mark.parametrize("value", ["", {"https://a.example/x.png": 1}, "https://a.example/x.png"])
def test_input_images_must_be_a_list(value: Any) -> None:
    found = problems(body(input_images=value))
    assert len(found) == 1 and found[0].startswith("input_images: ")


# -- request_hash and job_from ------------------------------------------------


def test_request_hash_ignores_key_order() -> None:
    a = {"prompt": "x", "modelIdentifier": "m", "parameters": {"a": 1, "b": [1, {"c": 2, "d": 3}]}}
    b = {"parameters": {"b": [1, {"d": 3, "c": 2}], "a": 1}, "modelIdentifier": "m", "prompt": "x"}
    assert request_hash(a) == request_hash(b)
    assert len(request_hash(a)) == 64


def test_request_hash_sees_values_and_list_order() -> None:
    base = {"prompt": "x", "input_images": ["a", "b"]}
    assert request_hash(base) != request_hash({**base, "prompt": "y"})
    assert request_hash(base) != request_hash({**base, "input_images": ["b", "a"]})
    assert request_hash({"n": 1}) != request_hash({"n": "1"})


def test_job_from_builds_a_queued_job() -> None:
    request = parse_submission(
        body(
            modelIdentifier="flux",
            number_of_outputs=2,
            priority=7,
            parameters={"seed": 1},
            metadata={"k": "v"},
            input_images=["https://a/b.png"],
        ),
        CATALOG,
    )
    job = job_from(request, CATALOG, idempotency_key="key", body_hash="hash")
    assert job.id.startswith("gen_")
    assert job.state is JobState.QUEUED
    assert (job.model, job.provider, job.provider_model) == ("flux", "replicate", "bfl/flux")
    assert job.number_of_outputs == 2 and job.priority == 7
    assert job.parameters == {"seed": 1} and job.metadata == {"k": "v"}
    assert job.input_images == ["https://a/b.png"]
    assert job.idempotency_key == "key" and job.request_hash == "hash"
    other = job_from(request, CATALOG, idempotency_key=None, body_hash="hash")
    assert other.id != job.id


# -- parameters per model family (actors/parameters.py) ----------------------------

FAMILY_CATALOG = {
    "flux-pro": ModelSpec(provider="bfl", provider_model="flux-pro-1.1"),
    "flux-dev": ModelSpec(provider="bfl", provider_model="flux-dev"),
    "kontext": ModelSpec(provider="bfl", provider_model="flux-kontext-pro"),
    "gpt": ModelSpec(provider="openai", provider_model="gpt-image-1"),
    "dalle3": ModelSpec(provider="openai", provider_model="dall-e-3"),
    "kling": ModelSpec(provider="tuzi-kling", provider_model="kling-v2-1-master"),
    "pollo": ModelSpec(provider="pollo", provider_model="pollo/pollo-v1-6"),
    "schnell": ModelSpec(provider="replicate", provider_model="black-forest-labs/flux-schnell"),
    "other-replicate": ModelSpec(provider="replicate", provider_model="someone/model:abc"),
    "fal-dev": ModelSpec(provider="fal", provider_model="fal-ai/flux/dev"),
    "sandbox": ModelSpec(provider="sandbox", provider_model="sandbox-image"),
}
#: Sections whose adapter is not their name, as the app derives them from config.
FAMILIES = {"tuzi-kling": "kling"}


def family_request(model: str, parameters: dict[str, Any] | None = None, **fields: Any) -> SubmissionRequest:
    data = body(modelIdentifier=model, **fields)
    if parameters is not None:
        data["parameters"] = parameters
    return parse_submission(data, FAMILY_CATALOG, FAMILIES)


def family_problems(model: str, parameters: dict[str, Any] | None = None, **fields: Any) -> list[str]:
    with pytest.raises(EaselError) as caught:
        family_request(model, parameters, **fields)
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS
    return list(caught.value.info.details["problems"])


@pytest.mark.parametrize(
    ("model", "defaults"),
    [
        ("flux-pro", {"prompt_upsampling": False, "safety_tolerance": 2, "output_format": "jpeg"}),
        ("kontext", {"prompt_upsampling": False, "safety_tolerance": 2, "output_format": "png"}),
        ("gpt", {"size": "auto", "quality": "auto"}),
        ("dalle3", {"size": "1024x1024", "quality": "standard", "style": "vivid"}),
        ("kling", {"duration": "5", "mode": "std", "aspect_ratio": "16:9"}),
        ("pollo", {}),
        ("schnell", {"aspect_ratio": "1:1", "output_format": "webp", "output_quality": 80, "go_fast": True,
                     "megapixels": "1", "num_inference_steps": 4, "disable_safety_checker": False}),
        ("fal-dev", {"image_size": "landscape_4_3", "num_inference_steps": 28, "guidance_scale": 3.5,
                     "enable_safety_checker": True, "output_format": "jpeg"}),
        ("sandbox", {}),
    ],
)
def test_each_family_fills_in_its_defaults(model: str, defaults: dict[str, Any]) -> None:
    assert family_request(model).parameters == defaults


def test_kling_normalises_duration_and_mode_and_drops_aspect_for_image2video() -> None:
    request = family_request("kling", {"duration": 10, "mode": "standard"})
    assert request.parameters == {"duration": "10", "mode": "std", "aspect_ratio": "16:9"}
    from_image = family_request("kling", {"duration": "5", "aspect_ratio": "1:1"},
                                input_images=["https://a.example/first.png"])
    assert from_image.parameters == {"duration": "5", "mode": "std"}


def test_kling_lists_every_problem_with_its_path() -> None:
    found = family_problems("kling", {"duration": 7, "mode": "fast", "cfg_scale": 2,
                                      "aspect_ratio": "4:3", "dynamic_masks": [], "colour": "red"})
    assert found[:4] == [
        "parameters.duration: must be 5 or 10",
        "parameters.mode: must be std or pro",
        "parameters.aspect_ratio: must be one of 16:9, 9:16, 1:1",
        "parameters.cfg_scale: must be 0 to 1",
    ]
    assert found[4].startswith("parameters: unknown key(s): colour (known: duration, mode")
    assert found[5] == "parameters.dynamic_masks: only image2video (a job with input_images) takes it"
    assert len(found) == 6


@pytest.mark.parametrize("duration", ["5", "10", 5, 10])
def test_kling_duration_accepts_numbers_and_strings(duration: Any) -> None:
    assert family_request("kling", {"duration": duration}).parameters["duration"] == str(duration)


@pytest.mark.parametrize("duration", [True, 5.5, "five", "15", None, [5]])
def test_kling_duration_refuses_the_rest(duration: Any) -> None:
    found = family_problems("kling", {"duration": duration})
    assert found == ["parameters.duration: must be 5 or 10"]


def test_video_families_make_one_output_and_take_two_images() -> None:
    for model in ("kling", "pollo", "flux-pro", "dalle3"):
        assert family_problems(model, number_of_outputs=2) == [
            f"number_of_outputs: {FAMILY_CATALOG[model].provider_model} makes at most 1 per job"
        ]
    images = ["https://a.example/1.png"] * 3
    assert family_problems("kling", input_images=images) == ["input_images: kling-v2-1-master takes at most 2"]


@pytest.mark.parametrize("size", ["16:9", "21:9", "2:3", "1024x768", "256x1440", "1440x1440"])
def test_flux_sizes_accepted(size: str) -> None:
    assert family_request("flux-pro", {"size_or_ratio": size}).parameters["size_or_ratio"] == size


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ("5:4", "must be a ratio (1:1, 16:9, 9:16, 4:3, 3:4, 21:9, 9:21, 3:2, 2:3) or WIDTHxHEIGHT"),
        ("big", "must be a ratio (1:1, 16:9, 9:16, 4:3, 3:4, 21:9, 9:21, 3:2, 2:3) or WIDTHxHEIGHT"),
        ("1000x768", "width and height must be multiples of 32"),
        ("2048x1024", "width and height must be 256 to 1440"),
        ("128x128", "width and height must be 256 to 1440"),
    ],
)
def test_flux_sizes_refused(size: str, problem: str) -> None:
    assert family_problems("flux-pro", {"size_or_ratio": size}) == [f"parameters.size_or_ratio: {problem}"]


def test_kontext_takes_any_size_within_its_aspect_range() -> None:
    assert family_request("kontext", {"size_or_ratio": "1920x1080"}).parameters["size_or_ratio"] == "1920x1080"
    assert family_problems("kontext", {"size_or_ratio": "3000x1000"}) == [
        "parameters.size_or_ratio: must have an aspect between 21:9 and 9:21"
    ]


def test_flux_type_and_model_problems_are_listed_together() -> None:
    found = family_problems("flux-pro", {"seed": -1, "safety_tolerance": 7, "output_format": "gif",
                                         "prompt_upsampling": "yes", "size_or_ratio": "1000x768",
                                         "steps": 10})
    assert sorted(p.split(":")[0] for p in found) == [
        "parameters.output_format",
        "parameters.prompt_upsampling",
        "parameters.safety_tolerance",
        "parameters.seed",
        "parameters.size_or_ratio",
        "parameters.steps",
    ]
    assert family_request("flux-dev", {"steps": 10, "guidance": 2.5}).parameters["steps"] == 10


def test_openai_checks_per_model_and_folds_n() -> None:
    request = family_request("gpt", {"n": 3, "size": "1536x1024", "background": "transparent",
                                     "output_format": "webp"})
    assert request.number_of_outputs == 3
    assert request.parameters == {"size": "1536x1024", "quality": "auto", "background": "transparent",
                                  "output_format": "webp"}
    assert family_problems("gpt", {"n": 3}, number_of_outputs=2) == [
        "parameters.n: 3 conflicts with number_of_outputs 2"
    ]
    assert family_request("gpt", {"n": 2}, number_of_outputs=2).number_of_outputs == 2
    assert family_problems("gpt", {"size": "1792x1024", "style": "vivid", "response_format": "url"}) == [
        "parameters.size: gpt-image-1 takes 1024x1024, 1536x1024, 1024x1536, auto",
        "parameters.style: only dall-e-3 takes a style",
        "parameters.response_format: GPT image models always answer base64",
    ]
    assert family_problems("dalle3", {"background": "opaque", "quality": "low"}) == [
        "parameters.quality: dall-e-3 takes auto, hd, standard",
        "parameters.background: dall-e-3 does not take it",
    ]
    assert family_problems("dalle3", input_images=["https://a.example/x.png"]) == [
        "input_images: dall-e-3 takes at most 0"
    ]
    assert family_problems("gpt", {"background": "transparent", "output_format": "jpeg"}) == [
        "parameters.background: transparent needs output_format png or webp"
    ]


def test_pollo_takes_camel_case_and_stores_the_adapters_names() -> None:
    request = family_request("pollo", {"duration": "5", "generateAudio": True, "negativePrompt": "blur",
                                       "aspectRatio": "16:9", "resolution": "720p", "seed": 4})
    assert request.parameters == {"duration": 5, "negative_prompt": "blur", "seed": 4,
                                  "aspect_ratio": "16:9", "resolution": "720p", "generate_audio": True}
    found = family_problems("pollo", {"duration": 99, "generate_audio": "yes", "generateAudio": True,
                                      "aspect_ratio": "wide", "resolution": "4k"})
    assert sorted(p.split(":")[0] for p in found) == [
        "parameters.aspect_ratio",
        "parameters.duration",
        "parameters.generateAudio",
        "parameters.generate_audio",
        "parameters.resolution",
    ]


def test_replicate_known_model_is_strict_unknown_model_is_free() -> None:
    request = family_request("schnell", {"num_outputs": 3, "seed": 1})
    assert request.number_of_outputs == 3 and "num_outputs" not in request.parameters
    found = family_problems("schnell", {"num_inference_steps": 5, "prompt_strength": 0.5})
    assert found[0] == "parameters.num_inference_steps: must be 1 to 4"
    assert found[1].startswith("parameters: unknown key(s): prompt_strength")
    assert family_problems("schnell", number_of_outputs=5) == [
        "number_of_outputs: black-forest-labs/flux-schnell makes at most 4 per job"
    ]
    free = {"anything": {"nested": [1, 2]}, "steps": 50}
    assert family_request("other-replicate", free).parameters == free


def test_fal_image_size_is_a_name_or_width_and_height() -> None:
    square = family_request("fal-dev", {"image_size": {"width": 512, "height": 512}, "num_images": 2})
    assert square.parameters["image_size"] == {"width": 512, "height": 512}
    assert square.number_of_outputs == 2
    assert family_problems("fal-dev", {"image_size": {"width": 512, "height": 0}}) == [
        "parameters.image_size.height: must be 1 to 14142"
    ]
    assert family_problems("fal-dev", {"image_size": "huge"})[0].startswith(
        "parameters.image_size: must be one of square_hd"
    )


def test_sandbox_takes_only_a_small_object() -> None:
    assert family_request("sandbox", {"anything": 1}).parameters == {"anything": 1}
    assert family_problems("sandbox", {"x": "y" * 3000, "z": "y" * 3000}) == [
        "parameters: must be at most 4096 bytes of JSON"]


def test_deep_nesting_is_refused() -> None:
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    assert family_problems("other-replicate", {"x": nested}) == ["parameters: nested deeper than 32 levels"]
    assert family_problems("sandbox", metadata={"x": nested}) == ["metadata: nested deeper than 8 levels"]


def test_data_uri_must_hold_valid_base64() -> None:
    assert family_problems("sandbox", input_images=["data:image/png;base64,abc"]) == [
        "input_images[0]: must be an http(s) URL or a data:image/(png|jpeg|jpg|webp);base64 URI"
    ]
    assert family_request("sandbox", input_images=[data_uri(jpeg(), "image/jpg")]).input_images


def test_stored_job_carries_the_normalised_parameters() -> None:
    request = family_request("kling", {"duration": 10})
    job = job_from(request, FAMILY_CATALOG, idempotency_key=None, body_hash="h")
    assert job.parameters == {"duration": "10", "mode": "std", "aspect_ratio": "16:9"}
    assert job.provider == "tuzi-kling"


# -- size limits of the free fields --------------------------------------------------


def test_free_fields_at_their_limits_are_taken() -> None:
    metadata = {f"k{i}": "v" for i in range(MAX_METADATA_KEYS)}
    request = parse_submission(body(
        user_id="u" * MAX_USER_ID,
        metadata=metadata,
        webhook_url="https://hooks.example/" + "h" * (MAX_URL - 22),
        input_images=["https://img.example/" + "a" * (MAX_URL - 20)] * MAX_INPUT_IMAGES,
    ), CATALOG)
    assert request.user_id == "u" * MAX_USER_ID and request.metadata == metadata
    nested: Any = "leaf"
    for _ in range(MAX_METADATA_DEPTH):
        nested = {"k": nested}
    assert parse_submission(body(metadata=nested), CATALOG).metadata == nested


@pytest.mark.parametrize(("fields", "problem"), [
    ({"userId": "u" * (MAX_USER_ID + 1)}, f"user_id: must be at most {MAX_USER_ID} characters"),
    ({"metadata": {"note": "n" * MAX_METADATA_BYTES}},
     f"metadata: must be at most {MAX_METADATA_BYTES} bytes of JSON"),
    ({"metadata": {f"k{i}": 1 for i in range(MAX_METADATA_KEYS + 1)}},
     f"metadata: must have at most {MAX_METADATA_KEYS} keys (nested ones counted)"),
    ({"metadata": {"a": [[[[[[[[1]]]]]]]]}},
     f"metadata: nested deeper than {MAX_METADATA_DEPTH} levels"),
    ({"metadata": {"k" * (MAX_KEY + 1): 1}}, f"metadata: keys must be at most {MAX_KEY} characters"),
    ({"input_images": ["https://img.example/a.png"] * (MAX_INPUT_IMAGES + 1)},
     f"input_images: must hold at most {MAX_INPUT_IMAGES} images"),
    ({"input_images": ["https://img.example/" + "a" * MAX_URL]},
     f"input_images[0]: must be at most {MAX_URL} characters"),
    ({"input_images": ["data:image/png;base64," + "A" * MAX_DATA_URI]},
     f"input_images[0]: must be at most {MAX_DATA_URI} characters"),
    ({"webhookUrl": "https://hooks.example/" + "h" * MAX_URL},
     f"webhook_url: must be at most {MAX_URL} characters"),
    ({"parameters": {"style": {"note": "n" * (MAX_PARAMETER_TEXT + 1)}}},
     f"parameters.style.note: must be at most {MAX_PARAMETER_TEXT} characters"),
])
def test_free_fields_past_their_limits_are_refused_naming_the_limit(
    fields: dict[str, Any], problem: str
) -> None:
    assert problems(body(**fields)) == [problem]


def test_oversized_parameters_are_refused_before_their_rules_repeat_them() -> None:
    """An unknown key would be named in the rules' message: a huge one is not."""
    found = family_problems("flux-pro", {"k" * 100_000: 1}, user_id="u" * 1000)
    assert found == [f"user_id: must be at most {MAX_USER_ID} characters",
                     f"parameters: keys must be at most {MAX_KEY} characters"]
