"""The admin pages in a real headless Chromium, driven by Playwright.

An error logged in the daemon shows on the errors page, is resolved from the
page and shows resolved after a reload; an alert is acknowledged from the
alerts page; the pages ask for the admin key first. Screenshots of each page
(and of the errors page on a phone-sized screen) are saved under
``test-artifacts/admin/``.

The browser is Debian's ``chromium`` (Playwright's own download needs a host
the machine may not reach); the set-up installs it with ``apt-get`` when it is
missing and the test runs as root, and skips saying why otherwise. Playwright's
sync API runs in a worker thread while the daemon runs in the test's trio run.

Keys come from ``daemon/api/auth.py``; the test stands in for them with an
``authenticate`` giving the admin scope to one key and only the read scope to
any other caller, which is all the pages look at (``caller().admin``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from quart import g, request

from actors.alerts.records import Alert, Severity
from actors.clock import wall_now
from daemon.api import auth

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "admin"
ADMIN_KEY = "easel-admin-key"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False,
                       capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no chromium on this machine and it could not be installed "
                    "(apt-get install chromium needs root and Debian's package lists)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    return found


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    async def authenticate() -> None:
        sent = request.headers.get("Authorization", "")
        if sent == f"Bearer {ADMIN_KEY}":
            g.caller = auth.Caller(owner="key_ops", scopes=frozenset(auth.Scope))
        else:
            g.caller = auth.Caller(owner="key_reader", scopes=frozenset({auth.Scope.READ}))

    monkeypatch.setattr(auth, "authenticate", authenticate)


@contextlib.contextmanager
def launched(browser_path: str, artifacts: Path) -> Iterator[Any]:
    """Chromium through Playwright's sync API (in the calling worker thread), with
    ``artifacts`` made for its screenshots; closed on the way out."""
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def on_phone(browser: Any, page: Any, url: str, screenshot: Path) -> int:
    """``url`` on a phone-sized screen, logged in as ``page`` is: its screenshot saved,
    the page's width returned (no wider than the screen when nothing overflows)."""
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.context.add_cookies(page.context.cookies())
    phone.goto(url)
    phone.screenshot(path=str(screenshot), full_page=True)
    return int(phone.evaluate("document.documentElement.scrollWidth"))


def drive(browser_path: str, base: str, error_id: int, alert_id: int) -> dict[str, Any]:
    """The browser's part, in a worker thread; what it saw."""
    seen: dict[str, Any] = {}
    with launched(browser_path, ARTIFACTS) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        answer = page.goto(f"{base}/admin/monitoring/errors")
        seen["login_status"] = answer.status if answer else None
        seen["login_form"] = page.locator("input[name=key]").count()
        page.screenshot(path=str(ARTIFACTS / "login.png"))

        page.fill("input[name=key]", "not-the-admin-key")
        page.click("button[type=submit]")
        seen["wrong_key"] = page.locator("#login-failed").count()

        page.fill("input[name=key]", ADMIN_KEY)
        page.click("button[type=submit]")
        row = page.locator(f"#error-{error_id}")
        seen["error_text"] = row.inner_text()
        row.locator("summary").click()
        seen["stack_shown"] = "ValueError" in row.locator("pre").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "errors.png"), full_page=True)
        # The form posts and is redirected back: reload only once that has landed.
        with page.expect_navigation():
            row.locator("button", has_text="Resolve").click()
        page.reload()
        seen["error_state"] = page.locator(f"#error-{error_id} .state").inner_text()

        page.goto(f"{base}/admin/monitoring/errors?level=CRITICAL")
        seen["filtered_rows"] = page.locator(f"#error-{error_id}").count()

        page.goto(f"{base}/admin/monitoring/alerts")
        alert = page.locator(f"#alert-{alert_id}")
        with page.expect_navigation():
            alert.locator("button", has_text="Acknowledge").click()
        page.reload()
        seen["alert_ack"] = page.locator(f"#alert-{alert_id} .ack").inner_text()
        page.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)

        page.goto(f"{base}/admin/monitoring")
        seen["overview"] = page.locator("#alerts-firing").inner_text()
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
        page.goto(f"{base}/admin/jobs")
        page.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)

        seen["phone_width"] = on_phone(browser, page, f"{base}/admin/monitoring/errors",
                                       ARTIFACTS / "errors-phone.png")

        page.click("text=Log out")
        seen["after_logout"] = page.locator("input[name=key]").count()
    return seen


async def test_errors_and_alerts_pages_in_chromium(easel_daemon: Any, keys: None) -> None:
    browser = chromium()
    easel = await easel_daemon()
    runtime = easel.runtime
    try:
        raise ValueError("the output bucket refused the upload")
    except ValueError:
        logging.getLogger("actors.storage").exception("storing gen_admin failed")
    with trio.fail_after(30):
        while not (found := await runtime.list_errors({"source": "component:actors.storage"})):
            await trio.sleep(0.05)
    error_id = found[0].id
    alert = await runtime.store.record_alert(Alert(
        "queue_lag:queue", "queue_lag", "queue", Severity.MEDIUM,
        "the oldest queued job has waited 1200 s", wall_now()))

    # Without the key: the API says so too.
    refused = await easel.client.get("/api/health/detailed")
    assert refused.status_code == 401

    seen = await trio.to_thread.run_sync(functools.partial(
        drive, browser, easel.base_url, error_id, alert.id))

    assert seen["login_status"] == 401 and seen["login_form"] == 1
    assert seen["wrong_key"] == 1
    assert "storing gen_admin failed" in seen["error_text"] and seen["stack_shown"]
    assert "resolved" in seen["error_state"] and "key_ops" in seen["error_state"]
    assert seen["filtered_rows"] == 0
    assert "key_ops" in seen["alert_ack"]
    assert seen["overview"] == "1"
    assert seen["phone_width"] <= 390
    assert seen["after_logout"] == 1
    [entry] = await runtime.list_errors({"source": "component:actors.storage"})
    assert entry.resolved and entry.resolved_by == "key_ops"
    stored = await runtime.store.get_alert(alert.id)
    assert stored is not None and stored.acknowledged_by == "key_ops"
    for name in ("login", "errors", "alerts", "overview", "jobs", "errors-phone"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
