"""What each channel says about one notification: Alertmanager's webhook JSON,
Slack Block Kit (with a plain ``text`` fallback), and an email.

Alertmanager's shape (``version`` "4") lets existing receivers take Easel's
alerts as they are: each alert has ``labels`` (``alertname`` is the rule's type,
``subject`` what it is about, ``severity`` lower-case), ``annotations``
(``summary``), RFC 3339 ``startsAt``/``endsAt`` (``0001-01-01T00:00:00Z`` while
firing, as Alertmanager sends), and a 16-hex ``fingerprint`` of the labels.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from email.message import EmailMessage
from typing import Any

from actors.alerts.records import AlertState, Delivery

#: Alertmanager's "no end" time.
ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(at: float | None) -> str:
    if at is None:
        return ZERO_TIME
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def labels(delivery: Delivery) -> dict[str, str]:
    alert = delivery.alert
    return {"alertname": alert.type, "subject": alert.subject,
            "severity": alert.severity.value.lower(), "service": "easel"}


def label_fingerprint(found: dict[str, str]) -> str:
    text = json.dumps(found, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def title(delivery: Delivery) -> str:
    status = delivery.status.value.upper()
    return f"[{status}] {delivery.alert.type} {delivery.alert.subject}"


def alertmanager(delivery: Delivery) -> dict[str, Any]:
    """One notification as an Alertmanager webhook body (one alert per group)."""
    alert = delivery.alert
    found = labels(delivery)
    ends = alert.ends_at if delivery.status is AlertState.RESOLVED else None
    group = {"alertname": alert.type, "subject": alert.subject}
    return {
        "version": "4",
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
        "status": delivery.status.value,
        "receiver": "easel",
        "groupLabels": group,
        "commonLabels": found,
        "commonAnnotations": {"summary": alert.message},
        "externalURL": "",
        "alerts": [{
            "status": delivery.status.value,
            "labels": found,
            "annotations": {"summary": alert.message,
                            "details": json.dumps(alert.details, default=str)},
            "startsAt": rfc3339(alert.starts_at),
            "endsAt": rfc3339(ends),
            "generatorURL": "",
            "fingerprint": label_fingerprint(found),
        }],
    }


def slack(delivery: Delivery) -> dict[str, Any]:
    """Block Kit blocks, with ``text`` for notifications and clients without blocks."""
    alert = delivery.alert
    resolved = delivery.status is AlertState.RESOLVED
    mark = ":white_check_mark:" if resolved else ":rotating_light:"
    fields = [f"*Severity*\n{alert.severity.value}", f"*Since*\n{rfc3339(alert.starts_at)}"]
    if resolved:
        fields.append(f"*Resolved*\n{rfc3339(alert.ends_at)}")
    return {
        "text": f"{title(delivery)}: {alert.message}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title(delivery)[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{mark} {alert.message}"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"fingerprint `{alert.fingerprint}`"}]},
        ],
    }


def email(delivery: Delivery, sender: str, to: list[str]) -> EmailMessage:
    alert = delivery.alert
    message = EmailMessage()
    message["Subject"] = f"Easel {title(delivery)}"
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Message-ID"] = f"<{delivery.id}@easel>"
    lines = [alert.message, "", f"Severity: {alert.severity.value}",
             f"Since: {rfc3339(alert.starts_at)}"]
    if delivery.status is AlertState.RESOLVED:
        lines.append(f"Resolved: {rfc3339(alert.ends_at)}")
    lines += [f"Fingerprint: {alert.fingerprint}", "",
              json.dumps(alert.details, indent=2, default=str)]
    message.set_content("\n".join(lines))
    return message
