"""uvicorn's h11 protocol with a deadline for each request's head (request line and headers).

uvicorn times out only an idle keep-alive connection, and any byte a client sends cancels
that timer: a connection that never sends a whole request head (a silent connection, or one
trickling its headers a byte at a time) stays open for ever, holding a file descriptor. This
class closes such a connection when its head has not arrived within ``HEAD_TIMEOUT_S`` of the
connection opening, or of the previous response. The body has its own limit in the app
(``Settings.body_timeout_s``, answered 408).

A request answered before its body was read whole (a 413 on Content-Length, a 404, a GET with
a body) leaves a connection that neither deadline watches: the rest of the body would keep it
open for as long as the client likes. Such an answer says ``Connection: close``, and the
connection is closed once it is sent.

``bmserver serve`` and pytest_bm's fake both serve with it, so that a client meets the same
answers from either. It relies on uvicorn's H11Protocol hooks (connection_made, data_received,
on_response_complete, connection_lost, send_400_response) and on its RequestResponseCycle's
``disconnected`` and ``message_event``; tests/reliability/test_slow_clients.py checks it
against the uvicorn that is installed.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Final, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from bmserver.http._middleware import ANSWERED_BY_PROTOCOL
from bmserver.http._problems import PROBLEM_CONTENT_TYPE, Problem, problem_document

if TYPE_CHECKING:
    from uvicorn._types import (
        ASGI3Application,
        ASGIReceiveCallable,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )
    from uvicorn.protocols.http.h11_impl import RequestResponseCycle

__all__ = ["HEAD_TIMEOUT_S", "GuardedH11Protocol"]

#: Seconds a client has to send a whole request head.
HEAD_TIMEOUT_S: Final = 5.0

_CLOSE: Final = (b"connection", b"close")
_MALFORMED: Final = Problem.MALFORMED_HTTP
_MALFORMED_STATUS: Final = _MALFORMED.answered_with()


class GuardedH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose head is late, or whose body an answer left."""

    _head_deadline: asyncio.TimerHandle | None = None
    #: The app uvicorn loaded, which _app_closing_unread_bodies wraps.
    _app: ASGI3Application

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the first request's head."""
        # asyncio hands a stream protocol a Transport; uvicorn's signature says so narrowly.
        super().connection_made(cast("asyncio.Transport", transport))
        self._app = cast("ASGI3Application", self.app)
        self.app = self._app_closing_unread_bodies
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        """Stop the clock once the head is complete (h11 has moved past IDLE)."""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        """Start the clock for the next request's head, or close if this one's body is unread."""
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Only an answer that did not pass through _app_closing_unread_bodies gets here (none
            # of uvicorn's own do today): the unread rest of the body would hold the connection.
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """No deadline outlives its connection."""
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: answered as every other error, with problem+json.

        uvicorn's own answer is text/plain; a client handling bm-ingest's problems should not
        have to handle a second format for malformed HTTP.
        """
        # h11 parses no next request before this one is answered: a cycle whose answer is not
        # complete is the request whose body is malformed, and the app may be running for it.
        cycle = cast("RequestResponseCycle | None", self.cycle)
        if cycle is not None and not cycle.response_complete:
            # Its answer would be a second response on a connection that is closing (h11 refuses
            # it, with a traceback): its send() is dropped, its receive() says http.disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
            if not cycle.response_started:
                cycle.scope.setdefault("state", {})[ANSWERED_BY_PROTOCOL] = _MALFORMED_STATUS
        # Once the app has started its answer (our state is past SEND_RESPONSE), h11 has no
        # place for another one: the connection is only closed.
        if self.conn.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            self._write_malformed_http_problem(msg)
        self.transport.close()

    def _write_malformed_http_problem(self, msg: str) -> None:
        document = problem_document(
            _MALFORMED, f"the request is not valid HTTP/1.1 ({msg}); check the client"
        )
        body = json.dumps(document).encode("ascii")
        headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode("ascii")),
            (b"content-length", str(len(body)).encode("ascii")),
            _CLOSE,
        ]
        for event in (
            h11.Response(status_code=_MALFORMED_STATUS, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")

    async def _app_closing_unread_bodies(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The app, whose answers given before the request's body was read whole close."""

        async def send_closing(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and self.conn.their_state is h11.SEND_BODY:
                headers = list(message.get("headers", ()))
                if not any(_says_close(name, value) for name, value in headers):
                    # h11 then ends the connection after this answer (its state MUST_CLOSE),
                    # and uvicorn closes it as soon as the answer is written.
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        await self._app(scope, receive, send_closing)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def _says_close(name: bytes, value: bytes) -> bool:
    return name.lower() == b"connection" and b"close" in [
        token.strip() for token in value.lower().split(b",")
    ]
