"""Which URLs Easel may send a request to: the private/loopback address check.

Owns ``check_target``: a client-supplied URL (a webhook receiver today, input
images later) must be http(s), carry no credentials, and every address its host
resolves to must be globally routable, unless the operator allows private targets.
Without this a client could make the daemon POST into the host's own services
(``http://127.0.0.1:6379``), the cloud metadata endpoint (``169.254.169.254``) or the
LAN behind it (server-side request forgery).

*Every* resolved address is checked, not just the first: a name that resolves to
one public and one private address would otherwise let the connection land on the
private one. ``check_target`` answers the addresses it checked, and the request
must connect to one of those (``actors/fetch.py`` does): resolving the name again
to connect could get another answer (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import attrs
import trio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port) -> addresses``; injectable so tests need no DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefused(ValueError):
    """The URL may not be sent to; retrying cannot help."""


@attrs.frozen
class Target:
    """Where a URL may be sent: its host and port, and the addresses it resolved
    to, every one of them checked."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a tunnelling IPv6 one carries (6to4, NAT64, Teredo), which
    is where the packets really go."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """True when ``address`` is a unicast address routable on the internet.

    ``is_global`` alone is not enough: Python counts multicast (224.0.0.0/4) as
    global, and before 3.12 it misses some IPv6 special ranges.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on the wire
            return is_public(address.ipv4_mapped)
        inner = _embedded_v4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (trio runs getaddrinfo in a thread)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def split_target(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL without credentials, else ``TargetRefused``
    (the checks that need no DNS, usable at submission time too)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("URLs with credentials (user:password@) are not allowed")
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL has no host")
    if _literal(host.split("%", 1)[0]) is None:
        try:
            host.encode("idna")  # what the resolver will do: refuse "é..com" here
        except UnicodeError as exc:
            raise TargetRefused(f"the host {host!r} is not a valid name: {exc}") from None
    return host, port or (443 if parts.scheme == "https" else 80)


async def check_target(
    url: str,
    *,
    allow_private: bool = False,
    resolve: Resolver = resolve_host,
    public: Callable[[IPAddress], bool] = is_public,
) -> Target:
    """The ``Target`` of ``url``; ``TargetRefused`` unless Easel may send to it.

    The host is resolved once (an IP literal is its own answer) and every address
    must be ``public`` unless ``allow_private``. A name that does not resolve raises
    ``OSError`` (``socket.gaierror``): that may pass, so the caller should treat it
    as a failed attempt, not a refusal. ``public`` is a seam for tests, which let a
    loopback address stand for the internet.
    """
    host, port = split_target(url)
    literal = _literal(host.split("%", 1)[0])
    answers = [str(literal)] if literal is not None else await resolve(host, port)
    if not answers:
        raise OSError(f"{host} resolves to no address")
    addresses = tuple(ipaddress.ip_address(text.split("%", 1)[0]) for text in answers)
    if not allow_private:
        for address in addresses:
            if not public(address):
                raise TargetRefused(
                    f"{host} resolves to {address}, which is not a public address"
                )
    return Target(host, port, addresses)
