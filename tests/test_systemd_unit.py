"""The shipped systemd unit: the settings the daemon relies on, and a clean
``systemd-analyze verify`` where that tool exists."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import hypercorn.config
import pytest

from daemon.config import DaemonSettings
from daemon.startup import PRIVATE_UMASK, RESERVED_DESCRIPTORS

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "easel.service"


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    # Unit files repeat keys and use % specifiers: no strictness, no interpolation,
    # and keys keep their case.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"), source=str(UNIT))
    return parser


def seconds(value: str) -> float:
    """A systemd time span such as ``60``, ``60s``, ``1min 30s`` in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_sections(unit: configparser.ConfigParser) -> None:
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_notify_and_watchdog(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert seconds(service["WatchdogSec"]) == 30


def test_exec_start(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["ExecStart"] == "/usr/bin/env easel run --config /etc/easel/easel.toml"
    assert service["EnvironmentFile"] == "-/etc/easel/easel.env"
    assert service["Restart"] == "on-failure"


def test_stop_leaves_room_for_the_drain(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"
    drain = DaemonSettings().drain_timeout
    graceful = hypercorn.config.Config().graceful_timeout
    assert seconds(service["TimeoutStopSec"]) >= drain + graceful + 15


def test_user_and_directories(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["User"] == "easel"
    assert service["StateDirectory"] == "easel"
    assert service["LogsDirectory"] == "easel"
    assert service["RuntimeDirectory"] == "easel"


def test_descriptors_for_every_connection(unit: configparser.ConfigParser) -> None:
    limit = int(unit["Service"]["LimitNOFILE"])
    assert limit >= DaemonSettings().max_connections + RESERVED_DESCRIPTORS


def test_files_are_private(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert int(service["UMask"], 8) == PRIVATE_UMASK
    assert service["StateDirectoryMode"] == "0700"
    assert service["LogsDirectoryMode"] == "0700"


def test_hardening(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    # AF_UNIX carries the sd_notify datagrams (and unix: binds).
    assert "AF_UNIX" in service["RestrictAddressFamilies"].split()


def test_systemd_analyze_verify_is_silent() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed; the unit was only parsed")
    # It exits 0 on unknown keys and bad values and only prints them, so any
    # output at all is a failure.
    result = subprocess.run(
        [tool, "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output
