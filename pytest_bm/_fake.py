"""FakeIngest: bmserver's own app on a real loopback socket, with a journal and fault plans.

Fidelity by construction: the fake serves ``bmserver.create_app`` with a MemoryStore, a
MemoryLimiter and a ManualClock, wrapped in :class:`~pytest_bm._faults.IngestLayer`. uvicorn
runs it in a daemon thread; the test talks to it over HTTP like any client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar, cast, overload

import attrs
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

import bmcore
from bmserver import (
    DEFAULT_RATE_POLICY,
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Scope,
    Settings,
    StoreError,
    create_app,
    issue_api_key,
)
from pytest_bm._assertions import (
    BACKUPS,
    NOTIFICATIONS,
    find_match,
    rejection_report,
    wait_failure,
)
from pytest_bm._faults import (
    Connections,
    Delay,
    Drop,
    Fail,
    FaultPlan,
    IngestLayer,
    Throttle,
)
from pytest_bm._records import (
    BACKUP_PATH,
    KINDS,
    NOTIFICATION_PATH,
    Journal,
    Kind,
    ReceivedBackup,
    ReceivedNotification,
    RecordedRequest,
    redact_key,
)

__all__ = ["FakeIngest"]

T = TypeVar("T")

#: The scopes of the default key and of ``add_api_key`` unless told otherwise.
DEFAULT_SCOPES: Final = ("ingest", "read")
#: How long stop() lets uvicorn finish in-flight requests before closing their connections.
#: A normal shutdown takes about 0.2 s (uvicorn polls its exit flag every 0.1 s).
STOP_GRACE_S: Final = 1.0
_NO_PROXY: Final = ("127.0.0.1", "localhost")


def _run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to completion, here and now.

    MemoryStore documents that its methods never await (each works under a threading.Lock),
    so keys can be issued from the test's thread, before start() and without a round trip
    to the server's loop.
    """
    try:
        coroutine.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    coroutine.close()
    raise RuntimeError("a MemoryStore call suspended, which its contract rules out")


def _url_host(host: str) -> str:
    """The host a client should connect to: a wildcard address means this machine."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"[{host}]" if ":" in host else host


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a bind error is raised by start() itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise RuntimeError(
            f"the fake ingest endpoint cannot listen on {host}:{port}: {error}"
        ) from error


def _protocol_class(connections: Connections) -> type[H11Protocol]:
    """The h11 protocol of uvicorn, registering each connection so that drop_next can close it.

    h11 always, rather than httptools when it happens to be installed, so that the fake
    behaves the same on every machine.
    """

    class _Protocol(H11Protocol):
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
            # asyncio's stream servers always pass a Transport; H11Protocol narrows the
            # parameter to it, which a type checker rightly refuses in an override.
            super().connection_made(cast("asyncio.Transport", transport))
            connections.opened(self.client, transport)

        def connection_lost(self, exc: Exception | None) -> None:
            connections.closed(self.client)
            super().connection_lost(exc)

    return _Protocol


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


@attrs.frozen
class _Running:
    """A started server and the handles needed to stop it."""

    server: FakeServer
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    layer: IngestLayer
    connections: Connections
    port: int

    def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the server's loop, unless the loop is already gone."""
        with contextlib.suppress(RuntimeError):  # closed: the thread is ending anyway
            self.loop.call_soon_threadsafe(function)

    def release_for_stop(self) -> None:
        """On the loop: end the delays of requests held by delay_next; they are dropped."""
        self.layer.release_delayed(stopping=True)

    def release_for_reset(self) -> None:
        """On the loop: end the delays of the previous test's requests; they are dropped."""
        self.layer.release_delayed(stopping=False)

    def force(self) -> None:
        """On the loop: skip uvicorn's waiting, and close every client connection."""
        self.server.force_exit = True
        self.connections.close_all()

    def stop(self, timeout: float) -> None:
        """Ask uvicorn to exit; after a grace, force it; RuntimeError if even that fails."""
        deadline = time.monotonic() + timeout
        # Requests held by delay_next would keep uvicorn waiting: they are dropped at once.
        self.call(self.release_for_stop)
        self.server.should_exit = True
        self.thread.join(min(STOP_GRACE_S, timeout))
        if self.thread.is_alive():
            # Something still holds uvicorn (a client that sent half a request, say).
            self.call(self.force)
            self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            raise RuntimeError(f"the fake ingest server did not stop within {timeout:g} s")


