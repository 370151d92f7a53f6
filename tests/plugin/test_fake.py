"""FakeIngest over a real socket: life cycle, records, faults, rate limits and assertions."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from _harness import Client, assert_problem, backup, notification

import bmcore
from bmserver import Problem
from pytest_bm import Delay, Drop, Fail, FakeIngest, Interrupted, RecordedRequest, Throttle
from pytest_bm._server import FakeServer

BACKUP = "/api/ingest/backup"
NOTIFICATION = "/api/ingest/notification"
#: Bounds every wait in these tests; none is expected to come near it.
PATIENCE_S = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[FakeIngest]:
    """One fake for the module, as the plugin will have one per session."""
    with FakeIngest.running() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeIngest) -> FakeIngest:
    """The module's fake, reset as before each test."""
    server.reset()
    return server


def client_of(fake: FakeIngest, api_key: str | None = None) -> Client:
    """An HTTP client of ``fake``, sending its default key unless told otherwise."""
    url = urlsplit(fake.url)
    assert url.hostname is not None
    assert url.port is not None
    return Client(url.hostname, url.port, api_key or fake.api_key)


@pytest.fixture
def client(fake: FakeIngest) -> Client:
    """An HTTP client of the fake, with its default key."""
    return client_of(fake)


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait, bounded, for a state the fake has no event for (a fault being taken)."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)


def raw_connection(fake: FakeIngest) -> socket.socket:
    """A plain socket to the fake, with a bounded read timeout."""
    port = urlsplit(fake.url).port
    assert port is not None
    connection = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    connection.settimeout(PATIENCE_S)
    return connection


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


# --- life cycle -------------------------------------------------------------------------------


def test_running_serves_on_a_free_loopback_port_and_stops() -> None:
    """running() listens before it yields, on 127.0.0.1 and a free port; it stops on exit."""
    with FakeIngest.running() as fake:
        url = urlsplit(fake.url)
        assert (url.scheme, url.hostname) == ("http", "127.0.0.1")
        assert url.port
        assert client_of(fake).get("/healthz").status == 200
        assert fake.backup_url == fake.url + BACKUP
        assert fake.notification_url == fake.url + NOTIFICATION
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", url.port), timeout=PATIENCE_S).close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


def test_start_twice_is_refused_and_stop_twice_is_harmless(server: FakeIngest) -> None:
    """A running fake refuses a second start(); stop() on a stopped fake does nothing."""
    with pytest.raises(RuntimeError, match=r"already runs at http://127\.0\.0\.1:"):
        server.start()
    stopped = FakeIngest()
    stopped.stop()
    stopped.start()
    stopped.stop()
    stopped.stop()


def test_a_stopped_fake_starts_again_with_what_it_knew() -> None:
    """stop() then start() serves again: the journal and the default key carry over."""
    fake = FakeIngest()
    fake.start()
    try:
        assert client_of(fake).post(BACKUP, backup()).status == 201
        fake.stop()
        fake.start()
        assert client_of(fake).post(BACKUP, backup(jobName="Other")).status == 201
        assert [b.entry.job_name for b in fake.backups] == ["Nightly Full Backup", "Other"]
    finally:
        fake.stop()


def test_start_reports_a_port_in_use() -> None:
    """A port that is taken gives a RuntimeError naming the address, not a hang."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            FakeIngest(port=port).start()


def test_start_reports_a_server_that_fails_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """When uvicorn fails during start-up, start() raises with the cause."""

    async def fail(_: FakeServer, **__: object) -> None:
        raise OSError("no luck")

    monkeypatch.setattr(FakeServer, "startup", fail)
    with pytest.raises(RuntimeError, match=r"failed to start: OSError\('no luck'\)"):
        FakeIngest().start()


def test_start_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that is not listening within the timeout is a RuntimeError, not a hang."""
    gate = threading.Event()
    original = FakeServer.startup

    async def held(self: FakeServer, sockets: list[socket.socket] | None = None) -> None:
        await asyncio.to_thread(gate.wait, PATIENCE_S)
        await original(self, sockets)

    monkeypatch.setattr(FakeServer, "startup", held)
    try:
        with pytest.raises(RuntimeError, match=r"did not start within 0\.05 s"):
            FakeIngest().start(timeout=0.05)
    finally:
        gate.set()  # the abandoned server then starts, sees it should exit, and ends


def test_stop_is_bounded_with_an_idle_keep_alive_connection() -> None:
    """A client that keeps its connection open after an answer does not hold up stop()."""
    fake = FakeIngest()
    fake.start()
    with raw_connection(fake) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: fake\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            chunk = connection.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        fake.stop()
        assert read_until_closed(connection) == b""


def test_stop_is_bounded_with_a_request_waiting_for_its_body() -> None:
    """A client that never sends the body it announced cannot hang stop()."""
    fake = FakeIngest()
    fake.start()
    with raw_connection(fake) as connection:
        connection.sendall(
            b"POST /api/ingest/backup HTTP/1.1\r\nHost: fake\r\nContent-Length: 100\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n"
        )
        # "100 Continue" is sent when the app starts reading the body: the request is in.
        assert connection.recv(65536).startswith(b"HTTP/1.1 100 ")
        fake.stop(timeout=PATIENCE_S)
        assert read_until_closed(connection) == b""
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


