"""The ``easel`` command: run the daemon, check a config, talk to a running daemon.

    easel run [--config FILE]
    easel check-config [--config FILE] [--json]
    easel submit --model MODEL [--outputs N] [--wait [--timeout SECONDS]] [--json] PROMPT
    easel status [--json] ID
    easel cancel [--json] ID
    easel events [--json] ID
    easel jobs [--status S] [--model M] [--provider P] [--user-id U]
               [--created-after T] [--created-before T] [--limit N] [--cursor C] [--json]
    easel batch submit FILE [--wait] [--json] [options] | status | cancel | retry | results ID
    easel keys create --name NAME [--scope submit,read,admin] [limits] [--json]
    easel keys list [--json]
    easel keys revoke [--json] ID

``run`` and ``check-config`` load and check the configuration the same way
(``_settings``), so a file ``check-config`` passes is one ``run`` starts with.

``submit``, ``status``, ``cancel``, ``events`` and ``jobs`` reach the daemon at the
first address of the configured ``[daemon] bind`` (a TCP address or a unix socket),
or at ``--url``, with the key of ``--api-key`` or else ``EASEL_API_KEY`` (never
printed). ``keys`` works on the database of the configured ``state_dir`` directly,
while the daemon runs or not: a running daemon sees a new or revoked key within
``[auth] key_cache_seconds``.

``--json`` prints the API's answer as JSON and nothing else on stdout. Without it
the output is for people (``daemon/cli_output.py``); ``submit --wait`` shows the
job's progress on stderr either way, live on a terminal and as plain lines
elsewhere.

Exit status (``EXIT_HELP``, also in ``--help`` and the README):

- 0: done (a submitted job succeeded, the daemon is running as asked);
- 1: a job failed or was cancelled (``submit --wait``, ``status``), ``--wait`` ran
  out of time, the daemon answered an error, or the daemon failed after starting;
- 2: bad arguments or configuration, or the daemon could not start;
- 3: the daemon could not be reached (connection refused, no unix socket,
  a timeout reaching it);
- 130: interrupted while ``submit --wait`` waited (the job goes on).

Every error is one line on stderr, ``easel: CODE: message``, CODE being the error
code of the API's envelope (``NOT_FOUND``, ``CONFLICT``, ...), or ``UNREACHABLE``,
``TIMEOUT``, ``config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import attrs
import httpx
import trio
from rich.console import Console

from daemon import cli_output, config as config_module
from daemon.config import Config, ConfigError, parse_bind
from daemon.logs import LoggingOptions, logging_settings_from_env

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

EXIT_HELP = (
    "exit status: 0 done; 1 a job failed or was cancelled, --wait ran out of time, "
    "the daemon answered an error or failed after starting; 2 bad arguments or "
    "configuration, or the daemon could not start; 3 the daemon could not be reached "
    "(refused, no unix socket, timeout); 130 interrupted while waiting. Errors are one "
    "line on stderr: easel: CODE: message."
)

#: Seconds ``submit --wait`` waits for a job when ``--timeout`` is not given.
DEFAULT_WAIT_TIMEOUT = 1800.0

#: The longest long-poll ``submit --wait`` holds while it shows progress, in
#: seconds: how stale the stage and percentage shown may be.
_REFRESH = 1.0

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
    if args.json:
        print(json.dumps({"providers": sorted(config.providers), "models": sorted(config.models),
                          "bind": list(config.daemon.bind)}, indent=2))
        return 0
    print(
        f"ok: {len(config.providers)} providers, {len(config.models)} models, "
        f"bind {', '.join(config.daemon.bind)}"
    )
    return 0


class CommandFailed(Exception):
    """Ends a client command: ``main`` prints ``easel: CODE: message`` as one line
    on stderr and exits with ``exit_status``. Raised rather than printed where it
    happens so a live progress display is closed before the line is written."""

    def __init__(self, exit_status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.code = code
        self.message = message


@attrs.define
class Daemon:
    """A running daemon as the client commands reach it: one HTTP client, and where
    it points (for the message when it cannot be reached)."""

    client: httpx.Client
    where: str

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The API's JSON answer; CommandFailed (exit 1) naming the error envelope's
        code for an error answer, (exit 3) when the daemon cannot be reached."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        body = self._checked(response)
        if not isinstance(body, dict):
            raise CommandFailed(EXIT_FAILED, "INVALID_ANSWER",
                                f"the daemon at {self.where} answered {response.text[:200]!r}")
        return body

    def stream(self, method: str, path: str, out: BinaryIO) -> None:
        """Copy the answer's body to ``out`` as it arrives (errors as ``call``)."""
        try:
            with self.client.stream(method, path) as response:
                if response.status_code >= 400:
                    response.read()
                    self._checked(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    out.flush()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.TransportError) -> CommandFailed:
        # Refused, no such socket, a timeout connecting or reading, a broken
        # connection: whichever, no answer came from the daemon.
        return CommandFailed(EXIT_UNREACHABLE, "UNREACHABLE",
                             f"cannot reach the daemon at {self.where}: "
                             f"{exc or type(exc).__name__}")

    @staticmethod
    def _checked(response: httpx.Response) -> Any:
        """The answer's JSON (None if it is none), or CommandFailed for an error."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):
                error = {"message": response.text[:200]}
            message = " ".join(str(error.get("message") or response.reason_phrase).split())
            raise CommandFailed(EXIT_FAILED, str(error.get("code") or response.status_code),
                                message)
        return body


@contextmanager
def _daemon(args: argparse.Namespace) -> Iterator[Daemon]:
    # Reading: long enough for the longest long-poll plus the answer's way back.
    timeout = httpx.Timeout(_REFRESH + 30, connect=10)
    key = args.api_key or os.environ.get("EASEL_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    if args.url:
        client = httpx.Client(base_url=args.url, timeout=timeout, headers=headers)
        where = args.url
    else:
        address = parse_bind(_config(args.config).daemon.bind[0])
        transport = httpx.HTTPTransport(uds=address.path) if address.path else None
        client = httpx.Client(transport=transport, base_url=address.client_url,
                              timeout=timeout, headers=headers)
        where = f"unix:{address.path}" if address.path else address.client_url
    with client:
        yield Daemon(client, where)


def _job_path(job_id: str, action: str = "") -> str:
    return f"/api/external/generation/{quote(job_id, safe='')}{action}"


def _ended_badly(job: dict[str, Any]) -> CommandFailed:
    error = job.get("error") or {}
    return CommandFailed(EXIT_FAILED, str(error.get("code") or job["status"]),
                         f"job {job['id']} {job['status']}: {error.get('message')}")


def wait_timeout(args: argparse.Namespace, command: str) -> float:
    """``--timeout`` (which bounds ``--wait``) in seconds; SystemExit(2) after saying
    what is wrong with it."""
    if args.timeout is not None and not args.wait:
        raise SystemExit(_fail(["--timeout bounds --wait; give both or neither"], command))
    timeout: float = DEFAULT_WAIT_TIMEOUT if args.timeout is None else args.timeout
    if not timeout > 0:
        raise SystemExit(_fail([f"--timeout must be more than 0 seconds, got {timeout:g}"],
                               command))
    return timeout


def _submit(args: argparse.Namespace) -> int:
    timeout = wait_timeout(args, "submit")
    with _daemon(args) as daemon:
        job = daemon.call("POST", "/api/external/generation",
                          json={"modelIdentifier": args.model, "prompt": args.prompt,
                                "number_of_outputs": args.outputs})
        if not args.json:
            print(job["id"], flush=True)
        if args.wait:
            try:
                job = _wait(daemon, job, timeout)
            except KeyboardInterrupt:
                raise CommandFailed(EXIT_INTERRUPTED, "INTERRUPTED",
                                    f"stopped waiting; job {job['id']} goes on (cancel it "
                                    f"with: easel cancel {job['id']})") from None
    if args.json:
        print(json.dumps(job, indent=2))
    elif job["status"] == "SUCCESS":
        for result in job["results"]:
            print(result["url"])
    if job["status"] in ("FAILED", "CANCELLED"):
        raise _ended_badly(job)
    return 0


def _wait(daemon: Daemon, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The job once it ends, its progress shown on stderr meanwhile.

    Each read is a long-poll held at most ``_REFRESH`` seconds: the daemon answers
    the moment the job ends, and otherwise the stage and progress shown are never
    more than that old. CommandFailed (exit 1) when ``timeout`` runs out first."""
    deadline = time.monotonic() + timeout
    with cli_output.progress(Console(stderr=True)) as show:
        show(job)
        while job["status"] not in ("SUCCESS", "FAILED", "CANCELLED"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandFailed(
                    EXIT_FAILED, "TIMEOUT",
                    f"job {job['id']} still {job['status']} after {timeout:g} s; it was "
                    f"not cancelled (see: easel status {job['id']})")
            job = daemon.call("GET", _job_path(job["id"]),
                              params={"wait": f"{min(remaining, _REFRESH):.3f}"})
            show(job)
    return job


def _status(args: argparse.Namespace) -> int:
    with _daemon(args) as daemon:
        job = daemon.call("GET", _job_path(args.id))
    print(json.dumps(job, indent=2) if args.json else cli_output.job_summary(job))
    if job["status"] in ("FAILED", "CANCELLED"):
        raise _ended_badly(job)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _daemon(args) as daemon:
        job = daemon.call("POST", _job_path(args.id, "/cancel"))
    print(json.dumps(job, indent=2) if args.json else f"{job['id']} {job['status']}")
    return 0


def _events(args: argparse.Namespace) -> int:
    with _daemon(args) as daemon:
        answer = daemon.call("GET", _job_path(args.id, "/events"))
    print(json.dumps(answer, indent=2) if args.json
          else cli_output.events_table(answer["events"]))
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
    return cli_output.table(rows)


def _jobs(args: argparse.Namespace) -> int:
    params = {name: value for name, value in (
        ("status", args.status), ("model", args.model), ("provider", args.provider),
        ("user_id", args.user_id), ("createdAfter", args.created_after),
        ("createdBefore", args.created_before), ("limit", args.limit), ("cursor", args.cursor),
    ) if value is not None}
    with _daemon(args) as daemon:
        page = daemon.call("GET", "/api/external/generation", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(jobs_table(page["data"]))
    if page["nextCursor"]:
        print(f"(more: easel jobs --cursor {page['nextCursor']} with the same filters)")
    return 0


def _base_url(text: str) -> str:
    """``--url``: an http or https URL with a host, or a usage error (exit 2) rather
    than a request that could never leave."""
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected http://HOST:PORT or https://...")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="easel", description="AI image and video generation daemon",
                                epilog=EXIT_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, json_help: str | None = None,
            under: Any = None) -> argparse.ArgumentParser:
        cmd = (under or sub).add_parser(name, help=help_, description=help_, epilog=EXIT_HELP)
        cmd.add_argument(
            "--config", metavar="FILE",
            help="TOML file merged over the shipped defaults (default: "
                 f"{config_module.SYSTEM_CONFIG} when it exists)",
        )
        if json_help:
            cmd.add_argument("--json", action="store_true", help=json_help)
        return cmd

    def client(name: str, help_: str, json_help: str | None,
               under: Any = None) -> argparse.ArgumentParser:
        """A command that talks to a running daemon (``under``: a group's subparsers)."""
        cmd = add(name, help_, json_help, under)
        cmd.add_argument(
            "--url", type=_base_url, help="daemon base URL, e.g. http://127.0.0.1:8700 "
                          "(default: the first [daemon] bind of the config)",
        )
        cmd.add_argument(
            "--api-key", metavar="KEY",
            help="the API key to send (default: $EASEL_API_KEY; prefer the variable: "
                 "an argument is visible to other users in the process list)",
        )
        return cmd

    add("run", "run the daemon in the foreground until SIGTERM or SIGINT").set_defaults(
        func=_run)
    add("check-config", "check the configuration as `run` would, print a summary and "
                        "exit (2 with every problem when it is wrong)",
        "print the summary as JSON: {providers, models, bind}, the names of the "
        "configured providers and models and the bind addresses").set_defaults(
        func=_check_config)
    s = client("submit", "submit a generation to a running daemon and print its job id",
               "print the job as the API answers it (with --wait: once it ended) instead "
               "of its id and output URLs")
    s.add_argument("--model", required=True,
                   help="a model of the catalog ([models.NAME] in the config), "
                        "e.g. sandbox-image (local, no key needed)")
    s.add_argument("--wait", action="store_true",
                   help="wait until the job ends, showing its stage and progress on "
                        "stderr, and print its output URLs (exit 1 if it fails)")
    s.add_argument("--outputs", type=int, default=1, metavar="N",
                   help="number of outputs to generate (default: 1)")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --wait: stop waiting after SECONDS and exit 1, leaving "
                        f"the job running (default: {DEFAULT_WAIT_TIMEOUT:g})")
    s.add_argument("prompt", help="the prompt, one argument (quote it)")
    s.set_defaults(func=_submit)
    for name, func, help_, json_help in (
        ("status", _status, "show a job (exit 1 when it failed or was cancelled)",
         "print the job as the API answers it"),
        ("cancel", _cancel, "cancel a job that has not ended (exit 1 when it already has)",
         "print the cancelled job as the API answers it"),
        ("events", _events, "show a job's events, oldest first",
         "print the API's answer: {id, events: [{at, kind, ...}]}"),
    ):
        one = client(name, help_, json_help)
        one.add_argument("id", help="the job id `submit` printed (gen_...)")
        one.set_defaults(func=func)
    j = client("jobs", "list jobs, newest first, a page at a time",
               "print the page as the API answers it: {data, nextCursor, hasMore}")
    j.add_argument("--status", help="comma-separated statuses or stages, e.g. FAILED,RUNNING")
    j.add_argument("--model", help="only jobs submitted for this catalog model")
    j.add_argument("--provider", help="only jobs of this provider section")
    j.add_argument("--user-id", help="only jobs submitted with this user_id")
    j.add_argument("--created-after", metavar="TIME",
                   help="created at or after TIME (ISO 8601 with a zone, or Unix seconds)")
    j.add_argument("--created-before", metavar="TIME", help="created before TIME")
    j.add_argument("--limit", type=int, metavar="N", help="jobs per page (1 to 100; default 20)")
    j.add_argument("--cursor", help="the page after the one that printed this cursor")
    j.set_defaults(func=_jobs)
    from daemon import batch_command

    batch_command.add_commands(
        sub, lambda under, name, help_, json_help: client(name, help_, json_help, under))
    k = sub.add_parser("keys", help="create, list and revoke API keys",
                       description="create, list and revoke API keys (in the state "
                                   "directory's database; a running daemon sees the change)",
                       epilog=EXIT_HELP)
    keys = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            help="create, list or revoke")

    def add_key_command(name: str, help_: str, json_help: str) -> argparse.ArgumentParser:
        cmd = keys.add_parser(name, help=help_, description=help_, epilog=EXIT_HELP)
        cmd.add_argument(
            "--config", metavar="FILE",
            help="TOML file merged over the shipped defaults (its [daemon] state_dir "
                 "holds the keys)",
        )
        cmd.add_argument("--json", action="store_true", help=json_help)
        cmd.set_defaults(func=_keys)
        return cmd

    kc = add_key_command("create", "make a key and print it (shown this once only)",
                         "print {key, id, name, scopes, createdAt, revokedAt, limits}: the "
                         "key (shown this once only) and what list shows of it")
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
    add_key_command("list", "list the keys (never their secrets)",
                    "print a JSON array of {id, name, scopes, createdAt, revokedAt, limits} "
                    "(limits null where the [limits] default applies)")
    kr = add_key_command("revoke", "revoke a key: the daemon refuses it from then on",
                         "print the revoked key as list shows it")
    kr.add_argument("id", help="the key's id (from list)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CommandFailed as failure:
        print(f"easel: {failure.code}: {failure.message}", file=sys.stderr)
        return failure.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
