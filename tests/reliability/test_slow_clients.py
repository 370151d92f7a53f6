"""Slow and broken clients: the server keeps serving everyone else, in bounded memory.

Issue 6, point 4. Raw sockets trickle headers or a body one byte per tick, send part of a body
and go away, or connect and say nothing, while ordinary clients post and read.

What bmserver bounds, as configured in bmserver/_cli.py (uvicorn 0.54 with its h11 protocol):

- an idle keep-alive connection: closed ``timeout_keep_alive`` (uvicorn's default, 5 s; bmserver
  does not set it) after its last response;
- the header block of a request: h11 refuses one larger than 16 KiB (400), so a client that
  trickles headers forever holds at most that much;
- a body: bmserver reads at most 64 KiB (413), and uvicorn stops reading a connection whose
  unread body passes 64 KiB;
- a request head: due within 5 s of the connection opening or of the previous answer, or the
  connection is closed (bmserver/http/_protocol.py; uvicorn has no such deadline);
- a body's arrival: the app answers 408 after ``Settings.body_timeout_s``;
- a body left unread by an early answer (a 413 on Content-Length, a 404, a GET's body): the
  answer says ``Connection: close`` and the connection is closed (bmserver/http/_protocol.py).

:func:`test_connections_are_closed_by_the_server_s_time_outs` and
:func:`test_answers_given_before_the_body_do_not_hold_connections` check that every connection
without a whole request is closed by one of these. There is no ``limit_concurrency`` (it would
not help: it counts these connections and answers 503 to the well-behaved clients once they
fill it up).
"""

from __future__ import annotations

import contextlib
import http.client
import inspect
import json
import os
import re
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self

import pytest
import uvicorn
from _reliability import HOST, PROFILE, ServerProcess, Tally, post_json, request, scaled

from bmserver import Settings
from bmserver.http._protocol import HEAD_TIMEOUT_S as PROTOCOL_HEAD_TIMEOUT_S

#: One byte per tick on every trickling connection: a slowloris, not a flood.
TICK_S: Final = 0.1
#: Slow connections held at once, shared out among the five kinds.
SLOW_CONNECTIONS: Final = scaled(200, minimum=20)
#: Ordinary clients' posts while the slow ones are attached (each is read back too).
NORMAL_POSTS: Final = scaled(50, minimum=10)
NORMAL_CLIENTS: Final = 10
#: A liveness bound, not a benchmark: an answer later than this means the server is stuck.
LIVENESS_S: Final = 5.0
#: How long the slow connections are held at least.
HOLD_S: Final = 3.0 if PROFILE == "full" else 2.0
#: The server's resident memory may grow by this much while the slow clients are attached.
RSS_GROWTH_LIMIT_BYTES: Final = 200 * 1024 * 1024
#: bmserver leaves uvicorn's keep-alive timeout at its default (bmserver/_cli.py, _serve).
KEEP_ALIVE_S: Final = float(
    inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
)
#: Scheduling slack on a busy machine; the waits end as soon as the server acts.
MARGIN_S: Final = 10.0
#: A request head must arrive within this (bmserver/http/_protocol.py), a body within that.
HEAD_TIMEOUT_S: Final = PROTOCOL_HEAD_TIMEOUT_S
BODY_TIMEOUT_S: Final = Settings().body_timeout_s
#: How much longer than the keep-alive connection the unfinished requests are watched.
UNFINISHED_WATCH_S: Final = max(HEAD_TIMEOUT_S, BODY_TIMEOUT_S) + MARGIN_S
#: h11's default limit on a request's header block (uvicorn's h11_max_incomplete_event_size).
HEADER_LIMIT_BYTES: Final = 16 * 1024
#: Anything shaped like an API key (a display prefix is bm_ and only 8 characters).
KEY_SHAPED: Final = re.compile(r"bm_[A-Za-z0-9_-]{32,}")
#: The access log line of an ingest request whose client went away mid-body.
CUT_OFF_LINE: Final = '"POST /api/ingest/backup" 400'

