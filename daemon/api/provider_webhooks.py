"""The provider webhook family: where providers report the tasks they finished.

``POST /api/providers/<provider>/webhook`` hands the raw body and headers to the
runtime, which verifies them with that provider's adapter and tells its poller. A
delivery that fails verification is answered in the error envelope (401) and logged.
Every delivery that passes is answered the same ``200 {"received": true}``, whether
its task is Easel's, unknown or already finished: what became of it is logged, not
answered, so a caller cannot probe which task ids exist (Kling's and fal's
deliveries carry no signature Easel checks, so anyone may send one).
"""

from __future__ import annotations

import logging

from quart import Blueprint, Response, request

from actors import context
from actors.errors import EaselError
from daemon.api.errors import json_response
from daemon.api.services import services

log = logging.getLogger(__name__)

blueprint = Blueprint("provider_webhooks", __name__, url_prefix="/api/providers")


@blueprint.post("/<provider>/webhook")
async def provider_webhook(provider: str) -> Response:
    context.provider.set(provider)
    body = await request.get_data(cache=False)
    try:
        outcome = await services().runtime.provider_webhook(provider, request.headers, body)
    except EaselError as exc:
        log.warning("provider webhook rejected: %s", exc.info.message)
        raise
    log.info("provider webhook: %s", outcome)
    return json_response({"received": True})
