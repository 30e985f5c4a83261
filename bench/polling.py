"""Polling strategies against one simulated video model: checks spent, delay paid.

Why: every status check spends a provider request and a rate-limit token, and every
second between a task's completion and the check that notices it is a second the
user waits. A strategy is judged on both, per task. This bench computes them for
the three strategies a model's polling spec can name (``PollingStrategy`` in
``actors/catalog.py``) on the same tasks, by arithmetic: no sleeping, no clock, no
HTTP. Each strategy is driven through the function the poller calls
(``delay_before_check``; ``DurationHistory.delay`` for adaptive), one
check at a time, with the time elapsed since submission.

The model: durations lognormal with median 360 s and sigma 0.5 (a six-minute video).
The test tasks (10,000, seed 2) and the adaptive strategy's history (1,000 earlier
completions of the same distribution, seed 1) are drawn from separate generators;
the adaptive strategy never sees the durations it is scored on. A task is detected
by the first check at or after its duration.

- fixed60: a check every 60 s.
- exponential: the seed's capped exponential, ``PollingSpec(initial=60, factor=1.5,
  max_interval=300)``: checks after 60, 90, 135, 202.5, 300, 300, ... s.
- adaptive: ``actors/adaptive.py`` trained on the history, with ``check_cost`` 5 s
  (one check is worth five seconds of delay) and the same 300 s cap.

With ``--polled`` the adaptive strategy learns its history as a poller would see
it: not the durations but, for each, the last fixed-60 check that saw the task
running and the check that saw it done (``DurationHistory.add(model, seen_done,
seen_running)``).

Output, one line per strategy::

    NAME checks_per_task=X mean_delay_s=Y p95_delay_s=Z

Run: ``python bench/polling.py`` (``--verbose`` adds the adaptive plan on stderr).
Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.adaptive import AdaptiveParams, DurationHistory, params_from_spec  # noqa: E402
from actors.catalog import PollingSpec, PollingStrategy  # noqa: E402
from actors.polling import delay_before_check  # noqa: E402

MEDIAN = 360.0
SIGMA = 0.5
MODEL = "video"

#: (seconds elapsed since submission, checks done) -> seconds until the next check
NextDelay = Callable[[float, int], float]


def lognormal(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(MEDIAN), SIGMA) for _ in range(count)]


def run_task(duration: float, next_delay: NextDelay) -> tuple[int, float]:
    """Checks spent on one task and the delay between its end and their last."""
    elapsed, checks = 0.0, 0
    while True:
        elapsed += next_delay(elapsed, checks)
        checks += 1
        if elapsed >= duration:
            return checks, elapsed - duration


def evaluate(durations: list[float], next_delay: NextDelay) -> tuple[float, float, float]:
    checks, delays = 0, []
    for duration in durations:
        spent, delay = run_task(duration, next_delay)
        checks += spent
        delays.append(delay)
    delays.sort()
    p95 = delays[math.ceil(0.95 * len(delays)) - 1]
    return checks / len(durations), sum(delays) / len(delays), p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=1_000)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--check-cost", type=float, default=5.0)
    parser.add_argument("--polled", action="store_true",
                        help="learn from what fixed-60 polling saw, not from durations")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    tasks = lognormal(args.tasks, args.test_seed)
    fixed = PollingSpec(strategy=PollingStrategy.FIXED, interval=60)
    exponential = PollingSpec(strategy=PollingStrategy.EXPONENTIAL, initial=60, factor=1.5,
                              max_interval=300)
    adaptive = attrs.evolve(exponential, strategy=PollingStrategy.ADAPTIVE,
                            check_cost=args.check_cost)
    history = DurationHistory(window=args.history,
                              params=AdaptiveParams(min_samples=min(20, args.history)))
    for seconds in lognormal(args.history, args.train_seed):
        if args.polled:
            seen_done = 60.0 * math.ceil(seconds / 60.0)
            history.add(MODEL, seen_done, seen_running=seen_done - 60.0)
        else:
            history.add(MODEL, seconds)

    strategies: dict[str, NextDelay] = {
        "fixed60": lambda elapsed, done: delay_before_check(fixed, done),
        "exponential": lambda elapsed, done: delay_before_check(exponential, done),
        "adaptive": lambda elapsed, done: history.delay(MODEL, adaptive, elapsed, done),
    }
    if args.verbose:
        plan = history.schedule_for(MODEL, params_from_spec(adaptive, history.params))
        assert plan is not None
        print(f"adaptive plan from {plan.samples} samples: checks at "
              + ", ".join(f"{t:.0f}" for t in plan.offsets)
              + f"; then gaps {', '.join(f'{g:.0f}' for g in plan.tail_gaps)}, "
              f"then {plan.max_interval:g}; forecast {plan.expected_checks:.2f} checks, "
              f"{plan.expected_delay:.1f} s", file=sys.stderr)
    for name, next_delay in strategies.items():
        checks, mean_delay, p95 = evaluate(tasks, next_delay)
        print(f"{name} checks_per_task={checks:.2f} mean_delay_s={mean_delay:.1f} "
              f"p95_delay_s={p95:.1f}")


if __name__ == "__main__":
    main()
