"""Who is asking, and may they: the signed session, the trusted proxy header, CSRF tokens
and the login rate limit.

The session is a cookie signed with the dashboard's key (Starlette's ``SessionMiddleware``:
HttpOnly, SameSite=Strict, Secure outside loopback) holding the user's name and the
session's CSRF token, never a password or a role: the role is read from the users file at
every request, so removing a user or lowering their role takes effect at once.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from joblife.config import Settings
from joblife.web.users import Role, User, UserStore

#: Form field and header that carry the CSRF token of a state-changing request.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

Endpoint = Callable[[Request], Awaitable[Response]]


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made with the session)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def csrf_valid(request: Request) -> bool:
    """Whether the request carries the session's CSRF token (header or form field)."""
    expected = request.session.get("csrf")
    if not expected:
        return False
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return given is not None and hmac.compare_digest(given, expected)


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a loopback address or ``localhost``."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Authenticator:
    """The current user of a request, and the login rate limit."""

    def __init__(self, settings: Settings, users: UserStore) -> None:
        self.settings = settings
        self.users = users
        self._limit = parse(settings.web_login_rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._session_seconds = settings.web_session_hours * 3600

    def current_user(self, request: Request) -> User | None:
        """The request's user: named by the trusted proxy header (from a trusted proxy), or
        by a live session; None if anonymous or no longer listed."""
        header = self.settings.web_trusted_user_header
        client = request.client.host if request.client else ""
        if header and client in self.settings.web_trusted_proxies:
            name = request.headers.get(header)
            if name:
                return self.users.get(name)
        name = request.session.get("user")
        login_at = request.session.get("login_at", 0)
        if not name or time.time() - login_at > self._session_seconds:
            return None
        return self.users.get(name)

    def login_allowed(self, name: str, client: str) -> bool:
        """Whether another login try is allowed for this name and this client address."""
        return all(
            self._limiter.test(self._limit, scope, key)
            for scope, key in (("user", name), ("address", client))
        )

    def login_failed(self, name: str, client: str) -> None:
        """Count a failed login against the name and the client address."""
        for scope, key in (("user", name), ("address", client)):
            self._limiter.hit(self._limit, scope, key)

    @staticmethod
    def start_session(request: Request, user: User) -> None:
        """Log ``user`` in: a new session (a new CSRF token, nothing of the old one kept)."""
        request.session.clear()
        request.session.update({"user": user.name, "login_at": int(time.time())})
        csrf_token(request)

    @staticmethod
    def end_session(request: Request) -> None:
        """Log out."""
        request.session.clear()


def requires(role: Role) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint: only a user with ``role`` (or higher) reaches it, and a
    request that is not GET/HEAD must carry the session's CSRF token. Anonymous page views
    are sent to the login page; anything else is refused (401/403) with a short reason."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            user: User | None = request.app.state.auth.current_user(request)
            reading = request.method in ("GET", "HEAD")
            if user is None:
                if reading and "HX-Request" not in request.headers:
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    return RedirectResponse(
                        f"/login?next={quote(target, safe='/')}", status_code=303
                    )
                return _refuse(401, "log in first")
            if not reading and not await csrf_valid(request):
                return _refuse(403, "missing or wrong CSRF token: reload the page")
            if not user.may(role):
                return _refuse(403, f"{user.name} is a {user.role.label}: operators only")
            request.state.user = user
            return await endpoint(request)

        return guarded

    return decorate


def _refuse(status: int, reason: str) -> Response:
    return PlainTextResponse(f"refused: {reason}\n", status_code=status)


def safe_next(target: Any) -> str:
    """Where to go after logging in: a path of this site only (no open redirect)."""
    if (
        isinstance(target, str)
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and "\\" not in target
    ):
        return target
    return "/"
