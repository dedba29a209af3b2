"""The dashboard's ASGI application: routes, middleware and shared state."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from joblife.config import Settings
from joblife.keyfiles import read_key_file
from joblife.web import actions, login, pages
from joblife.web.body_limit import BodySizeLimit, too_large_page
from joblife.web.cache import SharedCache
from joblife.web.render import STATIC_DIR, make_templates
from joblife.web.security import Authenticator, is_loopback
from joblife.web.users import UserStore, users_file

#: The dashboard's cookie key file under the data directory, when web_secret_key is unset.
SECRET_KEY_FILE = "web-secret.key"
SESSION_COOKIE = "joblife_session"
#: How uvicorn serves the app. No proxy headers: the address the app sees is the peer's,
#: so that web_trusted_proxies is checked against the proxy itself (uvicorn's default
#: would replace it with X-Forwarded-For's client, and the user header would be believed
#: of nobody, or of a client that names a trusted address); the login limit per address
#: then counts the proxy's, the limit per user name still each user's.
SERVER_OPTIONS = {"log_level": "warning", "proxy_headers": False, "server_header": False}
#: SQLSTATE of a statement cancelled by statement_timeout.
QUERY_CANCELED = "57014"

#: Every response's security headers. The page loads only its own scripts and styles (no
#: inline script: page content comes from products and science output), cannot be framed
#: and sends no referrer (URLs carry filters, never secrets, but stay inside).
SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        b"object-src 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (static files keep their caching),
    and a ``Server-Timing: app;dur=<ms>`` header: the time the server took to the start of
    the response (what the benchmark reads, and browsers' developer tools show)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")
        started = time.perf_counter()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in SECURITY_HEADERS
                ]
                headers += [
                    (name, value)
                    for name, value in SECURITY_HEADERS.items()
                    if not (static and name == b"cache-control")
                ]
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.1f}".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def cookie_secure(settings: Settings) -> bool:
    """Whether the session cookie is sent over HTTPS only (see ``web_cookie_secure``)."""
    if settings.web_cookie_secure is not None:
        return settings.web_cookie_secure
    return not is_loopback(settings.web_address)


def secret_key(settings: Settings) -> str:
    """The key signing the session cookies."""
    if settings.web_secret_key is not None:
        return settings.web_secret_key.get_secret_value()
    key = read_key_file(settings.data_dir / SECRET_KEY_FILE)
    assert key is not None  # made when missing
    return key.hex()


async def database_trouble(request: Request, error: Exception) -> Response:
    """A page whose read hit the statement timeout, or a database that does not answer:
    a page saying so (503), not a bare 500; the next refresh tries again."""
    from joblife.web.render import render

    code = getattr(getattr(error, "orig", None), "pgcode", None)
    if code == QUERY_CANCELED:
        message = "The database took too long to answer this page: try a narrower filter."
    else:
        message = "The database is not answering: the page will work again when it does."
    return render(request, "error.html", 503, title="Database unavailable", message=message)


async def healthz(request: Request) -> Response:
    """Liveness for a load balancer or Nomad's service check: no data, no login."""
    return PlainTextResponse("ok\n")


def routes() -> Sequence[BaseRoute]:
    """Every route of the dashboard."""
    return [
        *login.routes,
        *pages.routes,
        *actions.routes,
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]


def create_app(settings: Settings, engine: Engine, users: UserStore | None = None) -> Starlette:
    """The dashboard on ``engine``'s database."""
    app = Starlette(
        routes=list(routes()),
        exception_handlers={OperationalError: database_trouble, 413: too_large_page},
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=secret_key(settings),
                session_cookie=SESSION_COOKIE,
                max_age=int(settings.web_session_hours * 3600),
                same_site="strict",
                https_only=cookie_secure(settings),
            ),
            Middleware(BodySizeLimit),  # inside the session: its 413 page needs it
        ],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.auth = Authenticator(settings, users or UserStore(users_file(settings)))
    app.state.cache = SharedCache(settings.web_refresh_seconds)
    app.state.templates = make_templates()
    return app
