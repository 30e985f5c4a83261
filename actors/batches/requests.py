"""Reading a whole batch before anything of it is stored: JSON or JSONL, all or nothing.

A batch comes as JSON, ``{requests: [...], options: {...}, dryRun, metadata}``, or
as JSONL (``application/x-ndjson``): one request per line, its options in the
query string (``?maxConcurrency=10&stopOnError=true``; the same names as the JSON
``options``, plus ``dryRun``). Each request is a single submission's body
(``actors/validation.py``: the same ``parse_submission``, so the same checks, the
same spellings and the same parameter rules) plus three batch fields:

- ``custom_id`` (``customId``): the caller's name for the item, unique in the
  batch, at most ``MAX_CUSTOM_ID`` characters, no ``/`` nor whitespace;
  ``item-<index>`` when not given;
- ``dependsOn`` (``depends_on``): ``custom_id``s of items that must succeed first;
- an ``input_images`` entry may be ``{"fromItem": "<custom_id>", "output": 0}``:
  that item's stored output, once it has one (a dependency too). It is stored as
  ``easel:item/<custom_id>/<n>``, which the batch engine replaces with the output
  when it releases the item. Only models that take input images accept it: the
  entry is checked against the model's rules as an image URL would be.

The batch is accepted or refused whole. Every problem found is reported at once
in one INVALID_PARAMETERS error: ``details.problems`` for the batch's own fields
and ``details.items`` listing ``{index, customId, problems}`` per faulty item
(at most ``MAX_REPORTED_ITEMS`` of them; ``details.moreItems`` counts the rest). A
reference to no item, or a cycle of dependencies, refuses the batch naming the
items concerned. The graph is checked iteratively (Kahn's algorithm), so 50,000
chained items cannot exhaust the stack.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from actors.batches.model import MAX_CUSTOM_ID, MAX_ITEMS, BatchOptions, item_ref
from actors.catalog import ModelSpec
from actors.conversion import type_name
from actors.errors import EaselError, ErrorCode
from actors.images.presets import PreprocessSettings
from actors.jobs import Job, JobState
from actors.parameters import fold_spellings
from actors.targets import TargetRefused, split_target
from actors.validation import (
    MAX_PROMPT,
    MAX_URL,
    METADATA_BOUNDS,
    SubmissionRequest,
    bounds_problems,
    job_from,
    parse_submission,
    request_hash,
    rules_for,
)

#: Faulty items listed in a refusal; the rest are counted (``details.moreItems``).
MAX_REPORTED_ITEMS = 100
_CUSTOM_ID = re.compile(r"[^\s/\x00-\x1f\x7f]{1,%d}" % MAX_CUSTOM_ID)
#: What a ``fromItem`` entry stands as while its item is checked: an image of the
#: kind the model's rules take (a URL, or an inline PNG for base64-only models).
_STAND_IN_URL = "https://easel.invalid/item/{index}.png"
_STAND_IN_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlE"
                 "QVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
_TOP_FIELDS = ["requests", "options", "dry_run", "metadata"]
_OPTION_FIELDS = [field.name for field in attrs.fields(BatchOptions)]
_ITEM_FIELDS = ["custom_id", "depends_on"]
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@attrs.frozen
class BatchLimits:
    """``[batches]``: how big a batch may be and how much of it may run at once."""

    #: The largest ``maxConcurrency`` a batch may ask for.
    max_concurrency: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    #: Items in one batch (JSON or JSONL).
    max_items: int = attrs.field(default=MAX_ITEMS, validator=attrs.validators.in_(
        range(1, MAX_ITEMS + 1)))
    #: Bytes of a batch's body: larger than ``[daemon] max_body_bytes``, so a
    #: 50,000-line JSONL fits.
    max_body_bytes: int = attrs.field(default=64 * 1024 * 1024,
                                      validator=attrs.validators.ge(1024))


@attrs.frozen
class Checks:
    """What a single submission is checked against (``parse_submission``'s inputs)."""

    catalog: Mapping[str, ModelSpec]
    families: Mapping[str, str]
    unavailable: Mapping[str, str]
    preprocess: PreprocessSettings


@attrs.frozen
class Item:
    """One request of a batch, checked."""

    index: int
    custom_id: str
    request: SubmissionRequest
    #: The ``custom_id``s it waits for (``dependsOn`` and ``fromItem``), no repeats.
    depends_on: tuple[str, ...]
    #: Whether the item named its own priority (else the batch's applies).
    own_priority: bool
    body_hash: str


@attrs.frozen
class ParsedBatch:
    options: BatchOptions
    items: list[Item]
    dry_run: bool = False
    metadata: dict[str, Any] = attrs.field(factory=dict)


class _Refusal:
    """The problems found so far, batch-level and per item."""

    def __init__(self, lines: list[int] | None = None) -> None:
        self.problems: list[str] = []
        self.items: dict[int, tuple[str | None, list[str]]] = {}
        #: A JSONL batch's line number of each item, named beside its index.
        self.lines = lines

    def item(self, index: int, custom_id: str | None, problems: list[str]) -> None:
        if problems:
            self.items.setdefault(index, (custom_id, []))[1].extend(problems)

    def raise_if_any(self) -> None:
        if not self.problems and not self.items:
            return
        faulty = sorted(self.items.items())
        shown: list[dict[str, Any]] = [
            {"index": index, "customId": custom_id, "problems": problems}
            for index, (custom_id, problems) in faulty[:MAX_REPORTED_ITEMS]]
        if self.lines is not None:
            for entry in shown:
                entry["line"] = self.lines[entry["index"]]
        details: dict[str, Any] = {"problems": self.problems, "items": shown,
                                   "moreItems": max(0, len(faulty) - MAX_REPORTED_ITEMS)}
        if self.problems:
            message = self.problems[0]
        else:
            index, (custom_id, problems) = faulty[0]
            message = f"item {index} ({custom_id}): {problems[0]}"
        count = len(self.problems) + sum(len(p) for _, (_, p) in faulty)
        if count > 1:
            message += f" (and {count - 1} more in details)"
        raise EaselError(ErrorCode.INVALID_PARAMETERS, message, details)


def _invalid_request(message: str, details: dict[str, Any] | None = None) -> EaselError:
    return EaselError(ErrorCode.INVALID_REQUEST, message, details or {})


# -- options --------------------------------------------------------------------------


def moment(value: Any) -> float:
    """A time as Unix seconds: a number, numeric text, or ISO 8601 with a zone.
    ValueError says what is wrong."""
    if type(value) is str:
        try:
            value = float(value)
        except ValueError:
            try:
                at = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(_TIME) from None
            if at.tzinfo is None:
                raise ValueError("an ISO 8601 time needs a zone (Z or +00:00)") from None
            return at.timestamp()
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError(_TIME)
    return float(value)


_TIME = "must be an ISO 8601 time with a zone, or Unix seconds"


def _option(name: str, value: Any, limits: BatchLimits) -> tuple[Any, str | None]:
    """``value`` for option ``name``, or the problem with it."""
    if name in ("parallel", "stop_on_error", "item_webhooks"):
        return (value, None) if type(value) is bool else (
            None, f"expected a boolean, got {type_name(value)}")
    if name in ("max_concurrency", "priority"):
        low, high = (1, limits.max_concurrency) if name == "max_concurrency" else (-1000, 1000)
        if type(value) is not int:
            return None, f"expected an integer, got {type_name(value)}"
        return (value, None) if low <= value <= high else (None, f"must be {low} to {high}")
    if name in ("not_before", "deadline"):
        if value is None:
            return None, None
        try:
            return moment(value), None
        except ValueError as exc:
            return None, str(exc)
    return _webhook_url(value)


def _webhook_url(value: Any) -> tuple[str | None, str | None]:
    """The batch's ``webhookUrl``, held to a submission's ``webhook_url`` rule: an
    http(s) URL Easel may call (addresses are checked again at each delivery)."""
    if value is None:
        return None, None
    if type(value) is not str:
        return None, f"expected a string, got {type_name(value)}"
    if len(value) > MAX_URL:
        return None, f"must be at most {MAX_URL} characters"
    try:
        split_target(value)
    except TargetRefused as exc:
        return None, f"must be an http(s) URL Easel may call: {exc}"
    return value, None


def parse_options(given: Any, limits: BatchLimits, refusal: _Refusal,
                  where: str = "options") -> BatchOptions:
    if given is None:
        return BatchOptions()
    if not isinstance(given, dict):
        refusal.problems.append(f"{where}: expected an object, got {type_name(given)}")
        return BatchOptions()
    folded, problems = fold_spellings(given, _OPTION_FIELDS, f"{where}.")
    refusal.problems.extend(problems)
    values: dict[str, Any] = {}
    for name, value in folded.items():
        if name not in _OPTION_FIELDS:
            refusal.problems.append(f"{where}.{name[:100]}: not an option (known: "
                                    f"{', '.join(_camel(f) for f in _OPTION_FIELDS)})")
            continue
        checked, problem = _option(name, value, limits)
        if problem is not None:
            refusal.problems.append(f"{where}.{_camel(name)}: {problem}")
        else:
            values[name] = checked
    options = BatchOptions(**values)
    if (options.not_before is not None and options.deadline is not None
            and options.deadline <= options.not_before):
        refusal.problems.append(f"{where}.deadline: must be after notBefore")
    return options


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def query_options(query: Mapping[str, str]) -> tuple[dict[str, Any], Any]:
    """A JSONL batch's options from its query string, typed as JSON would give them
    (``true``, ``10``), and its ``dryRun``; text that is no such value is kept as
    text, for the option's own check to refuse."""
    options: dict[str, Any] = {}
    dry_run: Any = False
    for key, text in query.items():
        value: Any = text
        if text.lower() in _TRUE:
            value = True
        elif text.lower() in _FALSE:
            value = False
        elif re.fullmatch(r"-?\d{1,10}", text):
            value = int(text)
        if key in ("dryRun", "dry_run"):
            dry_run = value
        else:
            options[key] = value
    return options, dry_run


# -- items ----------------------------------------------------------------------------


def _custom_id(value: Any, index: int) -> tuple[str, str | None]:
    if value is None:
        return f"item-{index}", None
    if type(value) is not str:
        return f"item-{index}", f"custom_id: expected a string, got {type_name(value)}"
    if not _CUSTOM_ID.fullmatch(value):
        return value[:MAX_CUSTOM_ID], (f"custom_id: must be 1 to {MAX_CUSTOM_ID} characters, "
                                       f"without '/' or whitespace")
    return value, None


def _references(value: Any, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if type(value) is not list or not all(type(v) is str for v in value):
        problems.append("dependsOn: expected a list of custom_id strings")
        return []
    return list(value)


def _from_items(images: Any, index: int, stand_in: str,
                problems: list[str]) -> tuple[Any, dict[int, tuple[str, int]]]:
    """``input_images`` with each ``fromItem`` entry replaced by a stand-in image,
    and those entries by position: ``{position: (custom_id, output)}``."""
    if type(images) is not list:
        return images, {}
    found: dict[int, tuple[str, int]] = {}
    out: list[Any] = []
    for position, image in enumerate(images):
        if not isinstance(image, dict):
            out.append(image)
            continue
        where = f"input_images[{position}]"
        source, output = image.get("fromItem", image.get("from_item")), image.get("output", 0)
        extra = set(image) - {"fromItem", "from_item", "output"}
        if extra or type(source) is not str:
            problems.append(f"{where}: an object must be {{\"fromItem\": \"<custom_id>\", "
                            f"\"output\": <n>}}")
        elif type(output) is not int or not 0 <= output < 10:
            problems.append(f"{where}.output: must be an output's index, 0 to 9")
        else:
            found[position] = (source, output)
        out.append(stand_in.format(index=index))
    return out, found


def _stand_in(body: dict[str, Any], checks: Checks) -> str:
    model = body.get("modelIdentifier")
    spec = checks.catalog.get(model) if type(model) is str else None
    if spec is None:
        return _STAND_IN_URL
    rules = rules_for(checks.families.get(spec.provider, spec.provider), spec.provider_model)
    return _STAND_IN_PNG if rules.base64_images else _STAND_IN_URL


def _submission(request_body: dict[str, Any], checks: Checks,
                shapes: dict[str, SubmissionRequest]) -> SubmissionRequest:
    """``parse_submission`` of ``request_body``, or the same answer without it.

    A batch's items mostly differ by their prompt alone (one model, the same
    parameters). No check of a submission reads the prompt besides the prompt's
    own (1 to MAX_PROMPT characters, not only whitespace), so an item whose other
    fields are exactly those of an item already accepted (the same ``repr``: the
    same keys, values and types) is that item's request with its own prompt. Any
    other item, and any whose prompt is not plainly good, is checked in full, so
    a refusal always reads as a single submission's would."""
    prompt = request_body.get("prompt")
    shape = repr([(key, value) for key, value in request_body.items() if key != "prompt"])
    known = shapes.get(shape)
    if known is not None and type(prompt) is str and prompt.strip() and len(prompt) <= MAX_PROMPT:
        return attrs.evolve(known, prompt=prompt)
    request = parse_submission(request_body, checks.catalog, checks.families,
                               checks.unavailable, checks.preprocess)
    shapes[shape] = request
    return request


def _item(body: Any, index: int, checks: Checks, refusal: _Refusal,
          shapes: dict[str, SubmissionRequest]) -> tuple[Item | None, dict[int, tuple[str, int]]]:
    if not isinstance(body, dict):
        refusal.item(index, f"item-{index}",
                     [f"expected a request object, got {type_name(body)}"])
        return None, {}
    folded, problems = fold_spellings(body, _ITEM_FIELDS)
    request_body = {k: v for k, v in folded.items() if k not in _ITEM_FIELDS}
    body_hash = request_hash(request_body)  # as submitted, fromItem entries included
    custom_id, problem = _custom_id(folded.get("custom_id"), index)
    problems += [problem] if problem else []
    depends = _references(folded.get("depends_on"), problems)
    images_key = "inputImages" if "inputImages" in request_body else "input_images"
    from_items: dict[int, tuple[str, int]] = {}
    if images_key in request_body:
        request_body[images_key], from_items = _from_items(
            request_body[images_key], index, _stand_in(request_body, checks), problems)
    request: SubmissionRequest | None = None
    try:
        if from_items or problems:
            request = parse_submission(request_body, checks.catalog, checks.families,
                                       checks.unavailable, checks.preprocess)
        else:
            request = _submission(request_body, checks, shapes)
    except EaselError as exc:
        problems += exc.info.details.get("problems") or [exc.info.message]
    if problems or request is None:
        refusal.item(index, custom_id, problems)
        return None, from_items
    if from_items:
        images = list(request.input_images)
        for position, (source, output) in from_items.items():
            images[position] = item_ref(source, output)
        request = attrs.evolve(request, input_images=images)
        depends += [source for source, _ in from_items.values()]
    return Item(index=index, custom_id=custom_id, request=request,
                depends_on=tuple(dict.fromkeys(depends)),
                own_priority="priority" in request_body,
                body_hash=body_hash), from_items


def _check_graph(items: list[Item], known: set[Any],
                 outputs: dict[int, dict[int, tuple[str, int]]], refusal: _Refusal) -> None:
    """Every reference names an item of the batch, a ``fromItem`` output the item
    makes, and no item waits on itself through others (looked for once every item
    is well formed: a faulty item's references are unknown)."""
    by_id = {item.custom_id: item for item in items}
    for item in items:
        problems = [f"dependsOn: no item {ref!r} in the batch" for ref in item.depends_on
                    if ref not in known]
        if item.custom_id in item.depends_on:
            problems.append("dependsOn: an item cannot depend on itself")
        for position, (source, output) in outputs.get(item.index, {}).items():
            made = by_id.get(source)
            if made is not None and output >= made.request.number_of_outputs:
                problems.append(f"input_images[{position}]: item {source!r} makes "
                                f"{made.request.number_of_outputs} output(s), no output {output}")
        refusal.item(item.index, item.custom_id, problems)
    if refusal.items:
        return
    for cycle in _cycles(items):
        path = _cycle_text(cycle)
        for custom_id in cycle:
            item = by_id[custom_id]
            refusal.item(item.index, custom_id, [f"dependsOn: a dependency cycle: {path}"])


def _cycles(items: list[Item]) -> Iterator[list[str]]:
    """The dependency cycles among ``items`` (whose references all exist), one
    path each. Kahn's algorithm forwards (drop items whose references are all
    dropped) then backwards (drop items nothing left waits for) leaves only items
    on a cycle or between two; each cycle is then found by following references."""
    # An item that waits for nothing is on no cycle, nor is a reference to one.
    waiting = {item.custom_id for item in items if item.depends_on}
    waits = {item.custom_id: set(item.depends_on) & waiting for item in items
             if item.depends_on}
    blocks: dict[str, list[str]] = {custom_id: [] for custom_id in waits}
    for custom_id, refs in waits.items():
        for ref in refs:
            blocks[ref].append(custom_id)
    left = set(waits)
    for before, after in ((waits, blocks), (blocks, waits)):
        pending = {node: sum(1 for other in before[node] if other in left) for node in left}
        ready = [node for node, count in pending.items() if not count]
        while ready:
            node = ready.pop()
            left.discard(node)
            for other in after[node]:
                if other in left:
                    pending[other] -= 1
                    if not pending[other]:
                        ready.append(other)
    seen: set[str] = set()
    for start in sorted(left):
        path: list[str] = []
        place: dict[str, int] = {}
        node = start
        while node not in place and node not in seen:
            place[node] = len(path)
            path.append(node)
            node = min(waits[node] & left)
        seen.update(path)
        if node in place:
            yield path[place[node]:]


def _cycle_text(cycle: list[str]) -> str:
    """``a -> b -> a``; a long cycle by its first names and its length."""
    if len(cycle) <= _CYCLE_SHOWN:
        return " -> ".join([*cycle, cycle[0]])
    return " -> ".join(cycle[:_CYCLE_SHOWN]) + f" -> ... ({len(cycle)} items) -> {cycle[0]}"


#: Items of a cycle named in its message.
_CYCLE_SHOWN = 8


def _parse_items(bodies: list[Any], checks: Checks, refusal: _Refusal) -> list[Item]:
    """Each body checked as an item (a JSONL line that was no JSON is ``_BROKEN``,
    already reported), custom_ids unique, then the graph they make."""
    items: list[Item] = []
    outputs: dict[int, dict[int, tuple[str, int]]] = {}
    first: dict[str, int] = {}
    #: Every custom_id given, faulty items' too: a reference to one is no unknown.
    known: set[Any] = set()
    shapes: dict[str, SubmissionRequest] = {}
    for index, body in enumerate(bodies):
        if body is _BROKEN:
            continue
        item, from_items = _item(body, index, checks, refusal, shapes)
        if item is None:
            if isinstance(body, dict):
                known.add(body.get("custom_id", body.get("customId", f"item-{index}")))
            continue
        known.add(item.custom_id)
        if from_items:
            outputs[index] = from_items
        if item.custom_id in first:
            refusal.item(index, item.custom_id,
                         [f"custom_id: {item.custom_id!r} is also item {first[item.custom_id]}'s"])
            continue
        first[item.custom_id] = index
        items.append(item)
    _check_graph(items, known, outputs, refusal)
    return items


#: Stands for a JSONL line that is not JSON.
_BROKEN = object()


def _count_problem(count: int, limits: BatchLimits) -> str | None:
    if count == 0:
        return "a batch needs at least one request"
    if count > limits.max_items:
        return f"a batch holds at most {limits.max_items} requests, got {count}"
    return None


def parse_batch(body: Any, checks: Checks, limits: BatchLimits) -> ParsedBatch:
    """A JSON batch, checked whole; INVALID_REQUEST when it is no batch at all,
    INVALID_PARAMETERS listing every problem otherwise."""
    if not isinstance(body, dict):
        raise _invalid_request("the body must be a JSON object: {requests: [...], options}")
    folded, problems = fold_spellings(body, _TOP_FIELDS)
    requests = folded.get("requests")
    if type(requests) is not list:
        raise _invalid_request(f"requests: expected a list of requests, got "
                               f"{type_name(requests)}", {"param": "requests"})
    if (problem := _count_problem(len(requests), limits)) is not None:
        raise _invalid_request(problem, {"param": "requests", "max": limits.max_items})
    refusal = _Refusal()
    refusal.problems.extend(problems)
    refusal.problems.extend(f"{key[:100]}: not a field of a batch (known: requests, options, "
                            f"dryRun, metadata)" for key in folded if key not in _TOP_FIELDS)
    options = parse_options(folded.get("options"), limits, refusal)
    dry_run = folded.get("dry_run", False)
    if type(dry_run) is not bool:
        refusal.problems.append(f"dryRun: expected a boolean, got {type_name(dry_run)}")
    metadata = _metadata(folded.get("metadata"), refusal)
    items = _parse_items(requests, checks, refusal)
    refusal.raise_if_any()
    return ParsedBatch(options, items, dry_run is True, metadata)


def _metadata(value: Any, refusal: _Refusal) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        refusal.problems.append(f"metadata: expected an object, got {type_name(value)}")
        return {}
    refusal.problems.extend(bounds_problems("metadata", value, METADATA_BOUNDS))
    return value


def split_lines(raw: bytes) -> tuple[list[bytes], list[int]]:
    """The non-blank lines of a JSONL body and their line numbers (from 1)."""
    lines, numbers = [], []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            lines.append(line)
            numbers.append(number)
    return lines, numbers


def parse_jsonl(lines: list[Any], numbers: list[int], query: Mapping[str, str],
                checks: Checks, limits: BatchLimits) -> ParsedBatch:
    """A JSONL batch: ``lines`` already read as JSON each (an ``EaselError`` in place
    of a line that is not), ``numbers`` their line numbers, its options from
    ``query``."""
    if (problem := _count_problem(len(lines), limits)) is not None:
        raise _invalid_request(problem, {"max": limits.max_items})
    refusal = _Refusal(numbers)
    given, dry_run = query_options(query)
    options = parse_options(given, limits, refusal, where="query")
    if type(dry_run) is not bool:
        refusal.problems.append("query.dryRun: expected true or false")
    bodies: list[Any] = []
    for index, line in enumerate(lines):
        if isinstance(line, EaselError):
            refusal.item(index, None, [line.info.message])
            line = _BROKEN
        bodies.append(line)
    items = _parse_items(bodies, checks, refusal)
    refusal.raise_if_any()
    return ParsedBatch(options, items, dry_run is True, {})


def batch_jobs(parsed: ParsedBatch, catalog: dict[str, ModelSpec], *, batch_id: str,
               owner: str | None) -> list[Job]:
    """The batch's items as jobs: WAITING (the batch engine releases them), with the
    batch's fields set and their price stamped (``ModelSpec.price``)."""
    jobs = []
    priority = parsed.options.priority
    for item in parsed.items:
        job = job_from(item.request, catalog, idempotency_key=None,
                       body_hash=item.body_hash, owner=owner)
        job.state = JobState.WAITING
        job.batch_id = batch_id
        job.custom_id = item.custom_id
        job.batch_index = item.index
        job.depends_on = list(item.depends_on)
        if not item.own_priority:
            job.priority = priority
        job.cost = catalog[job.model].price(job.number_of_outputs, job.parameters)
        jobs.append(job)
    return jobs
