"""What an adversarial review found, over a real socket: redirects, gzip, query values, headers.

The query-value checks run on every store, PostgreSQL included: a value it cannot take (a NUL,
an instant outside the years 1-9999 in UTC) must be a 400 naming the parameter everywhere.
"""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from _harness import Client, RunningServer, assert_problem, backup, notification

from bmserver import BackupQuery, MemoryStore, SqliteStore, Store

BACKUP = "/api/ingest/backup"
NOTIFICATION = "/api/ingest/notification"


@pytest.fixture(params=["memory", "sqlite", "postgres", "fake"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every store bmserver has, and the fake."""
    return str(request.param)


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Store:
    """The store of the server under test (the app opens and closes it)."""
    if backend == "postgres":
        from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - an optional extra

        url: str = request.getfixturevalue("postgres_url")
        return PostgresStore(url, schema=request.getfixturevalue("postgres_schema"))
    if backend == "sqlite":
        return SqliteStore(tmp_path / "ingest.sqlite3")
    return MemoryStore()


def stored_backups(running: RunningServer) -> int:
    """How many backups the fixture's account holds."""
    import bmcore  # noqa: PLC0415

    key = running.call(running.store.find_api_key(bmcore.hash_api_key(running.client.api_key)))
    page = running.call(
        running.store.list_backups(key.account_id, BackupQuery(), limit=1000, cursor=None)
    )
    return len(page.items)


# --- no redirect for a trailing slash -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "meant"),
    [
        ("POST", "/api/ingest/backup/", "/api/ingest/backup"),
        ("POST", "/api/ingest/notification//", "/api/ingest/notification"),
        ("GET", "/api/backups/", "/api/backups"),
        ("GET", "/api/backups/bk_0123456789abcdef/", "/api/backups/bk_0123456789abcdef"),
        ("GET", "/healthz/", "/healthz"),
    ],
)
def test_a_trailing_slash_is_a_404_naming_the_path_never_a_redirect(
    running: RunningServer, method: str, path: str, meant: str
) -> None:
    """The answer names the right path; no Location, so curl -L sends the key nowhere."""
    reply = running.client.request(
        method,
        path,
        json.dumps(backup()).encode() if method == "POST" else None,
        headers={"Host": "attacker.example"},
    )
    body = assert_problem(reply, 404, "not_found")
    assert f"send the request to {meant}," in body["detail"]
    assert "location" not in reply.headers
    assert stored_backups(running) == 0


def test_an_unknown_path_is_a_plain_404(client: Client) -> None:
    """A path that no trailing slash explains is not found, without a suggestion."""
    body = assert_problem(client.get("/api/nothing/"), 404, "not_found")
    assert "send the request to" not in body["detail"]


# --- gzip: one member, nothing after it ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (gzip.compress(json.dumps(backup(jobName="B")).encode()), "a second gzip member"),
        (b"garbage", "trailing data"),
    ],
)
def test_gzip_with_data_after_its_end_is_refused(
    running: RunningServer, tail: bytes, why: str
) -> None:
    """Gzip -d would see A+B where zlib stops at A: such a body is refused, nothing stored."""
    body = gzip.compress(json.dumps(backup(jobName="A")).encode()) + tail
    reply = running.client.request("POST", BACKUP, body, headers={"Content-Encoding": "gzip"})
    problem = assert_problem(reply, 400, "invalid_json")
    assert why in problem["detail"]
    assert f"{len(tail)} bytes after its end" in problem["detail"]
    assert stored_backups(running) == 0


def test_one_gzip_member_is_still_accepted(client: Client) -> None:
    """The check refuses only extra data: a single gzip member is decoded as before."""
    body = gzip.compress(json.dumps(backup()).encode())
    assert client.request("POST", BACKUP, body, headers={"Content-Encoding": "gzip"}).status == 201


# --- HTTP semantics -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "bm_short", "bm_" + "A" * 43])
def test_every_401_carries_a_www_authenticate_challenge(client: Client, key: str | None) -> None:
    """RFC 9110: a 401 says how to authenticate, here the X-Api-Key header."""
    reply = client.get("/api/backups", key=key)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'ApiKey header="X-Api-Key"'


def test_answers_with_account_data_are_not_stored_by_caches(client: Client) -> None:
    """201, 200, 404 and 401 under /api/ carry Cache-Control: no-store."""
    created = client.post(BACKUP, backup())
    replies = [
        created,
        client.post(BACKUP, backup()),
        client.get("/api/backups"),
        client.get(created.headers["location"]),
        client.get("/api/devices"),
        client.get("/api/notifications/nt_0000000000000000"),
        client.get("/api/jobs", key=None),
    ]
    assert [reply.status for reply in replies] == [201, 200, 200, 200, 200, 404, 401]
    for reply in replies:
        assert reply.headers["cache-control"] == "no-store"


