"""Server plumbing of the fake: a listening socket, uvicorn in a daemon thread, bounded stop.

The fake serves with :class:`bmserver.GuardedH11Protocol`, the protocol ``bmserver serve``
uses (uvicorn's h11, never httptools even where it is installed): malformed HTTP, a request
head that never comes and a body left unread get the answers the real service gives. The
protocol also registers each connection in :class:`Connections`, so that a planned drop can
close the request's own connection. Nothing here knows about faults, records or keys: that is
:class:`~pytest_bm._fake.FakeIngest`, on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import uvicorn
from starlette.types import ASGIApp
from uvicorn.server import ServerState

from bmserver import GuardedH11Protocol

__all__ = ["STOP_GRACE_S", "Connections", "FakeServer", "ServerThread", "url_host"]

#: How long stop() lets uvicorn finish in-flight requests before closing their connections.
#: A normal shutdown takes about 0.2 s (uvicorn polls its exit flag every 0.1 s).
STOP_GRACE_S: Final = 1.0

Address: TypeAlias = tuple[str, int]


def url_host(host: str) -> str:
    """The host a client should connect to: a wildcard address means this machine."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"[{host}]" if ":" in host else host


class Connections:
    """One server's open client connections by client address; used on its loop only.

    ASGI gives an app no handle on its connection, and uvicorn answers 500 to an app that
    fails or returns before answering, so the HTTP protocol class registers each transport
    here, and the fault layer closes the one of the request's ``scope["client"]``.
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


def _protocol_class(connections: Connections) -> type[GuardedH11Protocol]:
    """The guarded h11 protocol of bmserver, registering each connection in ``connections``."""

    class _Protocol(GuardedH11Protocol):
        def __init__(
            self,
            config: uvicorn.Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            # bmserver's AccessLog logs each request without its query string, where a
            # careless client may have put its key; uvicorn's would print it. Switched off
            # here rather than with Config(access_log=False), which reconfigures the
            # process-wide "uvicorn.access" logger.
            self.access_log = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            connections.opened(self.client, transport)

        def connection_lost(self, exc: Exception | None) -> None:
            connections.closed(self.client)
            super().connection_lost(exc)

    return _Protocol


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a bind error is raised by start() itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise RuntimeError(
            f"the fake ingest endpoint cannot listen on {host}:{port}: {error}"
        ) from error


class FakeServer(uvicorn.Server):
    """uvicorn's server, telling a waiting thread when it listens or why it failed to."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.event_loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.event_loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        self.ready.set()

    def serve_in_thread(self, sock: socket.socket) -> None:
        """The thread's target; the thread owns ``sock`` and closes it when it ends."""
        try:
            self.run(sockets=[sock])
        # uvicorn ends a failed start with SystemExit; start() reports whatever it was.
        except BaseException as error:  # noqa: BLE001
            self.failure = error
        finally:
            sock.close()
            self.ready.set()


class ServerThread:
    """An ASGI app served by uvicorn in a daemon thread on a socket of its own; stop is bounded."""

    def __init__(
        self,
        *,
        server: FakeServer,
        thread: threading.Thread,
        loop: asyncio.AbstractEventLoop,
        connections: Connections,
        port: int,
    ) -> None:
        self.server = server
        self.thread = thread
        self.loop = loop
        self.connections = connections
        #: The port it listens on.
        self.port: Final = port

    @classmethod
    def start(
        cls,
        app: Callable[[Connections], ASGIApp],
        *,
        host: str,
        port: int,
        timeout: float,
    ) -> ServerThread:
        """Listen on ``host:port`` and serve ``app(connections)``; return once listening.

        RuntimeError when it cannot listen, fails to start, or is not up within ``timeout``.
        """
        sock = _listen(host, port)
        bound = int(sock.getsockname()[1])
        connections = Connections()
        config = uvicorn.Config(
            app(connections),
            http=_protocol_class(connections),
            ws="none",  # nothing to upgrade to; and no websockets library to import
            loop="asyncio",
            # create_app's lifespan only opens and closes the store, and a MemoryStore
            # needs neither; without it, the fake can swap in a fresh app at any time.
            lifespan="off",
            # Leave the process's logging configuration alone: this runs inside other
            # programs' test suites.
            log_config=None,
            # Trusting X-Forwarded-For from loopback would let a request choose its
            # client address, which the drop fault and bmserver's lock-out rely on.
            proxy_headers=False,
            server_header=False,
        )
        server = FakeServer(config)
        thread = threading.Thread(
            target=server.serve_in_thread,
            args=(sock,),
            name=f"bm-fake-ingest:{bound}",
            daemon=True,
        )
        thread.start()
        if not server.ready.wait(timeout):
            # The thread stops by itself once uvicorn is up (or has failed).
            server.should_exit = True
            raise RuntimeError(f"the fake ingest endpoint did not start within {timeout:g} s")
        if not server.started or server.event_loop is None:
            thread.join(STOP_GRACE_S)
            raise RuntimeError(
                f"the fake ingest endpoint failed to start: {server.failure!r} "
                "(uvicorn's log says more)"
            )
        return cls(
            server=server,
            thread=thread,
            loop=server.event_loop,
            connections=connections,
            port=bound,
        )

    def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the server's loop, unless the loop is already gone."""
        with contextlib.suppress(RuntimeError):  # closed: the thread is ending anyway
            self.loop.call_soon_threadsafe(function)

    def stop(self, timeout: float, *, first: Callable[[], None] | None = None) -> None:
        """Ask uvicorn to exit; after a grace, force it; RuntimeError if even that fails.

        ``first`` runs on the loop before: what would keep uvicorn waiting is ended there.
        """
        deadline = time.monotonic() + timeout
        if first is not None:
            self.call(first)
        self.server.should_exit = True
        self.thread.join(min(STOP_GRACE_S, timeout))
        if self.thread.is_alive():
            # Something still holds uvicorn (a client that sent half a request, say).
            self.call(self._force)
            self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            raise RuntimeError(f"the fake ingest server did not stop within {timeout:g} s")

    def _force(self) -> None:
        """On the loop: skip uvicorn's waiting, and close every client connection."""
        self.server.force_exit = True
        self.connections.close_all()
