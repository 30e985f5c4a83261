"""Webhook signatures and shared-secret checks: the one place that compares them.

Three schemes meet here, built from the same primitives (an HMAC-SHA256 of
``"{id}.{timestamp}.{body}"``, a constant-time comparison, a freshness window):

- Standard Webhooks (https://www.standardwebhooks.com/), both ways: Replicate signs
  the webhooks it sends us this way, and Easel signs the webhooks it sends to
  clients the same way: the HMAC keyed with the base64-decoded part of the secret
  after ``whsec_``, sent as ``webhook-signature: v1,<base64>`` (space-separated
  when several keys are in use) with ``webhook-id`` and ``webhook-timestamp``.
- Providers with their own header names and keys over the same HMAC (Pollo's
  ``X-Webhook-*``) call ``signature``, ``fresh`` and ``any_matches`` directly.
- A shared secret echoed back verbatim (BFL's ``X-Webhook-Secret``) is compared
  with ``same``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

#: How far a webhook's timestamp may be from now before it is refused as a replay.
TOLERANCE = 5 * 60


class SignatureError(ValueError):
    """The webhook is not signed by the holder of the secret (or is stale)."""


def same(presented: str, expected: str) -> bool:
    """Whether two secrets are equal, compared in constant time."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive ``name`` (plain dicts are not case-insensitive)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def signature(key: bytes, msg_id: str, timestamp: str | int, body: bytes) -> str:
    """Base64 HMAC-SHA256 of ``"{msg_id}.{timestamp}.{body}"`` keyed with ``key``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def fresh(sent_at: float, now: float | None = None, what: str = "webhook-timestamp") -> None:
    """Raise ``SignatureError`` when ``sent_at`` (Unix seconds) is further than
    ``TOLERANCE`` from ``now``: a replayed delivery."""
    if abs((time.time() if now is None else now) - sent_at) > TOLERANCE:
        raise SignatureError(f"{what} is too far from now")


def any_matches(signatures: str, expected: Iterable[str]) -> bool:
    """Whether one of the space-separated ``signatures`` (``v1,<base64>`` or a bare
    ``<base64>``) is one of ``expected``, each compared in constant time."""
    wanted = list(expected)
    for candidate in signatures.split():
        version, comma, value = candidate.partition(",")
        if comma and version != "v1":
            continue
        value = value if comma else candidate
        if any(same(value, signed) for signed in wanted):
            return True
    return False


# -- Standard Webhooks ---------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("webhook secret is not base64 after 'whsec_'") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    return "v1," + signature(secret_key(secret), msg_id, timestamp, body)


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
    """Raise ``SignatureError`` unless ``headers`` carry a valid signature of ``body``."""
    msg_id = header(headers, "webhook-id")
    timestamp = header(headers, "webhook-timestamp")
    signatures = header(headers, "webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        stamp = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    fresh(stamp, now)
    if not any_matches(signatures, [signature(secret_key(secret), msg_id, stamp, body)]):
        raise SignatureError("no webhook-signature matches")
