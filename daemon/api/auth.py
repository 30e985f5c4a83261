"""The one place where a request's caller is identified and allowed or refused.

``authenticate`` runs before every route of every family (it is installed on the app,
not on a blueprint, so a family added later cannot forget it). Today the API has no
authentication: it allows everything, and the daemon is meant to listen on loopback
or a unix socket. API keys and their scopes will be checked here: read the key from
the ``Authorization`` header, look it up through a runtime service, compare its
scopes with the family being called (``request.blueprint``), and raise
``EaselError(ErrorCode.AUTHENTICATION_FAILED, ...)`` to refuse; the error handlers
answer that in the usual envelope and the access log records it like any request.
"""

from __future__ import annotations

from quart import Quart


async def authenticate() -> None:
    """Allow the request (no keys exist yet); returning None lets the route run."""
    return None


def install(app: Quart) -> None:
    app.before_request(authenticate)
