"""The ``easel`` command: run the daemon, check a config, talk to a running daemon.

    easel run [--config FILE]
    easel check-config [--config FILE]
    easel submit --model MODEL [--wait] [--config FILE] PROMPT
    easel status [--config FILE] ID

``submit`` and ``status`` reach the daemon at the first address of the configured
``[daemon] bind`` (a TCP address or a unix socket), or at ``--url``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import httpx
import trio

from daemon import config as config_module
from daemon.config import Config, ConfigError

EXIT_CONFIG = 2


def _load(path: str | None) -> Config:
    try:
        return config_module.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"easel: config: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _run(args: argparse.Namespace) -> int:
    from actors.supervisor import EscalationError
    from daemon.logs import configure_logging, logging_settings_from_env
    from daemon.service import serve

    config = _load(args.config)
    log_file = config.log_file
    try:
        options = logging_settings_from_env(
            config.logging.level,
            str(log_file) if log_file else None,
            config.logging.format,
            config.logging.max_size,
            config.logging.max_files,
            os.environ,
        )
        handle = configure_logging(**attrs.asdict(options))
    except ValueError as exc:
        print(f"easel: logging: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Every provider call would otherwise log a line at INFO.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("easel")
    with handle:
        try:
            trio.run(serve, config)
        except BaseExceptionGroup as group:
            escalation, rest = group.split(EscalationError)
            if escalation is None or rest is not None:
                log.critical("easel crashed", exc_info=group)
                raise
            log.critical("supervisor escalated: %s; exiting", escalation.exceptions[0])
            return 1
        except Exception:
            log.critical("easel crashed", exc_info=True)
            raise
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(
        f"ok: {len(config.providers)} providers, {len(config.models)} models, "
        f"bind {', '.join(config.daemon.bind)}"
    )
    return 0


def _client(args: argparse.Namespace) -> httpx.Client:
    if args.url:
        return httpx.Client(base_url=args.url, timeout=150)
    bind = _load(args.config).daemon.bind[0]
    if bind.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=bind.removeprefix("unix:"))
        return httpx.Client(transport=transport, base_url="http://easel", timeout=150)
    host, _, port = bind.rpartition(":")
    if host in ("0.0.0.0", "", "[::]"):
        host = "127.0.0.1"
    return httpx.Client(base_url=f"http://{host}:{port}", timeout=150)


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"code": "INTERNAL_ERROR", "message": response.text[:500]}}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        print(f"easel: {error.get('code', response.status_code)}: {error.get('message', '')}",
              file=sys.stderr)
        raise SystemExit(1)
    return body  # type: ignore[no-any-return]


def _submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            job = _answer(client.post(
                "/api/external/generation",
                json={"modelIdentifier": args.model, "prompt": args.prompt,
                      "number_of_outputs": args.outputs},
            ))
            print(job["id"])
            if not args.wait:
                return 0
            deadline = time.monotonic() + args.timeout
            while job["status"] not in ("SUCCESS", "FAILED", "CANCELLED"):
                if time.monotonic() > deadline:
                    print(f"easel: still {job['status']} after {args.timeout:g} s", file=sys.stderr)
                    return 1
                job = _answer(client.get(f"/api/external/generation/{job['id']}",
                                         params={"wait": 60}))
        except httpx.HTTPError as exc:
            print(f"easel: cannot reach the daemon: {exc}", file=sys.stderr)
            return 1
    if job["status"] != "SUCCESS":
        error = job.get("error") or {}
        print(f"easel: job {job['status']}: {error.get('code')}: {error.get('message')}",
              file=sys.stderr)
        return 1
    for result in job["results"]:
        print(result["url"])
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            job = _answer(client.get(f"/api/external/generation/{args.id}"))
        except httpx.HTTPError as exc:
            print(f"easel: cannot reach the daemon: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(job, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="easel", description="AI image and video generation daemon")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("--config", help="TOML file merged over the shipped defaults")
        return cmd

    add("run", "run the daemon").set_defaults(func=_run)
    add("check-config", "validate the configuration and exit").set_defaults(func=_check_config)
    s = add("submit", "submit a generation to a running daemon")
    s.add_argument("--model", default="sandbox-image")
    s.add_argument("--wait", action="store_true", help="wait for the result and print its URL")
    s.add_argument("--outputs", type=int, default=1)
    s.add_argument("--timeout", type=float, default=1800)
    s.add_argument("--url", help="daemon base URL (default: the configured bind)")
    s.add_argument("prompt")
    s.set_defaults(func=_submit)
    st = add("status", "print a job as JSON")
    st.add_argument("--url", help="daemon base URL (default: the configured bind)")
    st.add_argument("id")
    st.set_defaults(func=_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
