"""The ``[monitoring]`` section: retention, the rules' thresholds, the alerters.

Every default keeps a daemon with nothing configured working: the rules run and
alerts are stored and shown on the admin pages, and no alerter is on until its
address is set (``email.host`` and ``email.to``, ``webhook.url``,
``slack.webhook_url``).
"""

from __future__ import annotations

import attrs

_ge0 = attrs.validators.ge(0)
_gt0 = attrs.validators.gt(0)
_ratio = [attrs.validators.ge(0), attrs.validators.le(1)]


@attrs.frozen
class RuleSettings:
    """Thresholds and windows of the built-in rules (``actors/alerts/rules.py``)."""

    #: A provider's calls failing more than this fraction over ``failure_window``.
    failure_rate: float = attrs.field(default=0.5, validator=_ratio)
    failure_window: float = attrs.field(default=3600.0, validator=_gt0)
    #: Fewer samples than this in a window say nothing (rate rules).
    min_samples: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    #: A provider's finished jobs failing TASK_TIMEOUT more than this fraction.
    timeout_rate: float = attrs.field(default=0.2, validator=_ratio)
    timeout_window: float = attrs.field(default=3600.0, validator=_gt0)
    #: A job attempted more than this many times.
    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    #: An actor crashing this many times within ``crash_window``: a crash loop.
    crash_loop: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    crash_window: float = attrs.field(default=600.0, validator=_gt0)
    #: ERROR records of the database or storage within this window: a system error.
    system_window: float = attrs.field(default=300.0, validator=_gt0)
    #: The oldest QUEUED job older than this many seconds.
    queue_lag: float = attrs.field(default=900.0, validator=_gt0)
    #: Client webhook attempts failing more than this fraction over ``webhook_window``.
    webhook_failure_rate: float = attrs.field(default=0.5, validator=_ratio)
    webhook_window: float = attrs.field(default=3600.0, validator=_gt0)
    #: Free space of the state or media directory under this fraction of its disk.
    disk_free: float = attrs.field(default=0.05, validator=_ratio)
    #: How long a condition holds (pending) before its alert fires. Event rules
    #: (a job retried, a crash loop, a system error) fire at once.
    for_seconds: float = attrs.field(default=60.0, validator=_ge0)
    #: How long a cleared condition keeps its alert firing (against flapping).
    keep_firing_for: float = attrs.field(default=300.0, validator=_ge0)
    #: A firing alert is notified again after this long.
    repeat_interval: float = attrs.field(default=14_400.0, validator=_gt0)


@attrs.frozen
class EmailSettings:
    host: str = ""
    port: int = 587
    #: STARTTLS after connecting (port 587); ``ssl`` for implicit TLS (port 465).
    starttls: bool = True
    ssl: bool = False
    username: str = ""
    password: str = ""
    sender: str = "easel@localhost"
    to: list[str] = attrs.field(factory=list)
    timeout: float = attrs.field(default=30.0, validator=_gt0)

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.to)


@attrs.frozen
class WebhookAlertSettings:
    """A receiver of Alertmanager's webhook JSON (chosen by the operator)."""

    url: str = ""
    timeout: float = attrs.field(default=10.0, validator=_gt0)


@attrs.frozen
class SlackSettings:
    webhook_url: str = ""
    timeout: float = attrs.field(default=10.0, validator=_gt0)
    #: Slack takes about one message a second per incoming webhook.
    min_interval: float = attrs.field(default=1.0, validator=_ge0)


@attrs.frozen
class MonitoringSettings:
    #: Error log entries and resolved alerts older than this are deleted.
    retention_days: float = attrs.field(default=30.0, validator=_gt0)
    #: Seconds between evaluations of the rules.
    evaluate_interval: float = attrs.field(default=15.0, validator=_gt0)
    #: Seconds within which an error reaches the error log (written in batches).
    flush_interval: float = attrs.field(default=1.0, validator=_gt0)
    #: Seconds between prunes of old rows.
    prune_interval: float = attrs.field(default=3600.0, validator=_gt0)
    #: Each notification is tried this many times, backing off from
    #: ``retry_base`` to ``retry_cap`` seconds, then recorded FAILED.
    max_attempts: int = attrs.field(default=12, validator=attrs.validators.ge(1))
    retry_base: float = attrs.field(default=5.0, validator=_ge0)
    retry_cap: float = attrs.field(default=600.0, validator=_ge0)
    rules: RuleSettings = attrs.field(factory=RuleSettings)
    email: EmailSettings = attrs.field(factory=EmailSettings)
    webhook: WebhookAlertSettings = attrs.field(factory=WebhookAlertSettings)
    slack: SlackSettings = attrs.field(factory=SlackSettings)
