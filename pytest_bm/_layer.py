"""The pure ASGI layer around bmserver's app: it applies planned faults and journals every request.

Every request passes through :class:`IngestLayer`. On the two ingest paths it first takes the
next planned fault (:mod:`pytest_bm._faults`), if any, in the order the faults were planned,
one per request. A :class:`~pytest_bm._faults.Fail` or :class:`~pytest_bm._faults.Throttle`
is answered here with bmserver's own problem (:class:`bmserver.Problem`,
:func:`bmserver.rate_limit_problem`), so that it looks like the real one; a
:class:`~pytest_bm._faults.Delay` waits, then lets the app answer (a reset or a stop during
the wait ends it, and the request is dropped instead); a :class:`~pytest_bm._faults.Drop`
closes the connection without any answer.

Every request, faulted or not, is then recorded in the :class:`~pytest_bm._records.Journal`
with what the app decided (:func:`bmserver.ingest_outcome`), before the last byte of its answer
is sent: a client that has its answer can rely on the record being there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Literal

import attrs
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import bmcore
from bmserver import Problem, ProblemError, ingest_outcome, rate_limit_problem
from pytest_bm._faults import AppliedFault, Delay, Drop, Fail, FaultPlan, Interrupted, Throttle
from pytest_bm._records import BACKUP_PATH, NOTIFICATION_PATH, Exchange, Journal
from pytest_bm._server import Connections

__all__ = ["IngestLayer"]

INGEST_PATHS: Final = frozenset({BACKUP_PATH, NOTIFICATION_PATH})

#: Request bodies are kept in the journal up to this size; the rest is read and discarded.
MAX_KEPT_BODY: Final = 1024 * 1024


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


def answer_for(fault: Fail | Throttle, policy: bmcore.RatePolicy) -> ASGIApp:
    """What bmserver would answer in the fault's place: the same problem, status and headers."""
    if isinstance(fault, Throttle):
        # What bmserver answers when a key's bucket is empty.
        empty = bmcore.Decision(
            allowed=False, remaining=0, retry_after_s=fault.retry_after, reset_s=policy.window_s
        )
        return rate_limit_problem(policy, empty).response()
    problem = Problem.for_status(fault.status) or Problem.PLANNED_FAILURE
    detail = f"a failure planned by the test (fail_next({fault.status})); nothing was stored"
    return ProblemError(problem, detail, status=fault.status).response()


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
    ) -> None:
        self._app = app
        self._plan = plan
        self._journal = journal
        self._connections = connections
        self._policy = policy
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
        if isinstance(fault, Delay):
            await self._delay(fault.seconds)
            if self._stopping or self._journal.generation != generation:
                # Its test has ended (reset() ran during the delay; the journal ignores the
                # record then) or the server is stopping: storing it now would leak an entry
                # into the next test, so it ends unanswered.
                await _read_all(receive, body)
                by: Literal["reset", "stop"] = "stop" if self._stopping else "reset"
                self._record(scope, generation, body, fault=Interrupted(fault, by=by))
                await self._drop(scope, receive)
                return
        if fault is None or isinstance(fault, Delay):
            await self._serve(scope, receive, send, self._app(), generation, body, fault)
            return
        # The whole body is read before answering, as the app would: it goes to the journal,
        # and closing a socket with unread data would reset the connection instead.
        await _read_all(receive, body)
        if isinstance(fault, Drop):
            self._record(scope, generation, body, fault=fault)
            await self._drop(scope, receive)
            return
        answer = answer_for(fault, self._policy())
        await self._serve(scope, receive, send, answer, generation, body, fault)

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
        fault: AppliedFault | None,
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
        fault: AppliedFault | None,
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
            # Left by bmserver's ingest endpoint in the scope it was given: this one.
            outcome=ingest_outcome(scope),
        )
        self._journal.add(exchange, generation=generation)
