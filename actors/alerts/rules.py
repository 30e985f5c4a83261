"""The built-in alert rules: pure functions from what was observed to conditions.

``Observations`` is what the monitor actor gathers (windows of outcomes fed by
events and the change feed, plus figures read at each evaluation); ``evaluate``
turns it into the ``Condition``s that hold now. Whether a condition's alert fires,
repeats or resolves is ``actors/alerts/firing.py``'s business, not a rule's.

The rules, with ``RuleSettings``' defaults:

- ``failure_rate``: a provider's calls fail more than 50 % over 1 h (at least
  ``min_samples`` calls; a 429 is not counted: it says nothing of health);
- ``timeout_rate``: more than 20 % of a provider's finished jobs over 1 h failed
  TASK_TIMEOUT;
- ``job_retried``: a job was attempted more than 3 times;
- ``system_error``: the database does not answer, or ERROR records of the
  database or storage within 5 min;
- ``crash_loop``: an actor crashed 3 times within 10 min;
- ``circuit_open``: a provider's circuit breaker is open;
- ``queue_lag``: the oldest queued job waits longer than 15 min;
- ``webhook_failing``: client webhook attempts fail more than 50 % over 1 h;
- ``disk_low``: under 5 % of the state or media directory's disk is free.
"""

from __future__ import annotations

from typing import Any

import attrs

from actors.alerts.records import Severity
from actors.alerts.settings import RuleSettings
from actors.alerts.window import Outcomes


@attrs.frozen
class Condition:
    """A rule's finding about one subject. ``instant``: an event rule, whose alert
    fires without waiting ``for_seconds``."""

    type: str
    subject: str
    severity: Severity
    message: str
    details: dict[str, Any] = attrs.field(factory=dict, eq=False)
    instant: bool = False

    @property
    def fingerprint(self) -> str:
        return f"{self.type}:{self.subject}"


class Observations:
    """What the rules read; the windows are fed by the monitor as events arrive,
    the figures set at each evaluation."""

    def __init__(self, rules: RuleSettings) -> None:
        #: Provider calls by provider; bad: any outcome but ok.
        self.calls = Outcomes(rules.failure_window)
        #: Finished jobs by provider; bad: TASK_TIMEOUT.
        self.finishes = Outcomes(rules.timeout_window)
        #: Jobs seen with more than ``max_retries`` attempts, by job id.
        self.retried = Outcomes(rules.system_window)
        #: Actor crashes by path.
        self.crashes = Outcomes(rules.crash_window)
        #: ERROR records by component (database, storage).
        self.system = Outcomes(rules.system_window)
        #: Client webhook attempts; bad: retry or failed.
        self.webhooks = Outcomes(rules.webhook_window)
        #: Providers whose circuit is open now.
        self.open_circuits: set[str] = set()
        #: Seconds the oldest QUEUED job has waited (None: nothing queued).
        self.queue_age: float | None = None
        #: Free fraction of each watched directory's disk.
        self.disk_free: dict[str, float] = {}
        #: Why the database did not answer at the last evaluation (None: it did).
        self.database_error: str | None = None


def _rate(
    window: Outcomes, now: float, limit: float, min_samples: int
) -> list[tuple[str, float, int]]:
    """``(subject, rate, samples)`` of the subjects over ``limit`` with enough samples."""
    return [(subject, bad / total, total) for subject, (bad, total) in window.counts(now).items()
            if total >= min_samples and bad / total > limit]


def evaluate(seen: Observations, rules: RuleSettings, now: float) -> list[Condition]:
    """Every condition that holds at ``now``."""
    found = [
        Condition("failure_rate", provider, Severity.HIGH,
                  f"{provider}: {rate:.0%} of {n} calls failed in the last "
                  f"{rules.failure_window:g} s (over {rules.failure_rate:.0%})",
                  {"rate": round(rate, 3), "samples": n})
        for provider, rate, n in _rate(seen.calls, now, rules.failure_rate, rules.min_samples)
    ]
    found += [
        Condition("timeout_rate", provider, Severity.MEDIUM,
                  f"{provider}: {rate:.0%} of {n} finished jobs timed out "
                  f"(over {rules.timeout_rate:.0%})", {"rate": round(rate, 3), "samples": n})
        for provider, rate, n in _rate(seen.finishes, now, rules.timeout_rate, rules.min_samples)
    ]
    found += [
        Condition("webhook_failing", "client", Severity.MEDIUM,
                  f"{rate:.0%} of {n} client webhook attempts failed "
                  f"(over {rules.webhook_failure_rate:.0%})",
                  {"rate": round(rate, 3), "samples": n})
        for _, rate, n in _rate(seen.webhooks, now, rules.webhook_failure_rate,
                                rules.min_samples)
    ]
    found += [
        Condition("job_retried", job_id, Severity.LOW,
                  f"job {job_id} was attempted more than {rules.max_retries} times", {},
                  instant=True)
        for job_id in seen.retried.counts(now)
    ]
    found += [
        Condition("crash_loop", path, Severity.HIGH,
                  f"actor {path} crashed {n} times in {rules.crash_window:g} s",
                  {"crashes": n}, instant=True)
        for path, (_, n) in seen.crashes.counts(now).items() if n >= rules.crash_loop
    ]
    found += [
        Condition("system_error", component, Severity.CRITICAL,
                  f"{component}: {n} errors in the last {rules.system_window:g} s",
                  {"errors": n}, instant=True)
        for component, (_, n) in seen.system.counts(now).items()
    ]
    if seen.database_error is not None:
        found.append(Condition("system_error", "database", Severity.CRITICAL,
                               f"database: {seen.database_error}", instant=True))
    found += [
        Condition("circuit_open", provider, Severity.HIGH, f"{provider}: circuit open")
        for provider in sorted(seen.open_circuits)
    ]
    if seen.queue_age is not None and seen.queue_age > rules.queue_lag:
        found.append(Condition(
            "queue_lag", "queue", Severity.MEDIUM,
            f"the oldest queued job has waited {seen.queue_age:.0f} s "
            f"(over {rules.queue_lag:g} s)", {"seconds": round(seen.queue_age, 1)}))
    found += [
        Condition("disk_low", path, Severity.CRITICAL if free < rules.disk_free / 2
                  else Severity.HIGH,
                  f"{path}: {free:.1%} of the disk free (under {rules.disk_free:.0%})",
                  {"free": round(free, 4)})
        for path, free in sorted(seen.disk_free.items()) if free < rules.disk_free
    ]
    # Two findings of one fingerprint (the database, by ping and by records): one.
    return list({condition.fingerprint: condition for condition in found}.values())
