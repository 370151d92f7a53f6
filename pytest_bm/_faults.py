"""Fault plans, and the pure ASGI layer around bmserver's app that applies them and journals.

Every request passes through :class:`IngestLayer`. On the two ingest paths it first takes the
next planned fault, if any, in the order the faults were planned, one per request:

- ``fail``: answer the planned status with a problem+json body; the app never sees it.
- ``throttle``: answer 429 with ``Retry-After`` and the RateLimit headers, as bmserver does.
- ``delay``: wait on the server's loop, then let the app answer as usual; a reset or a stop
  during the wait ends it, and the request is dropped instead.
- ``drop``: close the connection without any answer (see :meth:`IngestLayer._drop`).

Every request, faulted or not, is then recorded in the :class:`~pytest_bm._records.Journal`,
before the last byte of its answer is sent: a client that has its answer can rely on the
record being there.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Final, TypeAlias

import attrs
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import bmcore
from bmserver import ProblemError, rate_limit_headers
from pytest_bm._records import BACKUP_PATH, NOTIFICATION_PATH, Exchange, Journal

__all__ = [
    "Connections",
    "Delay",
    "Drop",
    "Fail",
    "Fault",
    "FaultPlan",
    "IngestLayer",
    "Throttle",
]

INGEST_PATHS: Final = frozenset({BACKUP_PATH, NOTIFICATION_PATH})

#: Request bodies are kept in the journal up to this size; the rest is read and discarded.
MAX_KEPT_BODY: Final = 1024 * 1024

# The problem code bmserver itself uses for a status, so that a planned failure looks like
# the real one to a client that branches on the code.
_CODES: Final = {
    400: "validation_failed",
    401: "invalid_api_key",
    403: "insufficient_scope",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


@attrs.frozen
class Fail:
    """Answer ``status`` with a problem+json body; nothing is stored."""

    status: int

    @property
    def label(self) -> str:
        """How the journal names this fault."""
        return f"fail {self.status}"


@attrs.frozen
class Throttle:
    """Answer 429 with ``Retry-After: retry_after`` and the RateLimit headers."""

    retry_after: int

    @property
    def label(self) -> str:
        """How the journal names this fault."""
        return f"throttle retry_after={self.retry_after}"


@attrs.frozen
class Delay:
    """Wait ``seconds`` on the server's loop, then answer as usual."""

    seconds: float

    @property
    def label(self) -> str:
        """How the journal names this fault."""
        return f"delay {self.seconds:g}s"


@attrs.frozen
class Drop:
    """Close the connection without any answer."""

    @property
    def label(self) -> str:
        """How the journal names this fault."""
        return "drop"


Fault: TypeAlias = Fail | Throttle | Delay | Drop


def check_fault(fault: Fault) -> Fault:
    """The fault, if its parameters make sense; else ValueError saying what to pass."""
    if isinstance(fault, Fail) and not 400 <= fault.status <= 599:
        raise ValueError(f"fail_next needs an error status from 400 to 599, got {fault.status}")
    if isinstance(fault, Throttle) and fault.retry_after < 0:
        raise ValueError(f"retry_after must be 0 or more seconds, got {fault.retry_after}")
    if isinstance(fault, Delay) and not (math.isfinite(fault.seconds) and fault.seconds >= 0):
        raise ValueError(f"a delay must be 0 or more seconds, got {fault.seconds}")
    return fault


