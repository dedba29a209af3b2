"""Logging in and out of the dashboard."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from joblife.web.render import render
from joblife.web.security import Authenticator, csrf_valid, requires, safe_next
from joblife.web.users import Role

log = logging.getLogger(__name__)

#: The longest password read from the form (a longer one is cut, so it cannot match).
PASSWORD_MAX = 1024


async def login_page(request: Request) -> Response:
    """The login form (also where anonymous page views are sent)."""
    return render(request, "login.html", next=safe_next(request.query_params.get("next")))


async def login_submit(request: Request) -> Response:
    """Check the name and password; a new session on success. Failed tries are limited per
    name and per client address (``web_login_rate``)."""
    auth: Authenticator = request.app.state.auth
    form = await request.form()
    name = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))[:PASSWORD_MAX]  # argon2's time grows with it
    target = safe_next(form.get("next"))
    client = request.client.host if request.client else "unknown"
    if not await csrf_valid(request):
        return render(request, "login.html", 403, next=target, error="The form expired: try again.")
    if not auth.login_allowed(name, client):
        log.warning("dashboard login refused for %r from %s: too many failed tries", name, client)
        return render(
            request, "login.html", 429, next=target, error="Too many failed tries: wait a minute."
        )
    user = await run_in_threadpool(auth.users.authenticate, name, password)
    if user is None:
        auth.login_failed(name, client)
        log.info("dashboard login failed for %r from %s", name, client)
        return render(request, "login.html", 401, next=target, error="Wrong user name or password.")
    auth.start_session(request, user)
    log.info("dashboard login: %s (%s) from %s", user.name, user.role.label, client)
    return RedirectResponse(target, status_code=303)


@requires(Role.VIEWER)
async def logout(request: Request) -> Response:
    """End the session."""
    Authenticator.end_session(request)
    return RedirectResponse("/login", status_code=303)


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
