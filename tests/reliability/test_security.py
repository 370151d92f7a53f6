"""Security: keys at rest and in logs, constant-time checks, accounts kept apart, guessing.

Issue 6, point 5. Keys exist only as hashes in the database; their verification is constant
time; no key ever appears in a log; an account never sees or changes another's data through
any read endpoint or filter; key guessing is limited per client address; a revoked key is
refused at once. Against real ``bmserver serve`` processes, except where a test says otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import hypothesis
import pytest
from _harness import START
from _harness import serve as serve_in_process
from _harness import stop as stop_in_process
from _reliability import (
    HOST,
    TALLY,
    UNLIMITED,
    Answer,
    ServerProcess,
    Tally,
    post_json,
    request,
    scaled,
)
from hypothesis import strategies as st

import bmcore
from bmserver import (
    ApiKeyRecord,
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Scope,
    Settings,
    create_app,
    issue_api_key,
)

#: The flags of every server here: the per-key rate limit out of the way (it is tested
#: elsewhere); the per-address limit on failed authentications stays at its default.
FAST: Final = UNLIMITED
#: Anything shaped like an API key (a display prefix is bm_ and only 8 characters).
KEY_SHAPED: Final = re.compile(r"bm_[A-Za-z0-9_-]{32,}")
#: A run of this many characters of a key's secret part, found anywhere, is a leak.
LEAK_WINDOW: Final = 12
#: The policy on failed authentications per client address (bmserver serve does not change it).
AUTH_FAILURES: Final = Settings().auth_failure_policy


# --- keys at rest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "a server secret"], ids=["sha256", "hmac-sha256"])
def test_keys_exist_only_as_hashes_in_the_database(
    server_factory: Callable[..., ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
    secret: str | None,
) -> None:
    """No key is stored in clear: the database holds hashes and display prefixes only.

    The database files (main file, WAL and shared memory, read as bytes while the server runs)
    hold no key, no part of a key's secret and not its random bytes; api_keys holds the hash
    that its algorithm names (sha256, or hmac-sha256 with BM_KEY_SECRET, which is not stored
    either); keys list shows only display prefixes.
    """
    if secret is None:
        monkeypatch.delenv("BM_KEY_SECRET", raising=False)
    else:
        # Every bmserver command and the server inherit it: all of them hash with it.
        monkeypatch.setenv("BM_KEY_SECRET", secret)
    server = server_factory(*FAST)
    server.start()
    # One key made before the start, one while the server runs (its row may be in the WAL).
    reader = server.new_key("other", "read")
    keys = [server.key, reader]
    stored = post_json(server.url, "/api/ingest/backup", server.key, _backup("srv01", "Nightly"))
    assert stored.status == 201, stored.body
    assert _get(server, reader, "/api/devices").status == 200

    files = sorted(server.folder.glob(f"{server.database.name}*"))
    assert server.database in files
    data = b"".join(path.read_bytes() for path in files)
    for key in keys:
        for form in _secret_forms(key):
            assert form not in data, f"{form!r} of a key is in {[p.name for p in files]}"
    if secret is not None:
        assert secret.encode() not in data
    encoded = None if secret is None else secret.encode()
    rows = server.query("SELECT key_hash, prefix FROM api_keys")
    assert sorted(rows) == sorted(
        (bmcore.hash_api_key(key, secret=encoded), bmcore.display_prefix(key)) for key in keys
    )
    algorithm = "sha256:" if secret is None else "hmac-sha256:"
    assert all(str(key_hash).startswith(algorithm) for key_hash, _ in rows)

    listing = server.bmserver("keys", "list")
    for key in keys:
        assert bmcore.display_prefix(key) in listing
        assert not _leaked(key, listing)
    server.stop()
    _assert_no_key_in_logs(server, keys)


# --- constant-time verification -------------------------------------------------------------------


def test_key_verification_uses_a_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """bmcore.verify_api_key compares through hmac.compare_digest, whatever the outcome.

    For a matching key, a wrong key, a key of another secret and a malformed stored hash alike.
    In process, and without a timing measurement, which would only measure the machine's noise.
    """
    calls: list[tuple[bytes | str, bytes | str]] = []
    original = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return original(a, b)

    # verify_api_key looks compare_digest up on the hmac module at each call.
    assert bmcore.verify_api_key.__globals__["hmac"] is hmac
    monkeypatch.setattr(hmac, "compare_digest", recording)
    key, other = bmcore.generate_api_key(), bmcore.generate_api_key()
    stored = bmcore.hash_api_key(key)
    cases = [
        (key, stored, None, True),
        (other, stored, None, False),
        (key[:-1] + ("A" if key[-1] != "A" else "B"), stored, None, False),
        (key, bmcore.hash_api_key(key, secret=b"s"), b"s", True),
        (key, bmcore.hash_api_key(key, secret=b"s"), b"t", False),
        (key, "sha256:short", None, False),
    ]
    for supplied, stored_hash, secret, expected in cases:
        before = len(calls)
        assert bmcore.verify_api_key(supplied, stored_hash, secret=secret) is expected
        assert len(calls) == before + 1, "verify_api_key did not use hmac.compare_digest"


def test_the_server_looks_keys_up_by_their_hash_and_never_sees_a_key_in_clear() -> None:
    """The server compares no secret: it looks the supplied key's hash up in the store.

    It hashes the supplied key and asks the store for the row with that hash (SQLite: an
    index lookup on api_keys.key_hash); no key is compared character by character in Python.

    A timing difference in that lookup can tell an attacker at most how much of a SHA-256
    hash matched, which says nothing about the key (finding a key to a given hash prefix is
    a preimage search). Shown in process on bmserver's app, with a store that records what
    it is asked: only hashes, for a right key, a wrong one and one sharing its display prefix.
    """
    store = _RecordingStore()
    key, _ = asyncio.run(
        issue_api_key(store, account="acme", scopes={Scope.READ, Scope.INGEST}, now=START)
    )
    settings = Settings()
    app = create_app(
        settings, store=store, limiter=MemoryLimiter(settings.rate_policy), clock=ManualClock(START)
    )
    server, thread = None, None
    try:
        server, thread, port = serve_in_process(app)
        base = f"http://{HOST}:{port}"
        same_prefix = key[:-1] + ("A" if key[-1] != "A" else "B")
        supplied = [key, bmcore.generate_api_key(), same_prefix]
        statuses = [
            request(base, "GET", "/api/devices", headers={"X-Api-Key": k}).status for k in supplied
        ]
    finally:
        if server is not None and thread is not None:
            stop_in_process(server, thread)
    assert statuses == [200, 401, 401]
    assert store.asked == [bmcore.hash_api_key(k) for k in supplied]
    assert not any(_leaked(k, repr(store.asked)) for k in supplied)


# --- no key in any log ----------------------------------------------------------------------------


def test_no_api_key_appears_in_any_log(
    server_factory: Callable[..., ServerProcess], tally: Tally
) -> None:
    """At --log-level debug, no key (nor 12 characters in a row of its secret part) is logged.

    Requests with valid keys, a key without the scope, unknown, malformed and revoked keys, keys
    in the query string, in Authorization and Cookie headers, in bodies (valid, invalid JSON,
    invalid fields) and in a request line the HTTP parser refuses. Failed authentications come
    from different loopback addresses, so that the per-address limit lets each one be checked.
    """
    server = server_factory("--log-level", "debug", *FAST)
    server.start()
    read_only = server.new_key("acme", "read")
    revoked = server.new_key("acme", "ingest", "read")
    assert _get(server, revoked, "/api/devices").status == 200
    server.bmserver("keys", "revoke", bmcore.display_prefix(revoked))
    unknown = bmcore.generate_api_key()
    valid = server.key
    keys = [valid, read_only, revoked, unknown]
    addresses = _fresh_addresses()

    def send(
        key_header: str | None,
        method: str,
        path: str,
        body: bytes | None = None,
        **headers: str,
    ) -> int:
        if key_header is not None:
            headers["X-Api-Key"] = key_header
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        return _answer_from(
            next(addresses), server, headers, method=method, path=path, body=body
        ).status

    backup = json.dumps(_backup("srv01", "Nightly")).encode()
    with_key = json.dumps(_backup("srv01", f"job {valid}", message=f"key {valid}")).encode()
    expected = {
        "valid post": (send(valid, "POST", "/api/ingest/backup", backup), 201),
        "valid post, key in the body": (send(valid, "POST", "/api/ingest/backup", with_key), 201),
        "valid read": (send(valid, "GET", "/api/backups?deviceName=srv01&limit=1"), 200),
        "without the scope": (send(read_only, "POST", "/api/ingest/backup", backup), 403),
        "unknown": (send(unknown, "GET", "/api/devices"), 401),
        "revoked": (send(revoked, "POST", "/api/ingest/backup", backup), 401),
        "too short": (send(valid[:20], "GET", "/api/devices"), 401),
        "too long": (send(valid + "x" * 300, "GET", "/api/devices"), 401),
        "bad character": (send(valid[:-1] + "!", "GET", "/api/devices"), 401),
        "no bm_ prefix": (send(valid[3:], "GET", "/api/devices"), 401),
        "as Bearer": (send(f"Bearer {valid}", "GET", "/api/devices"), 401),
        "in api_key=": (send(None, "GET", f"/api/devices?api_key={valid}"), 401),
        "in apiKey=": (send(None, "POST", f"/api/ingest/backup?apiKey={valid}", backup), 401),
        "in key=, with a key": (send(valid, "GET", f"/api/backups?key={valid}"), 400),
        "in Authorization": (
            send(None, "GET", "/api/devices", Authorization=f"Bearer {valid}"),
            401,
        ),
        "in a cookie": (send(None, "GET", "/api/devices", Cookie=f"api_key={valid}"), 401),
        "in invalid JSON": (
            send(valid, "POST", "/api/ingest/backup", f'{{"k": {valid}'.encode()),
            400,
        ),
        "in an invalid field": (
            send(
                valid,
                "POST",
                "/api/ingest/backup",
                json.dumps(_backup(f"{valid}\x01", "J")).encode(),
            ),
            400,
        ),
    }
    got = {name: status for name, (status, _) in expected.items()}
    assert got == {name: status for name, (_, status) in expected.items()}
    assert _raw_from(next(addresses), server, f"GET /{valid} {valid}\r\n\r\n".encode()) == 400
    tally.fault("security: key in a refused request line")

    server.stop()
    _assert_no_key_in_logs(server, keys)
    assert "DEBUG" in server.log_text(), "the server did not log at debug level"


def test_a_key_in_the_url_path_is_not_logged(server: ServerProcess) -> None:
    """A key put in the URL path by a careless client (a webhook-style URL) is not logged.

    The access log leaves out the query string for this reason; the path needs the same care
    (redact what has the shape of a key, or log the route instead of the path).
    """
    key = server.key
    statuses = [
        _get(server, key, f"/api/backups/{key}").status,
        _get(server, key, f"/{key}").status,
        _get(server, None, f"/api/ingest/backup/{key}").status,
    ]
    assert statuses == [404, 404, 404]
    server.stop()
    _assert_no_key_in_logs(server, [key])


# --- account isolation ----------------------------------------------------------------------------


@dataclass
class Tenants:
    """Accounts A and B on one server, and A's twin alone on a control server.

    A and B post the same device, job and sender names at the same timestamps (with different
    statuses and messages), plus names of their own; the control server holds exactly A's
    entries. Whatever A sees on the shared server must equal what its twin sees on the control
    server: B's presence changes nothing for A.
    """

    shared: ServerProcess
    control: ServerProcess
    key_a: str
    key_b: str
    key_twin: str
    ids_a: set[str] = field(default_factory=set[str])
    ids_b: set[str] = field(default_factory=set[str])
    backups_a: list[str] = field(default_factory=list[str])
    backups_b: list[str] = field(default_factory=list[str])
    notifications_a: list[str] = field(default_factory=list[str])
    notifications_b: list[str] = field(default_factory=list[str])


BASE: Final = datetime(2024, 6, 4, 12, 0, tzinfo=UTC)
TIMES: Final = tuple(BASE - timedelta(hours=hours) for hours in (3, 2, 1))
SHARED_DEVICES: Final = (("script-srv01", "srv01"), ("rsync", "db01"))
JOBS: Final = ("Nightly", "Weekly")
STATUSES: Final = ("Success", "Warning", "Error", "Partial")
SEVERITIES: Final = ("info", "warning", "error", "critical")
TYPES: Final = ("disk_space_low", "ssl_expiry")
#: Each account's own device, job and notification type, and a marker in its every message.
OWN: Final = {
    "A": {"sender": "a-tool", "device": "a-only-host", "job": "A-only job", "type": "a_only"},
    "B": {"sender": "b-tool", "device": "b-only-host", "job": "B-only job", "type": "b_only"},
}
MARKER: Final = {"A": "A-PRIVATE", "B": "B-PRIVATE"}


def _dataset(account: str) -> list[tuple[str, dict[str, Any]]]:
    """An account's entries: (kind, payload), the shared names first, then its own."""
    rotate = 0 if account == "A" else 1
    marker, own = MARKER[account], OWN[account]
    entries: list[tuple[str, dict[str, Any]]] = []
    number = 0
    for sender, device in SHARED_DEVICES:
        for job in JOBS:
            for moment in TIMES:
                status = STATUSES[(number + rotate) % len(STATUSES)]
                entries.append(("backup", _backup(device, job, sender, moment, status, marker)))
                number += 1
    for number, severity in enumerate(SEVERITIES * 2):
        sender, device = SHARED_DEVICES[number % 2]
        notification = {
            "deviceName": device,
            "timestamp": TIMES[number % len(TIMES)].isoformat(),
            "severity": SEVERITIES[(SEVERITIES.index(severity) + rotate) % len(SEVERITIES)],
            "type": TYPES[number % 2],
            "message": f"{marker} notification {number}",
            "sender": sender,
            **({"jobName": JOBS[0]} if number % 3 == 0 else {}),
        }
        entries.append(("notification", notification))
    entries.extend(
        ("backup", _backup(own["device"], own["job"], own["sender"], moment, "Success", marker))
        for moment in TIMES[:2]
    )
    entries.append(
        (
            "notification",
            {
                "deviceName": own["device"],
                "jobName": own["job"],
                "timestamp": TIMES[0].isoformat(),
                "severity": "critical",
                "type": own["type"],
                "message": f"{marker} own notification",
                "sender": own["sender"],
            },
        )
    )
    return entries


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    """The shared server with A's and B's entries, posted in turn, and A's twin's control server."""
    shared = ServerProcess(tmp_path_factory.mktemp("shared"), *FAST)
    control = ServerProcess(tmp_path_factory.mktemp("control"), *FAST)
    try:
        shared.start()
        control.start()
        found = Tenants(
            shared,
            control,
            key_a=shared.new_key("a", "ingest", "read"),
            key_b=shared.new_key("b", "ingest", "read"),
            key_twin=control.new_key("a", "ingest", "read"),
        )
        # In turn, so that A's and B's rows interleave in every table.
        for (kind, payload_a), (_, payload_b) in zip(_dataset("A"), _dataset("B"), strict=True):
            path = f"/api/ingest/{kind}"
            _record(found, "A", kind, post_json(shared.url, path, found.key_a, payload_a))
            twin = post_json(control.url, path, found.key_twin, payload_a)
            assert twin.status == 201, twin.body
            _record(found, "B", kind, post_json(shared.url, path, found.key_b, payload_b))
        yield found
    finally:
        shared.stop()
        control.stop()


