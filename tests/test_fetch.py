"""actors/fetch.py: resolved once, every hop checked, connected to what was checked.

The servers are real HTTP servers on loopback. 127.0.0.1 plays a public host (the
fetcher is told it counts as public, the one seam used) and 127.0.0.2, on the same
port, plays the host's own private service: whatever a test does, it must never
see a request. The resolver is injected, so a name's answers can change between
two lookups as a rebinding DNS server's would; the connection itself is httpx's
real one.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import AsyncIterator

import attrs
import httpx
import pytest
import trio
from quart import Response, request
from quart_trio import QuartTrio

from actors.fetch import Fetcher, FetchFailed, TooLarge, read_capped
from actors.targets import IPAddress, TargetRefused
from tests.simulators.base import serve_simulator

OUTSIDE = ipaddress.ip_address("127.0.0.1")
INSIDE = "127.0.0.2"


def outside_is_public(address: IPAddress) -> bool:
    return address == OUTSIDE


@attrs.define
class Server:
    """Records every request it answers as ``(method, path, host header, body)``."""

    url: str = ""
    seen: list[tuple[str, str, str, bytes]] = attrs.field(factory=list)
    cookies: list[str] = attrs.field(factory=list)


async def start_server(nursery: trio.Nursery, host: str, port: int = 0) -> Server:
    server = Server()
    app = QuartTrio(f"server-{host}")

    @app.route("/<path:path>", methods=["GET", "POST"])
    async def any_path(path: str) -> Response | tuple[bytes, int, dict[str, str]]:
        server.seen.append(
            (request.method, "/" + path, request.headers.get("host", ""), await request.get_data())
        )
        server.cookies.append(request.headers.get("cookie", ""))
        if path == "cookie":
            return b"", 200, {"set-cookie": "session=secret; Path=/"}
        if path == "loop":
            return b"", 302, {"location": "/loop"}
        if path == "redirect":
            return b"", int(request.args.get("status", "307")), {"location": request.args["to"]}
        if path == "bytes":
            size = int(request.args["n"])
            if request.args.get("chunked"):
                async def chunks() -> AsyncIterator[bytes]:
                    for _ in range(size // 1000):
                        yield b"x" * 1000

                return Response(chunks(), mimetype="application/octet-stream")
            return b"x" * size, 200, {"content-type": "application/octet-stream"}
        return b"hello from " + host.encode(), 200, {"content-type": "text/plain"}

    server.url = await nursery.start(serve_simulator, app, host, port)
    return server


@attrs.define
class Servers:
    outside: Server
    inside: Server
    port: int


@pytest.fixture
async def servers(nursery: trio.Nursery) -> Servers:
    inside = await start_server(nursery, INSIDE)
    port = httpx.URL(inside.url).port
    assert port is not None
    outside = await start_server(nursery, str(OUTSIDE), port)
    return Servers(outside, inside, port)


class Dns:
    """A resolver whose answers are given in turn, the last one repeated."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def fetcher(dns: Dns | None = None, **kwargs: object) -> Fetcher:
    return Fetcher(timeout=httpx.Timeout(30.0, connect=5.0), resolve=dns or Dns(["127.0.0.1"]),
                   public=outside_is_public, **kwargs)  # type: ignore[arg-type]


async def get(fetch: Fetcher, url: str) -> tuple[int, bytes]:
    async with fetch.stream("GET", url) as response:
        return response.status_code, await read_capped(response, 1 << 20)


# -- DNS rebinding ---------------------------------------------------------------------


async def test_a_rebinding_name_reaches_only_the_address_that_was_checked(
    servers: Servers,
) -> None:
    # First answer: the "public" host; any later one: the private service.
    dns = Dns(["127.0.0.1"], [INSIDE])
    url = f"http://rebind.example:{servers.port}/image"
    async with fetcher(dns) as fetch:
        assert await get(fetch, url) == (200, b"hello from 127.0.0.1")
        assert dns.asked == [("rebind.example", servers.port)]  # resolved once, not again
        # The request went to the checked address, named as the client named it.
        assert servers.outside.seen == [("GET", "/image", f"rebind.example:{servers.port}", b"")]
        with pytest.raises(TargetRefused, match="127.0.0.2, which is not a public address"):
            await get(fetch, url)  # now it answers the private address: refused
    assert servers.inside.seen == []


async def test_a_rebinding_name_cannot_reach_loopback_with_the_real_check(
    servers: Servers,
) -> None:
    """No seam for "public" here: the first answer is a real public address."""
    dns = Dns(["93.184.216.34"], ["127.0.0.1"])
    async with Fetcher(timeout=httpx.Timeout(5.0, connect=1.0), resolve=dns) as fetch:
        try:
            await get(fetch, f"http://rebind.example:{servers.port}/image")
        except FetchFailed:
            pass  # no route to that address from here: what matters is where it went
    assert dns.asked == [("rebind.example", servers.port)]
    assert servers.outside.seen == servers.inside.seen == []


