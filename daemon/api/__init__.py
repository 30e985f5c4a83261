"""The HTTP API: a quart-trio app whose routes are grouped by family, one Blueprint each.

Families (each its own module, each a ``blueprint``):

- ``generation``: submit, status (``?wait=``), events, cancel;
- ``batches``: batches of generations (submit, estimate, status, results, cancel, retry);
- ``provider_webhooks``: providers reporting finished tasks;
- ``health``: health, detailed health, Prometheus metrics;
- ``media``: stored outputs;
- ``openai_images``, ``openai_videos``: the OpenAI-compatible ``/v1`` API over the
  same jobs (``openai_compat`` holds what they share: OpenAI's error envelope and
  the translation of its requests);
- ``openapi``: the OpenAPI document of all of them and a page listing it.
- ``admin``: the admin pages (HTML: errors, alerts, jobs);
- ``monitoring``: the admin monitoring API (stats, errors, alerts as JSON).

Around them, once for the whole app: ``errors`` (the error envelope and handlers,
strict JSON bodies), ``auth`` (the one hook where callers will be authenticated),
``access`` (request ids and the access log) and ``services`` (how a route reaches
the runtime and the settings). Routes call the runtime's services, never the store.

Adding a family (batches, experiments, admin, an OpenAI-compatible API) is one
module holding a ``blueprint`` and one line in ``FAMILIES``.
"""

from __future__ import annotations

import time
from pathlib import Path

from quart import Blueprint
from quart_trio import QuartTrio

from actors.batches.requests import BatchLimits
from actors.runtime import Runtime
from daemon.api import (
    admin,
    auth,
    batches,
    errors,
    generation,
    health,
    media,
    monitoring,
    openai_images,
    openai_videos,
    openapi,
    provider_webhooks,
)
from daemon.api.access import AccessLog
from daemon.api.services import Services
from daemon.config import AuthSettings
from daemon.connections import ConnectionGuard

__all__ = ["FAMILIES", "create_app"]

#: The route families, registered in this order.
FAMILIES: tuple[Blueprint, ...] = (
    generation.blueprint,
    batches.blueprint,
    provider_webhooks.blueprint,
    health.blueprint,
    media.blueprint,
    openai_images.blueprint,
    openai_videos.blueprint,
    openapi.blueprint,
    admin.blueprint,
    monitoring.blueprint,
)


def create_app(runtime: Runtime, *, media_dir: Path, max_body_bytes: int = 1_048_576,
               public_base_url: str = "", drain_retry_after: int = 30,
               auth_settings: AuthSettings | None = None,
               read_timeout: float = 30.0, image_wait: float = 300.0,
               batch_limits: BatchLimits | None = None) -> QuartTrio:
    """The API app over ``runtime``, ready for hypercorn (or Quart's test client)."""
    app = QuartTrio("easel")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    # A job id is one path segment: ``generation//x`` (an id of "/x") is no such job
    # (404), not a redirect to another path with an empty, non-JSON body.
    app.url_map.merge_slashes = False
    Services(runtime, media_dir, max_body_bytes, public_base_url, drain_retry_after,
             started_at=time.time(), image_wait=image_wait).install(app)
    auth.install(app, auth_settings or AuthSettings())
    batches.install(app, batch_limits or BatchLimits())
    errors.install(app)
    for family in FAMILIES:
        app.register_blueprint(family)
    # The guard inside the access log, so a 408 for a slow body is logged as one; the
    # admin pages' cookie becomes a Bearer header before anything reads it.
    app.asgi_app = AccessLog(admin.KeyCookie(ConnectionGuard(app.asgi_app, read_timeout)))  # type: ignore[method-assign]
    return app
