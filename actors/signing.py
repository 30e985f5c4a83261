"""Standard Webhooks signatures (https://www.standardwebhooks.com/), both ways.

Replicate signs the webhooks it sends us this way, and Easel signs the webhooks it
sends to clients the same way: HMAC-SHA256 over ``"{id}.{timestamp}.{body}"`` keyed
with the base64-decoded part of the secret after ``whsec_``, sent as
``webhook-signature: v1,<base64>`` (space-separated when several keys are in use).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

#: How far a webhook's timestamp may be from now before it is refused as a replay.
TOLERANCE = 5 * 60


class SignatureError(ValueError):
    """The webhook is not signed by the holder of the secret (or is stale)."""


def secret_key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("webhook secret is not base64 after 'whsec_'") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
    """Raise ``SignatureError`` unless ``headers`` carry a valid signature of ``body``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        stamp = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - stamp) > TOLERANCE:
        raise SignatureError("webhook-timestamp is too far from now")
    expected = sign(secret, msg_id, stamp, body).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise SignatureError("no webhook-signature matches")