def test_a_huge_query_string_is_not_echoed(client: Client) -> None:
    """Unknown parameters and bad values are quoted short, and at most 20 errors are listed."""
    names = "&".join(f"p{index}{'x' * 40}=1" for index in range(150))
    reply = client.get(f"/api/backups?outcome={'y' * 5000}&limit={'9' * 3000}&{names}")
    body = assert_problem(reply, 400, "invalid_query")
    assert len(body["errors"]) == 20
    assert "the first 20 are listed" in body["detail"]
    assert len(reply.body) < 8000
    assert "y" * 100 not in reply.body.decode()
    assert "9" * 100 not in reply.body.decode()


# --- query values every store can take -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/backups?deviceName=%00", "deviceName"),
        ("/api/backups?jobName=srv%0001", "jobName"),
        ("/api/backups?sender=a%00b", "sender"),
        ("/api/backups?status=%00", "status"),
        ("/api/notifications?type=disk%00", "type"),
        ("/api/notifications?deviceName=a%0Ab", "deviceName"),
        ("/api/jobs?deviceName=%00", "deviceName"),
        (f"/api/backups?deviceName={'x' * 256}", "deviceName"),
    ],
)
def test_a_filter_no_entry_could_hold_is_a_400_naming_it(
    client: Client, path: str, parameter: str
) -> None:
    """A NUL, a control character or an overlong name: 400 on every store, never a 500."""
    client.post(BACKUP, backup())
    body = assert_problem(client.get(path), 400, "invalid_query")
    assert [error["field"] for error in body["errors"]] == [parameter]
    assert body["errors"][0]["code"] in {"control_character", "too_long"}


@pytest.mark.parametrize("kind", ["backups", "notifications"])
def test_an_id_no_entry_could_have_is_not_found(client: Client, kind: str) -> None:
    """An id with a NUL, or longer than any id, is 404 like any unknown id."""
    for entry_id in ["bk_0000%000000000000", "x" * 300, "%E2%80%AE"]:
        assert_problem(client.get(f"/api/{kind}/{entry_id}"), 404, "not_found")


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("since", "0001-01-01T00:00:00+01:00"), ("until", "9999-12-31T23:59:59-01:00")],
)
@pytest.mark.parametrize("kind", ["backups", "notifications"])
def test_an_instant_outside_the_years_1_to_9999_in_utc_is_a_400(
    client: Client, kind: str, parameter: str, value: str
) -> None:
    """Valid at its own offset, out of range in UTC, which every store compares."""
    body = assert_problem(
        client.get(f"/api/{kind}?{parameter}={quote(value)}"), 400, "invalid_query"
    )
    assert body["errors"][0]["field"] == parameter
    assert body["errors"][0]["code"] == "timestamp_out_of_range"


def test_the_extreme_instants_inside_the_range_still_work(client: Client) -> None:
    """The first and last instants that UTC can hold are valid bounds."""
    client.post(NOTIFICATION, notification())
    since = quote("0001-01-01T00:00:00Z")
    until = quote("9999-12-31T23:59:59Z")
    reply = client.get(f"/api/notifications?since={since}&until={until}")
    assert reply.status == 200, reply.body
    assert len(reply.json["items"]) == 1


def test_an_overlong_timestamp_is_refused_without_being_echoed(client: Client) -> None:
    """No timestamp is 65 characters long; the answer says how long it was instead."""
    body = assert_problem(client.get(f"/api/backups?since={'2' * 500}"), 400, "invalid_query")
    assert body["errors"][0]["code"] == "invalid_timestamp"
    assert "2" * 100 not in body["errors"][0]["message"]


def test_a_malformed_request_line_byte_never_reaches_a_store(running: RunningServer) -> None:
    """Raw bytes in the query (not percent-encoded) are refused before any store is asked."""
    connection = http.client.HTTPConnection("127.0.0.1", running.client.port, timeout=10)
    try:
        connection.putrequest("GET", "/api/backups?deviceName=%C0%00", skip_accept_encoding=True)
        connection.putheader("X-Api-Key", running.client.api_key)
        connection.endheaders()
        reply = connection.getresponse()
        assert reply.status == 400
        assert json.loads(reply.read())["code"] == "invalid_query"
    finally:
        connection.close()
