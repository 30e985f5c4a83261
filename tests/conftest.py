"""Shared fixtures: an Easel daemon embedded in the test's trio run.

``easel_daemon(extra_toml)`` writes a config file (the real loading path: shipped
defaults, the file merged over them), starts ``daemon.service.serve`` in the test's
nursery on a free loopback port with its own state dir, and returns a handle with
an httpx client. The daemon is cancelled with the test's nursery at the end.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from actors.runtime import Runtime
from daemon import config as config_module
from daemon.service import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class EmbeddedDaemon:
    base_url: str
    runtime: Runtime
    client: httpx.AsyncClient
    stop: trio.Event
    state_dir: Path
    done: trio.Event

    async def submit(self, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return await self.client.post("/api/external/generation", json=body, **kwargs)

    async def wait(self, job_id: str, seconds: float = 30) -> dict[str, Any]:
        """The job once terminal (long-polling the API)."""
        with trio.fail_after(seconds + 5):
            while True:
                response = await self.client.get(
                    f"/api/external/generation/{job_id}", params={"wait": seconds}
                )
                job = response.json()
                if job["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                    return job  # type: ignore[no-any-return]


def write_config(tmp_path: Path, extra_toml: str = "", port: int | None = None,
                 daemon_toml: str = "") -> Path:
    state = tmp_path / "state"
    path = tmp_path / "easel.toml"
    path.write_text(
        f"""
[daemon]
bind = ["127.0.0.1:{port or free_port()}"]
state_dir = "{state}"
drain_timeout = 5
{daemon_toml}

[logging]
file = "logs/easel.log"
level = "INFO"

{extra_toml}
"""
    )
    return path


@pytest.fixture
async def easel_daemon(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[Callable[..., Awaitable[EmbeddedDaemon]]]:
    clients: list[httpx.AsyncClient] = []

    async def start(extra_toml: str = "", *, directory: Path | None = None,
                    daemon_toml: str = "") -> EmbeddedDaemon:
        where = directory or tmp_path
        where.mkdir(parents=True, exist_ok=True)
        config = config_module.load(write_config(where, extra_toml, daemon_toml=daemon_toml),
                                    environ={})
        stop, done = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[dict[str, Any]]) -> None:
            try:
                await serve(config, stop=stop, task_status=task_status)
            finally:
                done.set()

        info = await nursery.start(run)
        base_url = info["binds"][0]
        client = httpx.AsyncClient(base_url=base_url, timeout=60)
        clients.append(client)
        return EmbeddedDaemon(base_url, info["runtime"], client, stop, config.state_dir, done)

    yield start
    for client in clients:
        await client.aclose()
