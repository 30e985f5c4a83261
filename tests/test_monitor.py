"""The monitor actor with a real store, real receivers and a real SMTP server.

A provider failing 60 % of its calls fires the failure-rate alert once, notified
once on each channel (email through ``aiosmtpd``, Alertmanager's webhook JSON and
Slack's to loopback HTTP receivers); nothing repeats inside the repeat interval; a
resolved notice follows the recovery; a restart in between neither loses nor
repeats a notification.

The rules' and each alert's timing are tested on trio's MockClock in
``test_alert_rules.py``; here real servers answer over loopback and from a
thread (the SMTP server), which a jumping clock would race, so these run on the
real clock with intervals of a few hundredths of a second, and wait for what
they expect rather than for a time.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from actors.alerts.records import Alert, AlertState, ErrorEntry, Level, Severity
from actors.alerts.settings import (
    EmailSettings,
    MonitoringSettings,
    RuleSettings,
    SlackSettings,
    WebhookAlertSettings,
)
from actors.clock import wall_now
from actors.errors import ErrorCode, ErrorInfo
from actors.jobs import Job, JobState
from actors.monitor import Monitor
from actors.store import open_store
from tests.conftest import free_port
from tests.simulators.base import Knobs, serve_simulator
from tests.simulators.replicate import ReplicateSimulator
from tests.test_outbox import Receiver, start_receiver

RULES = RuleSettings(min_samples=10, for_seconds=0.2, keep_firing_for=0.3,
                     repeat_interval=3600)


@attrs.define
class Mailbox:
    """What the SMTP server in the test received."""

    messages: list[email.message.EmailMessage] = attrs.field(factory=list)
    logins: list[str] = attrs.field(factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(
            envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, _mechanism: str,
                     data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == b"hunter2"
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                            authenticator=mailbox.authenticate, auth_require_tls=False)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


async def until(predicate: Any, within: float = 30.0) -> None:
    """Wait until ``predicate()`` holds (``within``: only against a hang)."""
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.02)


def calls(monitor: Monitor, bad: int, good: int, provider: str = "fal") -> None:
    for n in range(bad + good):
        monitor.emit("provider.call", provider, call="submit",
                     outcome="PROVIDER_ERROR" if n < bad else "ok", seconds=0.1)


async def start_monitor(nursery: trio.Nursery, store: Any, settings: MonitoringSettings,
                        tmp: Path) -> tuple[Monitor, trio.CancelScope]:
    """A monitor over ``store``, and the scope that stops it (as a supervisor's
    restart would)."""
    monitor = Monitor(store=store, settings=settings, changes=store.subscribe(),
                      watched_dirs=[tmp])
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await monitor.run(task_status=task_status)

    await nursery.start(run)
    return monitor, scope


@pytest.fixture
async def channels(smtp: tuple[Mailbox, int]) -> AsyncIterator[dict[str, Any]]:
    async with trio.open_nursery() as nursery:
        webhook = await start_receiver(nursery)
        # Slack says 429 once, with Retry-After: the notice comes after it.
        slack = await start_receiver(nursery, [429], [("retry-after", "0.3")])
        yield {"webhook": webhook, "slack": slack, "smtp": smtp}
        nursery.cancel_scope.cancel()


def settings_for(channels: dict[str, Any]) -> MonitoringSettings:
    mailbox, port = channels["smtp"]
    return MonitoringSettings(
        evaluate_interval=0.05, flush_interval=0.05, rules=RULES, retry_base=0.05,
        retry_cap=0.5,
        email=EmailSettings(host="127.0.0.1", port=port, starttls=False, username="ops",
                            password="hunter2", to=["ops@example.com"], timeout=600),
        webhook=WebhookAlertSettings(url=channels["webhook"].url, timeout=600),
        slack=SlackSettings(webhook_url=channels["slack"].url, timeout=600, min_interval=0.1),
    )


async def test_fires_once_on_every_channel_then_resolves_across_a_restart(
    tmp_path: Path, channels: dict[str, Any],
) -> None:
    webhook: Receiver = channels["webhook"]
    slack: Receiver = channels["slack"]
    mailbox: Mailbox = channels["smtp"][0]
    settings = settings_for(channels)
    async with open_store(tmp_path / "easel.db") as store, trio.open_nursery() as nursery:
        monitor, scope = await start_monitor(nursery, store, settings, tmp_path)
        calls(monitor, bad=6, good=4)  # 60 % of 10 calls
        await until(lambda: len(mailbox.messages) == 1 and len(webhook.requests) == 1
                    and len(slack.requests) == 2)
        [alert] = await store.list_alerts(AlertState.FIRING)
        assert alert.fingerprint == "failure_rate:fal"
        # Pending for ``for_seconds`` first.
        assert alert.sent_at is not None and alert.sent_at - alert.starts_at >= 0.2

        body = webhook.requests[0].json()
        assert (body["version"], body["status"]) == ("4", "firing")
        assert body["groupKey"] == '{}:{alertname="failure_rate",subject="fal"}'
        [sent] = body["alerts"]
        assert sent["labels"] == {"alertname": "failure_rate", "subject": "fal",
                                  "severity": "high", "service": "easel"}
        assert sent["endsAt"] == "0001-01-01T00:00:00Z" and len(sent["fingerprint"]) == 16
        assert "60%" in sent["annotations"]["summary"]
        first, again = slack.requests  # the 429, then the same notice after Retry-After
        assert again.at - first.at >= 0.3 and again.body == first.body
        assert again.json()["blocks"][0]["type"] == "header"
        assert again.json()["text"].startswith("[FIRING] failure_rate fal")
        assert mailbox.messages[0]["Subject"] == "Easel [FIRING] failure_rate fal"
        assert mailbox.logins == ["ops"]

        # Still failing, evaluated again and again: nothing repeats inside the
        # repeat interval.
        for _ in range(5):
            await trio.sleep(0.1)
            calls(monitor, bad=6, good=4)
        assert (len(mailbox.messages), len(webhook.requests), len(slack.requests)) == (1, 1, 2)

        # A restart mid-way: the firing alert is picked up, not fired again.
        scope.cancel()
        monitor, scope = await start_monitor(nursery, store, settings, tmp_path)
        calls(monitor, bad=6, good=4)
        await trio.sleep(0.5)
        assert (len(mailbox.messages), len(webhook.requests), len(slack.requests)) == (1, 1, 2)

        # Recovered: the resolved notice, once per channel, after keep_firing_for.
        calls(monitor, bad=0, good=30)
        await until(lambda: len(mailbox.messages) == 2 and len(webhook.requests) == 2
                    and len(slack.requests) == 3)
        resolved = webhook.requests[1].json()
        assert resolved["status"] == "resolved"
        assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
        assert resolved["alerts"][0]["fingerprint"] == sent["fingerprint"]
        assert mailbox.messages[1]["Subject"] == "Easel [RESOLVED] failure_rate fal"
        await trio.sleep(0.5)
        assert (len(mailbox.messages), len(webhook.requests), len(slack.requests)) == (2, 2, 3)
        assert await store.list_alerts(AlertState.FIRING) == []
        nursery.cancel_scope.cancel()


def webhook_only(channels: dict[str, Any]) -> MonitoringSettings:
    """The test channels' settings with the webhook alerter alone."""
    return attrs.evolve(settings_for(channels), slack=SlackSettings(), email=EmailSettings())


