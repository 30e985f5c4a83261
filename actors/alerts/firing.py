"""Each condition's alert through its life, the way Alertmanager and Prometheus do it.

Per fingerprint (a rule's type and subject): a condition that appears is
*pending*; held for ``for_seconds`` (at once for an event rule) its alert
*fires* and is notified; while it keeps firing it is notified again every
``repeat_interval``; once the condition has been absent for ``keep_firing_for``
(so a flapping condition does not fire and resolve over and over) it *resolves*,
with a resolved notice. A condition that comes back after that is a new alert.

Pure and clock-free: the monitor passes wall-clock ``now`` and stores what
``step`` returns. After a restart, ``load`` takes the alerts the store holds as
firing, so one is neither fired twice nor repeated before its interval.
"""

from __future__ import annotations

import enum

import attrs

from actors.alerts.records import Alert, AlertState
from actors.alerts.rules import Condition
from actors.alerts.settings import RuleSettings


class Change(enum.Enum):
    FIRED = "fired"
    REPEATED = "repeated"
    RESOLVED = "resolved"


@attrs.define
class _Track:
    pending_since: float
    alert: Alert | None = None  # set once firing
    cleared_at: float | None = None


class Tracker:
    def __init__(self, rules: RuleSettings) -> None:
        self.rules = rules
        self._tracks: dict[str, _Track] = {}

    def load(self, firing: list[Alert]) -> None:
        """Go on with the alerts the store holds as firing."""
        self._tracks = {a.fingerprint: _Track(a.starts_at, a) for a in firing}

    def stored(self, alert: Alert) -> None:
        """The alert as the store wrote it (with its id and ``sent_at``)."""
        track = self._tracks.get(alert.fingerprint)
        if track is not None and track.alert is not None and alert.state is AlertState.FIRING:
            track.alert = alert

    def forget(self, fingerprint: str) -> None:
        """An operator resolved the alert: a condition still holding is a new one."""
        self._tracks.pop(fingerprint, None)

    def firing(self) -> int:
        return sum(track.alert is not None for track in self._tracks.values())

    def pending(self) -> list[str]:
        return sorted(fp for fp, track in self._tracks.items() if track.alert is None)

    def step(self, conditions: list[Condition], now: float) -> list[tuple[Change, Alert]]:
        """Advance every fingerprint to ``now`` given the conditions that hold; the
        alerts to store, each with why (every one is to be notified)."""
        rules = self.rules
        changes: list[tuple[Change, Alert]] = []
        holding = {condition.fingerprint: condition for condition in conditions}
        for fingerprint, condition in holding.items():
            track = self._tracks.setdefault(fingerprint, _Track(now))
            track.cleared_at = None
            if track.alert is None:
                if condition.instant or now - track.pending_since >= rules.for_seconds:
                    track.alert = Alert(
                        fingerprint, condition.type, condition.subject, condition.severity,
                        condition.message, track.pending_since, details=condition.details)
                    changes.append((Change.FIRED, track.alert))
                continue
            sent = track.alert.sent_at if track.alert.sent_at is not None else track.pending_since
            if now - sent >= rules.repeat_interval:
                track.alert = attrs.evolve(track.alert, message=condition.message,
                                           details=condition.details,
                                           severity=condition.severity)
                changes.append((Change.REPEATED, track.alert))
        for fingerprint in [fp for fp in self._tracks if fp not in holding]:
            track = self._tracks[fingerprint]
            if track.alert is None:
                del self._tracks[fingerprint]
                continue
            if track.cleared_at is None:
                track.cleared_at = now
            if now - track.cleared_at >= rules.keep_firing_for:
                del self._tracks[fingerprint]
                changes.append((Change.RESOLVED, attrs.evolve(
                    track.alert, state=AlertState.RESOLVED, ends_at=now)))
        return changes