#: Connections answered before their body came, then held silent (the body trick).
BODY_TRICKS: Final = scaled(200, minimum=20)
#: Descriptors the server may hold beyond its baseline after the trick (none are expected).
DESCRIPTOR_SLACK: Final = 5
#: A chunked body whose chunk size is not hex: h11 refuses it once the head has been read.
MALFORMED_CHUNK: Final = b"zz\r\n{}\r\n0\r\n\r\n"
#: uvicorn's warning for any request h11 cannot parse; it names no request.
INVALID_HTTP_WARNING: Final = "Invalid HTTP request received."

TRICKLED_HEADERS: Final = "slow: trickled headers"
TRICKLED_BODY: Final = "slow: trickled body"
PARTIAL_BODY_FIN: Final = "slow: partial body, then close"
PARTIAL_BODY_RST: Final = "slow: partial body, then reset"
IDLE: Final = "slow: idle connection"
KINDS: Final = (TRICKLED_HEADERS, TRICKLED_BODY, PARTIAL_BODY_FIN, PARTIAL_BODY_RST, IDLE)
#: The kinds that send whole headers: the app sees a request, and a 400 when the body is cut.
WITH_HEADERS: Final = frozenset({TRICKLED_BODY, PARTIAL_BODY_FIN, PARTIAL_BODY_RST})


