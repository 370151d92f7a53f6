"""FakeIngest, the user-facing fake: where to reach it, what arrived, assertions, fault plans.

Fidelity by construction: the fake serves ``bmserver.create_app`` with a MemoryStore, a
MemoryLimiter and a ManualClock, wrapped in :class:`~pytest_bm._layer.IngestLayer` (planned
faults, the journal). How it is served (a socket, uvicorn in a daemon thread, bmserver's
protocol guard, a bounded stop) is :mod:`pytest_bm._server`; the test talks to it over HTTP
like any client would.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterable
from datetime import UTC, datetime
from typing import Final, Literal, overload

import attrs
from starlette.types import ASGIApp

import bmcore
from bmserver import (
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Scope,
    Settings,
    StoreError,
    create_app,
    issue_api_key,
    run_unsuspended,
)
from pytest_bm._assertions import (
    BACKUPS,
    NOTIFICATIONS,
    find_match,
    rejection_report,
    wait_failure,
)
from pytest_bm._faults import Delay, Drop, Fail, FaultPlan, Throttle
from pytest_bm._jobs import JobNames, job_health, set_job_schedule
from pytest_bm._layer import IngestLayer
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
from pytest_bm._server import Connections, ServerThread, url_host

__all__ = ["FakeIngest"]

#: The scopes of the default key and of ``add_api_key`` unless told otherwise.
DEFAULT_SCOPES: Final = ("ingest", "read")
_NO_PROXY: Final = ("127.0.0.1", "localhost")


@attrs.frozen
class _Running:
    """A started server and the layer in front of its app."""

    server: ServerThread
    layer: IngestLayer

    def release_for_stop(self) -> None:
        """On the loop: end the delays of requests held by delay_next; they are dropped."""
        self.layer.release_delayed(stopping=True)

    def release_for_reset(self) -> None:
        """On the loop: end the delays of the previous test's requests; they are dropped."""
        self.layer.release_delayed(stopping=False)


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
    per second) if None; ``settings`` bmserver's :class:`~bmserver.Settings` for everything
    else (body size and time limits, read quotas), its defaults if None; ``port`` 0 picks a
    free port.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        rate_policy: bmcore.RatePolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: Settings | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._api_key = (
            bmcore.generate_api_key() if api_key is None else bmcore.check_api_key_format(api_key)
        )
        initial = Settings() if settings is None else settings
        if rate_policy is not None:
            initial = attrs.evolve(initial, rate_policy=rate_policy)
        self._initial_settings = initial
        self._settings = initial
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
            layers: list[IngestLayer] = []

            def serve(connections: Connections) -> ASGIApp:
                # Called once the socket listens: a port in use leaves the fake as it was.
                self._clock = ManualClock(datetime.now(UTC))
                self._app = self._new_app()
                layer = IngestLayer(
                    # Read per request: reset() and set_rate_policy() swap these.
                    app=self._current_app,
                    plan=self._plan,
                    journal=self._journal,
                    connections=connections,
                    policy=self._current_policy,
                )
                layers.append(layer)
                return layer

            server = ServerThread.start(serve, host=self._host, port=self._port, timeout=timeout)
            self._running = _Running(server=server, layer=layers[0])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, within ``timeout`` whatever the clients do; RuntimeError if not.

        In-flight requests get about a second to finish; then every connection is closed
        (requests held by ``delay_next`` at once). Does nothing when not running.
        """
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            # Requests held by delay_next would keep uvicorn waiting: they are dropped at once.
            running.server.stop(timeout, first=running.release_for_stop)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        *,
        api_key: str | None = None,
        rate_policy: bmcore.RatePolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: Settings | None = None,
    ) -> Generator[FakeIngest]:
        """``with FakeIngest.running() as fake:`` starts a fake, and stops it on the way out."""
        fake = cls(
            api_key=api_key, rate_policy=rate_policy, host=host, port=port, settings=settings
        )
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
            self._settings = self._initial_settings
            self._clock = clock
            self._app = None
            if self._running is not None:
                self._running.server.call(self._running.release_for_reset)

    def _new_app(self) -> ASGIApp:
        # A new app comes with a new limiter and a new lock-out table for failed keys, which
        # must not carry over from one test to the next.
        return create_app(
            self._settings,
            store=self._store,
            limiter=MemoryLimiter(self._settings.rate_policy),
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
        return self._settings.rate_policy

    def _require_running(self) -> _Running:
        running = self._running
        if running is None:
            raise RuntimeError("the fake ingest endpoint is not running; call start() first")
        return running

    # --- where and how to reach it ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:41234``."""
        return f"http://{url_host(self._host)}:{self._require_running().server.port}"

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
            # MemoryStore's methods never suspend (each works under a threading.Lock): the key
            # is issued here, in the caller's thread, before start() or while serving.
            run_unsuspended(
                issue_api_key(
                    self._store, account=account, scopes=parsed, now=self._clock.now(), key=key
                ),
                refusal="a MemoryStore call suspended, which its contract rules out",
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
            self._settings = attrs.evolve(self._settings, rate_policy=policy)
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
        return [fault.label for fault in self._plan.pending()]

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

    # --- job health ---------------------------------------------------------------------------

    def set_schedule(
        self,
        *,
        device: str,
        job: str,
        sender: str = bmcore.DEFAULT_SENDER,
        account: str = "default",
        **schedule: str,
    ) -> dict[str, str]:
        """Give a job that has reported a schedule, as ``PUT /api/jobs/{id}/schedule`` would.

        ``schedule`` is ``every="24h"`` or ``cron="30 2 * * *"`` (with ``timezone``), and
        ``grace``; returns its canonical form. :class:`bmcore.PayloadError` names a bad field;
        LookupError says which jobs exist when none has these names.
        """
        where = JobNames(account, device, job, sender)
        with self._lock:
            return set_job_schedule(self._store, where, schedule, now=self._clock.now())

    def job_health(
        self,
        *,
        device: str,
        job: str,
        sender: str = bmcore.DEFAULT_SENDER,
        account: str = "default",
    ) -> bmcore.JobHealth:
        """The job's health now, by the fake's :attr:`clock`, as ``GET /api/jobs/{id}`` says it."""
        where = JobNames(account, device, job, sender)
        with self._lock:
            return job_health(self._store, where, now=self._clock.now())

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
