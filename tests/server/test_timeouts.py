"""Time-outs of a request that never finishes: the body's (408) in the app, the head's in uvicorn.

Real servers over real sockets; the time-outs are shortened so that the tests stay quick.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from _harness import Client, backup, serve, stop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bmserver import Settings
from bmserver import _protocol as protocol
from bmserver._protocol import GuardedH11Protocol


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The real bmserver on either store (the fake serves with its own time-outs)."""
    return str(request.param)


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


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A tiny app served with GuardedH11Protocol and a head deadline of a fifth of a second."""
    monkeypatch.setattr(protocol, "HEAD_TIMEOUT_S", 0.2)

    async def hello(_: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    server, thread, port = serve(Starlette(routes=[Route("/", hello)]), http=GuardedH11Protocol)
    try:
        yield Client("127.0.0.1", port, "")
    finally:
        stop(server, thread)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHo", b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT"],
    ids=["silent", "head cut off", "second head cut off"],
)
def test_a_connection_without_a_whole_head_is_closed(guarded: Client, sent: bytes) -> None:
    """Silent, or stuck in a request head (also the next one on a kept-alive connection)."""
    answer = _raw(guarded, sent)
    responses = answer.count(b"HTTP/1.1 200 OK")
    assert responses == sent.count(b"\r\n\r\n")  # only whole requests were answered