def test_stop_drops_a_request_held_by_delay_next() -> None:
    """A request in a long delay is dropped at stop(): no answer, and stop() returns."""
    fake = FakeIngest()
    fake.start()
    fake.delay_next(3600)
    with raw_connection(fake) as connection:
        connection.sendall(
            b"POST /api/ingest/backup HTTP/1.1\r\nHost: fake\r\nContent-Length: 2\r\n\r\n{}"
        )
        until(lambda: not fake.pending_faults, "the delay is taken")
        fake.stop(timeout=PATIENCE_S)
        assert read_until_closed(connection) == b""
    [request] = fake.requests
    assert (request.status, request.fault) == (None, "delay 3600s, dropped at stop")
    assert request.applied_fault == Interrupted(Delay(3600), by="stop")
    assert not request.answered_by_fault


def test_repr_shows_the_url_and_only_the_key_prefix(fake: FakeIngest) -> None:
    """repr() is safe to log: the URL and the key's display prefix, never the key."""
    shown = repr(fake)
    assert fake.url in shown
    assert bmcore.display_prefix(fake.api_key) + "…" in shown
    assert fake.api_key not in shown
    assert "not running" in repr(FakeIngest())


# --- reset ------------------------------------------------------------------------------------


def test_reset_forgets_entries_journal_faults_extra_keys_and_policy(
    fake: FakeIngest, client: Client
) -> None:
    """reset() leaves only the default key: no entries, requests, faults, keys or policy."""
    extra = fake.add_api_key()
    fake.set_rate_policy(bmcore.RatePolicy.per_second(1, burst=1))
    assert client.post(BACKUP, backup()).status == 201
    assert client.post(NOTIFICATION, notification()).status == 429
    fake.fail_next(503)
    fake.reset()
    assert (fake.backups, fake.notifications, fake.requests) == ([], [], [])
    assert fake.pending_faults == []
    assert client.get("/api/backups").json["items"] == []
    assert client.post(BACKUP, backup(), key=extra).status == 401
    reply = client.post(BACKUP, backup())
    assert reply.status == 201  # neither the planned fault nor the old bucket
    assert reply.headers["ratelimit-policy"] == '"default";q=60;w=60'


def test_reset_lifts_a_lock_out_from_failed_keys(fake: FakeIngest, client: Client) -> None:
    """Ten failed keys lock the address out; reset() lets the next test start clean."""
    for _ in range(10):
        assert client.post(BACKUP, backup(), key="bm_" + "x" * 43).status == 401
    assert_problem(client.post(BACKUP, backup()), 429, "rate_limited")
    fake.reset()
    assert client.post(BACKUP, backup()).status == 201


def test_reset_rebases_the_clock_at_the_real_time_or_a_given_one(fake: FakeIngest) -> None:
    """The clock restarts at the real time (or ``now``), and only advance() moves it."""
    before = datetime.now(UTC)
    fake.reset()
    after = datetime.now(UTC)
    assert before <= fake.clock.now() <= after
    assert fake.clock.monotonic_ns() == 0
    fixed = datetime(2024, 6, 4, 12, tzinfo=UTC)
    fake.reset(now=fixed)
    fake.clock.advance(90)
    assert fake.clock.now() == fixed + timedelta(seconds=90)
    with pytest.raises(ValueError, match="aware"):
        fake.reset(now=datetime(2024, 6, 4, 12))  # noqa: DTZ001 - the point of the test


def test_reset_drops_a_request_still_held_by_delay_next(fake: FakeIngest, client: Client) -> None:
    """A request delayed past reset() is dropped: nothing of it reaches the next test."""
    fake.delay_next(3600)
    with raw_connection(fake) as connection:
        connection.sendall(
            b"POST /api/ingest/backup HTTP/1.1\r\nHost: fake\r\nContent-Length: "
            + str(len(json.dumps(backup()))).encode()
            + b"\r\nContent-Type: application/json\r\nX-Api-Key: "
            + fake.api_key.encode()
            + b"\r\n\r\n"
            + json.dumps(backup()).encode()
        )
        until(lambda: not fake.pending_faults, "the delay is taken")
        fake.reset()
        assert read_until_closed(connection) == b""
    assert fake.requests == []
    assert client.get("/api/backups").json["items"] == []


# --- reaching it ------------------------------------------------------------------------------