def _record(tenants: Tenants, account: str, kind: str, answer: Answer) -> None:
    """Note the ids an account's post created: its entry, device and job."""
    assert answer.status == 201, answer.body
    created = answer.json()
    ids = tenants.ids_a if account == "A" else tenants.ids_b
    ids.update({created["id"], created["device"]["id"]})
    if "job" in created:
        ids.add(created["job"]["id"])
    if kind == "backup":
        (tenants.backups_a if account == "A" else tenants.backups_b).append(created["id"])
    else:
        entries = tenants.notifications_a if account == "A" else tenants.notifications_b
        entries.append(created["id"])


def _single_filters() -> list[tuple[str, dict[str, str]]]:
    """Every read endpoint with no filter, each filter alone with each value, and small pages."""
    devices = [device for _, device in SHARED_DEVICES] + [OWN["A"]["device"], OWN["B"]["device"]]
    devices.append("no-such-device")
    jobs = [*JOBS, OWN["A"]["job"], OWN["B"]["job"]]
    senders = [sender for sender, _ in SHARED_DEVICES] + [OWN["A"]["sender"], OWN["B"]["sender"]]
    moments = [moment.isoformat() for moment in TIMES]
    backups: dict[str, list[str]] = {
        "deviceName": devices,
        "jobName": jobs,
        "sender": senders,
        "outcome": ["success", "WARNING", "Error", "unknown"],
        "status": list(STATUSES),
        "since": moments,
        "until": moments,
        "limit": ["1", "5"],
    }
    notifications: dict[str, list[str]] = {
        "deviceName": devices,
        "jobName": jobs,
        "sender": senders,
        "severity": list(SEVERITIES),
        "type": [*TYPES, OWN["A"]["type"], OWN["B"]["type"]],
        "since": moments,
        "until": moments,
        "limit": ["1", "5"],
    }
    queries: list[tuple[str, dict[str, str]]] = [
        ("/api/devices", {}),
        ("/api/devices", {"limit": "1"}),
        ("/api/jobs", {}),
        ("/api/jobs", {"limit": "2"}),
        *(("/api/jobs", {"deviceName": device}) for device in devices),
    ]
    for path, filters in (("/api/backups", backups), ("/api/notifications", notifications)):
        queries.append((path, {}))
        queries.extend(
            (path, {name: value}) for name, values in filters.items() for value in values
        )
    return queries