async def test_https_names_the_host_in_tls_not_the_address(nursery: trio.Nursery) -> None:
    """The TLS ClientHello, sent to the pinned address, carries the name as its
    server name (SNI), which is also what the certificate is verified against."""
    hellos: list[bytes] = []

    async def handshake(stream: trio.SocketStream) -> None:
        hellos.append(await stream.receive_some(65536))
        await stream.aclose()  # no certificate to offer: the fetch fails after the hello

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handshake, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with fetcher(Dns(["127.0.0.1"])) as fetch:
        with pytest.raises(FetchFailed):
            await get(fetch, f"https://secure.example:{port}/image")
    [hello] = hellos
    assert hello[0] == 0x16  # a TLS handshake record ...
    assert b"secure.example" in hello  # ... naming the host, though sent to its address


# -- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("to", [f"http://{INSIDE}:{{port}}/secret", "http://inside.example:{port}/secret"])
async def test_a_redirect_into_the_host_is_refused_at_the_hop(servers: Servers, to: str) -> None:
    dns = Dns([INSIDE])
    target = to.format(port=servers.port)
    async with fetcher(dns) as fetch:
        with pytest.raises(TargetRefused, match="127.0.0.2, which is not a public address"):
            await get(fetch, f"{servers.outside.url}/redirect?to={target}")
    assert [path for _, path, _, _ in servers.outside.seen] == ["/redirect"]
    assert servers.inside.seen == []


async def test_redirects_are_followed_with_method_and_body(servers: Servers) -> None:
    dns = Dns(["127.0.0.1"])
    start = f"http://hooks.example:{servers.port}/redirect?status=302&to=/landed"
    async with fetcher(dns) as fetch:
        async with fetch.stream("POST", start, content=b'{"id": 1}') as response:
            assert response.status_code == 200
    assert [(m, p, h, b) for m, p, h, b in servers.outside.seen] == [
        ("POST", "/redirect", f"hooks.example:{servers.port}", b'{"id": 1}'),
        # The relative Location is resolved against the name, not the address.
        ("POST", "/landed", f"hooks.example:{servers.port}", b'{"id": 1}'),
    ]
    assert len(dns.asked) == 2  # each hop resolved and checked


async def test_too_many_redirects_fail_the_attempt(servers: Servers) -> None:
    loop = f"{servers.outside.url}/loop"
    async with fetcher(max_redirects=2) as fetch:
        with pytest.raises(FetchFailed, match="more than 2 redirects"):
            await get(fetch, loop)
    assert len(servers.outside.seen) == 3


async def test_a_redirect_without_location_is_the_answer(servers: Servers) -> None:
    async with fetcher() as fetch:
        async with fetch.stream("GET", f"{servers.outside.url}/redirect?to=") as response:
            assert response.status_code == 307


async def test_no_cookie_is_kept_between_fetches(servers: Servers) -> None:
    # Both names are served at 127.0.0.1: a cookie kept under the address would
    # go from one to the other.
    async with fetcher(Dns(["127.0.0.1"])) as fetch:
        await get(fetch, f"http://one.example:{servers.port}/cookie")
        await get(fetch, f"http://two.example:{servers.port}/image")
    assert servers.outside.cookies == ["", ""]


# -- size cap -------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_over_the_cap_are_refused(servers: Servers, chunked: bool) -> None:
    url = f"{servers.outside.url}/bytes?n=50000" + ("&chunked=1" if chunked else "")
    async with fetcher() as fetch:
        async with fetch.stream("GET", url) as response:
            assert ("content-length" in response.headers) is not chunked
            with pytest.raises(TooLarge, match="larger than 49999 bytes"):
                await read_capped(response, 49_999)
        async with fetch.stream("GET", url) as response:
            assert len(await read_capped(response, 50_000)) == 50_000


# -- resolution -----------------------------------------------------------------------


async def test_no_dns_answer_fails_the_attempt_and_a_bad_name_is_refused() -> None:
    async def unicode_error(host: str, port: int) -> list[str]:
        raise UnicodeError("label empty or too long")

    async with fetcher(Dns([])) as fetch:
        with pytest.raises(FetchFailed, match="cannot resolve"):
            await get(fetch, "http://nowhere.example/x")
    async with Fetcher(timeout=5.0, resolve=unicode_error) as fetch:
        with pytest.raises(TargetRefused, match="cannot resolve"):
            await get(fetch, "http://bad.example/x")


async def test_the_next_checked_address_is_tried_when_one_refuses_connections(
    servers: Servers,
) -> None:
    # Nothing listens on 127.0.0.3: the connection is refused before anything is sent.
    dns = Dns(["127.0.0.3", "127.0.0.1"])
    async with Fetcher(timeout=5.0, resolve=dns, allow_private=True) as fetch:
        assert await get(fetch, f"http://two.example:{servers.port}/x") == (
            200, b"hello from 127.0.0.1")
    assert len(dns.asked) == 1
