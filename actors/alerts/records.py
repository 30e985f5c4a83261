"""The monitoring rows the store keeps: error log entries, alerts, notifications.

Plain data, shared by the store (``actors/store/errorlog.py``,
``actors/store/alerts.py``), the monitor actor and the admin pages. Times are Unix
seconds from ``actors.clock.wall_now``.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class Level(str, enum.Enum):
    """How bad an error log entry is."""

    WARN = "WARN"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class Severity(str, enum.Enum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class AlertState(str, enum.Enum):
    FIRING = "firing"
    RESOLVED = "resolved"


#: States of one notification of one alert on one channel.
DELIVERY_PENDING, DELIVERY_SENT, DELIVERY_FAILED = "PENDING", "SENT", "FAILED"


@attrs.define
class ErrorEntry:
    """One error log row. ``source`` is ``kind:name``: ``provider:fal``,
    ``actor:providers/provider:fal/poller``, ``component:storage``."""

    level: Level
    source: str
    message: str
    at: float
    stack: str | None = None
    context: dict[str, Any] = attrs.field(factory=dict)
    job_id: str | None = None
    provider_task_id: str | None = None
    resolved: bool = False
    resolved_at: float | None = None
    resolved_by: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "level": self.level.value, "source": self.source,
            "message": self.message, "at": self.at, "stack": self.stack,
            "context": self.context, "jobId": self.job_id,
            "providerTaskId": self.provider_task_id, "resolved": self.resolved,
            "resolvedAt": self.resolved_at, "resolvedBy": self.resolved_by,
        }


@attrs.define
class Alert:
    """One alert: an episode of one condition (``fingerprint``: type and subject),
    from its ``starts_at`` to its ``ends_at``. A condition that fires again after
    resolving is a new row. ``sent_at`` is when notifications were last queued (the
    repeat interval counts from it); ``channel`` the channels they were queued on."""

    fingerprint: str
    type: str
    subject: str
    severity: Severity
    message: str
    starts_at: float
    state: AlertState = AlertState.FIRING
    details: dict[str, Any] = attrs.field(factory=dict)
    ends_at: float | None = None
    channel: str = ""
    sent_at: float | None = None
    acknowledged: bool = False
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "fingerprint": self.fingerprint, "type": self.type,
            "subject": self.subject, "severity": self.severity.value,
            "message": self.message, "details": self.details, "state": self.state.value,
            "startsAt": self.starts_at, "endsAt": self.ends_at, "channel": self.channel,
            "sentAt": self.sent_at, "acknowledged": self.acknowledged,
            "acknowledgedAt": self.acknowledged_at, "acknowledgedBy": self.acknowledged_by,
        }


@attrs.define
class Delivery:
    """One notification (``status``: what it says, firing or resolved) of one alert
    on one channel, persisted before it is sent so a restart neither loses it nor
    sends it again once recorded as sent. ``alert`` is the alert as it is now."""

    id: str
    channel: str
    status: AlertState
    state: str
    attempts: int
    next_attempt_at: float
    alert: Alert
    last_error: str | None = None
