"""Abuse a key-holder or a stranger can try, against real ``bmserver serve`` processes.

Guesses sent all at once (on SQLite and on PostgreSQL + Redis), reads by the thousand, pages
of the largest entries, a trailing slash under ``curl -L``, control characters in a forwarded
address, a WebSocket upgrade with a key in its query, and query values PostgreSQL cannot take.
The report gets the lock-out count under concurrent guesses on both backends and the peak
memory of maximal pages.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest
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

import bmcore
from bmserver import MAX_PAGE_BYTES, Settings

AUTH_FAILURES: Final = Settings().auth_failure_policy
READS: Final = Settings().read_rate_policy
#: The longest message of emoji a 64 KiB body holds: 4 bytes each in UTF-8, 12 escaped.
EMOJI_MESSAGE: Final = "\N{GRINNING FACE}" * 16_000

Factory = Callable[..., ServerProcess]


def _payload(job: str, moment: datetime, message: str = "ok") -> dict[str, Any]:
    return {
        "deviceName": "srv01",
        "jobName": job,
        "timestamp": moment.isoformat(),
        "status": "Success",
        "message": message,
    }


def _get(server: ServerProcess, key: str | None, path: str) -> Answer:
    return request(server.url, "GET", path, headers={"X-Api-Key": key} if key else {})


@pytest.fixture(params=["sqlite", "postgres+redis"])
def backend_server(
    request: pytest.FixtureRequest, server_factory: Factory
) -> tuple[str, ServerProcess]:
    """A running server on SQLite, or on a PostgreSQL database and a Redis prefix of its own."""
    kind = str(request.param)
    if kind == "sqlite":
        server = server_factory(*UNLIMITED)
    else:
        database: str = request.getfixturevalue("database_url")
        redis: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_namespace")
        server = server_factory(
            *UNLIMITED, "--redis", redis, "--redis-prefix", prefix, database=database
        )
    server.start()
    return kind, server


# --- the lock-out of key guessing -----------------------------------------------------------------


def test_concurrent_guesses_are_locked_out(
    backend_server: tuple[str, ServerProcess], tally: Tally
) -> None:
    """1,000 wrong keys released at once from one address: the burst gets 401, the rest 429.

    Checking the count before the lookup and recording the failure after it let every one of
    them through on PostgreSQL + Redis; charged before the lookup, they cannot.
    """
    kind, server = backend_server
    guesses = scaled(1000, minimum=200)
    keys = [bmcore.generate_api_key() for _ in range(guesses)]
    barrier = threading.Barrier(64)

    def guess(key: str) -> int:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1)  # the first 64 leave together; the rest follow at once
        return _get(server, key, "/api/devices").status

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(guess, keys))
    elapsed = time.monotonic() - began
    tally.fault("security: concurrent guessed key", guesses)
    answered = statuses.count(401)
    refilled = math.ceil(elapsed * 1e9 / AUTH_FAILURES.interval_ns)
    assert answered <= AUTH_FAILURES.burst + refilled, statuses
    assert statuses.count(429) == guesses - answered, sorted(set(statuses))
    assert _get(server, server.key, "/api/devices").status == 429  # right, but unproven
    TALLY.figure(
        f"lock-out under {guesses} concurrent guesses ({kind})",
        f"{answered} answered 401, {guesses - answered} refused 429",
    )


def test_valid_requests_at_once_do_not_lock_their_address_out(
    backend_server: tuple[str, ServerProcess],
) -> None:
    """Many requests with valid keys at once from one address (a NAT): none is refused."""
    _, server = backend_server
    keys = [server.new_key("acme", "read") for _ in range(12)]

    def status(key: str) -> int:
        return _get(server, key, "/api/devices").status

    with concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool:
        statuses = list(pool.map(status, keys * 8))
    assert statuses == [200] * len(statuses)


# --- reads: a quota per key, and pages capped in bytes ----------------------------------------


def test_reads_count_against_a_quota_of_their_own(server_factory: Factory) -> None:
    """200 reads in a row with one key: the read burst passes, then 429; ingest still works."""
    server = server_factory("--rate", "100000/s", "--burst", "100000")
    server.start()
    began = time.monotonic()
    answers = [_get(server, server.key, "/api/backups?limit=1") for _ in range(200)]
    elapsed = time.monotonic() - began
    statuses = [answer.status for answer in answers]
    allowance = READS.burst + math.ceil(elapsed * 1e9 / READS.interval_ns)
    assert statuses[: READS.burst] == [200] * READS.burst
    assert statuses.count(200) <= allowance
    refused = [answer for answer in answers if answer.status == 429]
    assert refused, statuses
    assert all(int(answer.headers["retry-after"]) >= 1 for answer in refused)
    assert all(answer.json()["code"] == "rate_limited" for answer in refused)
    now = datetime.now(UTC)
    assert post_json(server.url, "/api/ingest/backup", server.key, _payload("n", now)).status == 201


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    pytest.fail("no VmHWM in /proc: cannot measure peak memory here")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.fail("no VmRSS in /proc")


def test_maximal_pages_are_capped_and_take_little_memory(
    server_factory: Factory, tally: Tally
) -> None:
    """limit=1000 over entries that escape to 192 kB each, six at once: 1 MiB pages, small peak.

    Before the cap one such page was 192 MB and took some 435 MB of memory. Meanwhile another
    account's ingest is served (its slowest answer is reported, not asserted: timing is the
    benchmarks' business).
    """
    server = server_factory(*UNLIMITED)
    server.start()
    other = server.new_key("other", "ingest")
    count = scaled(300, minimum=60)
    start = datetime.now(UTC) - timedelta(days=1)
    for index in range(count):
        body = json.dumps(
            _payload("big", start + timedelta(seconds=index), EMOJI_MESSAGE), ensure_ascii=False
        ).encode()
        answer = request(
            server.url,
            "POST",
            "/api/ingest/backup",
            body=body,
            headers={"Content-Type": "application/json", "X-Api-Key": server.key},
        )
        assert answer.status == 201, answer.body
    Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # the peak starts again from here
    baseline = _rss_kib(server.pid)

    def read_all() -> tuple[int, int]:
        seen, largest, cursor = 0, 0, ""
        while True:
            page = _get(server, server.key, f"/api/backups?limit=1000{cursor}")
            assert page.status == 200, page.body
            largest = max(largest, len(page.body))
            listing = page.json()
            seen += len(listing["items"])
            if listing["nextCursor"] is None:
                return seen, largest
            cursor = f"&cursor={quote(listing['nextCursor'])}"

    slowest = 0.0
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        readers = [pool.submit(read_all) for _ in range(6)]
        moment = datetime.now(UTC)
        while not all(reader.done() for reader in readers):
            began = time.monotonic()
            posted = post_json(
                server.url, "/api/ingest/backup", other, _payload("small", moment, "ok")
            )
            slowest = max(slowest, time.monotonic() - began)
            assert posted.status == 201
            moment += timedelta(seconds=1)
        results = [reader.result() for reader in readers]
    peak = _peak_rss_kib(server.pid)
    assert all(seen == count for seen, _ in results), results
    assert all(largest <= MAX_PAGE_BYTES for _, largest in results), results
    growth_mib = (peak - baseline) / 1024
    # A generous bound, far below the gigabyte six uncapped pages took.
    assert growth_mib < 64, f"six maximal reads grew the server by {growth_mib:.0f} MiB"
    tally.fault("abuse: maximal page read", 6)
    TALLY.figure(
        "peak memory of maximal pages",
        f"+{growth_mib:.1f} MiB over {baseline / 1024:.0f} MiB for 6 concurrent limit=1000 "
        f"reads of {count} entries of 192 kB (pages of at most {MAX_PAGE_BYTES} bytes); "
        f"another account's slowest ingest meanwhile {slowest * 1000:.0f} ms",
    )


# --- no redirect, escaped addresses, no WebSocket ---------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_l_with_a_trailing_slash_sends_the_key_nowhere(server: ServerProcess) -> None:
    """The real curl -L, a forged Host and a trailing slash: 404, no redirect followed."""
    result = subprocess.run(
        [
            "curl",
            *("-sS", "-L", "-o", "/dev/null", "-w", "%{http_code} %{num_redirects}"),
            *("-X", "POST", "-H", "Host: attacker.example", "-H", f"X-Api-Key: {server.key}"),
            *("-H", "Content-Type: application/json"),
            *("-d", json.dumps(_payload("slash", datetime.now(UTC)))),
            f"{server.url}/api/ingest/backup/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == "404 0", result.stderr
    assert server.count_rows()["backups"] == 0


def _raw(server: ServerProcess, data: bytes) -> bytes:
    with socket.create_connection((HOST, server.port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                head, _, rest = received.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                if len(rest) >= length:
                    break
        return received


def test_a_forwarded_address_is_escaped_in_the_access_log(server_factory: Factory) -> None:
    """X-Forwarded-For from a trusted proxy, with C1 controls in it: logged escaped."""
    server = server_factory(*UNLIMITED, "--forwarded-allow-ips", "127.0.0.1")
    server.start()
    forged = b"203.0.113.7\x85FORGED LINE \x9b31m"
    answer = _raw(
        server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: "
        + forged
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    server.stop()
    logged = b"".join(path.read_bytes() for path in server.log_files)
    assert b"\\x85FORGED LINE \\x9b31m" in logged, logged[-2000:]
    assert "\x85".encode() not in logged
    assert "\x9b".encode() not in logged


def test_a_websocket_upgrade_is_plain_http_and_its_query_is_not_logged(
    server: ServerProcess,
) -> None:
    """With a WebSocket library installed, an upgrade is still HTTP: 401, the key not logged."""
    pytest.importorskip("websockets", reason="the reliability group installs websockets")
    answer = _raw(
        server,
        (
            f"GET /api/backups?api_key={server.key} HTTP/1.1\r\nHost: x\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"missing_api_key" in answer
    server.stop()
    logged = server.log_text()
    secret = server.key[len("bm_") :]
    assert secret[:12] not in logged
    assert '"GET /api/backups" 401' in logged


# --- query values PostgreSQL cannot take ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/backups?deviceName=%00",
        "/api/backups?jobName=a%00",
        "/api/backups?status=%00",
        "/api/backups?sender=%00",
        "/api/notifications?type=%00",
        "/api/jobs?deviceName=%00",
        "/api/backups/bk_%00",
        "/api/notifications/nt_%00",
        f"/api/backups?since={quote('0001-01-01T00:00:00+01:00')}",
        f"/api/notifications?until={quote('9999-12-31T23:59:59-01:00')}",
    ],
)
def test_postgres_answers_a_4xx_where_sqlite_does(
    backend_server: tuple[str, ServerProcess], path: str, tally: Tally
) -> None:
    """A NUL in a filter or an id, an instant out of range in UTC: a 4xx naming it, never 500."""
    _, server = backend_server
    answer = _get(server, server.key, path)
    tally.fault("abuse: value a database cannot take")
    assert answer.status in {400, 404}, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    assert server.is_running()
