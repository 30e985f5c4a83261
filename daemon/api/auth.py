"""The one place where a request's caller is identified and allowed or refused.

``authenticate`` runs before every route of every family (it is installed on the app,
not on a blueprint, so a family added later cannot forget it) and leaves the
request's ``Caller`` where ``caller()`` finds it. Routes never read the
``Authorization`` header themselves: they ask ``caller()`` who is calling, stamp
``caller().owner`` on what they create, and pass it to the runtime's reads so a
caller sees only what is its own.

Today the daemon has no keys: every request is the anonymous caller, which holds
every scope and owns nothing (``owner`` None: it sees every job), and the daemon is
meant to listen on loopback or a unix socket. API keys and their scopes are checked
here: read the key from ``Authorization: Bearer``, look it up through a runtime
service, compare its scopes with the family being called (``request.blueprint``),
and raise ``EaselError(ErrorCode.AUTHENTICATION_FAILED, ...)`` to refuse; the error
handlers answer that in the usual envelope and the access log records it like any
request.
"""

from __future__ import annotations

import enum

import attrs
from quart import Quart, g


class Scope(str, enum.Enum):
    """What a key may do."""

    #: Create jobs (and cancel its own).
    SUBMIT = "submit"
    #: Read its own jobs, their events and media.
    READ = "read"
    #: Everything: every job, detailed health, metrics, the admin API and pages.
    ADMIN = "admin"


@attrs.frozen
class Caller:
    """Who is making the current request."""

    #: The id of the caller's API key, stamped on the jobs it creates; None for the
    #: anonymous caller of a daemon without keys.
    owner: str | None
    scopes: frozenset[Scope]

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def sees_all(self) -> bool:
        """Whether the caller may see every job, not only those it owns."""
        return self.admin or self.owner is None


#: The caller of a daemon run without keys: every scope, no owner.
ANONYMOUS = Caller(owner=None, scopes=frozenset(Scope))


async def authenticate() -> None:
    """Identify the caller (no keys exist yet: the anonymous caller)."""
    g.caller = ANONYMOUS


def caller() -> Caller:
    """The caller of the request being handled."""
    found: Caller = g.caller
    return found


def install(app: Quart) -> None:
    app.before_request(authenticate)
