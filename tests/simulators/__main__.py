"""Command line: ``python -m tests.simulators NAME --port PORT [options]``.

Serves one simulator on loopback and prints exactly one line, ``listening on
http://HOST:PORT``, to stdout once the socket accepts connections: a test that
starts the process waits for that line (``base.start_simulator_process``) and
uses the URL as the provider's base URL.

Every simulator takes the ``Knobs`` options (``--duration``, ``--fail-rate``,
``--rate-limit-rate``...); ``NAME --help`` also lists the simulator's own
(``Simulator.add_arguments``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import trio

from tests.simulators.base import Simulator, add_knob_arguments, knobs_from_args, serve_simulator

#: Simulator name -> "module:Class". Imported lazily, only for the name being run,
#: so one broken or not-yet-written simulator does not stop the others. New
#: providers add one line here.
SIMULATORS: dict[str, str] = {
    "replicate": "tests.simulators.replicate:ReplicateSimulator",
    "bfl": "tests.simulators.bfl:BflSimulator",
    "kling": "tests.simulators.kling:KlingSimulator",
    "pollo": "tests.simulators.pollo:PolloSimulator",
    "openai": "tests.simulators.openai:OpenaiSimulator",
    "fal": "tests.simulators.fal:FalSimulator",
}


class SimulatorNotAvailable(LookupError):
    """A registered simulator whose module or class cannot be loaded."""


def load_simulator(name: str) -> type[Simulator]:
    """The simulator class registered under ``name``.

    Raises ``KeyError`` for an unregistered name and ``SimulatorNotAvailable`` when
    its module does not exist (yet) or lacks the class.
    """
    target = SIMULATORS[name]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise SimulatorNotAvailable(
                f"simulator {name!r} is registered as {target}, but module {module_name} does not exist yet"
            ) from exc
        raise  # the module exists but one of its own imports is missing: show that
    simulator_class = getattr(module, class_name, None)
    if not (isinstance(simulator_class, type) and issubclass(simulator_class, Simulator)):
        raise SimulatorNotAvailable(f"{module_name} has no Simulator subclass named {class_name}")
    return simulator_class


def build_parser(
    name: str | None = None, simulator_class: type[Simulator] | None = None
) -> argparse.ArgumentParser:
    """The parser: shared options, knobs, and ``simulator_class``'s own options."""
    parser = argparse.ArgumentParser(prog="python -m tests.simulators", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SIMULATORS), help="which provider to simulate")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    add_knob_arguments(parser.add_argument_group("behaviour (Knobs; also settable at POST /_sim/knobs)"))
    if simulator_class is not None:
        simulator_class.add_arguments(parser.add_argument_group(f"{name} options"))
    return parser


def _requested_name(argv: Sequence[str]) -> str | None:
    """The simulator name in ``argv``: the first argument that is a registered name
    (options' values are not names in practice)."""
    return next((argument for argument in argv if argument in SIMULATORS), None)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, type[Simulator]]:
    """Parse ``argv`` (default ``sys.argv[1:]``) in two steps: find the name, load
    that one simulator (so its options exist), then parse everything."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _requested_name(argv)
    simulator_class = None
    if name is not None:
        try:
            simulator_class = load_simulator(name)
        except SimulatorNotAvailable as exc:
            build_parser().error(str(exc))
    args = build_parser(name, simulator_class).parse_args(argv)
    assert simulator_class is not None  # argparse rejected a missing/unknown name
    return args, simulator_class


def make_simulator(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Simulator]:
    """The parsed arguments and the simulator they describe (usage errors exit 2)."""
    args, simulator_class = parse_args(argv)
    try:
        knobs = knobs_from_args(args)
        simulator = simulator_class.from_args(args, knobs)
    except (TypeError, ValueError) as exc:
        build_parser(args.name, simulator_class).error(str(exc))
    return args, simulator


async def serve_and_announce(simulator: Simulator, host: str, port: int) -> None:
    """Serve until interrupted, announcing the bound URL once listening."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_simulator, simulator, host, port)
        print(f"listening on {url}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args, simulator = make_simulator(argv)
    try:
        trio.run(serve_and_announce, simulator, args.host, args.port)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