def test_slow_clients_do_not_keep_the_server_from_serving_everyone_else(
    server: ServerProcess, tally: Tally, slow_notes: list[str]
) -> None:
    """Slow and broken connections held at once do not starve ordinary clients.

    While many connections trickle headers or bodies, drop mid-body or sit idle, ordinary
    clients' posts and reads all succeed, each within the liveness bound; no unfinished body is
    stored; the server's memory stays bounded; nothing is logged as a traceback or an error.
    """
    rows_before = server.count_rows()
    rss_before = _rss_bytes(server.pid)
    with _SlowClients(server, tally) as slow:
        for index in range(SLOW_CONNECTIONS):
            slow.attach(KINDS[index % len(KINDS)], index)
        slow.start()
        started = time.monotonic()
        latencies = _ordinary_clients(server, NORMAL_POSTS)
        rss_during = _rss_bytes(server.pid)
        # Hold on a little longer: the trickling goes on after the ordinary clients are done.
        time.sleep(max(0.0, HOLD_S - (time.monotonic() - started)))
        rss_held = _rss_bytes(server.pid)
        closed_early = slow.closed_by_server()
        trickled = slow.bytes_trickled
    # Each cut-off request is answered 400 (and logged) once the server sees the disconnect.
    cut_off = sum(
        1 for index in range(SLOW_CONNECTIONS) if KINDS[index % len(KINDS)] in WITH_HEADERS
    )
    _wait_for_log(server, CUT_OFF_LINE, cut_off)
    rss_after = _rss_bytes(server.pid)

    slow_notes.extend(
        [
            (
                f"slow connections: {SLOW_CONNECTIONS} (5 kinds), held {HOLD_S:.0f} s, "
                f"{trickled} bytes trickled; closed by the server meanwhile: "
                f"{dict(closed_early) or 'none'}"
            ),
            (
                f"ordinary requests while held: {len(latencies)}, slowest "
                f"{max(latencies):.3f} s (liveness bound {LIVENESS_S:.0f} s)"
            ),
            (
                f"server VmRSS: before {_mib(rss_before)}, during {_mib(rss_during)}, "
                f"held {_mib(rss_held)}, after {_mib(rss_after)} MiB"
            ),
        ]
    )
    assert max(latencies) < LIVENESS_S, sorted(latencies)[-5:]
    peak = max(rss_during, rss_held, rss_after)
    assert peak - rss_before < RSS_GROWTH_LIMIT_BYTES, (rss_before, peak)
    # Only the ordinary clients' entries: no trickled or cut-off body was stored.
    rows_after = server.count_rows()
    assert rows_after == {
        "backups": rows_before["backups"] + NORMAL_POSTS,
        "notifications": rows_before["notifications"],
    }
    assert server.query("SELECT count(*) FROM backups WHERE job_name LIKE 'slow-%'") == [(0,)]
    tally.accounted(acknowledged=NORMAL_POSTS, found=rows_after["backups"] - rows_before["backups"])
    _assert_clean_log(server)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_a_client_that_disconnects_mid_body_stores_nothing_and_logs_no_traceback(
    server: ServerProcess, tally: Tally, reset: bool
) -> None:
    """A client that goes away mid-body leaves no row and no traceback behind.

    A body cut off anywhere (right after the headers, after one byte, half-way, one byte
    short), by a clean close or a TCP reset, stores no row and logs no traceback; the server
    answers on, and the next whole request is stored.
    """
    rows_before = server.count_rows()
    body = _slow_payload(0)
    cuts = (0, 1, len(body) // 2, len(body) - 1)
    for cut in cuts:
        with socket.create_connection((HOST, server.port), timeout=LIVENESS_S) as connection:
            connection.sendall(_post_head(server.key, len(body), expect_continue=True))
            # uvicorn sends 100 Continue when the app first asks for the body: from then on
            # the request is in bmserver's hands, and the cut is truly mid-body.
            assert _read_status(connection) == 100
            connection.sendall(body[:cut])
            _close(connection, reset=reset)
        tally.sent(0)
        tally.fault(PARTIAL_BODY_RST if reset else PARTIAL_BODY_FIN)
    _wait_for_log(server, CUT_OFF_LINE, len(cuts))
    answer = post_json(server.url, "/api/ingest/backup", server.key, json.loads(_slow_payload(1)))
    assert answer.status == 201, answer.body
    assert server.count_rows() == {
        "backups": rows_before["backups"] + 1,
        "notifications": rows_before["notifications"],
    }
    _assert_clean_log(server)


def test_a_client_cannot_grow_a_header_block_without_bound(
    server: ServerProcess, tally: Tally
) -> None:
    """A client's header block costs the server at most h11's 16 KiB.

    However many header bytes a client sends, beyond the limit the server answers 400 and
    closes the connection; others are served on.
    """
    with socket.create_connection((HOST, server.port), timeout=LIVENESS_S + MARGIN_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        with contextlib.suppress(OSError):  # the server closes while we still send: expected
            while sent < 4 * HEADER_LIMIT_BYTES:
                sock.sendall(b"a" * 1024)
                sent += 1024
        status = _read_status(sock)
    tally.sent(status)
    tally.fault("slow: endless header block")
    assert status == 400
    assert request(server.url, "GET", "/healthz").status == 200
    _assert_clean_log(server, allowed_warnings=("Invalid HTTP request received.",))


def test_connections_are_closed_by_the_server_s_time_outs(
    server: ServerProcess, tally: Tally, slow_notes: list[str]
) -> None:
    """Every connection without a whole request is closed by a time-out, not held for ever.

    An idle keep-alive connection: uvicorn's keep-alive timeout. A silent new connection, or
    headers cut off: bmserver's head deadline (bmserver/http/_protocol.py), since uvicorn has none.
    A body cut off: the app's body time-out, answered 408.
    """
    body = _slow_payload(0)
    head = _post_head(server.key, len(body))
    unfinished = {
        "silent new connection": b"",
        "headers cut off": head[:40],
        "body cut off": head + body[:10],
    }
    sockets: dict[str, socket.socket] = {}
    try:
        for name, data in unfinished.items():
            sockets[name] = socket.create_connection((HOST, server.port), timeout=LIVENESS_S)
            sockets[name].sendall(data)
            tally.fault(f"slow: {name}")
        keep_alive = http.client.HTTPConnection(HOST, server.port, timeout=LIVENESS_S)
        keep_alive.request("GET", "/healthz")
        response = keep_alive.getresponse()
        response.read()
        tally.sent(response.status)
        assert response.status == 200
        assert not response.will_close, "the server did not keep the connection alive"
        assert keep_alive.sock is not None
        sockets["idle keep-alive"] = keep_alive.sock
        answered = time.monotonic()
        closed = _watch_closes(
            sockets,
            first="idle keep-alive",
            first_deadline=answered + KEEP_ALIVE_S + MARGIN_S,
            then_s=UNFINISHED_WATCH_S,
        )
    finally:
        for sock in sockets.values():
            _close(sock, reset=False)
    for name in unfinished:
        tally.sent(closed[name][0] if name in closed else 0)

    assert "idle keep-alive" in closed, (
        f"an idle keep-alive connection was still open {KEEP_ALIVE_S + MARGIN_S:.0f} s after "
        "its response"
    )
    slow_notes.append(
        f"idle keep-alive connection closed by the server "
        f"{closed['idle keep-alive'][1] - answered:.1f} s after its response "
        f"(timeout_keep_alive {KEEP_ALIVE_S:.0f} s)"
    )
    still_open = [name for name in unfinished if name not in closed]
    assert not still_open, f"still open {UNFINISHED_WATCH_S:.0f} s later: {', '.join(still_open)}"
    opened = answered  # every unfinished connection was opened just before the keep-alive one
    for name in ("silent new connection", "headers cut off"):
        assert closed[name][1] - opened <= HEAD_TIMEOUT_S + MARGIN_S, name
    status, when = closed["body cut off"]
    assert status == 408, f"the body time-out answered {status}"
    assert when - opened <= BODY_TIMEOUT_S + MARGIN_S
    slow_notes.append(
        "unfinished requests closed after "
        + ", ".join(f"{name} {closed[name][1] - opened:.1f} s" for name in unfinished)
        + f" (head deadline {HEAD_TIMEOUT_S:.0f} s, body time-out {BODY_TIMEOUT_S:.0f} s)"
    )


def test_answers_given_before_the_body_do_not_hold_connections(
    server: ServerProcess, tally: Tally
) -> None:
    """Connections answered before their promised body came are closed, however they go on.

    Each asks for an answer that the app gives without reading the body (a GET /healthz, a 404
    and a 405 with a Content-Length of 1 MB, a POST refused 413 on its Content-Length), reads
    it, sends one more byte and falls silent; none sends a key. The server closes every one,
    and its open file descriptors return to where they were while the clients still hold on.
    """
    tricks = {
        "GET /healthz with a body": (200, "GET", "/healthz", 1_000_000),
        "404 with a body": (404, "GET", "/nowhere", 1_000_000),
        "405 with a body": (405, "PUT", "/healthz", 1_000_000),
        "413 on Content-Length": (413, "POST", "/api/ingest/backup", 10_000_000),
    }
    # The store's files are opened by the first request that reads: before the baseline.
    assert (
        request(server.url, "GET", "/api/backups", headers={"X-Api-Key": server.key}).status == 200
    )
    baseline = _settled_descriptors(server.pid)
    peak = baseline
    sockets: dict[str, socket.socket] = {}
    answers: dict[str, set[tuple[int, bool]]] = {name: set() for name in tricks}
    try:
        for index in range(BODY_TRICKS):
            name = list(tricks)[index % len(tricks)]
            _, method, path, length = tricks[name]
            sock = socket.create_connection((HOST, server.port), timeout=LIVENESS_S + MARGIN_S)
            sockets[f"{name} #{index}"] = sock
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Length: {length}\r\n\r\n".encode()
            )
            status, close = _read_answer(sock)
            tally.sent(status)
            tally.fault(f"slow: {name}, then one byte")
            answers[name].add((status, close))
            with contextlib.suppress(OSError):  # the server may have closed already: expected
                sock.sendall(b"x")
            peak = max(peak, _descriptors(server.pid))
        answered = time.monotonic()
        closed = _watch_closes(
            sockets,
            first=next(iter(sockets)),
            first_deadline=answered + UNFINISHED_WATCH_S,
            then_s=UNFINISHED_WATCH_S,
        )
        # Measured while the clients still hold their sockets: only the server's closing counts.
        after = _descriptors_down_to(server.pid, baseline + DESCRIPTOR_SLACK)
    finally:
        for sock in sockets.values():
            _close(sock, reset=False)
    tally.figure("descriptors after the body trick", f"{after} (baseline {baseline}, peak {peak})")
    still_open = sorted(set(sockets) - set(closed))
    assert not still_open, f"{len(still_open)} still open, e.g. {still_open[:3]}"
    assert after <= baseline + DESCRIPTOR_SLACK, (baseline, peak, after)
    assert answers == {name: {(trick[0], True)} for name, trick in tricks.items()}, (
        "(status, Connection: close) of each kind"
    )
    _assert_clean_log(server)


@pytest.mark.parametrize(
    ("method", "path", "after_continue"),
    [
        ("GET", "/healthz", False),
        ("POST", "/api/ingest/backup", False),
        ("POST", "/api/ingest/backup", True),
    ],
    ids=["healthz", "ingest", "ingest, the app reading"],
)
def test_a_malformed_chunked_body_is_answered_and_logged_once(
    server: ServerProcess, tally: Tally, method: str, path: str, *, after_continue: bool
) -> None:
    """A chunked body that is not valid HTTP: one answer, 400 malformed_http, one log line.

    Sent with its head, or once the app is reading the body (after 100 Continue), the answer
    is a single 400 problem; the server's log holds exactly one line for the request, with
    400 (never the 200 the app would have answered), and no traceback.
    """
    line = f'"{method} {path}" '
    logged_before = server.log_text()
    logged_lines = logged_before.count(line)
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n"
    with socket.create_connection((HOST, server.port), timeout=LIVENESS_S + MARGIN_S) as sock:
        if after_continue:
            sock.sendall(f"{head}Expect: 100-continue\r\n\r\n".encode())
            assert _read_status(sock) == 100
            sock.sendall(MALFORMED_CHUNK)
        else:
            sock.sendall(f"{head}\r\n".encode() + MALFORMED_CHUNK)
        received = _rest_until_closed(sock)
    statuses = [
        int(status) for status in re.findall(rb"^HTTP/1\.1 ([2-5]\d\d) ", received, re.MULTILINE)
    ]
    tally.sent(statuses[0] if statuses else 0)
    tally.fault("hostile: malformed chunk size")
    assert statuses == [400], received
    assert b'"code": "malformed_http"' in received, received

    _wait_for_log(server, line, logged_lines + 1)
    # One more request, logged after the malformed one's: its line, if any, is in by then.
    assert request(server.url, "GET", "/openapi.json").status == 200
    _wait_for_log(server, '"GET /openapi.json" 200', 1)
    new = server.log_text()[len(logged_before) :]
    lines = [entry for entry in new.splitlines() if line in entry]
    assert len(lines) == 1, lines
    assert f"{line}400 " in lines[0], lines
    _assert_clean_log(server, allowed_warnings=(INVALID_HTTP_WARNING,))


def test_no_key_shaped_string_in_any_log_of_the_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """No log file of any server of the reliability run so far holds an API key.

    Every ServerProcess logs under the session's temporary folder. Under nox -s reliability
    (the files in name order) this module runs last, so this covers every server of the suite;
    run otherwise, it covers those that ran before it. A display prefix is bm_ and 8
    characters; anything longer of the key alphabet after bm_ is a key, or part of one.
    """
    found: dict[str, list[str]] = {}
    logs = sorted(tmp_path_factory.getbasetemp().rglob("server-*.log"))
    for log in logs:
        leaked = KEY_SHAPED.findall(log.read_text(encoding="utf-8", errors="replace"))
        if leaked:
            found[str(log)] = sorted(set(leaked))[:5]
    assert logs, "no server log found: this test must run after the others"
    assert not found, f"key-shaped strings in server logs: {found}"


# --- slow clients ---------------------------------------------------------------------------------


@dataclass
class _Slow:
    """One slow connection: what it still has to trickle, and when it hangs up."""

    kind: str
    sock: socket.socket
    pending: bytes
    hang_up_tick: int | None
    open: bool = True


class _SlowClients:
    """Raw connections of the five kinds; a thread sends one byte per tick on the tricklers."""

    def __init__(self, server: ServerProcess, tally: Tally) -> None:
        self._server = server
        self._tally = tally
        self._clients: list[_Slow] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._lock = threading.Lock()
        self._failures: list[BaseException] = []
        self.bytes_trickled = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=LIVENESS_S)
        # Every connection is closed here, before the fixture stops the server: uvicorn would
        # otherwise wait its graceful-shutdown time (30 s) for the requests still reading a body.
        for client in self._clients:
            if client.open:
                self._hang_up(client)
        if self._failures and error is None:
            raise self._failures[0]

    def attach(self, kind: str, index: int) -> None:
        """Open one connection of ``kind`` and send what it sends at once."""
        body = _slow_payload(index)
        head = _post_head(self._server.key, len(body))
        sock = socket.create_connection((HOST, self._server.port), timeout=LIVENESS_S)
        hold_ticks = int(HOLD_S / TICK_S)
        first, pending, hang_up = b"", b"", None
        if kind == TRICKLED_HEADERS:
            pending = head + body
        elif kind == TRICKLED_BODY:
            first, pending = head, body
        elif kind in {PARTIAL_BODY_FIN, PARTIAL_BODY_RST}:
            # Hang up at staggered ticks over the hold, at least two ticks after sending.
            first, hang_up = head + body[: len(body) // 2], 2 + index % (hold_ticks - 2)
        if first:
            sock.sendall(first)
        self._clients.append(_Slow(kind, sock, pending, hang_up))
        self._tally.fault(kind)

    def start(self) -> None:
        """Start trickling and hanging up."""
        self._thread.start()

    def closed_by_server(self) -> Counter[str]:
        """How many connections of each kind the server closed or answered so far."""
        with self._lock:
            clients = [client for client in self._clients if client.open]
        closed: Counter[str] = Counter()
        for client in clients:
            if _readable(client.sock):
                closed[client.kind] += 1
        return closed

    def _run(self) -> None:
        tick = 0
        try:
            while not self._stop.wait(TICK_S):
                tick += 1
                with self._lock:
                    for client in self._clients:
                        self._step(client, tick)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            self._failures.append(error)

    def _step(self, client: _Slow, tick: int) -> None:
        if not client.open:
            return
        if client.hang_up_tick == tick:
            self._hang_up(client)
        elif client.pending:
            try:
                client.sock.send(client.pending[:1])
            except OSError:
                return  # the server closed it: closed_by_server() and _hang_up() see to it
            client.pending = client.pending[1:]
            self.bytes_trickled += 1

    def _hang_up(self, client: _Slow) -> None:
        status = _status_of(_drain(client.sock))
        _close(client.sock, reset=client.kind == PARTIAL_BODY_RST)
        client.open = False
        self._tally.sent(status)


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` is readable now (the server answered or closed it), without waiting."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def _ordinary_clients(server: ServerProcess, count: int) -> list[float]:
    """``count`` posts, each read back by its Location, from a few threads; their latencies."""
    start = datetime.now(UTC)

    def one(index: int) -> list[float]:
        payload = {
            "deviceName": "ordinary-srv",
            "jobName": f"ordinary-{index}",
            "timestamp": (start - timedelta(seconds=index)).isoformat(),
            "status": "Success",
            "message": f"ordinary client {index}",
        }
        began = time.monotonic()
        created = post_json(server.url, "/api/ingest/backup", server.key, payload)
        posted = time.monotonic()
        assert created.status == 201, created.body
        read = request(
            server.url,
            "GET",
            created.headers["location"],
            headers={"X-Api-Key": server.key},
            timeout=LIVENESS_S + MARGIN_S,
        )
        done = time.monotonic()
        assert read.status == 200, read.body
        assert read.json()["jobName"] == payload["jobName"]
        assert read.json()["message"] == payload["message"]
        return [posted - began, done - posted]

    with ThreadPoolExecutor(NORMAL_CLIENTS) as pool:
        return [latency for pair in pool.map(one, range(count)) for latency in pair]


# --- helpers --------------------------------------------------------------------------------------


def _slow_payload(index: int) -> bytes:
    """A valid backup body: stored if it ever arrived whole (job name slow-<index>)."""
    return json.dumps(
        {
            "deviceName": "slow-srv",
            "jobName": f"slow-{index}",
            "timestamp": datetime.now(UTC).isoformat(),
            "status": "Success",
            "message": "a body that never arrives whole " + "x" * 100,
        }
    ).encode()


def _post_head(key: str, length: int, *, expect_continue: bool = False) -> bytes:
    expect = "Expect: 100-continue\r\n" if expect_continue else ""
    return (
        f"POST /api/ingest/backup HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: application/json\r\nX-Api-Key: {key}\r\n"
        f"Content-Length: {length}\r\n{expect}\r\n"
    ).encode()


def _close(sock: socket.socket, *, reset: bool) -> None:
    """Close; with ``reset``, abortively (SO_LINGER 0: the peer gets a TCP RST, not a FIN)."""
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _drain(sock: socket.socket) -> bytes:
    """Whatever the server has sent on ``sock`` so far, without waiting."""
    received = b""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _read_status(sock: socket.socket) -> int:
    """The status of the next response's status line (0 if the server closed first)."""
    received = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return _status_of(received)


def _status_of(received: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", received)
    return int(match[1]) if match else 0


def _watch_closes(
    sockets: dict[str, socket.socket], *, first: str, first_deadline: float, then_s: float
) -> dict[str, tuple[int, float]]:
    """Watch connections for the server closing them.

    Waits until the server closes ``first`` (at the latest by ``first_deadline``), then
    ``then_s`` more. Returns, for each connection the server closed, the status it answered
    (0: none) and when it closed (monotonic).
    """
    closed: dict[str, tuple[int, float]] = {}
    received = dict.fromkeys(sockets, b"")
    deadline = first_deadline
    with selectors.DefaultSelector() as selector:
        for name, sock in sockets.items():
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, name)
        while len(closed) < len(sockets) and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                name = str(key.data)
                try:
                    chunk = sockets[name].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # a reset is a close too
                    chunk = b""
                if chunk:
                    received[name] += chunk
                    continue
                selector.unregister(sockets[name])
                closed[name] = (_status_of(received[name]), time.monotonic())
                if name == first:
                    deadline = time.monotonic() + then_s
    return closed


def _read_answer(sock: socket.socket) -> tuple[int, bool]:
    """The status of the next whole response on ``sock``, and whether it says Connection: close."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        response.read()
    except (OSError, http.client.HTTPException):
        return 0, False
    return response.status, response.getheader("connection", "").lower() == "close"


def _rest_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes ``sock`` (a reset is a close too)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _descriptors(pid: int) -> int:
    """How many file descriptors the process has open, from /proc/<pid>/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))  # noqa: PTH208 - /proc


def _settled_descriptors(pid: int) -> int:
    """The process's descriptor count once it holds still (connections just closed are gone)."""
    deadline = time.monotonic() + LIVENESS_S
    counts = [_descriptors(pid)]
    while len(set(counts[-4:])) > 1 or len(counts) < 4:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling /proc, not a timing assumption
        counts.append(_descriptors(pid))
    return counts[-1]


def _descriptors_down_to(pid: int, bound: int) -> int:
    """The process's descriptor count once it is at most ``bound``, or when waiting ends."""
    deadline = time.monotonic() + LIVENESS_S + MARGIN_S
    while (count := _descriptors(pid)) > bound and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc, not a timing assumption
    return count


def _rss_bytes(pid: int) -> int:
    """The process's resident set size, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:  # noqa: PTH123 - /proc
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.fail(f"no VmRSS in /proc/{pid}/status")


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f}"


def _wait_for_log(server: ServerProcess, text: str, count: int) -> None:
    """Wait until the server's log holds ``count`` lines with ``text`` (the disconnects seen)."""
    deadline = time.monotonic() + LIVENESS_S + MARGIN_S
    while (found := server.log_text().count(text)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{found} of {count} log lines {text!r}:\n{server.log_tail()}")
        time.sleep(0.05)  # polling the log file, not a timing assumption


def _assert_clean_log(server: ServerProcess, allowed_warnings: tuple[str, ...] = ()) -> None:
    """No traceback, error or unexpected warning in the server's log, and no API key."""
    text = server.log_text()
    assert "Traceback" not in text, text
    problems = [
        line
        for line in text.splitlines()
        if line.startswith(("ERROR", "CRITICAL"))
        or (line.startswith("WARNING") and not line.endswith(allowed_warnings))
    ]
    assert not problems, "\n".join(problems)
    assert server.key not in text
    assert not KEY_SHAPED.search(text), KEY_SHAPED.findall(text)[:3]


# --- the notes at the end of the run --------------------------------------------------------------


class _Notes:
    """Lines for the end of the run: the report's Tally has no place for free-form figures."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print the notes after the reliability report."""
        if self.lines:
            terminalreporter.section("slow clients")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def slow_notes(pytestconfig: pytest.Config) -> list[str]:
    """Lines printed at the end of the run (a plugin registered once for the session)."""
    notes = _Notes()
    pytestconfig.pluginmanager.register(notes, "bm-slow-client-notes")
    return notes.lines