def test_env_lets_a_curl_subprocess_post_past_a_proxy(fake: FakeIngest) -> None:
    """fake.env is all a shell script needs; NO_PROXY keeps a configured proxy out."""
    script = """
        set -eu
        now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        curl -fsS -o /dev/null -X POST "$BM_INGEST_BACKUP_URL" \\
          -H "Content-Type: application/json" -H "X-Api-Key: $BM_API_KEY" \\
          -d '{"deviceName": "srv-curl", "jobName": "Nightly", "timestamp": "'"$now"'",
               "status": "Success", "message": "done"}'
        curl -fsS -o /dev/null -X POST "$BM_INGEST_NOTIFICATION_URL" \\
          -H "Content-Type: application/json" -H "X-Api-Key: $BM_API_KEY" \\
          -d '{"deviceName": "srv-curl", "timestamp": "'"$now"'", "severity": "info",
               "type": "test"}'
        curl -fsS "$BM_INGEST_URL/healthz"
    """
    # A proxy that would refuse every connection: only NO_PROXY gets curl through.
    proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **proxy, **fake.env},
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "ok"}
    fake.assert_backup(device_name="srv-curl", status="Success")
    fake.assert_notification(device_name="srv-curl", type="test")
    assert fake.env == {
        "BM_INGEST_URL": fake.url,
        "BM_INGEST_BACKUP_URL": fake.backup_url,
        "BM_INGEST_NOTIFICATION_URL": fake.notification_url,
        "BM_API_KEY": fake.api_key,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def test_a_chosen_key_and_rate_policy_are_used() -> None:
    """The constructor's key is the default key, and its policy limits each key."""
    key = "bm_" + "k" * 43
    policy = bmcore.RatePolicy.per_second(1, burst=5)
    with FakeIngest.running(api_key=key, rate_policy=policy) as fake:
        assert fake.api_key == key
        reply = client_of(fake, key).post(BACKUP, backup())
        assert reply.status == 201
        assert reply.headers["ratelimit-policy"] == '"default";q=5;w=5'


def test_a_malformed_key_is_refused_at_construction() -> None:
    """A default key bmserver would never accept is refused at once."""
    with pytest.raises(bmcore.ApiKeyFormatError):
        FakeIngest(api_key="secret")


# --- records ----------------------------------------------------------------------------------


def test_a_backup_record_holds_entry_id_time_headers_and_raw_body(
    fake: FakeIngest, client: Client
) -> None:
    """A 201 gives a ReceivedBackup: the decoded entry, the id, receivedAt, headers, body."""
    body = json.dumps(backup()).encode()
    reply = client.request("POST", BACKUP, body, {"X-Trace": "abc"})
    assert reply.status == 201
    [record] = fake.backups
    assert record.entry == bmcore.decode_backup(body, now=fake.clock.now()).value
    assert record.id == reply.json["id"]
    assert record.received_at == fake.clock.now()
    assert record.body == body
    assert record.headers["x-trace"] == "abc"
    assert record.headers["x-api-key"] == bmcore.display_prefix(fake.api_key) + "…"
    assert all(fake.api_key not in value for value in record.headers.values())
    with pytest.raises(TypeError):
        record.headers["x-trace"] = "changed"  # type: ignore[index]


def test_a_gzip_body_is_kept_as_sent_and_decoded(fake: FakeIngest, client: Client) -> None:
    """A gzip-encoded backup is decoded as the server did; its record keeps the raw bytes."""
    raw = gzip.compress(json.dumps(backup(status="Warning")).encode())
    assert client.request("POST", BACKUP, raw, {"Content-Encoding": "gzip"}).status == 201
    [record] = fake.backups
    assert record.body == raw
    assert record.entry.outcome is bmcore.Outcome.WARNING


def test_a_notification_record(fake: FakeIngest, client: Client) -> None:
    """A 201 on the notification path gives a ReceivedNotification."""
    reply = client.post(NOTIFICATION, notification(severity="ERROR"))
    [record] = fake.notifications
    assert record.id == reply.json["id"]
    assert record.notification.severity is bmcore.Severity.ERROR
    assert record.notification.type == "disk_space_low"
    assert fake.backups == []


def test_every_request_is_journaled_and_4xx_are_rejections(
    fake: FakeIngest, client: Client
) -> None:
    """The journal lists every request with its status and problem; rejections only the 4xx."""
    client.get("/healthz")
    client.post(BACKUP, {"deviceName": "srv01"})
    client.post(NOTIFICATION, notification(), key=None)
    client.post(BACKUP, backup())
    assert [(r.method, r.path, r.status) for r in fake.requests] == [
        ("GET", "/healthz", 200),
        ("POST", BACKUP, 400),
        ("POST", NOTIFICATION, 401),
        ("POST", BACKUP, 201),
    ]
    invalid = fake.requests[1]
    assert invalid.body == b'{"deviceName": "srv01"}'
    assert invalid.problem is not None
    assert invalid.problem["code"] == "validation_failed"
    assert {error["field"] for error in invalid.problem["errors"]} >= {"/jobName", "/status"}
    assert fake.requests[0].problem is None
    assert fake.rejections == fake.requests[1:3]


def test_a_repeat_is_a_request_but_not_a_new_backup(fake: FakeIngest, client: Client) -> None:
    """An idempotent repeat (200) is journaled as a request, not as a second backup."""
    first = client.post(BACKUP, backup())
    again = client.post(BACKUP, backup())
    assert (first.status, again.status) == (201, 200)
    assert [record.id for record in fake.backups] == [first.json["id"]]
    assert [request.status for request in fake.requests] == [201, 200]


def test_keys_in_headers_are_redacted_even_malformed_ones(fake: FakeIngest, client: Client) -> None:
    """Any X-Api-Key or Authorization value shows at most a display prefix."""
    other = "bm_" + "Q" * 43
    client.post(BACKUP, backup(), key=other, headers={"Authorization": f"Bearer {other}"})
    client.post(BACKUP, backup(), key="hunter2")
    first, second = fake.requests
    assert first.headers["x-api-key"] == "bm_QQQQQQQQ…"
    assert first.headers["authorization"] == "Bearer bm_QQQQQQQQ…"
    assert second.headers["x-api-key"] == "…"


def test_records_are_copies(fake: FakeIngest, client: Client) -> None:
    """The lists are snapshots: changing one changes nothing in the fake."""
    client.post(BACKUP, backup())
    fake.backups.clear()
    fake.requests.clear()
    assert len(fake.backups) == len(fake.requests) == 1


# --- the contract, through the fake -----------------------------------------------------------


def test_the_servers_contract_holds_through_the_fake(client: Client) -> None:
    """201 created, 200 repeat, 409 conflict, 400 invalid, 401 without or with a bad key."""
    created = client.post(BACKUP, backup())
    assert created.status == 201
    assert created.headers["location"] == f"/api/backups/{created.json['id']}"
    repeated = client.post(BACKUP, backup())
    assert (repeated.status, repeated.json["duplicate"]) == (200, True)
    assert repeated.json["id"] == created.json["id"]
    conflict = assert_problem(client.post(BACKUP, backup(message="other")), 409, "conflict")
    assert conflict["existingId"] == created.json["id"]
    invalid = assert_problem(
        client.post(BACKUP, backup(timestamp="2024-06-04T14:00:00")), 400, "validation_failed"
    )
    assert invalid["errors"][0]["code"] == "missing_utc_offset"
    assert_problem(client.post(BACKUP, backup(), key=None), 401, "missing_api_key")
    assert_problem(client.post(BACKUP, backup(), key="bm_" + "z" * 43), 401, "invalid_api_key")
    assert client.get(f"/api/backups/{created.json['id']}").status == 200


def test_add_api_key_with_scopes_and_accounts(fake: FakeIngest, client: Client) -> None:
    """Extra keys work with their scopes and account; bad scopes and repeats are refused."""
    reader = fake.add_api_key(scopes=["read"])
    assert_problem(client.post(BACKUP, backup(), key=reader), 403, "insufficient_scope")
    chosen = fake.add_api_key("bm_" + "c" * 43, account="acme")
    assert chosen == "bm_" + "c" * 43
    assert client.post(BACKUP, backup(), key=chosen).status == 201
    assert client.get("/api/backups").json["items"] == []  # another account's entry
    with pytest.raises(ValueError, match="unknown scope 'write'; the scopes are ingest, read"):
        fake.add_api_key(scopes=["write"])
    with pytest.raises(ValueError, match=r"bm_cccccccc… is already registered"):
        fake.add_api_key(chosen)
    with pytest.raises(bmcore.ApiKeyFormatError):
        fake.add_api_key("hunter2")


# --- faults -----------------------------------------------------------------------------------


def test_fail_next_answers_the_planned_status_and_stores_nothing(
    fake: FakeIngest, client: Client
) -> None:
    """fail_next(503): a 503 problem, nothing stored, journaled; the next request is normal."""
    fake.fail_next(503)
    failed = assert_problem(client.post(BACKUP, backup()), 503, "service_unavailable")
    assert "fail_next(503)" in failed["detail"]
    assert fake.backups == []
    assert client.get("/api/backups").json["items"] == []
    assert client.post(BACKUP, backup()).status == 201
    assert [(r.status, r.fault) for r in fake.requests[:1]] == [(503, "fail 503")]
    fake.fail_next(404)
    assert_problem(client.post(NOTIFICATION, notification()), 404, "not_found")
    fake.fail_next(418)
    assert_problem(client.post(NOTIFICATION, notification()), 418, "planned_failure")
    assert fake.rejections == []  # planned answers are not rejections


def test_faults_apply_in_planned_order_and_times(fake: FakeIngest, client: Client) -> None:
    """Faults apply first planned first, one per ingest request, each ``times`` times."""
    fake.fail_next(500, times=2)
    fake.drop_next()
    fake.throttle_next(3)
    assert fake.pending_faults == ["fail 500", "fail 500", "drop", "throttle retry_after=3"]
    statuses: list[int | None] = []
    for _ in range(5):
        try:
            statuses.append(client.post(BACKUP, backup()).status)
        except http.client.RemoteDisconnected:
            statuses.append(None)
    assert statuses == [500, 500, None, 429, 201]
    assert [r.fault for r in fake.requests] == [
        "fail 500",
        "fail 500",
        "drop",
        "throttle retry_after=3",
        None,
    ]
    assert fake.pending_faults == []


def test_faults_apply_to_the_ingest_paths_only(fake: FakeIngest, client: Client) -> None:
    """Reads and health checks pass by a planned fault; the next ingest request takes it."""
    fake.fail_next(500)
    assert client.get("/healthz").status == 200
    assert client.get("/api/backups").status == 200
    assert fake.pending_faults == ["fail 500"]
    assert client.post(NOTIFICATION, notification()).status == 500


def test_throttle_next_sends_retry_after_and_ratelimit_headers(
    fake: FakeIngest, client: Client
) -> None:
    """throttle_next(7): 429, Retry-After 7 and the headers bmserver sends when limiting."""
    fake.throttle_next(7)
    reply = client.post(BACKUP, backup())
    problem = assert_problem(reply, 429, "rate_limited")
    assert problem["detail"] == "this key sent more than its quota of 60 requests; retry after 7 s"
    assert reply.headers["retry-after"] == "7"
    assert reply.headers["ratelimit-policy"] == '"default";q=60;w=60'
    assert reply.headers["ratelimit"] == '"default";r=0;t=60'
    assert fake.rejections == []


def test_drop_next_closes_the_connection_without_an_answer(
    fake: FakeIngest, client: Client
) -> None:
    """drop_next(): the client sees the connection closed with no answer at all."""
    fake.drop_next()
    with pytest.raises(http.client.RemoteDisconnected):
        client.post(BACKUP, backup())
    [request] = fake.requests
    assert (request.status, request.fault, request.problem) == (None, "drop", None)
    assert json.loads(request.body) == backup()
    assert fake.backups == []
    assert client.post(BACKUP, backup()).status == 201


def test_drop_next_is_an_empty_reply_to_curl(fake: FakeIngest) -> None:
    """A dropped request is what curl calls "Empty reply from server" (exit status 52)."""
    fake.drop_next()
    script = 'curl -sS -X POST "$BM_INGEST_BACKUP_URL" -H "X-Api-Key: $BM_API_KEY" -d "{}"'
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **fake.env},
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        check=False,
    )
    assert result.returncode == 52, result.stderr
    assert "Empty reply from server" in result.stderr


