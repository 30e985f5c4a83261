"""The error taxonomy: every failure Easel reports carries one of these codes.

A code decides three things at once: the HTTP status a client sees, whether the
failure is worth retrying, and how the monitor counts it. Keeping the table in one
place means a provider adapter only has to pick a code; it never chooses a status.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from actors.redaction import SECRETS


class ErrorCode(str, enum.Enum):
    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_PARAMETERS = "INVALID_PARAMETERS"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    #: A valid API key without the scope the route needs.
    FORBIDDEN = "FORBIDDEN"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    CONTENT_MODERATED = "CONTENT_MODERATED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    S3_UPLOAD_FAILED = "S3_UPLOAD_FAILED"
    TASK_TIMEOUT = "TASK_TIMEOUT"
    TASK_FAILED = "TASK_FAILED"
    TASK_CANCELLED = "TASK_CANCELLED"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    UNCERTAIN_SUBMISSION = "UNCERTAIN_SUBMISSION"
    #: Outputs could not be stored here (storage backend, disk, file descriptors).
    STORAGE_ERROR = "STORAGE_ERROR"
    #: A batch item that never ran: a dependency of it did not succeed.
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    #: A batch item that never ran: its batch's deadline came first.
    EXPIRED = "EXPIRED"


#: HTTP status and retryability of each code, as a client sees them.
_TABLE: dict[ErrorCode, tuple[int, bool]] = {
    ErrorCode.INVALID_REQUEST: (400, False),
    ErrorCode.INVALID_PARAMETERS: (422, False),
    ErrorCode.AUTHENTICATION_FAILED: (401, False),
    ErrorCode.FORBIDDEN: (403, False),
    ErrorCode.QUOTA_EXCEEDED: (402, False),
    ErrorCode.RATE_LIMITED: (429, True),
    ErrorCode.PROVIDER_ERROR: (502, True),
    ErrorCode.PROVIDER_UNAVAILABLE: (503, True),
    ErrorCode.PROVIDER_TIMEOUT: (504, True),
    ErrorCode.CONTENT_MODERATED: (422, False),
    ErrorCode.INTERNAL_ERROR: (500, True),
    ErrorCode.S3_UPLOAD_FAILED: (502, True),
    ErrorCode.TASK_TIMEOUT: (504, False),
    ErrorCode.TASK_FAILED: (502, False),
    ErrorCode.TASK_CANCELLED: (409, False),
    ErrorCode.NOT_FOUND: (404, False),
    ErrorCode.CONFLICT: (409, False),
    ErrorCode.SHUTTING_DOWN: (503, True),
    ErrorCode.UNCERTAIN_SUBMISSION: (500, False),
    ErrorCode.STORAGE_ERROR: (503, True),
    # 424 Failed Dependency; 410 Gone: neither is worth retrying as it stands (a
    # batch's ``retry`` re-runs such items).
    ErrorCode.UPSTREAM_FAILED: (424, False),
    ErrorCode.EXPIRED: (410, False),
}


def http_status(code: ErrorCode) -> int:
    return _TABLE[code][0]


def is_retryable(code: ErrorCode) -> bool:
    return _TABLE[code][1]


@attrs.frozen
class ErrorInfo:
    """The ``error`` object of the API: stored on failed jobs and sent on errors.

    Its message and details are masked of every configured secret as it is made
    (``actors/redaction.py``): whichever path built it from a provider's answer,
    no credential the provider echoed reaches the store, an event or a client.
    """

    code: ErrorCode
    message: str = attrs.field(converter=SECRETS.mask)
    details: dict[str, Any] = attrs.field(factory=dict, converter=SECRETS.mask_value)
    retryable: bool | None = None

    @property
    def is_retryable(self) -> bool:
        return is_retryable(self.code) if self.retryable is None else self.retryable

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code.value,
            "message": self.message,
            "details": self.details,
            "isRetryable": self.is_retryable,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            code=ErrorCode(data["code"]),
            message=data.get("message", ""),
            details=data.get("details") or {},
            retryable=data.get("isRetryable"),
        )


class EaselError(Exception):
    """An error that already knows its code; raised by validation and adapters."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        self.info = ErrorInfo(code, message, details or {}, retryable)
        super().__init__(self.info.message)  # masked: tracebacks show this text
        self.retry_after = retry_after
        #: False only when the request provably created nothing at the provider: the
        #: connection was refused, or the provider answered with a documented refusal
        #: that starts no task (a 429 rate or concurrency limit). The only cases in
        #: which resending a submission cannot pay twice.
        self.sent = sent

    @property
    def code(self) -> ErrorCode:
        return self.info.code
