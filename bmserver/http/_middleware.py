"""The app's plain ASGI middleware: one access-log line per request, no-store on account data.

Both pass through what they do not handle, in the manner of Starlette's own middleware. The
access log also owns what may be written to a log of what a client chose (paths, forwarded
addresses): keys cut to their display prefix, control characters escaped.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ANSWERED_BY_PROTOCOL", "AccessLog", "NoStore", "loggable_path", "loggable_text"]

access_log = logging.getLogger("bmserver.access")

#: Key of a request's ``scope["state"]`` holding the status that the protocol guard
#: (:class:`~bmserver.http._protocol.GuardedH11Protocol`) answered the request with itself
#: (400, its body was not valid HTTP). The app's own answer is then never sent: the access
#: log reports this status instead. Defined here, by its reader, so that the app needs no
#: uvicorn.
ANSWERED_BY_PROTOCOL: Final = "bmserver.answered_by_protocol"

# Anything shaped like a key (the prefix and at least 8 key characters): a client may paste
# its key into a URL path as easily as into a query string.
_KEY_SHAPED: Final = re.compile(r"bm_[A-Za-z0-9_-]{8,}")
_DISPLAYED_KEY_BODY: Final = 8


def loggable_path(path: str) -> str:
    r"""The path as an access log may show it: keys cut to their display prefix, controls escaped.

    >>> loggable_path("/api/backups/bm_n7ukAAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH")
    '/api/backups/bm_n7ukAAAA...'
    >>> loggable_path("/api/x\nFAKE LOG LINE")
    '/api/x\\nFAKE LOG LINE'
    """
    return loggable_text(
        _KEY_SHAPED.sub(lambda key: key[0][: 3 + _DISPLAYED_KEY_BODY] + "...", path)
    )


def loggable_text(text: str) -> str:
    r"""Text a client chose, as a log line may hold it: controls and other unprintables escaped.

    A decoded %0A in a path would otherwise start a forged log line, and U+009B (a C1 control
    that terminals read as an escape sequence) or U+0085 (a line break to some log readers) in
    an X-Forwarded-For address would pass through.

    >>> loggable_text("203.0.113.5\x9b31m")
    '203.0.113.5\\x9b31m'
    """
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class AccessLog:
    """One log line per request: method, path without the query, status, key prefix.

    It replaces uvicorn's access log, which prints the query string, where a careless client
    may have put its key. Request bodies are never logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        logged = False

        def log_line(status: int) -> None:
            # Logged when the response starts, so the line exists before the client can read
            # the answer (tests and operators see it in order).
            client = scope.get("client")
            state = scope.get("state", {})
            access_log.info(
                '%s "%s %s" %d key=%s',
                # From X-Forwarded-For behind a trusted proxy: whatever the client wrote there.
                loggable_text(str(client[0])) if client else "-",
                scope["method"],
                loggable_path(scope["path"]),
                # The server answered malformed HTTP itself: the app's answer was never sent.
                state.get(ANSWERED_BY_PROTOCOL, status),
                state.get("key_prefix", "-"),
            )

        async def send_and_log(message: Message) -> None:
            nonlocal logged
            if message["type"] == "http.response.start" and not logged:
                logged = True
                log_line(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_log)
        except Exception:
            if not logged:
                log_line(500)
            raise


class NoStore:
    """``Cache-Control: no-store`` on every answer under /api/: they carry an account's data.

    No cache between the client and the server (a proxy, a browser) may keep a copy that
    another user of it could be served.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_no_store)
