"""The alerters: one per channel, each sending one notification at a time.

``send`` returns when the channel took the notification and raises
``SendFailed`` otherwise (with the peer's ``Retry-After``, when it gave one); the
retries and their backoff are ``actors/alerts/delivery.py``'s. The URLs and the
SMTP server are the operator's own choice, often on the host or its network (an
Alertmanager on localhost), so they are reached directly, not through the
SSRF-checked fetch that client-supplied URLs go through.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Protocol

import httpx
import trio

from actors.alerts import payloads
from actors.alerts.records import Delivery
from actors.alerts.settings import EmailSettings, SlackSettings, WebhookAlertSettings
from actors.retry import bounded_retry_after, parse_retry_after


class SendFailed(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Alerter(Protocol):
    channel: str

    async def send(self, delivery: Delivery) -> None: ...

    async def aclose(self) -> None: ...


async def _post(client: httpx.AsyncClient, url: str, body: object, delivery: Delivery) -> None:
    try:
        response = await client.post(url, json=body,
                                     headers={"X-Easel-Notification-Id": delivery.id})
    except httpx.HTTPError as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}") from None
    if response.is_success:
        return
    retry_after = bounded_retry_after(parse_retry_after(response.headers.get("retry-after")))
    raise SendFailed(f"HTTP {response.status_code}", retry_after)


class WebhookAlerter:
    """POSTs Alertmanager's webhook JSON."""

    channel = "webhook"

    def __init__(self, settings: WebhookAlertSettings) -> None:
        self._url = settings.url
        self._client = httpx.AsyncClient(timeout=settings.timeout, trust_env=False)

    async def send(self, delivery: Delivery) -> None:
        await _post(self._client, self._url, payloads.alertmanager(delivery), delivery)

    async def aclose(self) -> None:
        await self._client.aclose()


class SlackAlerter:
    """Posts to a Slack incoming webhook, at most one message per ``min_interval``
    (Slack's limit is about one a second); a 429's Retry-After is honoured by the
    delivery loop's wait."""

    channel = "slack"

    def __init__(self, settings: SlackSettings) -> None:
        self._url = settings.webhook_url
        self._gap = settings.min_interval
        self._client = httpx.AsyncClient(timeout=settings.timeout, trust_env=False)
        self._last = -float("inf")

    async def send(self, delivery: Delivery) -> None:
        await trio.sleep_until(self._last + self._gap)
        self._last = trio.current_time()
        await _post(self._client, self._url, payloads.slack(delivery), delivery)

    async def aclose(self) -> None:
        await self._client.aclose()


class EmailAlerter:
    """Sends through SMTP (STARTTLS or implicit TLS, optional login) with
    ``smtplib`` in a worker thread, one message at a time."""

    channel = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self._limiter = trio.CapacityLimiter(1)

    async def send(self, delivery: Delivery) -> None:
        message = payloads.email(delivery, self.settings.sender, self.settings.to)
        try:
            await trio.to_thread.run_sync(self._send, message, limiter=self._limiter)
        except (OSError, smtplib.SMTPException) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from None

    def _send(self, message: object) -> None:
        s = self.settings
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if s.ssl:
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        with smtp:
            if s.starttls and not s.ssl:
                smtp.starttls(context=context)
            if s.username:
                smtp.login(s.username, s.password)
            smtp.send_message(message)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        pass


def alerters_for(email: EmailSettings, webhook: WebhookAlertSettings,
                 slack: SlackSettings) -> list[Alerter]:
    """The alerters whose address is configured."""
    found: list[Alerter] = []
    if email.enabled:
        found.append(EmailAlerter(email))
    if webhook.url:
        found.append(WebhookAlerter(webhook))
    if slack.webhook_url:
        found.append(SlackAlerter(slack))
    return found