@pytest.mark.parametrize(
    ("path", "params"), _single_filters(), ids=lambda value: str(value) if value else "-"
)
def test_every_listing_and_filter_shows_an_account_only_its_own_data(
    tenants: Tenants, path: str, params: dict[str, str]
) -> None:
    """Every listing, filter value and page size shows an account its own data only.

    A sees exactly what its twin sees on a server without B, never an id or a message of B's;
    B likewise sees only its own; A's cursors given to B yield only B's data.
    """
    _check_isolation(tenants, path, params)


_FILTERS: Final[dict[str, dict[str, st.SearchStrategy[str]]]] = {
    "/api/devices": {},
    "/api/jobs": {"deviceName": st.sampled_from(["srv01", "db01", "a-only-host", "b-only-host"])},
    "/api/backups": {
        "deviceName": st.sampled_from(["srv01", "db01", "a-only-host", "b-only-host"]),
        "jobName": st.sampled_from([*JOBS, "A-only job", "B-only job"]),
        "sender": st.sampled_from(["script-srv01", "rsync", "a-tool", "b-tool"]),
        "outcome": st.sampled_from(["Success", "warning", "ERROR", "Unknown"]),
        "status": st.sampled_from(STATUSES),
        "since": st.sampled_from([moment.isoformat() for moment in TIMES]),
        "until": st.sampled_from([moment.isoformat() for moment in TIMES]),
    },
    "/api/notifications": {
        "deviceName": st.sampled_from(["srv01", "db01", "a-only-host", "b-only-host"]),
        "jobName": st.sampled_from([*JOBS, "A-only job", "B-only job"]),
        "sender": st.sampled_from(["script-srv01", "rsync", "a-tool", "b-tool"]),
        "severity": st.sampled_from(SEVERITIES),
        "type": st.sampled_from([*TYPES, "a_only", "b_only"]),
        "since": st.sampled_from([moment.isoformat() for moment in TIMES]),
        "until": st.sampled_from([moment.isoformat() for moment in TIMES]),
    },
}


