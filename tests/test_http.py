"""actors/providers/http.py: provider answers to Easel errors, and what of them
is kept (redacted) in the error's details."""

from __future__ import annotations

import httpx
import pytest

from actors.errors import ErrorCode
from actors.providers.http import error_for_status, redact


def answer(status: int, body: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, text=body, headers=headers,
                          request=httpx.Request("POST", "https://provider.example/v1/x"))


@pytest.mark.parametrize(("status", "body", "code"), [
    (401, '{"detail": "bad key"}', ErrorCode.AUTHENTICATION_FAILED),
    (403, '{"message": "forbidden"}', ErrorCode.AUTHENTICATION_FAILED),
    (403, '{"code": "FORBIDDEN", "message": "Not enough credits"}', ErrorCode.QUOTA_EXCEEDED),
    (402, "{}", ErrorCode.QUOTA_EXCEEDED),
    (400, '{"error": "insufficient credit on account"}', ErrorCode.QUOTA_EXCEEDED),
    (429, "{}", ErrorCode.RATE_LIMITED),
    (404, "{}", ErrorCode.NOT_FOUND),
    (422, '{"detail": []}', ErrorCode.INVALID_PARAMETERS),
    (408, "", ErrorCode.PROVIDER_TIMEOUT),
    (503, "<html>busy</html>", ErrorCode.PROVIDER_ERROR),
])
def test_status_and_wording_decide_the_code(status: int, body: str, code: ErrorCode) -> None:
    error = error_for_status(answer(status, body), "prov")
    assert error.code is code
    assert error.info.details["status"] == status


@pytest.mark.parametrize(("status", "sent"), [(429, False), (500, True), (502, True), (400, True)])
def test_only_a_refusal_is_marked_unsent(status: int, sent: bool) -> None:
    # 429 starts nothing at the provider; a 5xx may come after the work was accepted.
    assert error_for_status(answer(status, "{}"), "prov").sent is sent


def test_retry_after_is_kept() -> None:
    error = error_for_status(answer(429, "{}", **{"Retry-After": "7"}), "prov")
    assert error.retry_after == 7
    assert error.info.is_retryable


@pytest.mark.parametrize(("text", "secret"), [
    ("echo: Authorization: Bearer abcdef123456", "abcdef123456"),
    ("echo: Key 1f2e3d:9a8b7c6d", "9a8b7c6d"),
    ("token r8_SeCrEt123 rejected", "SeCrEt123"),
    ("jwt eyJhbGciOi.eyJpc3MiOi.c2lnbmF0dXJl expired", "c2lnbmF0dXJl"),
])
def test_details_never_carry_keys(text: str, secret: str) -> None:
    error = error_for_status(answer(401, text), "prov")
    assert secret not in error.info.details["body"]
    assert secret not in error.info.message
    assert secret not in redact(text)


def test_long_answers_are_cut() -> None:
    assert len(redact("x" * 10_000, limit=100)) == 101
