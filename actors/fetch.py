"""Requests to URLs that someone else chose, kept out of the host and its network.

Owns ``Fetcher``, the one way Easel sends a request to a client-supplied URL: the
outbox's webhook POSTs and the OpenAI adapter's input-image GETs go through it.
For each hop it resolves the host once and checks every address
(``actors/targets.py``: no loopback, private, link-local... unless private targets
are allowed), then connects to an address it checked: the request is sent to
``<scheme>://<address>:<port>`` carrying the name in its ``Host`` header and, for
https, as the TLS server name, against which the certificate is verified. Letting
httpx resolve the name again to connect would let an answer that changed between
the check and the connect (DNS rebinding: public for the check, 127.0.0.1 for
the connect) reach the host's own services.

Redirects are followed by hand, each hop resolved and checked like the first, at
most ``max_redirects``; the method and body are kept on every hop (a webhook turned
into a GET would lose its payload). No proxy from the environment is used (it would
connect wherever it likes), and neither connections nor cookies are kept: both
would be keyed by address, so a connection opened for another name would skip
this name's certificate check, and a cookie would go to every name on the address. ``read_capped`` reads a body without holding more than a limit.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from actors.targets import (
    IPAddress,
    Resolver,
    TargetRefused,
    check_target,
    is_public,
    resolve_host,
)

log = logging.getLogger(__name__)

#: Redirects followed per fetch.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class FetchFailed(Exception):
    """This attempt failed (no DNS answer, no connection, a timeout, a broken body,
    too many redirects): a later one may succeed."""


class TooLarge(Exception):
    """The body is larger than the reader's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def _failure(exc: httpx.HTTPError) -> FetchFailed:
    name = type(exc).__name__
    return FetchFailed(f"{name}: {exc}" if str(exc) else name)


class Fetcher:
    """Sends requests to client-supplied URLs. ``aclose`` (or ``async with``) when done.

    ``timeout``: per phase (connect, read...), as httpx takes it; a caller wanting
    a deadline for the whole fetch puts a trio scope around it. ``resolve`` and
    ``public`` are seams for tests (see ``check_target``).
    """

    def __init__(
        self,
        *,
        timeout: float | httpx.Timeout,
        allow_private: bool = False,
        max_redirects: int = MAX_REDIRECTS,
        resolve: Resolver = resolve_host,
        public: Callable[[IPAddress], bool] = is_public,
    ) -> None:
        self.allow_private = allow_private
        self.max_redirects = max_redirects
        self._resolve = resolve
        self._public = public
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            # No cookie kept: it would be stored under the address, and sent to
            # every other name served there.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """The final answer to ``method url``, redirects followed, its body unread.

        Raises ``TargetRefused`` for a URL (or a hop) that may not be sent to, and
        ``FetchFailed`` for an attempt that failed. A redirect without a
        ``Location`` is an answer like any other.
        """
        for _ in range(self.max_redirects + 1):
            response = await self._send(method, url, content, headers or {})
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    url = _join(url, location)
                    continue
                yield response
                return
            finally:
                await response.aclose()
        raise FetchFailed(f"more than {self.max_redirects} redirects")

    async def _send(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str]
    ) -> httpx.Response:
        """One hop: resolved once, checked, sent to a checked address."""
        try:
            target = await check_target(
                url, allow_private=self.allow_private, resolve=self._resolve, public=self._public
            )
            named = httpx.URL(url)
        except TargetRefused:
            raise
        except OSError as exc:  # DNS may come back: a failed attempt, not a refusal
            raise FetchFailed(f"cannot resolve: {exc}") from None
        except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError from a resolver too
            raise TargetRefused(f"cannot resolve: {exc}") from None
        pinned_headers = {k: v for k, v in headers.items() if k.lower() != "host"}
        pinned_headers["host"] = named.netloc.decode("ascii")
        extensions = {}
        if named.scheme == "https" and not _is_literal(target.host):
            extensions["sni_hostname"] = named.raw_host.decode("ascii")
        for index, address in enumerate(target.addresses):
            request = self._client.build_request(
                method, named.copy_with(host=str(address)), content=content,
                headers=pinned_headers, extensions=extensions,
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                # Nothing was sent: another checked address of the name may answer.
                if index + 1 == len(target.addresses):
                    raise _failure(exc) from None
                log.info("cannot connect to %s at %s (%s); trying its next address",
                         target.host, address, exc)
            except httpx.HTTPError as exc:
                raise _failure(exc) from None
        raise AssertionError("check_target answers at least one address")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _join(url: str, location: str) -> str:
    """``location`` resolved against the URL as the client gave it (by name, not
    by the address it was sent to)."""
    try:
        return str(httpx.URL(url).join(location))
    except (httpx.InvalidURL, ValueError) as exc:
        raise TargetRefused(f"redirect to a URL Easel cannot send to: {exc}") from None


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of ``response``; ``TooLarge`` as soon as it is known to exceed
    ``limit`` bytes (from its ``Content-Length``, else while it streams), so a huge
    or endless body is never held. A body cut short is ``FetchFailed``."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise _failure(exc) from None
    return b"".join(chunks)
