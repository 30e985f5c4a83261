"""``easel keys``: make, list and revoke API keys in a state directory's database.

The store is opened for the command alone, in its own trio run, while the daemon
may be running on the same database: SQLite's WAL lets the daemon read on, and this
one write waits for the daemon's transaction of the moment. The daemon sees a new
or revoked key within ``[auth] key_cache_seconds`` (``actors/keys.py``).

A new key is printed once, alone on stdout (so ``KEY=$(easel keys create ...)``
works); what was made goes to stderr. Only its hash is stored. With ``--json`` each
action prints its keys as ``key_json`` shapes them (``create`` adds the secret as
``key``), nothing else on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from actors.clock import wall_now
from actors.jobs import iso
from actors.keys import ApiKey, KeyLimits, new_key, parse_scopes
from actors.store import open_store
from daemon.cli_output import table

#: The daemon's database under ``state_dir`` (as ``daemon/service.py`` opens it).
DATABASE = "easel.db"
#: The longest key name taken.
MAX_NAME = 200


def run(state_dir: Path, args: argparse.Namespace) -> int:
    """Run ``easel keys <action>``; ValueError for a bad argument (exit 2)."""
    # The database may be made here first: keep it the state directory's own.
    os.umask(0o077)
    action = {"create": _create, "list": _list, "revoke": _revoke}[args.keys_command]
    return trio.run(action, state_dir / DATABASE, args)


def _limits(args: argparse.Namespace) -> KeyLimits:
    checks = (("--rate", args.rate, 0), ("--burst", args.burst, 1),
              ("--max-active", args.max_active, 0), ("--daily-spend", args.daily_spend, 0))
    for option, value, least in checks:
        if value is not None and not value >= least:  # NaN fails too
            raise ValueError(f"{option} must be {least} or more, got {value}")
    return KeyLimits(args.rate, args.burst, args.max_active, args.daily_spend)


async def _create(database: Path, args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"--name must be 1 to {MAX_NAME} characters")
    key, secret = new_key(name, parse_scopes(args.scope), _limits(args), wall_now())
    async with open_store(database) as store:
        await store.create_key(key)
    print(json.dumps({"key": secret, **key_json(key)}, indent=2) if args.json else secret,
          flush=True)
    scopes = ",".join(sorted(s.value for s in key.scopes))
    print(f"easel: created key {key.id} ({name}) with scopes {scopes}; the key above is "
          "shown this once only: keep it now", file=sys.stderr)
    return 0


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _limit(value: float | None) -> str:
    return "default" if value is None else f"{value:g}"


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key as ``--json`` prints it: never its secret nor its hash; a limit left to
    the ``[limits]`` default is null."""
    limits = key.limits
    return {"id": key.id, "name": key.name, "scopes": sorted(s.value for s in key.scopes),
            "createdAt": iso(key.created_at), "revokedAt": iso(key.revoked_at),
            "limits": {"rate": limits.rate, "burst": limits.burst,
                       "maxActiveJobs": limits.max_active_jobs,
                       "dailySpend": limits.daily_spend}}


def _row(key: ApiKey) -> list[str]:
    limits = key.limits
    return [key.id, key.name, ",".join(sorted(s.value for s in key.scopes)),
            _when(key.created_at), _when(key.revoked_at), _limit(limits.rate),
            _limit(limits.burst), _limit(limits.max_active_jobs), _limit(limits.daily_spend)]


async def _list(database: Path, args: argparse.Namespace) -> int:
    async with open_store(database) as store:
        keys = await store.list_keys()
    if args.json:
        print(json.dumps([key_json(key) for key in keys], indent=2))
        return 0
    if not keys:
        print("no keys (create one with: easel keys create --name NAME)")
        return 0
    print(table([["ID", "NAME", "SCOPES", "CREATED", "REVOKED", "RATE", "BURST", "MAX_ACTIVE",
                  "DAILY_SPEND"], *map(_row, keys)]))
    return 0


async def _revoke(database: Path, args: argparse.Namespace) -> int:
    async with open_store(database) as store:
        key = await store.revoke_key(args.id)
    if key is None:
        print(f"easel: keys: no key {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(key_json(key), indent=2))
    else:
        print(f"revoked {key.id} ({key.name}) at {_when(key.revoked_at)}")
    return 0
