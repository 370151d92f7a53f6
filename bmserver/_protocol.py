"""uvicorn's h11 protocol with a deadline for each request's head (request line and headers).

uvicorn times out only an idle keep-alive connection, and any byte a client sends cancels
that timer: a connection that never sends a whole request head (a silent connection, or one
trickling its headers a byte at a time) stays open for ever, holding a file descriptor. This
class closes such a connection when its head has not arrived within ``HEAD_TIMEOUT_S`` of the
connection opening, or of the previous response. The body has its own limit in the app
(``Settings.body_timeout_s``, answered 408).

It relies on uvicorn's H11Protocol hooks (connection_made, data_received,
on_response_complete, connection_lost); tests/reliability/test_slow_clients.py checks it
against the uvicorn that is installed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Final, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from bmserver._problems import PROBLEM_CONTENT_TYPE, problem_title, problem_type

__all__ = ["HEAD_TIMEOUT_S", "GuardedH11Protocol"]

#: Seconds a client has to send a whole request head.
HEAD_TIMEOUT_S: Final = 5.0


class GuardedH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose request head does not arrive in time."""

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the first request's head."""
        # asyncio hands a stream protocol a Transport; uvicorn's signature says so narrowly.
        super().connection_made(cast("asyncio.Transport", transport))
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        """Stop the clock once the head is complete (h11 has moved past IDLE)."""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        """Start the clock for the next request's head on this connection."""
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
        body = json.dumps(
            {
                "type": problem_type("malformed_http"),
                "title": problem_title("malformed_http"),
                "status": 400,
                "detail": f"the request is not valid HTTP/1.1 ({msg}); check the client",
                "code": "malformed_http",
            }
        ).encode("ascii")
        headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode("ascii")),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

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
