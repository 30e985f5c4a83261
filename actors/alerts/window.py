"""Sliding windows of outcomes, per subject: what the rate rules read.

Samples are summed per whole second, so a window of an hour holds at most 3,600
buckets per subject however many calls a provider makes.
"""

from __future__ import annotations

import collections
import math

import attrs


@attrs.define
class _Bucket:
    second: int
    bad: int = 0
    total: int = 0


class Outcomes:
    """Good and bad outcomes per subject over the last ``span`` seconds."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._subjects: dict[str, collections.deque[_Bucket]] = {}

    def add(self, subject: str, bad: bool, now: float) -> None:
        buckets = self._subjects.setdefault(subject, collections.deque())
        second = math.floor(now)
        if not buckets or buckets[-1].second != second:
            buckets.append(_Bucket(second))
        buckets[-1].total += 1
        buckets[-1].bad += bad
        self._trim(subject, now)

    def counts(self, now: float) -> dict[str, tuple[int, int]]:
        """``{subject: (bad, total)}`` over the window ending ``now``; subjects
        with no sample left are forgotten."""
        found = {}
        for subject in list(self._subjects):
            buckets = self._trim(subject, now)
            if buckets:
                found[subject] = (sum(b.bad for b in buckets), sum(b.total for b in buckets))
        return found

    def _trim(self, subject: str, now: float) -> collections.deque[_Bucket]:
        buckets = self._subjects[subject]
        while buckets and buckets[0].second <= now - self.span:
            buckets.popleft()
        if not buckets:
            del self._subjects[subject]
        return buckets
