"""actors/batches/requests.py and estimate.py: a whole batch read and checked before
anything is stored; every refusal names its item's index and custom_id."""

from __future__ import annotations

from typing import Any

import pytest

from actors.batches.estimate import estimate
from actors.batches.requests import (
    MAX_REPORTED_ITEMS,
    BatchLimits,
    Checks,
    ParsedBatch,
    moment,
    parse_batch,
    parse_jsonl,
    split_lines,
)
from actors.catalog import MediaKind, ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.images.presets import PreprocessSettings
from actors.pricing import CostUnit

CATALOG = {
    "sandbox-image": ModelSpec(provider="sandbox", provider_model="sandbox-image", cost=2.0),
    "sandbox-video": ModelSpec(provider="sandbox", provider_model="sandbox-video",
                               kind=MediaKind.VIDEO, cost=0.5, cost_per=CostUnit.SECOND),
    "schnell": ModelSpec(provider="replicate", provider_model="black-forest-labs/flux-schnell"),
}
CHECKS = Checks(CATALOG, {}, {"kling-x": "providers.kling.access_key is not set"},
                PreprocessSettings())
LIMITS = BatchLimits(max_concurrency=10, max_items=1000)


def request(custom_id: str | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"modelIdentifier": "sandbox-image", "prompt": "a red fox"}
    if custom_id is not None:
        out["custom_id"] = custom_id
    out.update(fields)
    return out


def parse(requests: list[Any], **top: Any) -> ParsedBatch:
    return parse_batch({"requests": requests, **top}, CHECKS, LIMITS)


def refused(requests: list[Any], **top: Any) -> dict[str, Any]:
    with pytest.raises(EaselError) as caught:
        parse(requests, **top)
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS
    return caught.value.info.details


def problems_of(details: dict[str, Any]) -> dict[tuple[int, str | None], list[str]]:
    return {(item["index"], item["customId"]): item["problems"] for item in details["items"]}


def test_a_plain_batch_takes_the_defaults() -> None:
    parsed = parse([request("a"), request(), request(customId="c", priority=7)])
    assert [item.custom_id for item in parsed.items] == ["a", "item-1", "c"]
    assert parsed.options.parallel and parsed.options.max_concurrency == 3
    assert not parsed.options.stop_on_error and not parsed.dry_run
    assert [item.own_priority for item in parsed.items] == [False, False, True]


def test_options_in_either_spelling_and_times_as_iso_or_seconds() -> None:
    parsed = parse([request()], options={
        "parallel": False, "max_concurrency": 10, "stopOnError": True, "priority": -5,
        "notBefore": "2030-01-01T00:00:00Z", "deadline": 1_900_000_000,
        "webhookUrl": "https://example.com/hook", "itemWebhooks": True},
        dryRun=True, metadata={"campaign": "spring"})
    options = parsed.options
    assert (options.parallel, options.max_concurrency, options.stop_on_error,
            options.priority) == (False, 10, True, -5)
    assert options.concurrency == 1
    assert options.not_before == 1_893_456_000.0 and options.deadline == 1_900_000_000.0
    assert options.webhook_url == "https://example.com/hook" and options.item_webhooks
    assert parsed.dry_run and parsed.metadata == {"campaign": "spring"}


@pytest.mark.parametrize(("options", "expected"), [
    ({"maxConcurrency": 0}, "options.maxConcurrency: must be 1 to 10"),
    ({"maxConcurrency": 11}, "options.maxConcurrency: must be 1 to 10"),
    ({"maxConcurrency": "3"}, "options.maxConcurrency: expected an integer, got a string"),
    ({"parallel": "yes"}, "options.parallel: expected a boolean, got a string"),
    ({"deadline": "tomorrow"}, "options.deadline: must be an ISO 8601 time"),
    ({"deadline": "2030-01-01T00:00:00"}, "options.deadline: an ISO 8601 time needs a zone"),
    ({"notBefore": 200, "deadline": 100}, "options.deadline: must be after notBefore"),
    ({"webhookUrl": "ftp://x"}, "options.webhookUrl: must be an http(s) URL"),
    ({"bogus": 1}, "options.bogus: not an option"),
    ({"max_concurrency": 2, "maxConcurrency": 2}, "maxConcurrency"),
])
def test_each_bad_option_is_named(options: dict[str, Any], expected: str) -> None:
    details = refused([request()], options=options)
    assert any(problem.startswith(expected) or expected in problem
               for problem in details["problems"]), details
    assert details["items"] == []


