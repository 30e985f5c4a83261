"""The one place where a request's caller is identified and allowed or refused.

``authenticate`` runs before every route of every family (it is installed on the app,
not on a blueprint, so a family added later cannot forget it) and leaves the
request's ``Caller`` where ``caller()`` finds it. Routes never read the
``Authorization`` header themselves: they ask ``caller()`` who is calling, stamp
``caller().owner`` on what they create, and pass ``caller().viewer`` to the
runtime's reads so a key sees only its own jobs (another key's job is answered
404, exactly as one that does not exist).

Keys are in force when ``[auth] require_keys`` is set or once any key exists
(``easel keys create``); until then every request is the anonymous caller, which
holds every scope and owns nothing, and the daemon listens on loopback or a unix
socket only (``daemon.config.exposure_problem`` refuses to start otherwise). With
keys in force, a request names its key in ``Authorization: Bearer <key>``:

- no key, or one that is not a live key: 401 AUTHENTICATION_FAILED with
  ``WWW-Authenticate: Bearer``;
- a key without the scope its route needs (``NEEDS``): 403 FORBIDDEN;
- a key past its request rate: 429 RATE_LIMITED with ``Retry-After``
  (``actors/quotas.py``).

``NEEDS`` is the one table of what each route family needs: a family it does not
name needs the admin scope, so a new family is closed until it declares itself.
``/api/health`` and the provider webhooks (which prove themselves by their
signature) are open; ``/api/metrics`` takes an admin key or the configured
``metrics_token``.
"""

from __future__ import annotations

import enum
import hmac

import attrs
from quart import Quart, Response, current_app, g, request
from werkzeug.exceptions import NotFound

from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.keys import Scope
from daemon.api.errors import error_response
from daemon.api.services import services
from daemon.config import AuthSettings

__all__ = ["ANONYMOUS", "NEEDS", "Caller", "Gate", "Scope", "caller", "check_media", "install"]

_KEY = "easel.auth"
#: The longest ``Authorization`` value looked at (a key is 62 characters).
_MAX_CREDENTIAL = 256


class Gate(enum.Enum):
    """What a route needs when it is not a scope."""

    #: Anyone: health checks, and providers (their webhooks carry a signature).
    OPEN = "open"
    #: An admin key, or the ``[auth] metrics_token`` a Prometheus scraper holds.
    METRICS = "metrics"
    #: Pages that answer a caller without the right key with their own login form
    #: (the admin pages): a valid key is identified, anyone else is let through
    #: with no scope, and the page decides.
    LOGIN = "login"


#: What each route family needs, by its blueprint's name, and the endpoints
#: (``family.function``) that need something else. A family not named here needs
#: ``Scope.ADMIN``: declare a new one here.
NEEDS: dict[str, Scope | Gate] = {
    "generation": Scope.READ,
    "generation.submit": Scope.SUBMIT,
    "generation.cancel": Scope.SUBMIT,
    # Batches: reading is read; submitting, estimating, cancelling, retrying is submit.
    "batches": Scope.READ,
    "batches.submit": Scope.SUBMIT,
    "batches.estimate_cost": Scope.SUBMIT,
    "batches.cancel": Scope.SUBMIT,
    "batches.retry": Scope.SUBMIT,
    "provider_webhooks": Gate.OPEN,
    "health": Scope.ADMIN,
    "health.health": Gate.OPEN,
    "health.prometheus": Gate.METRICS,
    "media": Scope.READ,
    # Inputs published for URL-only providers, named by their content's SHA-256.
    "media.published_input": Gate.OPEN,
    # The OpenAI-compatible front door: making is submit, reading is read.
    "openai_images": Scope.SUBMIT,
    "openai_videos": Scope.READ,
    "openai_videos.create": Scope.SUBMIT,
    # The API's description holds no job and no secret: open, for client generators.
    "openapi": Gate.OPEN,
    # The admin pages show a login form to whoever lacks an admin key.
    "admin": Gate.LOGIN,
    "monitoring": Scope.ADMIN,
}


