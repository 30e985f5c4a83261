"""Providers that echo the key back: nothing Easel writes or answers holds it.

Every provider simulator is told to answer each create with 401, 403, 422, 500
and 502 in turn, the body and headers saying back the credentials the request
carried (plain, URL-encoded and base64: ``Knobs.echo_key``). ``easel run`` runs
one job per status and provider to its end; then everything Easel wrote (the
SQLite database and its WAL, the log files, its own output) and every answer it
gives (the jobs, their events, health, detailed health, metrics) is searched for
each configured secret in every form a leak could take. None may be found.

The keys have no recognisable shape (no ``r8_``, no ``sk-``), so only masking by
value can hide them, and they hold ``/``, ``+``, ``=`` and ``&`` so that their
encodings differ from them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import free_port, write_config
from tests.process import DaemonProcess, wait_all_terminal
from tests.simulators.base import fetch_stats, start_simulator_process

STATUSES = (401, 403, 422, 500, 502)


def key(name: str) -> str:
    return f"Zq7/{name}+Echo=Key&v9"


#: section -> (simulator, path under the simulator, its settings, the model run).
PROVIDERS: dict[str, tuple[str, str, dict[str, str], str]] = {
    "replicate": ("replicate", "", {"api_token": key("rep"), "webhook_secret": key("rephook")},
                  "replicate-flux-schnell"),
    "bfl": ("bfl", "", {"api_key": key("bfl"), "webhook_secret": key("bflhook")}, "flux-pro"),
    "kling": ("kling", "", {"access_key": key("klingak"), "secret_key": key("klingsk")},
              "kling-v2-1-master"),
    "pollo": ("pollo", "/api/platform", {"api_key": key("pollo"),
                                         "webhook_secret": key("pollohook")}, "pollo-v1-6"),
    "openai": ("openai", "/v1", {"api_key": key("openai")}, "gpt-image-1"),
    "fal": ("fal", "", {"api_key": f"{key('falid')}:{key('falsecret')}"}, "fal-flux-dev"),
}
CLIENT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"echo-test outbox secret!").decode()


def secrets() -> list[str]:
    found = [CLIENT_WEBHOOK_SECRET]
    for _sim, _path, settings, _model in PROVIDERS.values():
        for value in settings.values():
            found += value.split(":") if ":" in value else [value]
    return found


def leaks(value: str) -> list[str]:
    """The forms a leak of ``value`` could take in what Easel writes."""
    raw = value.encode()
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
             json.dumps(value)[1:-1], json.dumps(value)[1:-1].replace("/", "\\/")}
    for prefix in (b"", b"u:", b"ab:"):  # base64 at each alignment (Basic auth: "id:key")
        encoded = base64.b64encode(prefix + raw).decode()
        start = len(base64.b64encode(prefix).decode().rstrip("=")) + 1
        forms |= {encoded[start:start + 12], base64.urlsafe_b64encode(prefix + raw).decode()[start:start + 12]}
    return sorted(forms)


@contextlib.contextmanager
def simulators() -> Iterator[dict[str, str]]:
    """One simulator process per provider, echoing keys on every create."""
    statuses = ",".join(map(str, STATUSES))
    with contextlib.ExitStack() as stack:
        urls = {}
        for section, (sim, path, _settings, _model) in PROVIDERS.items():
            _process, url = stack.enter_context(start_simulator_process(
                sim, "--echo-key", statuses, "--fault-routes", "create", "--duration", "0.5"))
            urls[section] = url + path
        yield urls


def config_text(urls: dict[str, str]) -> str:
    sections = [f'[webhooks]\nsecret = "{CLIENT_WEBHOOK_SECRET}"\n']
    for section, (_sim, _path, settings, _model) in PROVIDERS.items():
        lines = "".join(f'{name} = "{value}"\n' for name, value in settings.items())
        # A create lost to a 5xx is looked for this long before it ends uncertain.
        sections.append(f'[providers.{section}]\nbase_url = "{urls[section]}"\n{lines}'
                        "lookup_window = 2\n")
    return "\n".join(sections)


def written_files(tmp_path: Path) -> list[Path]:
    """Every file Easel wrote: its state directory (database, WAL, logs...) and its output."""
    return [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".toml"]


def find_leaks(texts: dict[str, bytes]) -> list[str]:
    found = []
    for secret in secrets():
        for form in leaks(secret):
            found += [f"{form!r} (of {secret!r}) in {where}"
                      for where, text in texts.items() if form.encode() in text]
    return found


def test_keys_echoed_by_every_provider_are_nowhere_in_what_easel_writes(tmp_path: Path) -> None:
    with simulators() as urls:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        config = write_config(tmp_path, config_text(urls), port=port)
        daemon = DaemonProcess(config, base_url, tmp_path / "easel.out")
        answers: dict[str, bytes] = {}
        try:
            daemon.start()
            with httpx.Client(base_url=base_url, timeout=60) as client:
                ids = []
                for _sim, _path, _settings, model in PROVIDERS.values():
                    for _status in STATUSES:
                        answer = client.post("/api/external/generation", json={
                            "modelIdentifier": model, "prompt": "a lighthouse at dusk"})
                        assert answer.status_code == 202, answer.text
                        ids.append(answer.json()["id"])
                jobs = wait_all_terminal(client, ids, timeout=120)
                for job_id in ids:
                    for path in (f"/api/external/generation/{job_id}",
                                 f"/api/external/generation/{job_id}/events"):
                        answers[f"GET {path}"] = client.get(path).content
                for path in ("/api/health", "/api/health/detailed", "/api/metrics"):
                    answers[f"GET {path}"] = client.get(path).content
            # The database and its WAL while the daemon runs, before any checkpoint.
            running = {f"{path} (running)": path.read_bytes() for path in written_files(tmp_path)}
        finally:
            daemon.stop()
        echoed = {section: fetch_stats(urls[section].removesuffix(PROVIDERS[section][1]))
                  .faults.get("echo_key") for section in PROVIDERS}

    stopped = {str(path): path.read_bytes() for path in written_files(tmp_path)}
    assert any(name.endswith(".db") for name in stopped), list(stopped)
    assert any("easel.log" in name for name in stopped), list(stopped)
    assert find_leaks({**answers, **running, **stopped}) == []

    # The simulators did echo, and Easel did read what they said.
    assert echoed == {section: len(STATUSES) for section in PROVIDERS}, echoed
    assert all(job["status"] == "FAILED" for job in jobs.values()), jobs
    said = " ".join(json.dumps(job["error"]) for job in jobs.values())
    assert "Invalid credential ***" in said, said
    codes = {job["error"]["code"] for job in jobs.values()}
    assert {"AUTHENTICATION_FAILED", "INVALID_PARAMETERS"} <= codes, codes
