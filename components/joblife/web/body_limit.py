"""The cap on request bodies: the dashboard's forms are small, and a body past the cap is
refused with 413 and the error page before it is parsed, never held whole in memory.

Starlette's own ``max_body_size`` cannot serve here: when ``Content-Length`` exceeds it,
it replaces whatever the app answers with a plain-text 413, the error page included.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from joblife.web.render import render

#: The largest request body read, in bytes. The largest legitimate form is a bulk
#: action's confirmation: up to 10,000 job ids (``actions.BULK_CAP``) of up to 19 digits,
#: comma-separated (``%2C`` in a form body), about 220 KB, with the filter and a message.
MAX_BODY_BYTES = 256 * 1024


class BodyTooLarge(HTTPException):
    """A request body that went past the cap while it was read (chunked: no length said)."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


async def too_large_page(request: Request, error: Exception | None = None) -> Response:
    """The error page of a body past the cap (413): nothing of the request was done."""
    return render(
        request,
        "error.html",
        413,
        title="Request too large",
        message=f"The form sent is larger than {MAX_BODY_BYTES // 1024} KiB: nothing was done.",
    )


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length; None when absent or not a number (the server refuses
    a malformed one; the body is then counted as it comes anyway)."""
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class BodySizeLimit:
    """Refuses a request body larger than ``max_bytes``: at once, without calling the app,
    when its Content-Length says so; else (a chunked body) by raising :class:`BodyTooLarge`
    from the read that passes the cap, which the app's 413 handler
    (:func:`too_large_page`) answers. Must sit inside the session middleware (the page
    needs the session)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = await too_large_page(Request(scope, receive))
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, counted, send)
