"""Test harness: a real bmserver app on a real loopback socket, a small HTTP client, payloads."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import uvicorn

from bmserver import (
    ManualClock,
    Scope,
    Store,
    issue_api_key,
)

#: The server's clock starts here; payloads are dated around it.
START = datetime(2024, 6, 4, 12, 0, tzinfo=UTC)


@attrs.frozen
class Reply:
    """One HTTP response, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        """The media type of the body, without parameters."""
        return self.headers.get("content-type", "").split(";")[0]


@attrs.define
class Client:
    """Sends requests to a running server over a fresh connection each time."""

    host: str
    port: int
    api_key: str

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = "default",
    ) -> Reply:
        """Send one request; ``key`` "default" sends the fixture's key, None sends none."""
        sent = {"Content-Type": "application/json"} if body is not None else {}
        if key is not None:
            sent["X-Api-Key"] = self.api_key if key == "default" else key
        sent.update(headers or {})
        sent = {name: value for name, value in sent.items() if value}
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Reply(
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()

    def post(self, path: str, payload: object, **kwargs: Any) -> Reply:
        """POST a JSON payload."""
        return self.request("POST", path, json.dumps(payload).encode(), **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        """GET a path."""
        return self.request("GET", path, **kwargs)


@attrs.define
class RunningServer:
    """An app served by uvicorn in a daemon thread, with handles on its parts."""

    client: Client
    store: Store
    clock: ManualClock
    #: The server's event loop, where its store lives; None for a store usable from any loop.
    loop: asyncio.AbstractEventLoop | None

    def call(self, coroutine: Any) -> Any:
        """Run a store coroutine where the store lives."""
        if self.loop is None:
            return asyncio.run(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def new_key(self, account: str = "acme", scopes: set[Scope] | None = None) -> str:
        """Issue another key and return it."""
        key, _ = self.call(
            issue_api_key(
                self.store,
                account=account,
                scopes=scopes or {Scope.INGEST, Scope.READ},
                now=START,
            )
        )
        return str(key)


def serve(app: Any, **options: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Start uvicorn on 127.0.0.1, port 0, and wait until it listens; ``options`` go to Config."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start within 10 s")
        time.sleep(0.005)  # readiness polling, not a timing assumption
    port = int(server.servers[0].sockets[0].getsockname()[1])
    return server, thread, port


def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Ask uvicorn to exit and wait for it (lifespan shutdown closes the store)."""
    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive(), "the server did not stop within 15 s"


def loop_of(server: uvicorn.Server) -> asyncio.AbstractEventLoop:
    return server.servers[0].get_loop()


def backup(**changes: Any) -> dict[str, Any]:
    """A valid backup payload dated near START; a value of ... removes the field."""
    payload: dict[str, Any] = {
        "deviceName": "srv01",
        "jobName": "Nightly Full Backup",
        "timestamp": "2024-06-04T14:00:00+02:00",
        "status": "Success",
        "message": "Backup completed. 142 GB transferred.",
        "sender": "script-srv01",
    }
    payload.update(changes)
    return {name: value for name, value in payload.items() if value is not ...}


def notification(**changes: Any) -> dict[str, Any]:
    """A valid notification payload dated at START; a value of ... removes the field."""
    payload: dict[str, Any] = {
        "deviceName": "srv01",
        "timestamp": "2024-06-04T12:00:00Z",
        "severity": "warning",
        "type": "disk_space_low",
        "message": "Drive / has only 12% free space remaining.",
        "sender": "disk-monitor",
    }
    payload.update(changes)
    return {name: value for name, value in payload.items() if value is not ...}


def assert_problem(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The reply is an RFC 9457 problem with this status and code; returns its body."""
    assert reply.status == status, reply.body
    assert reply.content_type == "application/problem+json"
    body: dict[str, Any] = reply.json
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["title"]
    assert body["detail"]
    return body


def run_probe(source: str) -> str:
    """What a fresh interpreter running ``source`` prints: for what an import loads.

    Without coverage's variables: its subprocess hook would load more (sqlite3) into the child.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE_", "COVERAGE_"))}
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, check=True, env=env
    )
    return result.stdout