async def test_a_notification_queued_before_a_crash_is_sent_after_it(
    tmp_path: Path, channels: dict[str, Any],
) -> None:
    webhook: Receiver = channels["webhook"]
    settings = webhook_only(channels)
    async with open_store(tmp_path / "easel.db") as store, trio.open_nursery() as nursery:
        # Stored and queued, as a monitor cancelled right after the commit leaves it.
        await store.record_alert(
            Alert("crash_loop:scheduler", "crash_loop", "scheduler", Severity.HIGH,
                  "scheduler crashed 3 times", wall_now()), ["webhook"])
        await start_monitor(nursery, store, settings, tmp_path)
        [request] = await webhook.wait_for(1, within=30)
        assert request.json()["alerts"][0]["labels"]["alertname"] == "crash_loop"
        # Its condition is not seen again (no crash since): resolved after
        # keep_firing_for, and that is the only other notice.
        await webhook.wait_for(2, within=30)
        await trio.sleep(0.3)
        assert [r.json()["status"] for r in webhook.requests] == ["firing", "resolved"]
        nursery.cancel_scope.cancel()


async def test_errors_reach_the_log_in_batches_and_old_ones_are_pruned(
    tmp_path: Path,
) -> None:
    settings = MonitoringSettings(flush_interval=0.05, evaluate_interval=3600,
                                  retention_days=1, prune_interval=0.05)
    async with open_store(tmp_path / "easel.db") as store, trio.open_nursery() as nursery:
        old = ErrorEntry(Level.ERROR, "actor:x", "two days old", wall_now() - 2 * 86_400)
        await store.add_errors([old])
        await start_monitor(nursery, store, settings, tmp_path)
        try:
            raise RuntimeError("the disk said no")
        except RuntimeError:
            logging.getLogger("actors.storage").exception("store output %s", "gen_1")
        logging.getLogger("actors.x").error("token=sk-secretsecret leaked")
        with trio.fail_after(30):  # the next batch; the old entry pruned
            while len(entries := await store.list_errors()) != 2:
                await trio.sleep(0.02)
        assert [e.message for e in entries] == ["token=*** leaked", "store output gen_1"]
        assert entries[1].level is Level.ERROR and "RuntimeError" in (entries[1].stack or "")
        assert entries[1].source == "component:actors.storage"
        nursery.cancel_scope.cancel()