class FaultPlan:
    """The faults planned for the next ingest requests, first planned first applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[Fault] = collections.deque()

    def add(self, fault: Fault, times: int) -> None:
        """Plan ``fault`` for the next ``times`` ingest requests, after those already planned."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        check_fault(fault)
        with self._lock:
            self._queue.extend([fault] * times)

    def take(self) -> Fault | None:
        """The fault for the request that just arrived, or None."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        """Forget every planned fault."""
        with self._lock:
            self._queue.clear()

    def pending(self) -> list[str]:
        """The labels of the faults not applied yet, in order."""
        with self._lock:
            return [fault.label for fault in self._queue]


Address: TypeAlias = tuple[str, int]


class Connections:
    """One server's open client connections by client address; used on its loop only.

    ASGI gives an app no handle on its connection, and uvicorn answers 500 to an app that
    fails or returns before answering, so the HTTP protocol class registers each transport
    here, and :class:`IngestLayer` closes the one of the request's ``scope["client"]``.
    """

    def __init__(self) -> None:
        self._open: dict[Address, asyncio.BaseTransport] = {}

    def opened(self, client: Address | None, transport: asyncio.BaseTransport) -> None:
        """A client connected."""
        if client is not None:
            self._open[client] = transport

    def closed(self, client: Address | None) -> None:
        """A client's connection is gone."""
        if client is not None:
            self._open.pop(client, None)

    def close(self, client: Address) -> bool:
        """Close a client's connection (without an answer); False if it is not open."""
        transport = self._open.pop(client, None)
        if transport is None:
            return False
        transport.close()
        return True

    def close_all(self) -> None:
        """Close every connection: the last resort of a stop that would otherwise hang."""
        for client in list(self._open):
            self.close(client)


