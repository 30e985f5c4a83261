"""The ``easel`` command: run the daemon, check a config, talk to a running daemon.

    easel run [--config FILE]
    easel check-config [--config FILE]
    easel submit --model MODEL [--wait [--timeout SECONDS]] [--config FILE] PROMPT
    easel status [--config FILE] ID
    easel keys create --name NAME [--scope submit,read,admin] [limits] [--config FILE]
    easel keys list [--config FILE]
    easel keys revoke [--config FILE] ID
    easel jobs [--status S] [--model M] [--provider P] [--user-id U]
               [--created-after T] [--created-before T] [--limit N] [--cursor C] [--json]

``run`` and ``check-config`` load and check the configuration the same way
(``_settings``), so a file ``check-config`` passes is one ``run`` starts with.
Exit status 2 is a configuration or start-up problem, printed as one line per
problem on stderr; 1 is a failure after start (a crash, a failed job).
``submit``, ``status`` and ``jobs`` reach the daemon at the first address of the
configured ``[daemon] bind`` (a TCP address or a unix socket), or at ``--url``, with
the key in ``EASEL_API_KEY`` when it is set. ``keys`` works on the database of the
configured ``state_dir`` directly, while the daemon runs or not: a running daemon
sees a new or revoked key within ``[auth] key_cache_seconds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs
import httpx
import trio

from daemon import config as config_module
from daemon.config import Config, ConfigError, parse_bind
from daemon.logs import LoggingOptions, logging_settings_from_env

EXIT_CONFIG = 2

#: Seconds ``submit --wait`` waits for a job when ``--timeout`` is not given.
DEFAULT_WAIT_TIMEOUT = 1800.0

#: The longest single long-poll request ``submit --wait`` makes, in seconds (the
#: API holds a ``?wait=`` request for at most 120).
_LONG_POLL = 60

_E = TypeVar("_E", bound=BaseException)


def _fail(problems: Sequence[str], prefix: str = "config") -> int:
    for problem in problems:
        print(f"easel: {prefix}: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _config(path: str | None) -> Config:
    try:
        return config_module.load(path)
    except ConfigError as exc:
        raise SystemExit(_fail(exc.problems)) from None


def _settings(path: str | None) -> tuple[Config, LoggingOptions]:
    """The configuration and the logging options after the ``LOG_*`` environment
    overrides, or SystemExit(2) after printing every problem: the one check both
    ``run`` and ``check-config`` make."""
    config = _config(path)
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
    except ValueError as exc:
        raise SystemExit(_fail([str(exc)], "logging")) from None
    if options.max_bytes and options.backup_count < 1:
        # configure_logging refuses it: a rotating file that keeps no old file
        # would never be truncated. The config cannot say it; the variable can.
        raise SystemExit(_fail(["LOG_FILE_MAX_FILES: must be 1 or more when the log file "
                                "is rotated (LOG_FILE_MAX_SIZE above 0)"], "logging"))
    return config, options


def only(exc: BaseException, type_: type[_E]) -> _E | None:
    """``exc`` if it is a ``type_``, or the first ``type_`` of an ExceptionGroup made
    of nothing else (trio wraps what a task raises inside a nursery); None when
    anything else is in it, so a real crash is never mistaken for one of these."""
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(type_)
        if match is None or rest is not None:
            return None
        leaf: BaseException = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        exc = leaf
    return exc if isinstance(exc, type_) else None


def _run(args: argparse.Namespace) -> int:
    from actors.supervisor import EscalationError
    from daemon.logs import configure_logging
    from daemon.service import serve
    from daemon.startup import StartupError, describe, private_files

    config, options = _settings(args.config)
    private_files()  # before the log file is made
    try:
        handle = configure_logging(**attrs.asdict(options))
    except OSError as exc:
        return _fail([f"cannot open the log file {options.file}: {describe(exc)}"], "logging")
    except ValueError as exc:  # anything _settings did not foresee is still one line
        return _fail([str(exc)], "logging")
    # Every provider call would otherwise log a line at INFO.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("easel")
    with handle:
        try:
            trio.run(serve, config)
        except BaseException as exc:
            if (startup := only(exc, StartupError)) is not None:
                return _fail([str(startup)], "cannot start")
            if (escalation := only(exc, EscalationError)) is not None:
                log.critical("supervisor escalated: %s; exiting", escalation)
                return 1
            if isinstance(exc, Exception):
                log.critical("easel crashed", exc_info=exc)
            raise
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config, _ = _settings(args.config)
    problem = config_module.exposure_problem(config)
    if problem is not None:
        return _fail([problem])
    print(
        f"ok: {len(config.providers)} providers, {len(config.models)} models, "
        f"bind {', '.join(config.daemon.bind)}"
    )
    return 0


def _client(args: argparse.Namespace) -> httpx.Client:
    # Long enough for the longest long-poll plus the answer's way back.
    timeout = httpx.Timeout(_LONG_POLL + 30, connect=10)
    key = os.environ.get("EASEL_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    if args.url:
        return httpx.Client(base_url=args.url, timeout=timeout, headers=headers)
    address = parse_bind(_config(args.config).daemon.bind[0])
    transport = httpx.HTTPTransport(uds=address.path) if address.path else None
    return httpx.Client(transport=transport, base_url=address.client_url, timeout=timeout,
                        headers=headers)


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
    if args.timeout is not None and not args.wait:
        return _fail(["--timeout bounds --wait; give both or neither"], "submit")
    timeout = DEFAULT_WAIT_TIMEOUT if args.timeout is None else args.timeout
    if not timeout > 0:
        return _fail([f"--timeout must be more than 0 seconds, got {timeout:g}"], "submit")
    with _client(args) as client:
        try:
            job = _answer(client.post(
                "/api/external/generation",
                json={"modelIdentifier": args.model, "prompt": args.prompt,
                      "number_of_outputs": args.outputs},
            ))
            print(job["id"], flush=True)
            if not args.wait:
                return 0
            deadline = time.monotonic() + timeout
            while job["status"] not in ("SUCCESS", "FAILED", "CANCELLED"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    print(f"easel: job {job['id']} still {job['status']} after {timeout:g} s; "
                          f"it was not cancelled (see: easel status {job['id']})",
                          file=sys.stderr)
                    return 1
                # The daemon answers at the latest when the wait ends, so no
                # request outlives the deadline by more than a second and its
                # round trip.
                wait = math.ceil(min(remaining, _LONG_POLL))
                job = _answer(client.get(f"/api/external/generation/{job['id']}",
                                         params={"wait": wait}))
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


def _keys(args: argparse.Namespace) -> int:
    from daemon import keys_command

    config = _config(args.config)
    try:
        return keys_command.run(config.state_dir, args)
    except ValueError as exc:
        return _fail([str(exc)], "keys")


#: The columns of ``easel jobs``' table: heading and the job field shown.
_JOB_COLUMNS = (("ID", "id"), ("STATUS", "status"), ("STAGE", "stage"),
                ("MODEL", "modelIdentifier"), ("PROVIDER", "provider"),
                ("CREATED", "createdAt"), ("PROMPT", "prompt"))
_PROMPT_WIDTH = 40


def jobs_table(jobs: Sequence[dict[str, Any]]) -> str:
    """Jobs as a plain table for people: one line each, columns aligned, the prompt
    cut to one short line."""
    rows = [[heading for heading, _ in _JOB_COLUMNS]]
    for job in jobs:
        prompt = " ".join(str(job.get("prompt") or "").split())
        if len(prompt) > _PROMPT_WIDTH:
            prompt = prompt[:_PROMPT_WIDTH - 1] + "…"
        rows.append([str(job.get(field) or "-") for _, field in _JOB_COLUMNS[:-1]] + [prompt])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_JOB_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def _jobs(args: argparse.Namespace) -> int:
    params = {name: value for name, value in (
        ("status", args.status), ("model", args.model), ("provider", args.provider),
        ("user_id", args.user_id), ("createdAfter", args.created_after),
        ("createdBefore", args.created_before), ("limit", args.limit), ("cursor", args.cursor),
    ) if value is not None}
    with _client(args) as client:
        try:
            page = _answer(client.get("/api/external/generation", params=params))
        except httpx.HTTPError as exc:
            print(f"easel: cannot reach the daemon: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(jobs_table(page["data"]))
    if page["nextCursor"]:
        print(f"(more: easel jobs --cursor {page['nextCursor']} with the same filters)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="easel", description="AI image and video generation daemon",
        epilog="Exit status: 0 done; 1 failed (a job, the daemon after start, no "
               "answer); 2 a bad configuration, bad arguments or a failed start.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument(
            "--config", metavar="FILE",
            help="TOML file merged over the shipped defaults (default: "
                 f"{config_module.SYSTEM_CONFIG} when it exists)",
        )
        return cmd

    def url(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--url", help="daemon base URL, e.g. http://127.0.0.1:8700 "
                          "(default: the first [daemon] bind of the config)",
        )

    add("run", "run the daemon in the foreground until SIGTERM or SIGINT").set_defaults(
        func=_run)
    add("check-config", "check the configuration as `run` would, print a summary and "
                        "exit (2 with every problem when it is wrong)").set_defaults(
        func=_check_config)
    s = add("submit", "submit a generation to a running daemon and print its job id")
    s.add_argument("--model", required=True,
                   help="a model of the catalog ([models.NAME] in the config), "
                        "e.g. sandbox-image (local, no key needed)")
    s.add_argument("--wait", action="store_true",
                   help="wait until the job ends and print its output URLs (exit 1 "
                        "if it fails)")
    s.add_argument("--outputs", type=int, default=1, metavar="N",
                   help="number of outputs to generate (default: 1)")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --wait: stop waiting after SECONDS and exit 1, leaving "
                        f"the job running (default: {DEFAULT_WAIT_TIMEOUT:g})")
    url(s)
    s.add_argument("prompt", help="the prompt, one argument (quote it)")
    s.set_defaults(func=_submit)
    st = add("status", "print a job as JSON")
    url(st)
    st.add_argument("id", help="the job id `submit` printed (gen_...)")
    st.set_defaults(func=_status)
    k = sub.add_parser("keys", help="create, list and revoke API keys",
                       description="create, list and revoke API keys (in the state "
                                   "directory's database; a running daemon sees the change)")
    keys = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            help="create, list or revoke")

    def add_key_command(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = keys.add_parser(name, help=help_, description=help_)
        cmd.add_argument(
            "--config", metavar="FILE",
            help="TOML file merged over the shipped defaults (its [daemon] state_dir "
                 "holds the keys)",
        )
        cmd.set_defaults(func=_keys)
        return cmd

    kc = add_key_command("create", "make a key and print it (shown this once only)")
    kc.add_argument("--name", required=True, help="what the key is for (shown by list)")
    kc.add_argument("--scope", default="submit,read", metavar="SCOPES",
                    help="comma-separated: submit (create jobs, cancel its own), read (its "
                         "own jobs), admin (everything) (default: submit,read)")
    kc.add_argument("--rate", type=float, metavar="PER_SECOND",
                    help="requests a second (default: [limits] rate; 0: unlimited)")
    kc.add_argument("--burst", type=int, metavar="N",
                    help="requests at once before the rate applies (default: [limits] burst)")
    kc.add_argument("--max-active", type=int, metavar="N",
                    help="jobs queued or running at once (default: [limits] "
                         "max_active_jobs; 0: unlimited)")
    kc.add_argument("--daily-spend", type=float, metavar="COST",
                    help="cost of the jobs accepted per UTC day, in the catalog's units "
                         "(default: [limits] daily_spend; 0: unlimited)")
    add_key_command("list", "list the keys (never their secrets)")
    kr = add_key_command("revoke", "revoke a key: the daemon refuses it from then on")
    kr.add_argument("id", help="the key's id (from list)")
    j = add("jobs", "list jobs, newest first, a page at a time")
    url(j)
    j.add_argument("--status", help="comma-separated statuses or stages, e.g. FAILED,RUNNING")
    j.add_argument("--model", help="only jobs submitted for this catalog model")
    j.add_argument("--provider", help="only jobs of this provider section")
    j.add_argument("--user-id", help="only jobs submitted with this user_id")
    j.add_argument("--created-after", metavar="TIME",
                   help="created at or after TIME (ISO 8601 with a zone, or Unix seconds)")
    j.add_argument("--created-before", metavar="TIME", help="created before TIME")
    j.add_argument("--limit", type=int, metavar="N", help="jobs per page (1 to 100; default 20)")
    j.add_argument("--cursor", help="the page after the one that printed this cursor")
    j.add_argument("--json", action="store_true",
                   help="print the page as the API answers it: {data, nextCursor, hasMore}")
    j.set_defaults(func=_jobs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