def test_delay_next_answers_normally_after_the_delay(fake: FakeIngest, client: Client) -> None:
    """delay_next(): the request is then handled as usual, and journaled with its delay."""
    fake.delay_next(0.05)
    assert client.post(BACKUP, backup()).status == 201
    assert [(r.status, r.fault) for r in fake.requests] == [(201, "delay 0.05s")]
    assert len(fake.backups) == 1


def test_delay_next_makes_a_client_time_out(fake: FakeIngest) -> None:
    """A client with a short timeout gives up on a request held by delay_next."""
    fake.delay_next(3600)
    port = urlsplit(fake.url).port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.2)
    try:
        connection.request("POST", BACKUP, json.dumps(backup()), {"X-Api-Key": fake.api_key})
        with pytest.raises(TimeoutError):
            connection.getresponse()
    finally:
        connection.close()


def test_a_delayed_rejection_is_still_a_rejection(fake: FakeIngest, client: Client) -> None:
    """A delayed request is answered by the app: its 400 counts as a rejection."""
    fake.delay_next(0)
    assert client.post(BACKUP, {"deviceName": "srv01"}).status == 400
    assert [r.fault for r in fake.rejections] == ["delay 0s"]


def test_records_name_the_applied_fault_as_a_typed_value(fake: FakeIngest, client: Client) -> None:
    """RecordedRequest.applied_fault is the planned fault itself; fault is its label."""
    fake.fail_next(503)
    fake.throttle_next(2)
    fake.delay_next(0)
    fake.drop_next()
    for _ in range(3):
        client.post(BACKUP, backup())
    with pytest.raises(http.client.RemoteDisconnected):
        client.post(BACKUP, backup())
    applied = [request.applied_fault for request in fake.requests]
    assert applied == [Fail(503), Throttle(2), Delay(0), Drop()]
    assert [request.fault for request in fake.requests] == [
        fault.label for fault in (Fail(503), Throttle(2), Delay(0), Drop())
    ]
    assert [request.answered_by_fault for request in fake.requests] == [True, True, False, True]