@attrs.define
class _Body:
    """A request body as it is read, kept up to MAX_KEPT_BODY bytes."""

    chunks: list[bytes] = attrs.field(factory=list[bytes])
    size: int = 0

    def keep(self, message: Message) -> None:
        if message["type"] != "http.request":
            return
        chunk: bytes = message.get("body", b"")
        room = MAX_KEPT_BODY - self.size
        if room > 0 and chunk:
            kept = chunk[:room]
            self.chunks.append(kept)
            self.size += len(kept)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def _read_all(receive: Receive, body: _Body) -> None:
    """Read the whole request body (what the app would have read), keeping its start."""
    while True:
        message = await receive()
        body.keep(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class IngestLayer:
    """Pure ASGI middleware: planned faults on the ingest paths, and a journal of everything.

    ``app`` is called per request, so that the fake can swap in a fresh bmserver app (a new
    clock, limiter and lock-out state) on reset without restarting the server.
    """

    def __init__(
        self,
        *,
        app: Callable[[], ASGIApp],
        plan: FaultPlan,
        journal: Journal,
        connections: Connections,
        policy: Callable[[], bmcore.RatePolicy],
        now: Callable[[], datetime],
    ) -> None:
        self._app = app
        self._plan = plan
        self._journal = journal
        self._connections = connections
        self._policy = policy
        self._now = now
        self._stopping = False
        self._delayed: set[asyncio.Future[None]] = set()

    def release_delayed(self, *, stopping: bool) -> None:
        """End every delay now: after a reset, or when the server stops (call on the loop).

        The released requests are dropped: their test is over, or the server is going.
        """
        self._stopping = self._stopping or stopping
        for delayed in self._delayed:
            if not delayed.done():
                delayed.set_result(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app()(scope, receive, send)
            return
        generation = self._journal.generation
        fault = self._plan.take() if scope["path"] in INGEST_PATHS else None
        body = _Body()
        label = None if fault is None else fault.label
        if isinstance(fault, Delay):
            await self._delay(fault.seconds)
            if self._stopping or self._journal.generation != generation:
                # Its test has ended (reset() ran during the delay; the journal ignores the
                # record then) or the server is stopping: storing it now would leak an entry
                # into the next test, so it ends unanswered.
                await _read_all(receive, body)
                why = "stop" if self._stopping else "reset"
                self._record(scope, generation, body, fault=f"{label}, dropped at {why}")
                await self._drop(scope, receive)
                return
        if fault is None or isinstance(fault, Delay):
            await self._serve(scope, receive, send, self._app(), generation, body, label)
            return
        # The whole body is read before answering, as the app would: it goes to the journal,
        # and closing a socket with unread data would reset the connection instead.
        await _read_all(receive, body)
        if isinstance(fault, Drop):
            self._record(scope, generation, body, fault=fault.label)
            await self._drop(scope, receive)
            return
        answer = self._answer(fault)
        await self._serve(scope, receive, send, answer, generation, body, fault.label)

    def _answer(self, fault: Fail | Throttle) -> ASGIApp:
        if isinstance(fault, Throttle):
            policy = self._policy()
            # What bmserver answers when a key's bucket is empty.
            decision = bmcore.Decision(
                allowed=False, remaining=0, retry_after_s=fault.retry_after, reset_s=policy.window_s
            )
            headers = {
                **rate_limit_headers(policy, decision),
                "Retry-After": str(fault.retry_after),
            }
            detail = (
                f"this key sent more than its quota of {policy.burst} requests; "
                f"retry after {fault.retry_after} s"
            )
            return ProblemError(429, "rate_limited", detail, headers=headers).response()
        code = _CODES.get(fault.status, "planned_failure")
        detail = f"a failure planned by the test (fail_next({fault.status})); nothing was stored"
        return ProblemError(fault.status, code, detail).response()

    async def _delay(self, seconds: float) -> None:
        """Wait ``seconds``, or less if release_delayed() is called meanwhile."""
        if self._stopping:
            return
        delayed = asyncio.get_running_loop().create_future()
        self._delayed.add(delayed)
        try:
            await asyncio.wait_for(delayed, timeout=seconds)
        except TimeoutError:
            pass
        finally:
            self._delayed.discard(delayed)

    async def _drop(self, scope: Scope, receive: Receive) -> None:
        """Close the request's connection; the client gets no answer at all.

        Raising, or returning without an answer, would make uvicorn answer 500. Closing the
        transport instead makes uvicorn mark the request disconnected; once ``receive`` says
        so, returning without an answer is what a disconnected request does, and uvicorn
        sends nothing.
        """
        client = scope.get("client")
        if client is None:
            raise RuntimeError("cannot drop a connection without a client address")
        # Not open any more means the client went away first (after its own timeout, say):
        # then there is nothing left to close.
        self._connections.close((str(client[0]), int(client[1])))
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: ASGIApp,
        generation: int,
        body: _Body,
        fault: str | None,
    ) -> None:
        """Let ``app`` answer, recording the exchange before the client can see any of it.

        The response is held back until its last body message and recorded first: a client
        that reads only the status line must still find its request in the journal.
        """
        status: int | None = None
        response_headers: list[tuple[bytes, bytes]] = []
        answer: list[bytes] = []
        held: list[Message] = []
        recorded = False

        async def receive_and_keep() -> Message:
            message = await receive()
            body.keep(message)
            return message

        async def send_and_record(message: Message) -> None:
            nonlocal status, response_headers, recorded
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_headers = list(message.get("headers", []))
                held.append(message)
                return
            if message["type"] != "http.response.body" or recorded:
                await send(message)
                return
            answer.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            recorded = True
            self._record(
                scope,
                generation,
                body,
                fault=fault,
                status=status,
                headers=response_headers,
                answer=b"".join(answer),
            )
            for start in held:
                await send(start)
            await send({"type": "http.response.body", "body": b"".join(answer)})

        try:
            await app(scope, receive_and_keep, send_and_record)
        finally:
            if not recorded:  # the app failed before finishing its answer
                self._record(scope, generation, body, fault=fault, status=status)

    def _record(
        self,
        scope: Scope,
        generation: int,
        body: _Body,
        *,
        fault: str | None,
        status: int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        answer: bytes = b"",
    ) -> None:
        exchange = Exchange(
            method=str(scope["method"]),
            path=str(scope["path"]),
            request_headers=list(scope.get("headers", [])),
            body=body.data,
            status=status,
            response_headers=headers or [],
            response_body=answer,
            fault=fault,
        )
        self._journal.add(exchange, generation=generation, now=self._now())
