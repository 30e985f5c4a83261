"""``easel check-config`` and ``easel run`` refuse the same configurations, with the
same ``key.path: message`` lines and exit 2: both go through ``config.load`` and the
CLI's ``_settings``, which check everything the daemon would refuse at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import Address, ConfigError, load, parse_bind
from tests.test_config import check_config

#: Configurations today's ``run`` refuses (or mis-runs) and each problem it names.
BAD = {
    "port out of range": (
        '[daemon]\nbind = ["127.0.0.1:99999"]\n',
        "daemon.bind[0]: port must be a number from 1 to 65535, got '99999'",
    ),
    "unknown log level": (
        '[logging]\nlevel = "LOUD"\n',
        "logging.level: unknown log level 'LOUD' (expected one of CRITICAL, ERROR, "
        "WARNING, INFO, DEBUG)",
    ),
    "unknown log format": (
        '[logging]\nformat = "xml"\n',
        "logging.format: must be one of 'json', 'pretty'",
    ),
    "state_dir empty after interpolation": (
        '[daemon]\nstate_dir = "${EASEL_TEST_UNSET_STATE_DIR:-}"\n',
        "daemon.state_dir: must not be empty (check the ${...} variables it names)",
    ),
    "unknown adapter": (
        '[providers.mine]\nadapter = "nope"\n',
        "providers.mine.adapter: unknown adapter 'nope' (known: ",
    ),
    "no rotated files kept": (
        "[logging]\nmax_files = 0\n",
        "logging.max_files: must be >= 1",
    ),
}


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable the configurations below refer to, and no LOG_* override."""
    for name in ("EASEL_TEST_UNSET_STATE_DIR", "LOG_LEVEL", "LOG_FORMAT", "LOG_FILE_PATH",
                 "LOG_FILE_MAX_SIZE", "LOG_FILE_MAX_FILES"):
        monkeypatch.delenv(name, raising=False)


def stderr_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_config_and_run_refuse_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    clean_environment(monkeypatch)
    text, problem = BAD[case]
    path = tmp_path / "easel.toml"
    path.write_text(text)
    checked = stderr_of(capsys, ["check-config", "--config", str(path)])
    assert checked == stderr_of(capsys, ["run", "--config", str(path)])
    assert checked.startswith(f"easel: config: {problem}"), checked
    assert len(checked.splitlines()) == 1


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "easel.toml"
    path.write_text('[daemon]\nbind = ["127.0.0.1:0", "unix:"]\nstate_dir = " "\n'
                    '[logging]\nlevel = "LOUD"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "daemon.bind[0]", "daemon.bind[1]", "daemon.state_dir", "logging.level",
    ]


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("LOG_LEVEL", "LOUD", "LOG_LEVEL: unknown log level 'LOUD'"),
    ("LOG_FILE_MAX_FILES", "0", "LOG_FILE_MAX_FILES: must be 1 or more"),
])
def test_log_environment_overrides_are_checked_by_check_config_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    name: str, value: str, problem: str,
) -> None:
    path = tmp_path / "easel.toml"
    path.write_text("")
    clean_environment(monkeypatch)
    monkeypatch.setenv(name, value)
    checked = stderr_of(capsys, ["check-config", "--config", str(path)])
    assert checked == stderr_of(capsys, ["run", "--config", str(path)])
    assert checked.startswith(f"easel: logging: {problem}")


def test_check_config_as_a_process_refuses_a_bad_port(tmp_path: Path) -> None:
    path = tmp_path / "easel.toml"
    path.write_text('[daemon]\nbind = ["127.0.0.1:99999"]\n')
    result = check_config(path)
    assert result.returncode == 2
    assert result.stderr == (
        "easel: config: daemon.bind[0]: port must be a number from 1 to 65535, got '99999'\n"
    )


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:8700", Address(host="127.0.0.1", port=8700)),
    ("0.0.0.0:1", Address(host="0.0.0.0", port=1)),
    ("localhost:65535", Address(host="localhost", port=65535)),
    ("[::1]:8700", Address(host="::1", port=8700)),
    ("unix:/run/easel/easel.sock", Address(path="/run/easel/easel.sock")),
])
def test_good_binds(text: str, address: Address) -> None:
    assert parse_bind(text) == address


@pytest.mark.parametrize(("text", "message"), [
    ("nocolon", "expected HOST:PORT or unix:PATH, got 'nocolon'"),
    (":8700", "expected HOST:PORT or unix:PATH, got ':8700'"),
    ("fd://3", "expected HOST:PORT or unix:PATH, got 'fd://3'"),
    ("http://127.0.0.1:8700", "expected HOST:PORT or unix:PATH, got 'http://127.0.0.1:8700'"),
    ("127.0.0.1:0", "port must be a number from 1 to 65535, got '0'"),
    ("127.0.0.1:http", "port must be a number from 1 to 65535, got 'http'"),
    ("127.0.0.1:-1", "port must be a number from 1 to 65535, got '-1'"),
    ("::1:8700", "an IPv6 address goes in brackets: [::1]:8700"),
    ("[::g]:8700", "[::g] is not an IPv6 address"),
    ("300.1.1.1:80", "300.1.1.1 is not an IPv4 address"),
    ("bad_host!:80", "'bad_host!' is not a host name or address"),
    ("unix:", "unix: needs a socket path"),
    ("unix:/" + "x" * 107, "unix socket path is longer than 107 bytes"),
])
def test_bad_binds(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_bind(text)
    assert str(caught.value) == message


def test_client_url_of_a_wildcard_is_loopback() -> None:
    assert parse_bind("0.0.0.0:8700").client_url == "http://127.0.0.1:8700"
    assert parse_bind("[::]:8700").client_url == "http://[::1]:8700"
    assert parse_bind("example.org:80").client_url == "http://example.org:80"
    assert parse_bind("unix:/s").client_url == "http://easel"
