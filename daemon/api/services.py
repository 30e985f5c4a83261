"""What every route is given: the application services and the API's settings.

Routes reach them through ``services()``, which reads them from the app the request
runs in. So a blueprint module holds no state of its own, and one process can serve
several apps at once (the tests start several daemons).

The application services are ``Runtime``'s methods (``submit``, ``cancel``,
``get_job``, ``wait_for_job``, ``job_events``, ``count_by_state``, ``ping_store``,
``provider_webhook``, ``statistics``) and its ``lifecycle``, ``catalog`` and
``families``. A route never touches the store or an actor: what it needs that the
runtime does not offer yet becomes a runtime method first.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from quart import Quart, current_app

from actors.runtime import Runtime

_KEY = "easel"


@attrs.frozen
class Services:
    """One app's runtime and settings (the keyword arguments of ``create_app``)."""

    runtime: Runtime
    media_dir: Path
    #: Request bodies longer than this are refused with 413.
    max_body_bytes: int
    #: Where clients reach Easel; empty: the address each request came to.
    public_base_url: str
    #: Seconds a client refused during a drain is told to wait (``Retry-After``).
    drain_retry_after: int
    #: Unix time the app was made, for ``/api/health``'s uptime.
    started_at: float
    #: Seconds the OpenAI-compatible image endpoints wait for their job.
    image_wait: float = 300.0

    def install(self, app: Quart) -> None:
        app.extensions[_KEY] = self


def services() -> Services:
    """The services of the app handling the current request."""
    found: Services = current_app.extensions[_KEY]
    return found