_FAILING = sorted({p.status for p in Problem if p.status is not None and p.status >= 400})


@pytest.mark.parametrize("status", [*_FAILING, 418])
def test_fail_next_answers_the_problem_bmserver_answers_that_status_with(
    fake: FakeIngest, client: Client, status: int
) -> None:
    """A planned status gets the code of bmserver's table for it, else planned_failure."""
    fake.fail_next(status)
    expected = Problem.for_status(status) or Problem.PLANNED_FAILURE
    problem = assert_problem(client.post(BACKUP, backup()), status, expected.code)
    assert problem["title"] == expected.title


def test_the_journal_takes_the_entry_the_app_decoded_without_decoding_again(
    fake: FakeIngest, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each accepted body is decoded once, by bmcore in the app; the record holds that result."""
    calls: list[bytes] = []
    decode = bmcore.decode_backup

    def counted(data: bytes, *, now: datetime) -> bmcore.Decoded[bmcore.BackupEntry]:
        calls.append(data)
        return decode(data, now=now)

    monkeypatch.setattr(bmcore, "decode_backup", counted)
    raw = gzip.compress(json.dumps(backup()).encode())
    assert client.request("POST", BACKUP, raw, {"Content-Encoding": "gzip"}).status == 201
    assert calls == [json.dumps(backup()).encode()]  # the app's, of the inflated body
    [record] = fake.backups
    assert record.entry == decode(calls[0], now=fake.clock.now()).value
    assert record.body == raw


IMPOSSIBLE_FAULTS: list[tuple[Callable[[FakeIngest], None], str]] = [
    (lambda fake: fake.fail_next(200), "error status from 400 to 599, got 200"),
    (lambda fake: fake.fail_next(times=0), "times must be at least 1, got 0"),
    (lambda fake: fake.throttle_next(-1), "retry_after must be 0 or more"),
    (lambda fake: fake.delay_next(-0.5), "a delay must be 0 or more seconds"),
    (lambda fake: fake.delay_next(float("nan")), "a delay must be 0 or more seconds"),
]


@pytest.mark.parametrize(("plan", "message"), IMPOSSIBLE_FAULTS)
def test_impossible_faults_are_refused(
    fake: FakeIngest, plan: Callable[[FakeIngest], None], message: str
) -> None:
    """A fault that makes no sense is a ValueError saying what to pass; nothing is planned."""
    with pytest.raises(ValueError, match=message):
        plan(fake)
    assert fake.pending_faults == []


# --- the real rate limit, on the fake's clock -------------------------------------------------


def test_the_rate_limit_follows_the_clock_not_the_wall(fake: FakeIngest, client: Client) -> None:
    """Past the burst: 429 with Retry-After; after clock.advance(), 201 again."""
    fake.set_rate_policy(bmcore.RatePolicy.per_second(1, burst=2))
    statuses = [client.post(NOTIFICATION, notification(type=f"t{n}")).status for n in range(3)]
    assert statuses == [201, 201, 429]
    limited = fake.requests[-1]
    assert limited.problem is not None
    assert limited.problem["code"] == "rate_limited"
    assert fake.rejections == [limited]  # the real limiter's 429 is a rejection
    fake.clock.advance(0.5)
    assert client.post(NOTIFICATION, notification(type="early")).status == 429
    fake.clock.advance(0.5)
    reply = client.post(NOTIFICATION, notification(type="later"))
    assert reply.status == 201
    assert reply.headers["ratelimit-policy"] == '"default";q=2;w=2'


def test_setting_the_same_policy_again_refills_every_bucket(
    fake: FakeIngest, client: Client
) -> None:
    """set_rate_policy() starts from full buckets even when the policy does not change."""
    policy = bmcore.RatePolicy.per_second(1, burst=1)
    fake.set_rate_policy(policy)
    assert client.post(NOTIFICATION, notification(type="first")).status == 201
    assert client.post(NOTIFICATION, notification(type="second")).status == 429
    fake.set_rate_policy(policy)
    assert client.post(NOTIFICATION, notification(type="third")).status == 201


# --- assertions -------------------------------------------------------------------------------


def test_assert_backup_returns_the_first_match_by_attribute_or_wire_name(
    fake: FakeIngest, client: Client
) -> None:
    """Fields by bmcore attribute or wire name; timestamps as instants; outcome any case."""
    client.post(BACKUP, backup(deviceName="srv02", status="Warning"))
    client.post(BACKUP, backup(status="success"))
    found = fake.assert_backup(device_name="srv01", outcome="SUCCESS")
    assert found.entry.status == "success"
    assert fake.assert_backup(deviceName="srv02", jobName="Nightly Full Backup") is not None
    assert fake.assert_backup(timestamp="2024-06-04T12:00:00Z").entry.device_name == "srv02"
    at = datetime(2024, 6, 4, 12, tzinfo=UTC)
    assert fake.assert_backup(timestamp=at, outcome=bmcore.Outcome.SUCCESS) == found
    assert fake.assert_backup() == fake.backups[0]  # no fields: the first that arrived


def test_assert_backup_failure_lists_closest_first_with_marks(
    fake: FakeIngest, client: Client
) -> None:
    """The message lists what arrived, closest first, each field marked ✓ or ✗."""
    client.post(BACKUP, backup(deviceName="srv02", status="Warning"))
    client.post(BACKUP, backup(status="Error", jobName="Nightly"))
    with pytest.raises(AssertionError) as failure:
        fake.assert_backup(device_name="srv01", status="Success")
    lines = str(failure.value).splitlines()
    assert lines[0] == (
        "no backup matched device_name='srv01', status='Success'; 2 backups arrived, closest first:"
    )
    assert lines[1].startswith(
        "  #2 device_name='srv01' ✓  status='Error' ✗ (expected 'Success')  job_name='Nightly'  "
        "timestamp='2024-06-04T14:00:00+02:00'  message='Backup completed. 142 GB transferred.'"
    )
    assert lines[2].startswith(
        "  #1 device_name='srv02' ✗ (expected 'srv01')  status='Warning' ✗ (expected 'Success')"
    )
    assert len(lines) == 3


def test_assertion_messages_never_show_the_key(fake: FakeIngest, client: Client) -> None:
    """A key inside a payload is shown by its prefix only, even where a long value is cut."""
    extra = fake.add_api_key()
    client.post(BACKUP, backup(message=f"key {fake.api_key} and {extra}"))
    client.post(BACKUP, backup(deviceName=f"x{fake.api_key}", jobName=None))
    with pytest.raises(AssertionError) as failure:
        fake.assert_backup(device_name="srv02")
    message = str(failure.value)
    assert f"key {bmcore.display_prefix(fake.api_key)}… and {bmcore.display_prefix(extra)}…" in (
        message
    )
    assert fake.api_key[:20] not in message
    assert extra[:20] not in message
    report = fake.rejection_report()
    assert bmcore.display_prefix(fake.api_key) + "…" in report
    assert fake.api_key[:20] not in report


def test_assert_backup_with_nothing_stored_lists_what_was_refused(
    fake: FakeIngest, client: Client
) -> None:
    """No backup at all: the message says so and lists the backup requests that stored none."""
    client.post(BACKUP, backup(timestamp="2024-06-04 14:00"))
    client.post(NOTIFICATION, notification())
    fake.fail_next(503)
    client.post(BACKUP, backup())
    client.post(BACKUP, backup(), key="bm_" + "w" * 43)
    with pytest.raises(AssertionError) as failure:
        fake.assert_backup(device_name="srv01")
    invalid = fake.requests[0].problem
    assert invalid is not None
    assert str(failure.value).splitlines() == [
        "no backup matched device_name='srv01'; none arrived",
        "3 other requests to /api/ingest/backup stored nothing:",
        "  #1 POST /api/ingest/backup → 400 validation_failed: " + invalid["detail"],
        "      /timestamp missing_utc_offset: " + invalid["errors"][0]["message"],
        "      body: " + repr(json.dumps(backup(timestamp="2024-06-04 14:00"))),
        (
            "  #3 POST /api/ingest/backup → 503 service_unavailable: a failure planned by the "
            "test (fail_next(503)); nothing was stored [fail 503]"
        ),
        (
            "  #4 POST /api/ingest/backup → 401 invalid_api_key: this API key is unknown or was "
            "revoked; check the key"
        ),
        "      X-Api-Key: bm_wwwwwwww…",
        "      body: " + repr(json.dumps(backup())),
    ]


def test_assert_backup_without_fields_wants_any_backup(fake: FakeIngest, client: Client) -> None:
    """assert_backup() with no fields passes once anything arrived, and says when nothing did."""
    with pytest.raises(AssertionError, match=r"^no backup arrived$"):
        fake.assert_backup()
    client.post(BACKUP, backup())
    assert fake.assert_backup() == fake.backups[0]


def test_assert_backup_counts_candidates_beyond_ten(fake: FakeIngest, client: Client) -> None:
    """Only the ten closest candidates are listed; the rest are counted."""
    for number in range(12):
        client.post(BACKUP, backup(jobName=f"job {number}"))
    with pytest.raises(
        AssertionError, match=r"(?s)12 backups arrived.*\n  … and 2 more$"
    ) as failure:
        fake.assert_backup(job_name="job 99")
    assert str(failure.value).count("\n  #") == 10


def test_assert_backup_refuses_unknown_or_doubled_fields(fake: FakeIngest) -> None:
    """A misspelt field, or one given twice, is a TypeError rather than a silent no-match."""
    with pytest.raises(TypeError, match="unknown field 'device'; the fields are device_name"):
        fake.assert_backup(device="srv01")
    with pytest.raises(TypeError, match="device_name is given twice"):
        fake.assert_backup(device_name="a", deviceName="a")
    with pytest.raises(ValueError, match="outcome='great' is not one of 'Success'"):
        fake.assert_backup(outcome="great")
    with pytest.raises(ValueError, match="timestamp='noon' is not a timestamp"):
        fake.assert_backup(timestamp="noon")
    with pytest.raises(ValueError, match="naive"):
        fake.assert_backup(timestamp=datetime(2024, 6, 4))  # noqa: DTZ001 - the point
    with pytest.raises(TypeError, match="timestamp must be a datetime or an ISO 8601 string"):
        fake.assert_backup(timestamp=12)


def test_assert_notification_matches_and_explains(fake: FakeIngest, client: Client) -> None:
    """assert_notification works like assert_backup, with severity any case and type."""
    client.post(NOTIFICATION, notification())
    found = fake.assert_notification(severity="WARNING", type="disk_space_low")
    assert found.notification.device_name == "srv01"
    with pytest.raises(AssertionError) as failure:
        fake.assert_notification(severity="critical", jobName=None)
    assert (
        str(failure.value)
        .splitlines()[1]
        .startswith(
            "  #1 severity='warning' ✗ (expected 'critical')  job_name=None ✓  device_name='srv01'"
        )
    )
    with pytest.raises(ValueError, match="severity='loud' is not one of 'info'"):
        fake.assert_notification(severity="loud")


def test_assert_no_rejections_lists_each_with_its_problem(fake: FakeIngest, client: Client) -> None:
    """Each rejected request: method, path, status, code, detail, field errors, key, body."""
    fake.assert_no_rejections()
    assert fake.rejection_report() == ""
    client.post(BACKUP, backup())
    client.post(BACKUP, {"deviceName": ""})
    client.post(NOTIFICATION, notification(), key=None)
    with pytest.raises(AssertionError) as failure:
        fake.assert_no_rejections()
    assert str(failure.value) == fake.rejection_report()
    lines = fake.rejection_report().splitlines()
    assert lines[0] == "2 requests rejected by the fake ingest endpoint:"
    assert lines[1].startswith(
        "  #2 POST /api/ingest/backup → 400 validation_failed: 5 fields are invalid"
    )
    assert lines[2].startswith("      /deviceName blank: ")
    assert "/jobName missing: " in lines[3]
    assert lines[7] == '      body: \'{"deviceName": ""}\''
    assert lines[8] == (
        "  #3 POST /api/ingest/notification → 401 missing_api_key: send your API key in the "
        "X-Api-Key header"
    )
    assert lines[9] == "      no X-Api-Key header"


# --- wait_for ---------------------------------------------------------------------------------


def test_wait_for_returns_once_a_background_post_arrives(fake: FakeIngest, client: Client) -> None:
    """wait_for blocks until the background client's backups have arrived, then returns them."""

    def post_two() -> None:
        for number in range(2):
            client.post(BACKUP, backup(jobName=f"j{number}"))

    posting = threading.Timer(0.05, post_two)
    posting.start()
    try:
        arrived = fake.wait_for(2, timeout=PATIENCE_S)
    finally:
        posting.join(PATIENCE_S)
    assert [record.entry.job_name for record in arrived] == ["j0", "j1"]


def test_wait_for_notifications_and_requests(fake: FakeIngest, client: Client) -> None:
    """wait_for counts notifications or requests when asked to; zero returns at once."""
    assert fake.wait_for(0, "notification", timeout=0) == []
    posting = threading.Timer(0.05, lambda: client.post(NOTIFICATION, notification()))
    posting.start()
    try:
        [arrived] = fake.wait_for(1, "notification", timeout=PATIENCE_S)
        requests: list[RecordedRequest] = fake.wait_for(1, kind="request", timeout=PATIENCE_S)
    finally:
        posting.join(PATIENCE_S)
    assert arrived.notification.type == "disk_space_low"
    assert [request.status for request in requests] == [201]


def test_wait_for_timeout_says_what_arrived(fake: FakeIngest, client: Client) -> None:
    """On timeout, an AssertionError lists what arrived and every request, however it ended."""
    client.post(BACKUP, backup())
    client.post(BACKUP, backup())
    client.request("POST", BACKUP, b"\xff{")
    fake.drop_next()
    with pytest.raises(http.client.RemoteDisconnected):
        client.post(BACKUP, backup())
    with pytest.raises(AssertionError) as failure:
        fake.wait_for(2, timeout=0.01)
    lines = str(failure.value).splitlines()
    assert lines[0] == "waited 0.01 s for 2 backups, but 1 arrived:"
    assert lines[1].startswith("  #1 device_name='srv01'  job_name='Nightly Full Backup'")
    assert lines[2:5] == [
        "4 requests in all:",
        "  #1 POST /api/ingest/backup → 201",
        "  #2 POST /api/ingest/backup → 200 (a repeat of an accepted entry: nothing new stored)",
    ]
    assert lines[5].startswith("  #3 POST /api/ingest/backup → 400 invalid_json")
    assert lines[-2:] == [
        "      body: b'\\xff{'",  # not UTF-8: shown as bytes
        "  #4 POST /api/ingest/backup → no answer (connection closed) [drop]",
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux routes all of 127/8 to lo")
def test_env_names_another_host_in_no_proxy() -> None:
    """Serving on another loopback address puts it in NO_PROXY too."""
    with FakeIngest.running(host="127.0.0.2") as fake:
        assert fake.url.startswith("http://127.0.0.2:")
        assert fake.env["NO_PROXY"] == "127.0.0.1,localhost,127.0.0.2"
        assert client_of(fake).get("/healthz").status == 200


def test_wait_for_with_no_request_at_all_says_to_check_the_url(fake: FakeIngest) -> None:
    """When nothing reached the fake, the message points at the client's URL."""
    with pytest.raises(AssertionError, match="no request reached the fake at all"):
        fake.wait_for(1, "request", timeout=0.01)


def test_wait_for_refuses_a_bad_kind_or_count(fake: FakeIngest) -> None:
    """An unknown kind or a negative count is a ValueError, not a wait."""
    with pytest.raises(ValueError, match="kind must be one of backup, notification, request"):
        fake.wait_for(1, "backups", timeout=0)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="count must be 0 or more"):
        fake.wait_for(-1)
    with pytest.raises(RuntimeError, match="not running"):
        FakeIngest().wait_for(1)