class FakeIngest:
    """A fake BackupMonitor ingest endpoint: bmserver's own app on a real loopback socket.

    Point the code under test at :attr:`url` (or give a subprocess :attr:`env`), then look at
    what arrived (:attr:`backups`, :attr:`notifications`, :attr:`requests`), assert on it with
    readable failures (:meth:`assert_backup`, ...), plan faults for retry tests
    (:meth:`fail_next`, :meth:`throttle_next`, :meth:`delay_next`, :meth:`drop_next`) and drive
    the rate limiter with :attr:`clock`::

        with FakeIngest.running() as fake:
            subprocess.run(["./report-backup.sh"], env={**os.environ, **fake.env}, check=True)
            fake.assert_backup(device_name="srv01", status="Success")

    ``api_key`` is the default key (scopes ``ingest`` and ``read``), a fresh random one if
    None; ``rate_policy`` the limiter's policy, bmserver's default (a burst of 60, one more
    per second) if None; ``port`` 0 picks a free port.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        rate_policy: bmcore.RatePolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._host = host
        self._port = port
        self._api_key = (
            bmcore.generate_api_key() if api_key is None else bmcore.check_api_key_format(api_key)
        )
        self._initial_policy = DEFAULT_RATE_POLICY if rate_policy is None else rate_policy
        self._policy = self._initial_policy
        # Guards the fields below against concurrent start/stop/reset from test threads; the
        # server thread only reads the references (swapping one is atomic).
        self._lock = threading.RLock()
        self._store = MemoryStore()
        self._journal = Journal()
        self._plan = FaultPlan()
        self._keys: list[str] = []
        self._clock = ManualClock(datetime.now(UTC))
        # None until a request needs it: see _current_app. start() builds it.
        self._app: ASGIApp | None = None
        self._running: _Running | None = None
        self._issue(self._api_key, account="default", scopes=DEFAULT_SCOPES)

    def __repr__(self) -> str:
        where = self.url if self._running is not None else "not running"
        return f"<FakeIngest {where} api_key={redact_key(self._api_key)}>"

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a daemon thread; return once listening, RuntimeError if it cannot.

        The clock starts at the real current time.
        """
        with self._lock:
            if self._running is not None:
                raise RuntimeError(f"the fake ingest endpoint already runs at {self.url}")
            sock = _listen(self._host, self._port)
            port = int(sock.getsockname()[1])
            self._clock = ManualClock(datetime.now(UTC))
            self._app = self._new_app()
            connections = Connections()
            layer = IngestLayer(
                # Read per request: reset() and set_rate_policy() swap these.
                app=self._current_app,
                plan=self._plan,
                journal=self._journal,
                connections=connections,
                policy=self._current_policy,
                now=self._now,
            )
            config = uvicorn.Config(
                layer,
                http=_protocol_class(connections),
                ws="none",  # nothing to upgrade to; and no websockets library to import
                loop="asyncio",
                # create_app's lifespan only opens and closes the store, and a MemoryStore
                # needs neither; without it, reset() can swap in a fresh app at any time.
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
                name=f"bm-fake-ingest:{port}",
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
            self._running = _Running(
                server=server,
                thread=thread,
                loop=server.event_loop,
                layer=layer,
                connections=connections,
                port=port,
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, within ``timeout`` whatever the clients do; RuntimeError if not.

        In-flight requests get about a second to finish; then every connection is closed
        (requests held by ``delay_next`` at once). Does nothing when not running.
        """
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            running.stop(timeout)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        *,
        api_key: str | None = None,
        rate_policy: bmcore.RatePolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> Generator[FakeIngest]:
        """``with FakeIngest.running() as fake:`` starts a fake, and stops it on the way out."""
        fake = cls(api_key=api_key, rate_policy=rate_policy, host=host, port=port)
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()

    def reset(self, *, now: datetime | None = None) -> None:
        """Start afresh, as before each test; the default key stays valid.

        Forgets the entries, the journal, planned faults, rate-limit and lock-out state,
        extra keys and a rate policy set since creation. The clock restarts at ``now``, by
        default the real current time.
        """
        start = datetime.now(UTC) if now is None else now
        with self._lock:
            clock = ManualClock(start)  # ValueError for a naive datetime, before any change
            self._journal.reset()
            self._plan.clear()
            self._store.clear()
            self._keys = []
            self._issue(self._api_key, account="default", scopes=DEFAULT_SCOPES)
            self._policy = self._initial_policy
            self._clock = clock
            self._app = None
            if self._running is not None:
                self._running.call(self._running.release_for_reset)

    def _new_app(self) -> ASGIApp:
        # A new app comes with a new limiter and a new lock-out table for failed keys, which
        # must not carry over from one test to the next.
        settings = Settings(rate_policy=self._policy)
        return create_app(
            settings,
            store=self._store,
            limiter=MemoryLimiter(self._policy),
            clock=self._clock,
        )

    def _current_app(self) -> ASGIApp:
        """The app for a request that arrives now, built by the first request that needs it.

        reset() and set_rate_policy() only drop the app, and the bm_fake_ingest fixture calls
        both before every test: building bmserver's app (its routes, its OpenAPI document) was
        most of the fixture's cost, twice over. The app captures the policy and the clock when
        it is built, which is the same as when they were set: only reset() and start() replace
        the clock, and both also drop or rebuild the app.
        """
        app = self._app
        if app is None:
            with self._lock:  # against a reset() in between; held for a build at most
                app = self._app
                if app is None:
                    app = self._app = self._new_app()
        return app

    def _current_policy(self) -> bmcore.RatePolicy:
        return self._policy

    def _now(self) -> datetime:
        return self._clock.now()

    def _require_running(self) -> _Running:
        running = self._running
        if running is None:
            raise RuntimeError("the fake ingest endpoint is not running; call start() first")
        return running

    # --- where and how to reach it ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:41234``."""
        return f"http://{_url_host(self._host)}:{self._require_running().port}"

    @property
    def backup_url(self) -> str:
        """The URL to POST backup results to."""
        return self.url + BACKUP_PATH

    @property
    def notification_url(self) -> str:
        """The URL to POST notifications to."""
        return self.url + NOTIFICATION_PATH

    @property
    def api_key(self) -> str:
        """The default key (scopes ``ingest`` and ``read``), valid across resets."""
        return self._api_key

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a subprocess: merge with os.environ.

        ``NO_PROXY`` keeps a proxy configured on the machine from intercepting loopback.
        """
        no_proxy: list[str] = list(_NO_PROXY)
        if self._host not in no_proxy:
            no_proxy.append(self._host)
        return {
            "BM_INGEST_URL": self.url,
            "BM_INGEST_BACKUP_URL": self.backup_url,
            "BM_INGEST_NOTIFICATION_URL": self.notification_url,
            "BM_API_KEY": self._api_key,
            "NO_PROXY": ",".join(no_proxy),
            "no_proxy": ",".join(no_proxy),
        }

    @property
    def clock(self) -> ManualClock:
        """The server's clock: real time at start() and reset(), then only clock.advance()."""
        return self._clock

    # --- configuration ------------------------------------------------------------------------

    def add_api_key(
        self,
        key: str | None = None,
        *,
        account: str = "default",
        scopes: Iterable[str] = DEFAULT_SCOPES,
    ) -> str:
        """Register another key (a fresh random one if None) until the next reset; returns it."""
        chosen = bmcore.generate_api_key() if key is None else bmcore.check_api_key_format(key)
        with self._lock:
            self._issue(chosen, account=account, scopes=scopes)
        return chosen

    def _issue(self, key: str, *, account: str, scopes: Iterable[str]) -> None:
        parsed: set[Scope] = set()
        for name in scopes:
            try:
                parsed.add(Scope(name))
            except ValueError:
                known = ", ".join(scope.value for scope in Scope)
                raise ValueError(f"unknown scope {name!r}; the scopes are {known}") from None
        try:
            _run_sync(
                issue_api_key(
                    self._store, account=account, scopes=parsed, now=self._clock.now(), key=key
                )
            )
        except StoreError:
            raise ValueError(
                f"the key {redact_key(key)} is already registered with the fake"
            ) from None
        self._keys.append(key)

    def set_rate_policy(self, policy: bmcore.RatePolicy) -> None:
        """Limit each key by ``policy`` from the next request on, with full buckets.

        reset() restores the policy the fake was created with.
        """
        with self._lock:
            self._policy = policy
            self._app = None

    # --- what arrived -------------------------------------------------------------------------

    @property
    def backups(self) -> list[ReceivedBackup]:
        """The accepted (201) backups, in arrival order; repeats answered 200 are not new."""
        return self._journal.backups()

    @property
    def notifications(self) -> list[ReceivedNotification]:
        """The accepted (201) notifications, in arrival order."""
        return self._journal.notifications()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request, in arrival order, rejected, faulted and dropped ones included."""
        return self._journal.requests()

    @property
    def rejections(self) -> list[RecordedRequest]:
        """The requests bmserver answered 4xx (planned fail/throttle answers are not)."""
        return [request for request in self._journal.requests() if request.rejected]

    @property
    def pending_faults(self) -> list[str]:
        """The planned faults not applied yet, in order, e.g. ``["fail 503", "drop"]``."""
        return self._plan.pending()

    # --- assertions ---------------------------------------------------------------------------

    def assert_backup(self, **fields: object) -> ReceivedBackup:
        """The first backup that arrived with these field values; else AssertionError.

        Fields by bmcore attribute (``device_name``, ``job_name``, ``status``, ``message``,
        ``sender``, ``timestamp``, ``outcome``) or wire name (``deviceName``, ...). A
        timestamp may be an ISO 8601 string, compared as an instant; ``outcome`` a string.
        The error lists what did arrive, closest first, marking each field.
        """
        return find_match(BACKUPS, self.backups, self.requests, fields, self._known_keys())

    def assert_notification(self, **fields: object) -> ReceivedNotification:
        """The first notification with these field values; else AssertionError.

        Fields as in :meth:`assert_backup`, with ``severity`` and ``type`` instead of
        ``status`` and ``outcome``.
        """
        return find_match(
            NOTIFICATIONS, self.notifications, self.requests, fields, self._known_keys()
        )

    def assert_no_rejections(self) -> None:
        """AssertionError listing each rejected request and its problem, if there was any."""
        report = self.rejection_report()
        if report:
            raise AssertionError(report)

    def rejection_report(self) -> str:
        """Each rejected request with its status, problem and field errors; "" when none."""
        return rejection_report(self.requests, self._known_keys())

    def _known_keys(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    @overload
    def wait_for(
        self, count: int, kind: Literal["backup"] = ..., timeout: float = ...
    ) -> list[ReceivedBackup]: ...
    @overload
    def wait_for(
        self, count: int, kind: Literal["notification"], timeout: float = ...
    ) -> list[ReceivedNotification]: ...
    @overload
    def wait_for(
        self, count: int, kind: Literal["request"], timeout: float = ...
    ) -> list[RecordedRequest]: ...
    def wait_for(
        self, count: int, kind: Kind = "backup", timeout: float = 5.0
    ) -> list[ReceivedBackup] | list[ReceivedNotification] | list[RecordedRequest]:
        """Block until ``count`` records of ``kind`` have arrived; return them all.

        ``kind`` is "backup", "notification" or "request". Waits on a condition, woken by
        each arrival; after ``timeout`` seconds raises AssertionError saying what did arrive.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if count < 0:
            raise ValueError(f"count must be 0 or more, got {count}")
        self._require_running()
        arrived = self._journal.wait_for(count, kind, timeout)
        if arrived is None:
            records = self._journal.records(kind)
            raise AssertionError(
                wait_failure(kind, count, timeout, records, self.requests, self._known_keys())
            )
        return arrived

    # --- fault plans --------------------------------------------------------------------------

    def fail_next(self, status: int = 500, *, times: int = 1) -> None:
        """The next ``times`` ingest requests get ``status`` with a problem+json body."""
        self._plan.add(Fail(status), times)

    def throttle_next(self, retry_after: int = 1, *, times: int = 1) -> None:
        """The next ``times`` ingest requests get 429 with Retry-After and RateLimit headers."""
        self._plan.add(Throttle(retry_after), times)

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` ingest requests wait ``seconds`` before being handled.

        The wait is on the server's loop, so other requests are served meanwhile. A request
        still waiting at reset() or stop() is dropped (its connection closed, unanswered).
        """
        self._plan.add(Delay(seconds), times)

    def drop_next(self, *, times: int = 1) -> None:
        """The next ``times`` ingest requests see their connection closed without an answer."""
        self._plan.add(Drop(), times)