def test_a_body_that_is_no_batch_is_an_invalid_request() -> None:
    for body in ([], {"requests": {}}, {"requests": []}, {"options": {}},
                 {"requests": [request()] * 1001}):
        with pytest.raises(EaselError) as caught:
            parse_batch(body, CHECKS, LIMITS)
        assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_every_faulty_item_is_listed_with_index_and_custom_id() -> None:
    details = refused([
        request("ok"),
        request("no-prompt", prompt=""),
        "not an object",
        request("bad-model", modelIdentifier="nope"),
        request("disabled", modelIdentifier="kling-x"),
        request("two-problems", number_of_outputs=0, priority=5000),
        request("a/b"),
        request("x" * 65),
        request("ok"),
        request(7),
    ], options={"maxConcurrency": 0})
    found = problems_of(details)
    assert set(found) == {(1, "no-prompt"), (2, "item-2"), (3, "bad-model"), (4, "disabled"),
                          (5, "two-problems"), (6, "a/b"), (7, "x" * 64), (8, "ok"),
                          (9, "item-9")}
    assert found[(1, "no-prompt")] == ["prompt: must be 1 to 2000 characters"]
    assert found[(2, "item-2")] == ["expected a request object, got a string"]
    assert found[(3, "bad-model")] == ["unknown model 'nope'"]
    assert "access_key is not set" in found[(4, "disabled")][0]
    assert len(found[(5, "two-problems")]) == 2
    assert found[(6, "a/b")][0].startswith("custom_id: must be 1 to 64 characters")
    assert found[(8, "ok")] == ["custom_id: 'ok' is also item 0's"]
    assert found[(9, "item-9")] == ["custom_id: expected a string, got a number"]
    assert details["problems"] == ["options.maxConcurrency: must be 1 to 10"]
    assert details["moreItems"] == 0


def test_the_message_names_the_first_problem_and_counts_the_rest() -> None:
    with pytest.raises(EaselError) as caught:
        parse([request("a", prompt=""), request("b", prompt="")])
    assert caught.value.info.message == (
        "item 0 (a): prompt: must be 1 to 2000 characters (and 1 more in details)")


def test_a_long_list_of_faulty_items_is_cut_and_counted() -> None:
    details = refused([request(prompt="") for _ in range(MAX_REPORTED_ITEMS + 25)])
    assert len(details["items"]) == MAX_REPORTED_ITEMS
    assert details["moreItems"] == 25


def test_dependencies_name_items_of_the_batch() -> None:
    parsed = parse([request("a"), request("b", dependsOn=["a"]),
                    request("c", depends_on=["a", "b", "a"])])
    assert [item.depends_on for item in parsed.items] == [(), ("a",), ("a", "b")]
    found = problems_of(refused([request("a"), request("b", dependsOn=["zz"]),
                                 request("c", dependsOn="a"), request("d", dependsOn=["d"])]))
    assert found == {(1, "b"): ["dependsOn: no item 'zz' in the batch"],
                     (2, "c"): ["dependsOn: expected a list of custom_id strings"],
                     (3, "d"): ["dependsOn: an item cannot depend on itself"]}


def test_a_cycle_refuses_the_batch_naming_its_items_only() -> None:
    found = problems_of(refused([
        request("root"), request("a", dependsOn=["root", "c"]), request("b", dependsOn=["a"]),
        request("c", dependsOn=["b"]), request("after", dependsOn=["c"]),
        request("x", dependsOn=["y"]), request("y", dependsOn=["x"]),
    ]))
    assert set(found) == {(1, "a"), (2, "b"), (3, "c"), (5, "x"), (6, "y")}
    assert found[(1, "a")] == ["dependsOn: a dependency cycle: a -> c -> b -> a"]
    assert found[(5, "x")] == ["dependsOn: a dependency cycle: x -> y -> x"]


def test_a_chain_of_fifty_thousand_items_needs_no_recursion() -> None:
    count = 50_000
    requests = [request(f"i{n}", dependsOn=[f"i{n - 1}"] if n else []) for n in range(count)]
    parsed = parse_batch({"requests": requests}, CHECKS, BatchLimits(max_items=count))
    assert parsed.items[-1].depends_on == (f"i{count - 2}",)
    requests[0]["dependsOn"] = [f"i{count - 1}"]  # now one cycle through every item
    with pytest.raises(EaselError) as caught:
        parse_batch({"requests": requests}, CHECKS, BatchLimits(max_items=count))
    details = caught.value.info.details
    assert details["moreItems"] == count - MAX_REPORTED_ITEMS
    assert details["items"][0]["problems"] == [
        f"dependsOn: a dependency cycle: i0 -> i{count - 1} -> i{count - 2} -> i{count - 3} -> "
        f"i{count - 4} -> i{count - 5} -> i{count - 6} -> i{count - 7} -> ... ({count} items) "
        f"-> i0"]


