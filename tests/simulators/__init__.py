"""Loopback simulators of the generation providers' HTTP APIs, for Easel's tests.

Each simulator speaks one provider's documented wire protocol (``docs/providers.md``
describes each, and the simulators' knobs) so the daemon's real adapters can be
exercised end to end without the network or money. ``base`` holds what they share;
each provider module holds only its protocol. Run one with
``python -m tests.simulators NAME --port 0``.
"""
