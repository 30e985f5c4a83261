"""HTTP plumbing shared by adapters: one client per provider, errors to codes.

Every network failure and HTTP status a provider answers with becomes an
``EaselError`` here, so adapters only describe their own bodies. A request that
never left (connection refused, none free in the pool) or that the provider refused
with 429 is marked ``sent=False``: the failures after which resending a submission
cannot pay twice. A timeout, a reset or a 5xx after sending proves nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx

from actors.errors import EaselError, ErrorCode
from actors.providers.base import ProviderSettings
from actors.redaction import redact_text
from actors.retry import parse_retry_after

_CREDIT_PHRASES = ("insufficient credit", "out of credit", "not enough credit")


def redact(text: str, limit: int = 500) -> str:
    """A short excerpt of a provider's answer with anything key-like masked."""
    text = redact_text(text)
    return text if len(text) <= limit else text[:limit] + "…"


@attrs.frozen
class AllowedHosts:
    """Where a URL the provider returns may be followed with the section's API key.

    Adapters that follow such URLs (BFL's ``polling_url``, fal's status, response
    and cancel URLs, Replicate's ``next`` page) check each one here first: an answer
    naming another host (a compromised or spoofed provider, a bug) would otherwise
    receive the key. ``patterns`` are host names, or ``*.domain`` for any subdomain;
    ``base`` is the configured ``base_url``, whose host is always allowed and whose
    ``https`` a followed URL must keep.
    """

    section: str
    patterns: tuple[str, ...]
    base: str = ""

    @classmethod
    def of(cls, settings: ProviderSettings, section: str, documented: tuple[str, ...],
           base_url: str | None = None) -> AllowedHosts:
        """The section's ``allowed_hosts``, or the provider's ``documented`` ones."""
        base = settings.base_url if base_url is None else base_url
        return cls(section, tuple(settings.allowed_hosts or documented), base)

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        base_host = (urlsplit(self.base).hostname or "").lower()
        if host and host == base_host:
            return True
        for pattern in self.patterns:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def check(self, url: str) -> str:
        """``url`` when it may be followed with the key, else a final (not
        retryable) PROVIDER_ERROR that names the host: nothing was sent to it."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:
            parts, host = None, ""
        problem = None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            problem = "is not an http(s) URL"
        elif parts.username is not None or parts.password is not None:
            problem = "carries credentials"
        elif not self.allows(host):
            listed = ", ".join(self.patterns) or "(none)"
            problem = (f"is on {host}, which is not among providers.{self.section}.allowed_hosts"
                       f" ({listed}) nor the base_url's host")
        elif parts.scheme == "http" and self.base.startswith("https:"):
            problem = "is plain http while base_url is https"
        if problem is None:
            return url
        raise EaselError(
            ErrorCode.PROVIDER_ERROR,
            f"{self.section}: a URL the provider returned {problem}; it was not followed and"
            " the API key was not sent there",
            {"provider": self.section, "url": redact(url, 200)},
            retryable=False,
        )


def client_for(
    settings: ProviderSettings, headers: dict[str, str], *, base_url: str | None = None
) -> httpx.AsyncClient:
    """The one HTTP client of a provider section: its base URL, timeouts, and as
    many connections as it may have tasks in flight (at least 8 for polling)."""
    return httpx.AsyncClient(
        base_url=(settings.base_url if base_url is None else base_url).rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout),
        limits=httpx.Limits(
            max_connections=max(8, settings.max_in_flight), max_keepalive_connections=16
        ),
    )


async def send(
    client: httpx.AsyncClient, method: str, url: str, *, provider: str, **kwargs: Any
) -> httpx.Response:
    """Send one request; network failures raise ``EaselError``."""
    try:
        return await client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # No connection was made (or none was free in our own pool): the request
        # never left, so even a submission may be sent again.
        raise EaselError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"{provider}: cannot connect ({type(exc).__name__})",
            {"provider": provider},
            sent=False,
        ) from exc
    except httpx.TimeoutException as exc:
        raise EaselError(
            ErrorCode.PROVIDER_TIMEOUT,
            f"{provider}: no answer in time ({type(exc).__name__})",
            {"provider": provider},
        ) from exc
    except httpx.HTTPError as exc:
        raise EaselError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"{provider}: connection failed ({type(exc).__name__})",
            {"provider": provider},
        ) from exc


def error_for_status(response: httpx.Response, provider: str, message: str = "") -> EaselError:
    """The Easel error for a provider's non-2xx answer."""
    status = response.status_code
    excerpt = redact(response.text)
    lowered = excerpt.lower()
    # Credits first: some providers refuse an empty account with 403 (Pollo).
    if status == 402 or any(phrase in lowered for phrase in _CREDIT_PHRASES):
        code = ErrorCode.QUOTA_EXCEEDED
    elif status in (401, 403):
        code = ErrorCode.AUTHENTICATION_FAILED
    elif status == 429:
        code = ErrorCode.RATE_LIMITED
    elif status == 404:
        code = ErrorCode.NOT_FOUND
    elif status in (400, 422):
        code = ErrorCode.INVALID_PARAMETERS
    elif status == 408:
        code = ErrorCode.PROVIDER_TIMEOUT
    elif status >= 500:
        code = ErrorCode.PROVIDER_ERROR
    else:
        code = ErrorCode.PROVIDER_ERROR
    # Masked here, where the provider's words become Easel's: an adapter's message
    # is often a field of the answer (fal's ``detail``), echoed key and all.
    text = redact(message or _detail(response) or response.reason_phrase, 300)
    return EaselError(
        code,
        f"{provider}: {text}",
        {"provider": provider, "status": status, "body": excerpt},
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        # 429 is a refusal: the provider started nothing, so resending is safe.
        sent=code is not ErrorCode.RATE_LIMITED,
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "title"):
            if isinstance(body.get(key), str):
                return redact(body[key], 200)
    return ""


def json_body(response: httpx.Response, provider: str) -> Any:
    """The JSON body of a 2xx answer; a malformed one is a retryable provider error."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EaselError(
            ErrorCode.PROVIDER_ERROR,
            f"{provider}: answer is not JSON",
            {"provider": provider, "status": response.status_code, "body": redact(response.text)},
        ) from exc
