"""Time-outs of a request that never finishes: the body's (408) in the app, the head's in uvicorn.

Real servers over real sockets; the time-outs are shortened so that the tests stay quick. Each
runs against bmserver and against pytest_bm's fake, which serves with the same protocol guard,
so that a script tested against the fake meets the same answers in production.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import attrs
import pytest
from _harness import Client, backup, serve, stop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bmserver import (
    PROBLEM_CONTENT_TYPE,
    GuardedH11Protocol,
    Limiter,
    ManualClock,
    Settings,
    Store,
    create_app,
)
from bmserver.http import _protocol as protocol
from pytest_bm import FakeIngest


@pytest.fixture
def settings() -> Settings:
    """A body must arrive within a fifth of a second."""
    return Settings(body_timeout_s=0.2)


def _raw(client: Client, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_body_that_stops_arriving_gets_408_and_nothing_is_stored(client: Client) -> None:
    """Headers promise 400 bytes, 10 come: 408 request_timeout, the connection closes."""
    head = (
        "POST /api/ingest/backup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Api-Key: {client.api_key}\r\nContent-Length: 400\r\n\r\n"
    ).encode()
    answer = _raw(client, head + b'{"deviceNa')
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b'"code":"request_timeout"' in rest.replace(b" ", b"")
    assert client.get("/api/backups").json["items"] == []
    assert client.post("/api/ingest/backup", backup()).status == 201  # and it still serves


@attrs.frozen
class Guarded:
    """A server with GuardedH11Protocol, and a POST it answers 200 after reading its body."""

    client: Client
    #: The request line and headers of that POST, without the body's framing.
    post_head: bytes
    post_body: bytes


@pytest.fixture
def protocol_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guarded]:
    """A tiny app served with GuardedH11Protocol and a head deadline of a fifth of a second."""
    monkeypatch.setattr(protocol, "HEAD_TIMEOUT_S", 0.2)

    async def hello(_: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def count(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    routes = [Route("/healthz", hello), Route("/count", count, methods=["POST"])]
    app = Starlette(routes=[*routes, Route("/start-then-read", _StartThenRead())])
    server, thread, port = serve(app, http=GuardedH11Protocol)
    try:
        yield Guarded(
            Client("127.0.0.1", port, ""), b"POST /count HTTP/1.1\r\nHost: x\r\n", b"hello"
        )
    finally:
        stop(server, thread)


@pytest.fixture
def fake_guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guarded]:
    """pytest_bm's fake, with the same head deadline; its POST repeats a stored backup (200)."""
    monkeypatch.setattr(protocol, "HEAD_TIMEOUT_S", 0.2)
    with FakeIngest.running() as fake:
        client = _client_of(fake)
        assert client.post("/api/ingest/backup", backup()).status == 201
        head = (
            "POST /api/ingest/backup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Api-Key: {fake.api_key}\r\n"
        ).encode()
        yield Guarded(client, head, json.dumps(backup()).encode())


@pytest.fixture(params=["protocol_only", "fake_guarded"], ids=["protocol", "fake"])
def guarded(request: pytest.FixtureRequest) -> Guarded:
    """The protocol guard around a tiny app, or around the fake's app."""
    guarded: Guarded = request.getfixturevalue(request.param)
    return guarded


def _client_of(fake: FakeIngest) -> Client:
    port = urlsplit(fake.url).port
    assert port is not None
    return Client("127.0.0.1", port, fake.api_key)