async def test_a_failing_provider_behind_a_running_daemon_alerts_every_channel(
    easel_daemon: Any, nursery: trio.Nursery, channels: dict[str, Any],
) -> None:
    """The whole path: a Replicate simulator failing 60 % of requests (5xx) behind
    an embedded daemon fires the failure-rate alert, notified once per channel; it
    resolves once the simulator recovers."""
    webhook: Receiver = channels["webhook"]
    slack: Receiver = channels["slack"]
    mailbox, smtp_port = channels["smtp"]
    sim = ReplicateSimulator(Knobs(token="t", duration=0.05, error_5xx_rate=0.6, seed=3))
    url = await nursery.start(serve_simulator, sim)
    easel = await easel_daemon(f"""
[providers.replicate]
base_url = "{url}"
api_token = "t"
request_timeout = 0.5
max_attempts = 1
lookup_window = 0.3
breaker_min_calls = 100000

[models.primary]
provider = "replicate"
provider_model = "owner/flux"
kind = "image"
expected_duration = 0.05
max_duration = 60
polling = {{ strategy = "fixed", interval = 0.05 }}

[monitoring]
evaluate_interval = 0.05
flush_interval = 0.05
retry_base = 0.05
retry_cap = 0.5

[monitoring.rules]
min_samples = 10
for_seconds = 0.2
keep_firing_for = 0.3

[monitoring.email]
host = "127.0.0.1"
port = {smtp_port}
starttls = false
username = "ops"
password = "hunter2"
to = ["ops@example.com"]

[monitoring.webhook]
url = "{webhook.url}"

[monitoring.slack]
webhook_url = "{slack.url}"
min_interval = 0.1
""")

    async def jobs(count: int) -> None:
        async with trio.open_nursery() as batch:
            for _ in range(count):
                batch.start_soon(easel.submit, {"modelIdentifier": "primary", "prompt": "x"})

    with trio.fail_after(60):
        while not webhook.requests:
            await jobs(5)
            await trio.sleep(0.2)
    await until(lambda: len(mailbox.messages) >= 1 and len(slack.requests) >= 2)
    assert webhook.requests[0].json()["alerts"][0]["labels"]["subject"] == "replicate"
    assert mailbox.messages[0]["Subject"] == "Easel [FIRING] failure_rate replicate"

    sim.knobs = attrs.evolve(sim.knobs, error_5xx_rate=0.0)
    with trio.fail_after(60):
        while len(webhook.requests) < 2:
            await jobs(5)
            await trio.sleep(0.2)
    await until(lambda: len(mailbox.messages) == 2 and len(slack.requests) == 3)
    assert [r.json()["status"] for r in webhook.requests] == ["firing", "resolved"]
    assert mailbox.messages[1]["Subject"] == "Easel [RESOLVED] failure_rate replicate"
    await trio.sleep(0.3)
    assert (len(mailbox.messages), len(webhook.requests), len(slack.requests)) == (2, 2, 3)


async def test_a_crash_loop_is_logged_with_its_stack_and_alerts(
    tmp_path: Path, channels: dict[str, Any],
) -> None:
    webhook: Receiver = channels["webhook"]
    settings = webhook_only(channels)
    async with open_store(tmp_path / "easel.db") as store, trio.open_nursery() as nursery:
        monitor, _ = await start_monitor(nursery, store, settings, tmp_path)
        for _ in range(3):  # as the supervisor does for each crash
            try:
                raise KeyError("lost")
            except KeyError as exc:
                logging.getLogger("actors.supervisor").error("%s crashed", "scheduler",
                                                             exc_info=exc)
            monitor.emit("actor.crash", actor="scheduler")
        [request] = await webhook.wait_for(1, within=30)
        assert request.json()["groupKey"] == '{}:{alertname="crash_loop",subject="scheduler"}'
        with trio.fail_after(30):
            while len(entries := await store.list_errors({"source": "actor:scheduler"})) < 3:
                await trio.sleep(0.02)
        assert all("KeyError" in (entry.stack or "") for entry in entries)
        nursery.cancel_scope.cancel()


async def test_a_batch_item_that_never_ran_is_the_batch_s_error_not_its_provider_s(
    tmp_path: Path,
) -> None:
    """An item failed for its dependency or its deadline never reached its
    provider: it neither counts among the provider's finishes (its timeout rate)
    nor is logged as the provider's error."""
    monitor = Monitor(settings=MonitoringSettings())
    now = wall_now()
    for code in (ErrorCode.UPSTREAM_FAILED, ErrorCode.EXPIRED, ErrorCode.TASK_TIMEOUT):
        monitor._observe_job(Job(
            id=f"gen_{code.value}", model="m", provider="p", provider_model="pm", prompt="x",
            state=JobState.FAILED, batch_id="batch_1", error=ErrorInfo(code, code.value),
            completed_at=now))
    assert monitor.seen.finishes.counts(now) == {"p": (1, 1)}  # the timeout alone
    assert [entry.source for entry in monitor._errors] == [
        "batch:batch_1", "batch:batch_1", "provider:p"]
