"""actors/retry.py: the backoff schedule, the retry policy and the Retry-After
header (pure, no waiting)."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from actors.providers.base import ProviderSettings
from actors.retry import MAX_RETRY_AFTER, Backoff, RetryPolicy, parse_retry_after


def test_retry_delays_grow_to_the_cap_and_honour_retry_after() -> None:
    policy = RetryPolicy(max_attempts=6, base=0.5, cap=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, retry_after=7.0) == 7.0  # beyond the cap too
    assert policy.delay(4, retry_after=1.0) == 3.0  # never shorter than the schedule


def test_full_jitter_stays_under_the_ceiling() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0, jitter=1.0)
    rng = random.Random(4)
    delays = [policy.delay(3, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 2  # really spread


def test_partial_jitter_only_shortens_by_its_fraction() -> None:
    backoff = Backoff(base=5.0, cap=3600.0, jitter=0.2)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (500, 3600)]:
        for _ in range(20):
            assert ceiling * 0.8 <= backoff.delay(attempt, rng=rng) <= ceiling


def test_a_seeded_rng_gives_the_same_schedule() -> None:
    backoff = Backoff(base=1.0, cap=60.0, jitter=0.5)
    first = [backoff.delay(n, rng=random.Random(1)) for n in range(1, 8)]
    again = [backoff.delay(n, rng=random.Random(1)) for n in range(1, 8)]
    assert first == again


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=5.0, jitter=0.0)
    assert backoff.ceiling(10_000) == backoff.delay(10_000) == 5.0
    assert backoff.ceiling(0) == 0.1  # no failure yet: the base


def test_retry_policy_reads_the_provider_section() -> None:
    policy = RetryPolicy.from_settings(ProviderSettings(max_attempts=2))
    assert policy == RetryPolicy(max_attempts=2)
    assert isinstance(policy, Backoff)


@pytest.mark.parametrize("fields", [{"jitter": 1.5}, {"base": -1.0}, {"max_attempts": 0}])
def test_nonsense_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_retry_after_header_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once


def test_an_absurd_retry_after_is_bounded() -> None:
    """``inf``, ``nan`` or a date next year must not stop calls for good."""
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None
    assert parse_retry_after("1e12") == MAX_RETRY_AFTER
    assert parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT") == MAX_RETRY_AFTER
