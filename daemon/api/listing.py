"""Reading a job list's query string, and its opaque page cursors.

``GET /api/external/generation`` takes these filters, each optional:

- ``status``: comma-separated statuses (``PENDING``, ``PROCESSING``, ``SUCCESS``,
  ``FAILED``, ``CANCELLED``) or stages (``QUEUED`` .. ``CANCELLED``);
- ``model`` (the catalog name submitted), ``provider``, ``user_id`` (or ``userId``);
- ``createdAfter`` (inclusive) and ``createdBefore`` (exclusive): ISO 8601 times
  with a zone (``2026-01-31T12:00:00Z``) or Unix seconds;
- ``limit``: 1 to ``MAX_LIMIT`` jobs a page (``DEFAULT_LIMIT`` when absent);
- ``cursor``: the ``nextCursor`` of the previous page, as it was given.

A cursor is the base64 of the last job's ``seq``: opaque to clients, and stable
under concurrent inserts (``actors/store/listing.py``). A problem is INVALID_REQUEST
naming the parameter; unknown parameters are refused rather than ignored, so a
misspelt filter cannot silently list everything.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
from collections.abc import Mapping

import attrs

from actors.errors import EaselError, ErrorCode
from actors.jobs import Job, JobState
from actors.runtime import Runtime
from actors.store import JobQuery

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_CURSOR_PREFIX = "seq:"



def _status_states() -> dict[str, frozenset[JobState]]:
    table = {state.value: frozenset({state}) for state in JobState}
    for state in JobState:
        table[state.status] = table.get(state.status, frozenset()) | {state}
    return table


#: What each value of ``status`` stands for: a client status or a stage.
STATUS_STATES = _status_states()

#: The query parameters of the job list (``userId`` is ``user_id`` spelt camelCase).
PARAMETERS = ("status", "model", "provider", "user_id", "userId", "createdAfter",
              "createdBefore", "limit", "cursor")


def _invalid(param: str, message: str) -> EaselError:
    return EaselError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", {"param": param})


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(text: str, param: str = "cursor") -> int:
    """The ``seq`` a cursor holds, or INVALID_REQUEST for anything not made by
    ``encode_cursor``."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX) or not raw[len(_CURSOR_PREFIX):].isdigit():
            raise ValueError
        return int(raw[len(_CURSOR_PREFIX):][:20])
    except (binascii.Error, UnicodeError, ValueError):
        raise _invalid(param, "not a cursor this API gave") from None


def parse_limit(text: str | None, param: str = "limit") -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text[:10]) <= MAX_LIMIT:
        raise _invalid(param, f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def parse_time(text: str, param: str) -> float:
    """ISO 8601 with a zone, or Unix seconds, as Unix seconds."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(param, "must be an ISO 8601 time or Unix seconds") from None
        if moment.tzinfo is None:
            raise _invalid(param, "an ISO 8601 time needs a zone (Z or +00:00)") from None
        return moment.timestamp()
    if not math.isfinite(seconds):
        raise _invalid(param, "must be an ISO 8601 time or Unix seconds")
    return seconds


def _states(text: str) -> frozenset[JobState]:
    states: frozenset[JobState] = frozenset()
    for name in text.split(","):
        found = STATUS_STATES.get(name.strip().upper())
        if found is None:
            raise _invalid("status", f"unknown status {name[:40]!r}; one of "
                                     f"{', '.join(sorted(STATUS_STATES))}")
        states |= found
    return states


def job_query(args: Mapping[str, str], owner: str | None) -> JobQuery:
    """The ``JobQuery`` of a job list's query string, scoped to ``owner`` (None:
    every owner's jobs)."""
    unknown = sorted(set(args) - set(PARAMETERS))
    if unknown:
        raise _invalid(unknown[0][:40], f"unknown parameter; known: {', '.join(PARAMETERS)}")
    if "user_id" in args and "userId" in args:
        raise _invalid("userId", "given twice (also as user_id)")
    model = args.get("model")
    created_after = args.get("createdAfter")
    created_before = args.get("createdBefore")
    cursor = args.get("cursor")
    return JobQuery(
        owner=owner,
        states=_states(args["status"]) if "status" in args else frozenset(),
        models=frozenset({model}) if model is not None else frozenset(),
        provider=args.get("provider"),
        user_id=args.get("user_id", args.get("userId")),
        created_after=parse_time(created_after, "createdAfter") if created_after else None,
        created_before=parse_time(created_before, "createdBefore") if created_before else None,
        after_seq=decode_cursor(cursor) if cursor else None,
        limit=parse_limit(args.get("limit")),
    )


async def page(runtime: Runtime, query: JobQuery) -> tuple[list[Job], str | None]:
    """One page of ``query`` and the cursor of the next (None on the last page)."""
    # One more than asked: whether it comes back says if there is a next page.
    found = await runtime.list_jobs(attrs.evolve(query, limit=query.limit + 1))
    jobs = found[:query.limit]
    last = jobs[-1].seq if len(found) > query.limit else None
    return jobs, encode_cursor(last) if last is not None else None