def test_from_item_becomes_a_placeholder_and_a_dependency() -> None:
    parsed = parse([
        request("still", number_of_outputs=2),
        request("clip", modelIdentifier="sandbox-video",
                input_images=[{"fromItem": "still", "output": 1}, "https://example.com/a.png"]),
        request("again", modelIdentifier="sandbox-video", inputImages=[{"fromItem": "still"}],
                dependsOn=["clip"]),
    ])
    clip, again = parsed.items[1], parsed.items[2]
    assert clip.request.input_images == ["easel:item/still/1", "https://example.com/a.png"]
    assert clip.depends_on == ("still",)
    assert again.request.input_images == ["easel:item/still/0"]
    assert again.depends_on == ("clip", "still")


def test_from_item_is_refused_where_it_cannot_be() -> None:
    found = problems_of(refused([
        request("still"),
        request("no-images", modelIdentifier="schnell", input_images=[{"fromItem": "still"}]),
        request("no-such", input_images=[{"fromItem": "ghost"}]),
        request("past-end", input_images=[{"fromItem": "still", "output": 1}]),
        request("shape", input_images=[{"fromItem": "still", "extra": 1}, {"fromItem": 3}]),
        request("bad-output", input_images=[{"fromItem": "still", "output": -1}]),
    ]))
    assert found == {
        (1, "no-images"): ["input_images: black-forest-labs/flux-schnell takes at most 0"],
        (2, "no-such"): ["dependsOn: no item 'ghost' in the batch"],
        (3, "past-end"): ["input_images[0]: item 'still' makes 1 output(s), no output 1"],
        (4, "shape"): ['input_images[0]: an object must be {"fromItem": "<custom_id>", '
                       '"output": <n>}',
                       'input_images[1]: an object must be {"fromItem": "<custom_id>", '
                       '"output": <n>}'],
        (5, "bad-output"): ["input_images[0].output: must be an output's index, 0 to 9"]}


def test_jsonl_lines_and_query_options() -> None:
    raw = (b'{"custom_id": "a", "modelIdentifier": "sandbox-image", "prompt": "one"}\n'
           b"\n"
           b'{"custom_id": "b", "modelIdentifier": "sandbox-image", "prompt": "two"}\n')
    lines, numbers = split_lines(raw)
    assert numbers == [1, 3]
    import json
    parsed = parse_jsonl([json.loads(line) for line in lines], numbers,
                         {"maxConcurrency": "7", "stopOnError": "true", "dryRun": "true",
                          "deadline": "2030-01-01T00:00:00Z"}, CHECKS, LIMITS)
    assert [item.custom_id for item in parsed.items] == ["a", "b"]
    assert parsed.options.max_concurrency == 7 and parsed.options.stop_on_error
    assert parsed.dry_run and parsed.options.deadline == 1_893_456_000.0


def test_jsonl_problems_name_the_line() -> None:
    broken = EaselError(ErrorCode.INVALID_REQUEST, "body is not valid JSON: Expecting value")
    with pytest.raises(EaselError) as caught:
        parse_jsonl([request("a"), broken, request("c", prompt="")], [1, 2, 4],
                    {"maxConcurrency": "many"}, CHECKS, LIMITS)
    details = caught.value.info.details
    assert details["items"] == [
        {"index": 1, "customId": None, "line": 2,
         "problems": ["body is not valid JSON: Expecting value"]},
        {"index": 2, "customId": "c", "line": 4,
         "problems": ["prompt: must be 1 to 2000 characters"]}]
    assert details["problems"] == ["query.maxConcurrency: expected an integer, got a string"]


def test_moment_reads_iso_and_seconds_and_refuses_the_rest() -> None:
    assert moment("1970-01-01T00:01:00+00:00") == 60.0
    assert moment("60") == 60.0 and moment(60) == 60.0
    for bad in ("soon", True, None, -1, float("nan"), "2030-01-01"):
        with pytest.raises(ValueError):
            moment(bad)


def test_the_estimate_prices_each_item_from_the_catalog() -> None:
    parsed = parse([request("a", number_of_outputs=3),
                    request("v", modelIdentifier="sandbox-video", parameters={"duration": 8}),
                    request("s", modelIdentifier="schnell")])
    found = estimate(parsed, CATALOG).to_api()
    assert found["estimatedCost"] == 10.0  # 3 x 2.0 + 8 s x 0.5 + 0
    assert [task["estimatedCost"] for task in found["tasks"]] == [6.0, 4.0, 0.0]
    assert found["byModel"]["sandbox-image"] == {"tasks": 1, "cost": 6.0}
    assert found["unpricedModels"] == ["schnell"]