def need_of(endpoint: str | None) -> Scope | Gate | None:
    """What ``endpoint`` needs; None when no route matched (404, 405), which still
    takes a valid key, so that a caller without one learns nothing of the routes."""
    if endpoint is None:
        return None
    found = NEEDS.get(endpoint)
    if found is None:
        found = NEEDS.get(endpoint.partition(".")[0], Scope.ADMIN)
    return found


@attrs.frozen
class Caller:
    """Who is making the current request."""

    #: The id of the caller's API key, stamped on the jobs it creates; None for the
    #: anonymous caller of a daemon without keys, and for a caller with no key on
    #: an open route.
    owner: str | None
    scopes: frozenset[Scope]

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def sees_all(self) -> bool:
        """Whether the caller may see every job, not only those it owns."""
        return self.admin

    @property
    def viewer(self) -> str | None:
        """The owner whose jobs the caller sees (None: every job), as the runtime's
        reads take it. A caller without a key and without admin sees none: ``""``
        is no key's id."""
        if self.sees_all:
            return None
        return self.owner or ""


#: The caller of a daemon run without keys: every scope, no owner.
ANONYMOUS = Caller(owner=None, scopes=frozenset(Scope))
#: A caller let in without a key once keys are in force (an open route, or the
#: metrics token): no scope, owns nothing.
_KEYLESS = Caller(owner=None, scopes=frozenset())


def _bearer(header: str | None) -> str | None:
    if not header or len(header) > _MAX_CREDENTIAL:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _refused(status: int, code: ErrorCode, message: str, challenge: str,
             details: dict[str, str] | None = None) -> Response:
    return error_response(ErrorInfo(code, message, details or {}), status,
                          {"WWW-Authenticate": f'Bearer realm="easel"{challenge}'})


async def authenticate() -> Response | None:
    """Identify the caller, or answer the refusal (the route is not run then)."""
    settings: AuthSettings = current_app.extensions[_KEY]
    runtime = services().runtime
    if not settings.require_keys and not await runtime.keys.any_exist():
        g.caller = ANONYMOUS
        return None
    need = need_of(request.endpoint)
    if need is Gate.OPEN:
        g.caller = _KEYLESS
        return None
    token = _bearer(request.headers.get("Authorization"))
    if need is Gate.LOGIN:
        key = None if token is None else await runtime.keys.identify(token)
        g.caller = _KEYLESS if key is None else Caller(owner=key.id, scopes=key.scopes)
        return None
    if token is None:
        return _refused(401, ErrorCode.AUTHENTICATION_FAILED,
                        "an API key is needed: Authorization: Bearer <key>", "")
    if need is Gate.METRICS and settings.metrics_token and hmac.compare_digest(
            token.encode(), settings.metrics_token.encode()):
        g.caller = _KEYLESS
        return None
    key = await runtime.keys.identify(token)
    if key is None:
        return _refused(401, ErrorCode.AUTHENTICATION_FAILED,
                        "the API key is not valid (unknown or revoked)",
                        ', error="invalid_token"')
    runtime.quotas.take_request(key)  # RATE_LIMITED, answered by the error handlers
    found = Caller(owner=key.id, scopes=key.scopes)
    required = Scope.ADMIN if need is Gate.METRICS else need
    if required is not None and not found.admin and required not in found.scopes:
        return _refused(403, ErrorCode.FORBIDDEN,
                        f"this API key lacks the {required.value} scope",
                        f', error="insufficient_scope", scope="{required.value}"',
                        {"requiredScope": required.value})
    g.caller = found
    return None


def caller() -> Caller:
    """The caller of the request being handled."""
    found: Caller = g.caller
    return found


async def check_media(name: str) -> None:
    """Raise 404 (the answer for a file that does not exist) unless the caller may
    see the job whose output ``name`` (``<job id>/<n>.<ext>``) is."""
    viewer = caller().viewer
    if viewer is None:
        return
    try:
        await services().runtime.get_job(name.partition("/")[0], viewer)
    except EaselError:
        raise NotFound() from None


def install(app: Quart, settings: AuthSettings) -> None:
    app.extensions[_KEY] = settings
    app.before_request(authenticate)