class _StartThenRead:
    """An ASGI app that starts a streamed answer, reads the whole body, then ends the answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        del scope
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        while (message := await receive())["type"] == "http.request" and message["more_body"]:
            pass
        await send({"type": "http.response.body", "body": b"done"})


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /healthz HTTP/1.1\r\nHo", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HT"],
    ids=["silent", "head cut off", "second head cut off"],
)
def test_a_connection_without_a_whole_head_is_closed(guarded: Guarded, sent: bytes) -> None:
    """Silent, or stuck in a request head (also the next one on a kept-alive connection)."""
    answer = _raw(guarded.client, sent)
    responses = answer.count(b"HTTP/1.1 200 OK")
    assert responses == sent.count(b"\r\n\r\n")  # only whole requests were answered


#: Heads whose body the app answers without reading (it never comes): a GET's, a 404's, a 405's.
_UNREAD_BODIES = {
    "GET with a body": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
    "404 with a body": b"GET /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
    "405 with a body": b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
    "chunked, cut off": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab"
    ),
}


@pytest.mark.parametrize("head", list(_UNREAD_BODIES.values()), ids=list(_UNREAD_BODIES))
def test_an_answer_given_before_the_body_closes_the_connection(
    guarded: Guarded, head: bytes
) -> None:
    """A body left unread cannot hold the connection: the answer says close, and it closes."""
    client = guarded.client
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(head)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        # One more byte of the body, then silence: no deadline of the server's would end this.
        with contextlib.suppress(OSError):
            sock.sendall(b"x")
        assert _rest_until_closed(sock) == b""
    assert response.getheader("connection") == "close"


def _framed(body: bytes, framing: str) -> bytes:
    """The end of a request head and ``body``, framed by a Content-Length or in one chunk."""
    if framing == "chunked":
        return b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_was_read_keeps_the_connection_alive(guarded: Guarded, framing: str) -> None:
    """Requests whose body the app read are answered one after the other on one connection."""
    request = guarded.post_head + _framed(guarded.post_body, framing)
    answer = _raw(guarded.client, request + request + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert b"connection: close" not in answer.lower()


def _rest_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes ``sock`` (a reset is a close too)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


# --- malformed HTTP in a request's body -----------------------------------------------------------

_MALFORMED_CHUNK = b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"


@pytest.fixture
def bmserver_guarded(
    request: pytest.FixtureRequest, backend: str, settings: Settings, clock: ManualClock
) -> Iterator[tuple[Client, Callable[[], None]]]:
    """The bmserver app (or the fake) served with GuardedH11Protocol, and an idempotent stop."""
    if backend == "fake":
        with FakeIngest.running(settings=settings) as fake:
            yield _client_of(fake), fake.stop
        return
    store: Store = request.getfixturevalue("store")
    limiter: Limiter = request.getfixturevalue("limiter")
    app = create_app(settings, store=store, limiter=limiter, clock=clock)
    server, thread, port = serve(app, http=GuardedH11Protocol)
    try:
        yield Client("127.0.0.1", port, ""), lambda: stop(server, thread)
    finally:
        stop(server, thread)


@pytest.mark.parametrize(("method", "path"), [("GET", "/healthz"), ("POST", "/api/ingest/backup")])
def test_a_malformed_chunk_is_answered_and_logged_once_as_400(
    bmserver_guarded: tuple[Client, Callable[[], None]],
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
) -> None:
    """A malformed chunked body: one 400 malformed_http answer, one access line (400), no error."""
    client, stop_server = bmserver_guarded
    caplog.set_level(logging.INFO, logger="bmserver.access")
    # uvicorn's own loggers do not propagate to the root logger, where caplog listens.
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
        answer = _raw(client, head + _MALFORMED_CHUNK)
        stop_server()  # uvicorn waits for the request's task: everything it logs is in
    finally:
        uvicorn_logger.removeHandler(caplog.handler)

    assert len(re.findall(rb"^HTTP/1\.1 ", answer, re.MULTILINE)) == 1, answer
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 400 "), answer
    assert PROBLEM_CONTENT_TYPE.encode() in head_part
    assert json.loads(body)["code"] == "malformed_http"
    errors = [
        record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR
    ]
    assert not errors, [record.getMessage() for record in errors]
    lines = [record.getMessage() for record in caplog.records if record.name == "bmserver.access"]
    assert len(lines) == 1, lines
    assert f'"{method} {path}" 400 ' in lines[0], lines


def test_a_malformed_chunk_once_the_answer_has_started_only_closes(
    protocol_only: Guarded, caplog: pytest.LogCaptureFixture
) -> None:
    """No second answer fits once one has started: the connection closes, without a traceback."""
    client = protocol_only.client  # bmserver's app never starts an answer before the body
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(
            b"POST /start-then-read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        received = b""
        while b"started" not in received and (chunk := sock.recv(65536)):
            received += chunk
        sock.sendall(b"zz\r\n")
        received += _rest_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received
    assert received.count(b"HTTP/1.1 ") == 1, received
    errors = [
        record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR
    ]
    assert not errors, [record.getMessage() for record in errors]