@st.composite
def _queries(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    path = draw(st.sampled_from(sorted(_FILTERS)))
    params = draw(st.fixed_dictionaries({}, optional=_FILTERS[path]))
    limit = draw(st.none() | st.integers(min_value=1, max_value=4))
    if limit is not None:
        params["limit"] = str(limit)
    return path, params


@hypothesis.settings(max_examples=scaled(60, minimum=10), deadline=None)
@hypothesis.given(query=_queries())
def test_filter_combinations_show_an_account_only_its_own_data(
    tenants: Tenants, query: tuple[str, dict[str, str]]
) -> None:
    """The same, for combinations of filters and page sizes drawn by hypothesis."""
    path, params = query
    _check_isolation(tenants, path, params)


def test_another_account_s_entries_are_not_found_by_id(tenants: Tenants) -> None:
    """Another account's ids are "not found", exactly as ids that never existed.

    GET /api/backups/{id} and /api/notifications/{id} of the other account's entries, and of
    its device and job ids, answer 404, word for word as for an id that never existed (not
    403: whether it exists is not revealed); each account reads its own.
    """
    shared = tenants.shared
    for key, own, other in (
        (tenants.key_a, tenants.backups_a + tenants.notifications_a, tenants.ids_b),
        (tenants.key_b, tenants.backups_b + tenants.notifications_b, tenants.ids_a),
    ):
        for entry_id in own:
            kind = "backups" if entry_id.startswith("bk_") else "notifications"
            assert _get(shared, key, f"/api/{kind}/{entry_id}").status == 200
        for entry_id in sorted(other):
            for kind in ("backups", "notifications"):
                answer = _get(shared, key, f"/api/{kind}/{entry_id}")
                never = _get(shared, key, f"/api/{kind}/{_never_issued(entry_id)}")
                assert answer.status == never.status == 404, answer.body
                assert answer.json()["code"] == "not_found"
                assert answer.body.replace(entry_id.encode(), b"ID") == never.body.replace(
                    _never_issued(entry_id).encode(), b"ID"
                )
                assert b"PRIVATE" not in answer.body


def test_an_account_cannot_change_another_s_entries(server: ServerProcess, tally: Tally) -> None:
    """What A posts never touches B's entries, even with B's very names and timestamps.

    A posting exactly B's entries gets entries of its own (201, not B's id, not a duplicate);
    a different content at B's job and timestamp is no conflict (201, not 409); B's view, every
    field of every listing and entry, is unchanged; B's repeats still find B's entries.
    """
    key_a = server.new_key("a", "ingest", "read")
    key_b = server.new_key("b", "ingest", "read")
    first = _backup("srv01", "Nightly", "script-srv01", TIMES[0], "Success", "b's run")
    second = _backup("srv01", "Nightly", "script-srv01", TIMES[1], "Error", "b's failed run")
    note = {
        "deviceName": "srv01",
        "timestamp": TIMES[0].isoformat(),
        "severity": "error",
        "type": "disk_space_low",
        "message": "b's disk",
    }
    b_first = post_json(server.url, "/api/ingest/backup", key_b, first).json()
    b_second = post_json(server.url, "/api/ingest/backup", key_b, second).json()
    b_note = post_json(server.url, "/api/ingest/notification", key_b, note).json()
    before = _full_view(server, key_b, [b_first["id"], b_second["id"]], [b_note["id"]])

    a_first = post_json(server.url, "/api/ingest/backup", key_a, first)
    assert a_first.status == 201, a_first.body
    created = a_first.json()
    assert created["id"] != b_first["id"]
    assert created["duplicate"] is False
    assert created["device"] == {"id": created["device"]["id"], "created": True}
    assert created["device"]["id"] != b_first["device"]["id"]
    assert created["job"]["created"] is True
    assert created["job"]["id"] != b_first["job"]["id"]
    changed = {**second, "status": "Success", "message": "a's different content"}
    a_second = post_json(server.url, "/api/ingest/backup", key_a, changed)
    assert a_second.status == 201, a_second.body
    a_note = post_json(server.url, "/api/ingest/notification", key_a, note)
    assert a_note.status == 201, a_note.body
    assert a_note.json()["id"] != b_note["id"]
    repeat = post_json(server.url, "/api/ingest/backup", key_a, first)
    assert (repeat.status, repeat.json()["id"]) == (200, created["id"])

    assert _full_view(server, key_b, [b_first["id"], b_second["id"]], [b_note["id"]]) == before
    for payload, original in ((first, b_first), (second, b_second)):
        again = post_json(server.url, "/api/ingest/backup", key_b, payload)
        assert (again.status, again.json()["id"]) == (200, original["id"])
    assert server.count_rows() == {"backups": 4, "notifications": 2}
    tally.accounted(acknowledged=6, found=sum(server.count_rows().values()))


def test_a_cursor_reveals_nothing_of_other_accounts_volume(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """B's cursors are the same whether or not account A wrote between B's entries.

    Entry ids are random so that they "reveal nothing about volumes" (bmserver/storage/_entries.py,
    new_id); a cursor must not either. Compared on two servers, as far as a cursor can be read
    (an opaque, encrypted cursor passes): the numbers it carries must not count A's rows.
    """
    cursors: list[list[list[int] | None]] = []
    for foreign in (0, 5):
        server = server_factory(*FAST)
        key_a = server.new_key("a", "ingest")
        key_b = server.new_key("b", "ingest", "read")
        server.start()
        for index, moment in enumerate((*TIMES, BASE)):
            if index == 2:
                for number in range(foreign):
                    other = _backup("a-host", f"a job {number}", "a-tool", moment, "Success", "a")
                    assert post_json(server.url, "/api/ingest/backup", key_a, other).status == 201
            payload = _backup("b-host", "b job", "b-tool", moment, "Success", "b")
            assert post_json(server.url, "/api/ingest/backup", key_b, payload).status == 201
        pages = _pages(server, key_b, "/api/backups", {"limit": "1"})
        cursors.append([_readable_numbers(cursor) for _, cursor, _ in pages if cursor])
        server.stop()
    quiet, busy = cursors
    assert len(quiet) == len(busy) == 3
    assert quiet == busy, (
        f"B's cursors carry {busy} when A wrote 5 entries between B's, {quiet} when it did not"
    )


# --- key guessing and revocation ------------------------------------------------------------------


def test_key_guessing_is_rate_limited_per_address(server: ServerProcess, tally: Tally) -> None:
    """Failed authentications are limited per client address, right guesses included.

    After the policy's burst of failures from an address, it gets 429 with Retry-After, even
    with the right key (a right guess looks like a wrong one); malformed keys count as failures
    too; another address is not affected, with the right key or a wrong one.
    """
    burst = AUTH_FAILURES.burst
    interval_s = AUTH_FAILURES.interval_ns / 1e9
    guesses = max(scaled(50, minimum=20), burst + 5)
    began = time.monotonic()
    answers = [
        _answer_from("127.0.0.1", server, {"X-Api-Key": bmcore.generate_api_key()})
        for _ in range(guesses)
    ]
    elapsed = time.monotonic() - began
    tally.fault("security: guessed key", guesses)
    statuses = [answer.status for answer in answers]
    assert statuses[:burst] == [401] * burst, statuses
    assert set(statuses) == {401, 429}, statuses
    # One more try is earned every interval; the guesses above took ``elapsed``.
    assert statuses.count(401) <= burst + math.ceil(elapsed / interval_s), statuses
    assert statuses[-1] == 429
    for answer in answers:
        if answer.status == 429:
            _assert_retry_after(answer)

    right_key = _answer_from("127.0.0.1", server, {"X-Api-Key": server.key})
    assert right_key.status == 429, right_key.body
    _assert_retry_after(right_key)
    posted = _answer_from(
        "127.0.0.1",
        server,
        {"X-Api-Key": server.key, "Content-Type": "application/json"},
        method="POST",
        path="/api/ingest/backup",
        body=json.dumps(_backup("srv01", "Nightly")).encode(),
    )
    assert posted.status == 429
    assert server.count_rows()["backups"] == 0

    # Malformed keys are failures too.
    malformed = [
        _answer_from("127.0.0.3", server, {"X-Api-Key": f"bm_short{n}"}).status
        for n in range(burst)
    ]
    assert malformed == [401] * burst
    assert _answer_from("127.0.0.3", server, {"X-Api-Key": server.key}).status == 429

    # Another address: its own budget, untouched.
    assert _answer_from("127.0.0.2", server, {"X-Api-Key": server.key}).status == 200
    wrong = _answer_from("127.0.0.2", server, {"X-Api-Key": bmcore.generate_api_key()})
    assert wrong.status == 401
    _assert_no_key_in_logs(server, [server.key])


def test_a_forged_forwarded_address_does_not_escape_the_limit(
    server: ServerProcess, tally: Tally
) -> None:
    """A client refused for too many failures stays refused whatever X-Forwarded-For it sends.

    The address that is limited must be the connection's, unless an operator has named a
    trusted proxy.

    uvicorn trusts these headers from 127.0.0.1 by default (proxy_headers=True,
    forwarded_allow_ips="127.0.0.1"), and bmserver serves on 127.0.0.1 by default, so every
    client of a default install is "a trusted proxy" and picks the address it is limited by.
    """
    burst = AUTH_FAILURES.burst
    for _ in range(burst):
        _answer_from("127.0.0.1", server, {"X-Api-Key": bmcore.generate_api_key()})
    tally.fault("security: guessed key", burst)
    assert _answer_from("127.0.0.1", server, {"X-Api-Key": bmcore.generate_api_key()}).status == 429
    forged = [
        _answer_from(
            "127.0.0.1",
            server,
            {"X-Api-Key": bmcore.generate_api_key(), "X-Forwarded-For": f"203.0.113.{n}"},
        ).status
        for n in range(1, 4)
    ]
    tally.fault("security: forged X-Forwarded-For", len(forged))
    assert forged == [429, 429, 429], (
        "a guesser escaped the per-address limit by sending X-Forwarded-For: "
        f"{forged}; the access log shows the forged addresses:\n{server.log_tail(5)}"
    )


def test_a_revoked_key_is_refused_at_once(server: ServerProcess, tally: Tally) -> None:
    """A key revoked while the server runs is refused from the very next request on.

    After many successful requests (a cache, if there were one, would be warm), ``bmserver
    keys revoke`` runs in another process: the very next request with the key gets 401, and
    every one after; the account's other key still works.

    The server keeps no cache of keys: every request looks its key's hash up in SQLite
    (SqliteStore.find_api_key), on autocommit read connections that in WAL mode see every
    committed write, so the revocation counts from its commit on.
    """
    key = server.new_key("acme", "ingest", "read")
    for index in range(20):
        payload = _backup("srv01", f"warm {index}")
        assert post_json(server.url, "/api/ingest/backup", key, payload).status == 201
        assert _get(server, key, "/api/devices").status == 200
    printed = server.bmserver("keys", "revoke", f"{bmcore.display_prefix(key)}...")
    assert printed == ""  # the confirmation goes to stderr; the key is not printed
    refused = [
        _get(server, key, "/api/devices"),
        post_json(server.url, "/api/ingest/backup", key, _backup("srv01", "after")),
        _get(server, key, "/api/backups"),
    ]
    assert [answer.status for answer in refused] == [401, 401, 401]
    assert {answer.json()["code"] for answer in refused} == {"invalid_api_key"}
    assert _get(server, server.key, "/api/devices").status == 200
    assert server.query("SELECT count(*) FROM backups WHERE job_name = 'after'") == [(0,)]
    listing = server.bmserver("keys", "list")
    assert f"{bmcore.display_prefix(key)}..." in listing
    assert "revoked" in listing
    tally.accounted(acknowledged=20, found=int(server.query("SELECT count(*) FROM backups")[0][0]))
    _assert_no_key_in_logs(server, [key, server.key])


# --- isolation checks -----------------------------------------------------------------------------


#: Fields that differ between the shared and the control server for the same entry.
_VOLATILE: Final = frozenset({"id", "deviceId", "jobId", "receivedAt", "createdAt", "lastSeenAt"})


def _check_isolation(tenants: Tenants, path: str, params: dict[str, str]) -> None:
    shared = tenants.shared
    pages_a = _pages(shared, tenants.key_a, path, params)
    pages_twin = _pages(tenants.control, tenants.key_twin, path, params)
    pages_b = _pages(shared, tenants.key_b, path, params)
    seen_a = [[_stable(item) for item in items] for items, _, _ in pages_a]
    seen_twin = [[_stable(item) for item in items] for items, _, _ in pages_twin]
    assert seen_a == seen_twin, f"{path}?{params}: A's view depends on B's data"
    for pages, own, foreign, marker in (
        (pages_a, tenants.ids_a, tenants.ids_b, MARKER["B"]),
        (pages_b, tenants.ids_b, tenants.ids_a, MARKER["A"]),
    ):
        for items, _, body in pages:
            _assert_own(items, own, foreign, marker, body)
    # A's cursors, handed to B: the next pages of B's own list, or nothing; never A's.
    for _, cursor, _ in pages_a:
        if cursor is not None:
            answer = _get(shared, tenants.key_b, path, {**params, "cursor": cursor})
            assert answer.status == 200, answer.body
            _assert_own(
                answer.json()["items"], tenants.ids_b, tenants.ids_a, MARKER["A"], answer.body
            )


def _assert_own(
    items: list[dict[str, Any]], own: set[str], foreign: set[str], marker: str, body: bytes
) -> None:
    shown = {item[name] for item in items for name in ("id", "deviceId", "jobId") if item.get(name)}
    assert shown <= own, f"ids of the other account: {shown - own}"
    assert marker.encode() not in body
    assert not [entry_id for entry_id in foreign if entry_id.encode() in body]


def _pages(
    server: ServerProcess, key: str, path: str, params: Mapping[str, str]
) -> list[tuple[list[dict[str, Any]], str | None, bytes]]:
    """Every page of a listing: (items, next cursor, raw body), following the cursors."""
    pages: list[tuple[list[dict[str, Any]], str | None, bytes]] = []
    cursor: str | None = None
    for _ in range(100):  # far more pages than the data can fill
        query = dict(params) if cursor is None else {**params, "cursor": cursor}
        answer = _get(server, key, path, query)
        assert answer.status == 200, answer.body
        document = answer.json()
        cursor = document["nextCursor"]
        pages.append((document["items"], cursor, answer.body))
        if cursor is None:
            return pages
    pytest.fail(f"{path} did not end after 100 pages")


def _stable(value: object) -> object:
    """What an item shows that does not depend on the server: no ids, no reception times."""
    if isinstance(value, dict):
        fields = cast("dict[str, object]", value)  # a JSON object: its keys are strings
        return {name: _stable(inner) for name, inner in fields.items() if name not in _VOLATILE}
    return value


def _full_view(
    server: ServerProcess, key: str, backups: list[str], notifications: list[str]
) -> list[object]:
    """Everything an account can read: every listing, every field, and its entries by id."""
    view: list[object] = [
        [items for items, _, _ in _pages(server, key, path, {})]
        for path in ("/api/devices", "/api/jobs", "/api/backups", "/api/notifications")
    ]
    view.extend(_get(server, key, f"/api/backups/{entry}").json() for entry in backups)
    view.extend(_get(server, key, f"/api/notifications/{entry}").json() for entry in notifications)
    return view


def _never_issued(entry_id: str) -> str:
    """An id of the same shape that no server issued (random ids are 16 hex digits)."""
    kind, _, _ = entry_id.partition("_")
    return f"{kind}_{'f' * 15}0"


def _readable_numbers(cursor: str) -> list[int] | None:
    """The numbers a cursor carries if it is base64url of readable text; None if opaque."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not text.isprintable():
        return None
    return [int(number) for number in re.findall(r"\d+", text)]


# --- logs -----------------------------------------------------------------------------------------


def _secret_forms(key: str) -> list[bytes]:
    """The ways a key or its secret could be stored: as text, its secret part, its raw bytes."""
    secret = key[len(bmcore.display_prefix(key)) :]
    body = key[len(bmcore.API_KEY_PREFIX) :]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return [
        key.encode(),
        secret.encode(),
        secret.encode("utf-16-le"),
        raw,
        raw.hex().encode(),
        base64.b64encode(raw).rstrip(b"="),
    ]


def _leaked(key: str, text: str) -> bool:
    """Whether ``text`` holds the key or any LEAK_WINDOW characters in a row of its secret."""
    secret = key[len(bmcore.display_prefix(key)) :]
    return key in text or any(
        secret[start : start + LEAK_WINDOW] in text
        for start in range(len(secret) - LEAK_WINDOW + 1)
    )


def _assert_no_key_in_logs(server: ServerProcess, keys: list[str]) -> None:
    """No key, part of a key's secret or key-shaped string in any log of ``server``."""
    assert server.log_files, "the server never ran"
    text = server.log_text()
    leaked = [bmcore.display_prefix(key) for key in keys if _leaked(key, text)]
    lines = [line for line in text.splitlines() if any(_leaked(key, line) for key in keys)]
    assert not leaked, f"keys {leaked} are in the server log:\n" + "\n".join(lines[:5])
    assert not KEY_SHAPED.search(text), KEY_SHAPED.findall(text)[:3]


# --- requests -------------------------------------------------------------------------------------


def _get(
    server: ServerProcess, key: str | None, path: str, params: Mapping[str, str] | None = None
) -> Answer:
    target = path if not params else f"{path}?{_query(params)}"
    headers = {} if key is None else {"X-Api-Key": key}
    return request(server.url, "GET", target, headers=headers)


def _query(params: Mapping[str, str]) -> str:
    from urllib.parse import urlencode  # noqa: PLC0415 - only here

    return urlencode(params)


def _answer_from(
    source: str,
    server: ServerProcess,
    headers: Mapping[str, str],
    *,
    method: str = "GET",
    path: str = "/api/devices",
    body: bytes | None = None,
) -> Answer:
    """One request from the loopback address ``source`` (all of 127.0.0.0/8 is loopback)."""
    return request(server.url, method, path, body=body, headers=headers, timeout=30, source=source)


def _raw_from(source: str, server: ServerProcess, data: bytes) -> int:
    """Send raw bytes from ``source``; the status of the answer (0: none)."""
    with socket.create_connection(
        (HOST, server.port), timeout=30, source_address=(source, 0)
    ) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", received)
    status = int(match[1]) if match else 0
    TALLY.sent(status)
    return status


def _fresh_addresses() -> Iterator[str]:
    """Loopback addresses, one per request: no request is refused for its predecessors."""
    for number in range(10, 250):
        yield f"127.0.0.{number}"
    pytest.fail("more requests than addresses")


def _assert_retry_after(answer: Answer) -> None:
    assert answer.json()["code"] == "rate_limited"
    assert answer.headers["retry-after"].isdigit()
    assert int(answer.headers["retry-after"]) >= 1


def _backup(
    device: str,
    job: str,
    sender: str = "script-srv01",
    moment: datetime | None = None,
    status: str = "Success",
    message: str = "ok",
) -> dict[str, Any]:
    return {
        "deviceName": device,
        "jobName": job,
        "timestamp": (moment or datetime.now(UTC)).isoformat(),
        "status": status,
        "message": message,
        "sender": sender,
    }


class _RecordingStore(MemoryStore):
    """A MemoryStore that records every hash it is asked to find a key by."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """Record, then look up as usual."""
        self.asked.append(key_hash)
        return await super().find_api_key(key_hash)
