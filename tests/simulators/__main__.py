"""Command line: ``python -m tests.simulators NAME --port PORT [options]``.

Serves one simulator on loopback and prints exactly one line, ``listening on
http://HOST:PORT``, to stdout once the socket accepts connections: a test that
starts the process waits for that line (``base.start_simulator_process``) and
uses the URL as the provider's base URL.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import trio

from tests.simulators.base import Knobs, Simulator, serve_simulator

#: Simulator name -> "module:Class". Imported lazily so one broken simulator does
#: not stop the others from starting. New providers add one line here.
SIMULATORS: dict[str, str] = {
    "replicate": "tests.simulators.replicate:ReplicateSimulator",
}


def load_simulator(name: str) -> type[Simulator]:
    """The simulator class registered under ``name``."""
    module_name, _, class_name = SIMULATORS[name].partition(":")
    simulator_class: type[Simulator] = getattr(importlib.import_module(module_name), class_name)
    return simulator_class


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every simulator shares (they map onto ``Knobs``)."""
    parser = argparse.ArgumentParser(prog="python -m tests.simulators", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SIMULATORS), help="which provider to simulate")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds until a task finishes")
    parser.add_argument(
        "--create-latency", type=float, default=0.0, help="seconds to sleep before answering a create"
    )
    parser.add_argument("--token", default=None, help="API token to require (default: accept any)")
    return parser.parse_args(argv)


async def serve_and_announce(simulator: Simulator, host: str, port: int) -> None:
    """Serve until interrupted, announcing the bound URL once listening."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_simulator, simulator, host, port)
        print(f"listening on {url}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv)
    knobs = Knobs(duration=args.duration, create_latency=args.create_latency, token=args.token)
    simulator = load_simulator(args.name)(knobs)
    try:
        trio.run(serve_and_announce, simulator, args.host, args.port)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
