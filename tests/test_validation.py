"""actors/validation.py: checking a submission body before anything is stored."""

from __future__ import annotations

from typing import Any

import pytest

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.jobs import JobState
from actors.validation import (
    MAX_OUTPUTS,
    MAX_PROMPT,
    SubmissionRequest,
    job_from,
    parse_submission,
    request_hash,
)

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
    assert caught.value.info.message == "; ".join(found)
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
        input_images=["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo="],
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
        "input_images[1]: invalid value for type, expected str"
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
    ]


def test_bad_webhook_url() -> None:
    assert problems(body(webhook_url="javascript:alert(1)")) == [
        "webhook_url: must be an http(s) URL"
    ]


def test_unknown_keys_are_named() -> None:
    found = problems(body(model="flux", numberOfOutputs=2))
    assert len(found) == 1
    assert "model" in found[0] and "numberOfOutputs" in found[0]


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
    assert sorted(p.split(":")[0] for p in found if not p.startswith("extra fields")) == [
        "metadata",
        "number_of_outputs",
        "priority",
    ]
    assert any("extra" in p for p in found)


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
