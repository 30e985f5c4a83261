"""The private/loopback address check (actors/targets.py), one case per address class.

Names are resolved by an injected resolver, so no test needs DNS; ``localhost`` is
resolved for real (the hosts file answers it) to prove the real resolver is used.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from actors.targets import Target, TargetRefused, check_target, is_public, split_target

REFUSED = {
    "loopback v4": "127.0.0.1",
    "loopback v4 elsewhere in 127/8": "127.1.2.3",
    "loopback v6": "::1",
    "private 10/8": "10.1.2.3",
    "private 172.16/12": "172.20.0.1",
    "private 192.168/16": "192.168.1.1",
    "carrier-grade NAT": "100.64.0.1",
    "link-local v4 (cloud metadata)": "169.254.169.254",
    "link-local v6": "fe80::1",
    "unique local v6": "fd12:3456::1",
    "site-local v6 (deprecated)": "fec0::1",
    "multicast v4": "224.0.0.1",
    "multicast v6": "ff02::1",
    "unspecified v4": "0.0.0.0",
    "unspecified v6": "::",
    "reserved 240/4": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "documentation v4": "192.0.2.10",
    "documentation v6": "2001:db8::1",
    "benchmarking": "198.18.0.1",
    "v4-mapped loopback": "::ffff:127.0.0.1",
    "v4-mapped private": "::ffff:10.0.0.1",
    "6to4 of loopback": "2002:7f00:1::1",
    "NAT64 of private": "64:ff9b::a00:1",
}
ACCEPTED = {
    "public v4": "93.184.216.34",
    "public v6": "2606:4700:4700::1111",
    "v4-mapped public": "::ffff:8.8.8.8",
}


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def _url(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:8080/hook"


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal must not be resolved ({host})")


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
async def test_ip_literal_urls_refused(address: str) -> None:
    with pytest.raises(TargetRefused, match="not a public address"):
        await check_target(_url(address), resolve=_no_dns)


@pytest.mark.parametrize("address", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_ip_literal_urls_accepted(address: str) -> None:
    await check_target(_url(address), resolve=_no_dns)


def _resolver(answer: list[str]):  # type: ignore[no-untyped-def]
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answer

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


async def test_name_with_only_public_addresses_is_accepted() -> None:
    resolve = _resolver(["93.184.216.34", "2606:4700:4700::1111"])
    target = await check_target("https://hooks.example.com/easel", resolve=resolve)
    assert resolve.asked == [("hooks.example.com", 443)]
    assert [str(address) for address in target.addresses] == ["93.184.216.34", "2606:4700:4700::1111"]


async def test_name_with_any_private_address_is_refused() -> None:
    # The connection could land on either address: one private one is enough.
    resolve = _resolver(["93.184.216.34", "10.0.0.7"])
    with pytest.raises(TargetRefused, match="10.0.0.7"):
        await check_target("http://hooks.example.com:8080/easel", resolve=resolve)
    assert resolve.asked == [("hooks.example.com", 8080)]


async def test_localhost_is_resolved_and_refused() -> None:
    with pytest.raises(TargetRefused, match="localhost resolves to"):
        await check_target("http://localhost:9/hook")


async def test_name_resolving_to_nothing_is_an_os_error() -> None:
    # Not a refusal: DNS may answer next time, so the caller retries.
    with pytest.raises(OSError):
        await check_target("http://hooks.example.com/", resolve=_resolver([]))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.216.34/hook", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("//93.184.216.34/hook", "scheme '(none)'"),
        ("http://user:pass@93.184.216.34/hook", "credentials"),
        ("http://user@93.184.216.34/hook", "credentials"),
        ("http:///hook", "no host"),
        ("http://93.184.216.34:99999/hook", "not a valid URL"),
    ],
)
async def test_bad_urls_refused_even_if_private_targets_allowed(url: str, reason: str) -> None:
    for allow in (False, True):
        with pytest.raises(TargetRefused, match=re.escape(reason)):
            await check_target(url, allow_private=allow, resolve=_no_dns)


async def test_private_targets_allowed_skip_the_address_check() -> None:
    literal = await check_target("http://127.0.0.1:8080/hook", allow_private=True, resolve=_no_dns)
    assert literal.addresses == (ipaddress.ip_address("127.0.0.1"),)
    # Still resolved: the request connects to the addresses answered here.
    named = await check_target("http://localhost:8080/hook", allow_private=True,
                               resolve=_resolver(["127.0.0.1", "::1"]))
    assert named == Target("localhost", 8080, (ipaddress.ip_address("127.0.0.1"),
                                                ipaddress.ip_address("::1")))


def test_default_ports() -> None:
    assert split_target("http://a.example/x") == ("a.example", 80)
    assert split_target("https://a.example/x") == ("a.example", 443)
    assert split_target("https://[::1]:8443/x") == ("::1", 8443)


def test_a_host_no_resolver_takes_is_refused_before_dns() -> None:
    # "é..com" has an empty label: IDNA encoding fails, which getaddrinfo would
    # raise as UnicodeError (not OSError) at delivery time.
    with pytest.raises(TargetRefused, match="not a valid name"):
        split_target("http://é..com/hook")
