"""Hostile and malformed input against a real ``bmserver serve`` (issue 6, point 1).

One server process serves the whole module over a real loopback socket. It is fed a
hand-written corpus (invalid UTF-8, lone surrogates, NUL bytes, megabyte strings, deep nesting,
duplicate keys, wrong types, huge integers, non-object bodies, wrong content types and
encodings, gzip bombs, truncated bodies, oversized headers, malformed HTTP, keys outside the
header), hypothesis-generated payloads and bytes, and schemathesis cases generated from the
server's own ``/openapi.json``.

Every answer goes through :func:`check_answer` (never a 5xx; every 4xx an RFC 9457 problem),
and around every request the entry tables are counted: they grow by one row for a 201 and by
nothing otherwise, so a rejected request provably wrote nothing. The last test checks the
module as a whole: at least ``scaled(10_000)`` requests, no 5xx, no connection failure but the
deliberate ones, and a valid request still stored and readable.

The module relies on running its tests in order on one worker (pytest's default; with xdist,
use ``--dist loadfile``), because the last test judges what the earlier ones sent.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import http.client
import itertools
import json
import socket
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, cast

import pytest
import requests
import schemathesis
import schemathesis.checks
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode

import bmcore
from bmserver import MAX_BODY_BYTES, PROBLEM_CONTENT_TYPE

BACKUP: Final = "/api/ingest/backup"
NOTIFICATION: Final = "/api/ingest/notification"
_TABLES: Final = {BACKUP: "backups", NOTIFICATION: "notifications"}
_FIELDS: Final = {
    BACKUP: ("deviceName", "jobName", "timestamp", "status", "message", "sender"),
    NOTIFICATION: ("deviceName", "timestamp", "severity", "type", "jobName", "message", "sender"),
}
_OPTIONAL: Final = {BACKUP: {"sender"}, NOTIFICATION: {"jobName", "message", "sender"}}
_PROBLEM_TYPE_PREFIX: Final = "urn:bm-ingest:problem:"
# The other loopback addresses this module sends from. The server throttles failed
# authentications per client address, so requests that are meant to fail authentication come
# from their own addresses and never lock the valid requests of 127.0.0.1 out.
_NO_KEY_SOURCE: Final = "127.0.0.2"
_WRONG_KEY_SOURCE: Final = "127.0.0.3"
_BAD_KEY_CORPUS_SOURCE: Final = "127.0.0.4"
# Generous: the bombs are refused before they are inflated, so the real growth is near zero.
_RSS_GROWTH_LIMIT_KIB: Final = 300 * 1024
_MIB: Final = 1024 * 1024
_TIMEOUT_S: Final = 30.0

# Hypothesis: bounded counts, no deadline (a shared machine, and a real server behind).
_SUPPRESSED: Final = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]


def _examples(full: int, *also: HealthCheck) -> settings:
    return settings(
        max_examples=scaled(full), deadline=None, suppress_health_check=[*_SUPPRESSED, *also]
    )


# --- the verdict on every answer -----------------------------------------------------------------


def check_answer(answer: Answer) -> None:
    """Never a 5xx; every 4xx an RFC 9457 problem whose fields bmserver always sends."""
    shown = f"{answer.status} {dict(answer.headers)} {answer.body[:600]!r}"
    assert 200 <= answer.status < 500, f"a server error or an unexpected status: {shown}"
    if answer.status < 400:
        return
    media = answer.headers.get("content-type", "").partition(";")[0].strip().lower()
    assert media == PROBLEM_CONTENT_TYPE, f"a 4xx that is not a problem: {shown}"
    parsed: object = json.loads(answer.body)
    assert isinstance(parsed, dict), f"a problem that is not a JSON object: {shown}"
    problem = cast("dict[str, object]", parsed)
    for name in ("type", "title", "detail", "code"):
        assert isinstance(problem.get(name), str), f"problem field {name} is missing: {shown}"
        assert problem[name], f"problem field {name} is empty: {shown}"
    assert type(problem.get("status")) is int, f"problem status is not an integer: {shown}"
    assert problem["status"] == answer.status, f"problem status differs from HTTP's: {shown}"
    assert problem["type"] == f"{_PROBLEM_TYPE_PREFIX}{problem['code']}", shown
    errors = problem.get("errors", [])
    assert isinstance(errors, list), shown
    for error in cast("list[object]", errors):
        assert isinstance(error, dict), shown
        fields = cast("dict[str, object]", error)
        assert all(isinstance(fields.get(name), str) for name in ("field", "code", "message"))
    if answer.status == 429:
        assert answer.headers.get("retry-after", "").isdigit(), f"429 without Retry-After: {shown}"
    if answer.status == 405:
        assert answer.headers.get("allow"), f"405 without Allow: {shown}"


def _problem_code(answer: Answer) -> str | None:
    if answer.status < 400:
        return None
    return str(answer.json()["code"])


# --- the module's server and what the module sent it -------------------------------------------


def _now_iso(hours_ago: float = 1.0) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()


@dataclass
class Target:
    """The module's server, the keys it knows, and what this module sent it."""

    server: ServerProcess
    read_only_key: str
    #: A key with every scope, ingest, read and manage: the fuzzing's "all-scopes key".
    all_scopes_key: str
    #: The suite's status counts when this module began; the module's own are the difference.
    baseline: collections.Counter[int]
    #: Requests this module left unanswered on purpose (closed mid-request, or cut by the server).
    unanswered_on_purpose: int = 0
    serial: Iterator[int] = field(default_factory=itertools.count)

    @property
    def key(self) -> str:
        """An API key with the ingest and read scopes."""
        return self.server.key

    def json_headers(self, **extra: str) -> dict[str, str]:
        """JSON content type and the valid key, plus ``extra``."""
        return {"Content-Type": "application/json", "X-Api-Key": self.key, **extra}

    def valid_payload(self, path: str) -> dict[str, object]:
        """A valid payload for ``path`` on a device of its own: never a duplicate, never a 409."""
        device = f"hostile-{next(self.serial)}"
        if path == BACKUP:
            return {
                "deviceName": device,
                "jobName": "Nightly Full Backup",
                "timestamp": _now_iso(),
                "status": "Success",
                "message": "Backup completed.",
                "sender": "test_hostile",
            }
        return {
            "deviceName": device,
            "timestamp": _now_iso(),
            "severity": "warning",
            "type": "disk_space_low",
            "jobName": "Nightly Full Backup",
            "message": "Drive C: has 9% free.",
            "sender": "test_hostile",
        }

    def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """One request on a new connection, judged: :func:`check_answer`, rows only for a 201."""
        before = self.server.count_rows()
        answer = request(self.server.url, method, path, body=body, headers=headers)
        self.judge(answer, before, path, what=f"{method} {path}")
        return answer

    def exchange(
        self,
        data: bytes | Iterable[bytes],
        *,
        source: str = HOST,
        close_early: bool = False,
    ) -> Answer | None:
        """Raw bytes over a new socket; the answer, or None if there was none.

        The server may answer before it has read everything (a 413 on Content-Length) and
        close: a failed send is then not an error, the answer is still read. With
        ``close_early`` the socket is closed right after sending, without reading.
        """
        with socket.create_connection(
            (HOST, self.server.port), timeout=_TIMEOUT_S, source_address=(source, 0)
        ) as connection:
            chunks = [data] if isinstance(data, bytes) else data
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for chunk in chunks:
                    connection.sendall(chunk)
            if close_early:
                TALLY.sent(0)
                self.unanswered_on_purpose += 1
                return None
            response = http.client.HTTPResponse(connection)
            try:
                response.begin()
                answer = Answer(
                    response.status,
                    {name.lower(): value for name, value in response.getheaders()},
                    response.read(),
                )
            except (OSError, http.client.HTTPException):
                TALLY.sent(0)
                return None
            finally:
                response.close()
        TALLY.sent(answer.status)
        return answer

    def judge(self, answer: Answer, before: Mapping[str, int], path: str, *, what: str) -> None:
        """Check an answer and the rows it may have written; on failure show the server's log."""
        after = self.server.count_rows()
        expected = dict(before)
        if answer.status == 201:
            expected[_TABLES[path.partition("?")[0]]] += 1
        rows = f"{what}: rows went from {dict(before)} to {after} for a {answer.status}"
        try:
            check_answer(answer)
            assert after == expected, rows
            assert self.server.is_running(), "the server process died"
        except AssertionError as error:
            if after != expected:  # a 5xx that also wrote a row: say both
                error.add_note(rows)
            error.add_note(f"server log (tail):\n{self.server.log_tail()}")
            raise

    def assert_still_serving(self) -> None:
        """A valid backup is stored (201) and reads back the same (GET on its Location)."""
        payload = self.valid_payload(BACKUP)
        before = self.server.count_rows()
        answer = post_json(self.server.url, BACKUP, self.key, payload)
        self.judge(answer, before, BACKUP, what="the valid backup after hostile input")
        assert answer.status == 201, answer.body
        created = answer.json()
        assert created["kind"] == "backup"
        assert created["duplicate"] is False
        assert created["outcome"] == "Success"
        assert created["warnings"] == []
        assert created["ignoredFields"] == []
        location = answer.headers["location"]
        assert location == f"/api/backups/{created['id']}"
        stored = self.send("GET", location, headers={"X-Api-Key": self.key})
        assert stored.status == 200, stored.body
        found = stored.json()
        for name in ("deviceName", "jobName", "status", "message", "sender"):
            assert found[name] == payload[name], (name, found, payload)
        assert datetime.fromisoformat(found["timestamp"]) == datetime.fromisoformat(
            str(payload["timestamp"])
        )


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, tally: Tally) -> Iterator[Target]:
    """One ``bmserver serve`` for the whole module, with a generous rate (not under test here)."""
    server = ServerProcess(tmp_path_factory.mktemp("hostile"), *UNLIMITED)
    made = Target(
        server,
        read_only_key=server.new_key("acme", "read"),
        all_scopes_key=server.new_key("acme", "ingest", "read", "manage"),
        baseline=collections.Counter(tally.statuses),
    )
    server.start()
    try:
        yield made
    finally:
        server.stop()


# --- the hand-written corpus --------------------------------------------------------------------

Payload = dict[str, object]
BodyOf = Callable[[Payload], bytes]


@dataclass(frozen=True)
class Sample:
    """One hostile request: its report kind, body, expected statuses and problem code."""

    kind: str
    body: BodyOf
    expect: frozenset[int]
    code: str | None = None
    path: str = BACKUP
    method: str = "POST"
    #: Headers instead of JSON + the valid key ({key} is replaced by the valid key).
    headers: Mapping[str, str] | None = None


def _json(payload: object) -> bytes:
    # ensure_ascii (the default) writes lone surrogates as \ud800 escapes: valid JSON text.
    return json.dumps(payload).encode()


def _utf8(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def _with(name: str, value: object) -> BodyOf:
    return lambda payload: _json({**payload, name: value})


_MARK: Final = "@@hostile@@"


def _spliced(name: str, raw: bytes) -> BodyOf:
    """The valid payload with ``name``'s JSON value replaced by raw bytes."""
    return lambda payload: _json({**payload, name: _MARK}).replace(f'"{_MARK}"'.encode(), raw)


def _prefixed(raw: bytes) -> BodyOf:
    """The valid payload with raw bytes inserted right after its opening brace."""
    return lambda payload: b"{" + raw + _json(payload)[1:]


def _fixed(raw: bytes) -> BodyOf:
    return lambda _: raw


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _exactly_the_limit(payload: Payload) -> bytes:
    empty = _json({**payload, "message": ""})
    return _json({**payload, "message": "m" * (MAX_BODY_BYTES - len(empty))})


def _multipart(payload: Payload) -> bytes:
    return (
        b'--b0undary\r\nContent-Disposition: form-data; name="payload"\r\n\r\n'
        + _json(payload)
        + b"\r\n--b0undary--\r\n"
    )


_HUGE_INTEGER: Final = b"1" + b"0" * 5000  # beyond Python's 4300-digit conversion limit
_DEEP_ARRAYS: Final = b"[" * 10_000 + b"]" * 10_000
_DEEP_OBJECTS: Final = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
_REJECTED: Final = frozenset({400})
_STORED: Final = frozenset({201})
_TOO_LARGE: Final = frozenset({413})
_UNSUPPORTED: Final = frozenset({415})
_KEYED: Final = {"Content-Type": "application/json", "X-Api-Key": "{key}"}


def _param(sample: Sample, name: str) -> Any:
    return pytest.param(sample, id=f"{sample.kind}: {name}")


def _invalid_utf8() -> Iterator[Any]:
    kind = "invalid utf-8"
    for name, raw in [
        ("0xff 0xfe", b'"\xff\xfe"'),
        ("a lone continuation byte", b'"srv\x80"'),
        ("an overlong slash", b'"\xc0\xaf"'),
        ("a CESU-8 surrogate", b'"\xed\xa0\x80"'),
        ("a truncated sequence", b'"srv\xe2\x82"'),
        ("latin-1", '"caf\u00e9"'.encode("latin-1")),
    ]:
        yield _param(Sample(kind, _spliced("deviceName", raw), _REJECTED, "invalid_json"), name)
    utf16 = Sample(kind, lambda p: json.dumps(p).encode("utf-16"), _REJECTED, "invalid_json")
    yield _param(utf16, "utf-16")


def _lone_surrogates() -> Iterator[Any]:
    kind = "escaped lone surrogates"
    for path, names in _FIELDS.items():
        for name in names:
            for value in ("\ud800", "srv\udfff", "\udc00\ud800"):
                sample = Sample(kind, _with(name, value), _REJECTED, "validation_failed", path)
                yield _param(sample, f"{path} {name}={value!a}")
    # Unknown fields are ignored and named back in ignoredFields: storing is allowed, or a 400.
    yield _param(Sample(kind, _with("\ud800", 1), frozenset({201, 400})), "an unknown key")
    yield _param(Sample(kind, _with("extra", {"\ud800": "\udfff"}), _STORED), "nested, ignored")


def _nul_bytes() -> Iterator[Any]:
    kind = "NUL bytes"
    for name in ("deviceName", "jobName", "status", "message", "sender"):
        yield _param(Sample(kind, _with(name, "srv\x00x"), _REJECTED, "validation_failed"), name)
    raw_in_string = Sample(kind, _spliced("message", b'"a\x00b"'), _REJECTED, "invalid_json")
    yield _param(raw_in_string, "raw, in a string")
    between = Sample(kind, _prefixed(b"\x00"), _REJECTED, "invalid_json")
    yield _param(between, "raw, between tokens")
    yield _param(Sample(kind, _with("\x00", "\x00"), _STORED), "in an ignored field")


def _megabyte_strings() -> Iterator[Any]:
    kind = "megabyte strings"
    for name in ("message", "deviceName"):
        sample = Sample(kind, _with(name, "x" * _MIB), _TOO_LARGE, "payload_too_large")
        yield _param(sample, f"1 MB {name}")
    over = Sample(kind, lambda p: _exactly_the_limit(p) + b" ", _TOO_LARGE, "payload_too_large")
    yield _param(over, "one byte over the limit")
    yield _param(Sample(kind, _exactly_the_limit, _STORED), "exactly the limit")
    # 63 kB of 3-byte characters: within the limit, and truncated to 16,384 characters.
    euros = Sample(kind, lambda p: _utf8({**p, "message": "\u20ac" * 21_000}), _STORED)
    yield _param(euros, "3-byte characters")
    spaces = Sample(kind, lambda p: b" " * _MIB + _json(p), _TOO_LARGE, "payload_too_large")
    yield _param(spaces, "1 MB of whitespace")


def _deep_nesting() -> Iterator[Any]:
    kind = "deep nesting"
    for name, raw in [
        ("10,000 [", b"[" * 10_000),
        ("10,000 [ closed", _DEEP_ARRAYS),
        ('10,000 {"a":', b'{"a":' * 10_000),
        ('10,000 {"a": closed', _DEEP_OBJECTS),
        ("32,000 [", b"[" * 32_000),
    ]:
        yield _param(Sample(kind, _fixed(raw), _REJECTED, "invalid_json"), name)
    in_field = Sample(kind, _spliced("message", _DEEP_ARRAYS), _REJECTED, "invalid_json")
    yield _param(in_field, "in a field")
    ignored = Sample(kind, _spliced("extra", _DEEP_OBJECTS), _REJECTED, "invalid_json")
    yield _param(ignored, "in an ignored field")


def _duplicate_keys() -> Iterator[Any]:
    kind = "duplicate keys"
    for name, body in [
        ("deviceName twice", _prefixed(b'"deviceName": "other", ')),
        ("an unknown key twice", _prefixed(b'"x": 1, "x": 2, ')),
        ("in a nested object", _spliced("extra", b'{"a": 1, "a": 2}')),
        ("equal once unescaped", _prefixed(b'"device\\u004eame": "b", ')),
    ]:
        yield _param(Sample(kind, body, _REJECTED, "invalid_json"), name)


def _wrong_types() -> Iterator[Any]:
    kind = "wrong types"
    for path, names in _FIELDS.items():
        for name in names:
            values: tuple[object, ...] = (1, 1.5, True, [], ["srv01"], {}, None)
            for value in values:
                # JSON null means absent, which an optional field may be.
                if value is None and name in _OPTIONAL[path]:
                    sample = Sample(kind, _with(name, value), _STORED, path=path)
                else:
                    sample = Sample(kind, _with(name, value), _REJECTED, "validation_failed", path)
                yield _param(sample, f"{path} {name}={json.dumps(value)}")
    epoch = Sample(kind, _with("timestamp", 1_717_500_000), _REJECTED, "validation_failed")
    yield _param(epoch, "an epoch timestamp")


def _huge_numbers() -> Iterator[Any]:
    kind = "huge integers"
    for name, body in [
        ("5001 digits in deviceName", _spliced("deviceName", _HUGE_INTEGER)),
        ("5001 digits in timestamp", _spliced("timestamp", _HUGE_INTEGER)),
        ("5001 digits in an ignored field", _spliced("extra", _HUGE_INTEGER)),
        ("-5001 digits in a nested array", _spliced("extra", b"[[-" + _HUGE_INTEGER + b"]]")),
        ("NaN", _spliced("extra", b"NaN")),
        ("Infinity", _spliced("extra", b"Infinity")),
        ("-Infinity", _spliced("extra", b"-Infinity")),
    ]:
        yield _param(Sample(kind, body, _REJECTED, "invalid_json"), name)
    for name, body in [
        ("4300 digits in deviceName", _spliced("deviceName", b"1" * 4300)),
        ("-1e400 in status", _spliced("status", b"-1e400")),
    ]:
        yield _param(Sample(kind, body, _REJECTED, "validation_failed"), name)
    yield _param(Sample(kind, _spliced("extra", b"1e400"), _STORED), "1e400, ignored")


def _not_objects() -> Iterator[Any]:
    kind = "not an object"
    for name, raw in [
        ("an empty array", b"[]"),
        ("a string", b'"srv01"'),
        ("null", b"null"),
        ("a number", b"42"),
        ("true", b"true"),
        ("1e999", b"1e999"),
    ]:
        yield _param(Sample(kind, _fixed(raw), _REJECTED, "validation_failed"), name)
    listed = Sample(kind, lambda p: _json([p]), _REJECTED, "validation_failed")
    yield _param(listed, "an array holding the payload")


def _empty_bodies() -> Iterator[Any]:
    kind = "empty body"
    for name, raw, code in [
        ("nothing", b"", "invalid_json"),
        ("whitespace", b" \r\n\t ", "invalid_json"),
        ("a byte-order mark", b"\xef\xbb\xbf", "invalid_json"),
        ("an empty object", b"{}", "validation_failed"),
    ]:
        yield _param(Sample(kind, _fixed(raw), _REJECTED, code), name)
    bom = Sample(kind, lambda p: b"\xef\xbb\xbf" + _json(p), _STORED)
    yield _param(bom, "a byte-order mark, then a payload")


_FORM: Final = b"deviceName=srv01&jobName=Nightly&status=Success&message=ok"
_XML: Final = b"<backup><deviceName>srv01</deviceName></backup>"


def _content_types() -> Iterator[Any]:
    kind = "content types"
    for name, content_type, body, expect in [
        ("text/plain", "text/plain", _json, _STORED),
        ("a form type, a JSON body", "application/x-www-form-urlencoded", _json, _STORED),
        ("a form type, a form body", "application/x-www-form-urlencoded", _fixed(_FORM), None),
        ("application/problem+json", "application/problem+json", _json, _STORED),
        ("upper case", "APPLICATION/JSON", _json, _STORED),
        ("a quoted charset", 'application/json; charset="UTF-8"', _json, _STORED),
        ("empty", "", _json, _STORED),
        ("multipart", "multipart/form-data; boundary=b0undary", _multipart, _UNSUPPORTED),
        ("application/xml", "application/xml", _fixed(_XML), _UNSUPPORTED),
        ("text/html", "text/html", _json, _UNSUPPORTED),
        ("a latin-1 charset", "application/json; charset=latin-1", _json, _UNSUPPORTED),
        ("a list of types", "application/json, text/plain", _json, _UNSUPPORTED),
        ("8 kB of junk", "x/" + "j" * 8192, _json, _UNSUPPORTED),
    ]:
        headers = {"Content-Type": content_type, "X-Api-Key": "{key}"}
        yield _param(Sample(kind, body, expect or _REJECTED, headers=headers), name)
    yield _param(Sample(kind, _json, _STORED, headers={"X-Api-Key": "{key}"}), "none")
    utf16 = Sample(
        kind,
        lambda p: json.dumps(p).encode("utf-16"),
        _UNSUPPORTED,
        headers={"Content-Type": "application/json; charset=utf-16", "X-Api-Key": "{key}"},
    )
    yield _param(utf16, "utf-16 with its charset")


def _content_encodings() -> Iterator[Any]:
    kind = "content encodings"
    # What follows a complete gzip member may be ignored or refused, as long as it is one of
    # the two and nothing breaks.
    either = frozenset({201, 400})
    table: list[tuple[str, str, BodyOf, frozenset[int] | None]] = [
        ("gzip", "gzip", lambda p: _gzip(_json(p)), _STORED),
        ("x-gzip", "x-gzip", lambda p: _gzip(_json(p)), _STORED),
        ("gzip, not gzipped", "gzip", _json, _REJECTED),
        ("gzip, truncated", "gzip", lambda p: _gzip(_json(p))[:-12], _REJECTED),
        ("gzip, 1 MB inflated", "gzip", lambda p: _gzip(_with("message", "x" * _MIB)(p)), None),
        ("gzip, trailing garbage", "gzip", lambda p: _gzip(_json(p)) + b"garbage", either),
        ("gzip, two members", "gzip", lambda p: _gzip(_json(p)) + _gzip(b" "), either),
        ("gzip twice, declared once", "gzip", lambda p: _gzip(_gzip(_json(p))), _REJECTED),
        ("gzip, gzip", "gzip, gzip", lambda p: _gzip(_gzip(_json(p))), _UNSUPPORTED),
        ("br", "br", _json, _UNSUPPORTED),
        ("deflate", "deflate", lambda p: zlib.compress(_json(p)), _UNSUPPORTED),
    ]
    for name, encoding, body, expect in table:
        headers = {**_KEYED, "Content-Encoding": encoding}
        yield _param(Sample(kind, body, expect or _TOO_LARGE, headers=headers), name)


def _keys_elsewhere() -> Iterator[Any]:
    kind = "key in the query string"
    for name, path in [
        ("api_key", BACKUP + "?api_key={key}"),
        ("apiKey", NOTIFICATION + "?apiKey={key}"),
        ("api_key on a read", "/api/backups?api_key={key}"),
    ]:
        method = "GET" if path.startswith("/api/backups") else "POST"
        headers = {"Content-Type": "application/json"}
        sample = Sample(kind, _json, frozenset({401}), "missing_api_key", path, method, headers)
        yield _param(sample, name)
    for name, header in [
        ("Authorization: Bearer", {"Authorization": "Bearer {key}"}),
        ("a cookie", {"Cookie": "X-Api-Key={key}"}),
    ]:
        headers = {"Content-Type": "application/json", **header}
        sample = Sample(kind, _json, frozenset({401}), "missing_api_key", headers=headers)
        yield _param(sample, name)
    lower = {"content-type": "application/json", "x-api-key": "{key}"}
    yield _param(Sample(kind, _json, _STORED, headers=lower), "lower-case header names")


def _wrong_routes() -> Iterator[Any]:
    kind = "wrong method or path"
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        yield _param(
            Sample(kind, _json, frozenset({405}), "method_not_allowed", BACKUP, method), method
        )
    for path in ("/api/ingest/backups", "/api/ingest/../ingest/backup", "/%00", "/%ED%A0%80"):
        yield _param(Sample(kind, _json, frozenset({404}), "not_found", path), path)
    slash = Sample(kind, _json, frozenset({307, 404}), path=BACKUP + "/")
    yield _param(slash, "a trailing slash")


def _read_queries() -> Iterator[Any]:
    kind = "read-side queries"
    for name, query in [
        ("a superscript digit as limit", "limit=%C2%B2"),
        ("a 5000-digit limit", "limit=" + "9" * 5000),
        ("limit 0", "limit=0"),
        ("a negative limit", "limit=-1"),
        ("a garbage cursor", "cursor=%FF%FE"),
        ("a surrogate in since", "since=%ED%A0%80"),
        ("an unknown parameter", "x=1"),
        ("an unknown outcome", "outcome=%00"),
    ]:
        headers = {"X-Api-Key": "{key}"}
        sample = Sample(
            kind, _fixed(b""), _REJECTED, "invalid_query", f"/api/backups?{query}", "GET", headers
        )
        yield _param(sample, name)


def _samples() -> Iterator[Any]:
    """The corpus, each item a pytest.param with a readable id."""
    for category in (
        _invalid_utf8,
        _lone_surrogates,
        _nul_bytes,
        _megabyte_strings,
        _deep_nesting,
        _duplicate_keys,
        _wrong_types,
        _huge_numbers,
        _not_objects,
        _empty_bodies,
        _content_types,
        _content_encodings,
        _keys_elsewhere,
        _wrong_routes,
        _read_queries,
    ):
        yield from category()


@pytest.mark.parametrize("sample", list(_samples()))
def test_hostile_corpus(target: Target, tally: Tally, sample: Sample) -> None:
    """Each hand-written hostile request gets its expected status and problem, never a 5xx.

    Nothing is stored for a rejected request (the rows are counted around each one), and what
    is accepted on purpose (lenient content types, gzip, an ignored field) is stored once.
    """
    path = sample.path.partition("?")[0]
    body = sample.body(target.valid_payload(path if path in _TABLES else BACKUP))
    headers = {
        name: value.replace("{key}", target.key)
        for name, value in (sample.headers or target.json_headers()).items()
    }
    url = sample.path.replace("{key}", target.key)
    tally.fault(f"hostile: {sample.kind}")
    if len(body) > MAX_BODY_BYTES:
        # The server answers 413 before reading such a body, and may close while it is still
        # being sent: a raw exchange reads the answer even when the send fails.
        before = target.server.count_rows()
        answer = target.exchange(_http(sample.method, url, headers, body))
        assert answer is not None, "no answer to an oversized body"
        target.judge(answer, before, url, what=f"{sample.method} {url}")
    else:
        answer = target.send(sample.method, url, body=body, headers=headers)
    assert answer.status in sample.expect, (answer.status, answer.body[:600])
    if sample.code is not None:
        assert _problem_code(answer) == sample.code, answer.body[:600]
    if sample.kind == "key in the query string" and answer.status == 401:
        detail = answer.json()["detail"]
        assert "X-Api-Key" in detail, detail
        if "?" in sample.path:
            assert "URL" in detail, detail


def test_keys_outside_the_header_never_reach_the_log(target: Target) -> None:
    """A key sent in the query string is refused, and never written to the server's log."""
    answer = target.send("POST", f"{BACKUP}?api_key={target.key}", body=b"{}")
    assert answer.status == 401
    assert target.key not in target.server.log_text()


#: uvicorn's h11_max_incomplete_event_size: a request head still incomplete beyond it is a 400.
_H11_PARTIAL_HEAD_LIMIT: Final = 16 * 1024


@pytest.mark.parametrize(
    "key",
    ["bm_" + "k" * 100_000, "bm_ has spaces inside it and is not a key at all", "bm_"],
    ids=["a 100 kB key", "spaces", "only the prefix"],
)
def test_malformed_keys_are_refused(target: Target, tally: Tally, key: str) -> None:
    """Malformed keys get a 401 invalid_api_key problem, and store nothing.

    Sent from another loopback address: failed authentications are throttled per address. A
    100 kB header that arrives in several TCP segments passes h11's 16 KiB limit on a partial
    request head: that is a 400 malformed_http problem before the app sees the key, also fine.
    """
    tally.fault("hostile: malformed key")
    payload = _json(target.valid_payload(BACKUP))
    before = target.server.count_rows()
    answer = target.exchange(
        _http("POST", BACKUP, {"Content-Type": "application/json", "X-Api-Key": key}, payload),
        source=_BAD_KEY_CORPUS_SOURCE,
    )
    assert answer is not None
    target.judge(answer, before, BACKUP, what="a malformed key")
    refusals = {(401, "invalid_api_key")}
    if len(key) > _H11_PARTIAL_HEAD_LIMIT:
        refusals.add((400, "malformed_http"))
    assert (answer.status, _problem_code(answer)) in refusals, answer.body


# --- raw sockets: truncated bodies, oversized headers, malformed HTTP, bombs ----------------------


def _http(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request's bytes; ``length`` overrides the Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + body


def _chunked(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Transfer-Encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunks(data: bytes, size: int = 65_536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


_TRUNCATIONS: Final[dict[str, Callable[[bytes, Mapping[str, str]], bytes]]] = {
    "20 of 500 bytes": lambda body, headers: _http("POST", BACKUP, headers, body[:20], length=500),
    "headers only": lambda body, headers: _http("POST", BACKUP, headers, b"", length=len(body)),
    "all but the last byte": lambda body, headers: _http(
        "POST", BACKUP, headers, body[:-1], length=len(body)
    ),
    # The JSON is complete, but the request is not: it must not be stored either.
    "a complete payload, one byte declared more": lambda body, headers: _http(
        "POST", BACKUP, headers, body, length=len(body) + 1
    ),
    "a chunk cut short": lambda body, headers: (
        _chunked("POST", BACKUP, headers) + f"{len(body):x}\r\n".encode() + body[:-5]
    ),
}


@pytest.mark.parametrize("cut", list(_TRUNCATIONS))
def test_truncated_bodies_store_nothing(target: Target, tally: Tally, cut: str) -> None:
    """A client that dies mid-body leaves no row, no error in the log, and a working server."""
    tally.fault("hostile: truncated body")
    body = _json(target.valid_payload(BACKUP))
    before = target.server.count_rows()
    errors = _error_lines(target.server)
    target.exchange(_TRUNCATIONS[cut](body, target.json_headers()), close_early=True)
    # The valid request that follows is served after the server has seen the disconnect.
    target.assert_still_serving()
    assert target.server.count_rows() == {**before, "backups": before["backups"] + 1}
    assert _error_lines(target.server) == errors, target.server.log_tail()


def _error_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log_text().splitlines() if line.startswith("ERROR")]


def _judge_raw(target: Target, answer: Answer | None, before: Mapping[str, int], what: str) -> None:
    """Judge what a raw exchange got: nothing, the app's answer, or the HTTP layer's refusal.

    uvicorn refuses what h11 cannot parse before the app sees it, with a plain-text 400 (see
    test_unparseable_http_is_answered_with_a_problem); that must still be a 4xx, and nothing
    may be stored.
    """
    if answer is None:
        target.unanswered_on_purpose += 1  # the server may cut what it cannot read: allowed
        assert target.server.count_rows() == before, what
        return
    media = answer.headers.get("content-type", "")
    if answer.status < 400 or media.startswith(PROBLEM_CONTENT_TYPE):
        target.judge(answer, before, BACKUP, what=what)
        return
    assert 400 <= answer.status < 500, (what, answer.status, answer.body[:300])
    assert target.server.count_rows() == before, what


_BIG_HEADERS: Final[dict[str, Callable[[Mapping[str, str], bytes], bytes]]] = {
    "a 100 kB header value": lambda headers, body: _http(
        "POST", BACKUP, {**headers, "X-Big": "a" * 100_000}, body
    ),
    "a 1 MB header value": lambda headers, body: _http(
        "POST", BACKUP, {**headers, "X-Big": "a" * _MIB}, body
    ),
    "10,000 headers": lambda headers, body: _http(
        "POST", BACKUP, {**headers, **{f"X-H{i}": "v" for i in range(10_000)}}, body
    ),
    "a 100 kB URL": lambda headers, body: _http(
        "POST", BACKUP + "?q=" + "a" * 100_000, headers, body
    ),
}


@pytest.mark.parametrize("shape", list(_BIG_HEADERS))
def test_oversized_headers_do_not_break_the_server(
    target: Target, tally: Tally, shape: str
) -> None:
    """Oversized request heads are served, refused with a 4xx, or cut; never a 5xx or a crash."""
    tally.fault("hostile: oversized header")
    payload = _json(target.valid_payload(BACKUP))
    before = target.server.count_rows()
    answer = target.exchange(_BIG_HEADERS[shape](target.json_headers(), payload))
    _judge_raw(target, answer, before, shape)
    target.assert_still_serving()


_MALFORMED: Final[dict[str, bytes]] = {
    "a garbage request line": b"\x00\x01\x02 garbage\r\n\r\n",
    "a control character in the method": b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "no Host in HTTP/1.1": b"GET /healthz HTTP/1.1\r\n\r\n",
    "a Content-Length that is not a number": b"POST /api/ingest/backup HTTP/1.1\r\n"
    b"Host: x\r\nContent-Length: abc\r\n\r\n{}",
    "a negative Content-Length": b"POST /api/ingest/backup HTTP/1.1\r\n"
    b"Host: x\r\nContent-Length: -5\r\n\r\n{}",
    "two different Content-Lengths": b"POST /api/ingest/backup HTTP/1.1\r\n"
    b"Host: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} ",
    "Content-Length and chunked": b"POST /api/ingest/backup HTTP/1.1\r\n"
    b"Host: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a chunk size that is not hex": b"POST /api/ingest/backup HTTP/1.1\r\n"
    b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "a NUL in a header value": b"GET /api/backups HTTP/1.1\r\n"
    b"Host: x\r\nX-Api-Key: bm_\x00\r\n\r\n",
    "a NUL in the path": b"GET /api/backups/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "an obsolete folded header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "the HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "an absolute URL to another host": b"GET http://evil.example/healthz HTTP/1.1\r\n"
    b"Host: x\r\n\r\n",
    "HTTP/0.9": b"GET /healthz\r\n\r\n",
}


@pytest.mark.parametrize("shape", list(_MALFORMED))
def test_malformed_http_is_refused(target: Target, tally: Tally, shape: str) -> None:
    """Malformed HTTP is refused (a 4xx, or closed) or read leniently; it stores nothing.

    h11 reads some of it leniently on purpose (an obsolete folded header is unfolded); what
    reaches the app is judged like any answer, and the server keeps serving.
    """
    tally.fault("hostile: malformed http")
    before = target.server.count_rows()
    answer = target.exchange(_MALFORMED[shape], source=_NO_KEY_SOURCE)
    _judge_raw(target, answer, before, shape)
    assert target.server.count_rows() == before
    target.assert_still_serving()


def test_unparseable_http_is_answered_with_a_problem(target: Target) -> None:
    """Even a request line that cannot be parsed gets an RFC 9457 problem.

    uvicorn answers HTTP that h11 cannot parse itself, before the app, with text/plain;
    bmserver's protocol class (bmserver/http/_protocol.py) answers with problem+json instead.
    """
    answer = target.exchange(_MALFORMED["a garbage request line"], source=_NO_KEY_SOURCE)
    assert answer is not None
    check_answer(answer)


def _gzip_of_zeros(mib: int) -> bytes:
    """The gzip of ``mib`` MiB of zeros, compressed one MiB at a time (never held whole)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(_MIB)
    parts = [compressor.compress(zeros) for _ in range(mib)]
    parts.append(compressor.flush())
    return b"".join(parts)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"no VmRSS for process {pid}"
    raise AssertionError(msg)


def test_gzip_bombs_are_refused_without_memory_growth(target: Target, tally: Tally) -> None:
    """Gzip bombs (1 GiB of zeros, one inside the size limit, one doubly gzipped) get a 413.

    Declared, streamed in chunks, or small enough to pass the size check: each is refused
    without inflating more than the limit, and the server's memory stays where it was.
    """
    one_gib = _gzip_of_zeros(1024)  # about 1 MB
    within_limit = _gzip_of_zeros(63)  # about 63 kB: passes the size check on the wire
    assert len(within_limit) < MAX_BODY_BYTES
    twice = _gzip(one_gib)  # about 2 kB, inflating to the 1 MB bomb
    headers = target.json_headers(**{"Content-Encoding": "gzip"})
    rss_before = _rss_kib(target.server.pid)
    before = target.server.count_rows()
    answers: dict[str, Answer | None] = {
        "1 GiB, Content-Length": target.exchange(_http("POST", BACKUP, headers, one_gib)),
        "1 GiB, chunked": target.exchange(
            itertools.chain([_chunked("POST", BACKUP, headers)], _chunks(one_gib))
        ),
        "63 MiB within the limit": target.send("POST", BACKUP, body=within_limit, headers=headers),
        "1 GiB gzipped twice": target.send("POST", BACKUP, body=twice, headers=headers),
    }
    tally.fault("hostile: gzip bomb", len(answers))
    for name, answer in answers.items():
        assert answer is not None, f"{name}: no answer"
        target.judge(answer, before, BACKUP, what=name)
        assert answer.status == 413, (name, answer.body)
        assert _problem_code(answer) == "payload_too_large"
    growth = _rss_kib(target.server.pid) - rss_before
    assert growth < _RSS_GROWTH_LIMIT_KIB, f"the server grew by {growth} KiB"
    target.assert_still_serving()


# --- hypothesis: generated payloads and bytes --------------------------------------------------

_SURROGATE: Final = st.characters(categories=["Cs"])
_ANY_CHARACTER: Final = (
    st.characters(exclude_categories=())
    | _SURROGATE
    | st.sampled_from(["\x00", "\x7f", "\x85", "\u2028", "\ufeff", "\uffff", '"', "\\", "/"])
)
# Not st.text: it leaves surrogates out of any alphabet, and they are the point here.
_HOSTILE_TEXT: Final = st.lists(_ANY_CHARACTER, max_size=30).map("".join) | st.sampled_from(
    [64, 65, 100, 101, 255, 256, 16_384, 16_385]
).map(lambda length: "x" * length)
_JSON_VALUES: Final = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)

_NAME_CHARACTER: Final = st.characters(exclude_categories=["Cc", "Cs"])
_NAMES: Final = st.text(_NAME_CHARACTER, min_size=1, max_size=200).filter(
    lambda text: not text.isspace()
)
_STATUSES: Final = st.sampled_from(
    ["Success", "Warning", "Error", "success", " ERROR ", "Failed"]
) | st.text(_NAME_CHARACTER, min_size=1, max_size=64).filter(lambda text: not text.isspace())
_MESSAGES: Final = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
_SEVERITIES: Final = st.sampled_from(
    ["info", "warning", "error", "critical", "INFO", "Warning", "cRiTiCaL"]
)
_TYPES: Final = st.text(
    st.characters(exclude_categories=["Cc", "Cs", "Zs", "Zl", "Zp"]), min_size=1, max_size=100
).filter(lambda text: not any(character.isspace() for character in text))


# Naive bounds, as st.datetimes wants them; the drawn moments are made UTC. Well inside the
# time policy: after 2000-01-01 and in the past.
_EARLIEST: Final = datetime(2000, 1, 2)  # noqa: DTZ001 - read as UTC
_LATEST: Final = datetime(2024, 12, 31)  # noqa: DTZ001 - read as UTC


@st.composite
def _timestamps(draw: st.DrawFn) -> str:
    """A valid timestamp in one of the accepted shapes, with any offset within +-14 h."""
    moment = draw(st.datetimes(min_value=_EARLIEST, max_value=_LATEST)).replace(tzinfo=UTC)
    minutes = draw(st.integers(-14 * 60, 14 * 60))
    local = moment.astimezone(timezone(timedelta(minutes=minutes)))
    text = local.isoformat()
    shape = draw(st.sampled_from(["extended", "basic", "Z"]))
    if shape == "basic":  # +HHMM
        text = text[:-3] + text[-2:]
    elif shape == "Z" and minutes == 0:
        text = text[:-6] + draw(st.sampled_from(["Z", "z"]))
    return text


def _valid_payloads(path: str) -> st.SearchStrategy[Payload]:
    """Payloads that bmcore accepts, drawn across the whole valid space of each field."""
    if path == BACKUP:
        required = {
            "deviceName": _NAMES,
            "jobName": _NAMES,
            "timestamp": _timestamps(),
            "status": _STATUSES,
            "message": _MESSAGES,
        }
        optional = {"sender": _NAMES | st.none()}
    else:
        required = {
            "deviceName": _NAMES,
            "timestamp": _timestamps(),
            "severity": _SEVERITIES,
            "type": _TYPES,
        }
        optional = {
            "jobName": _NAMES | st.none(),
            "message": _MESSAGES | st.none(),
            "sender": _NAMES | st.none(),
        }
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def _mangled(draw: st.DrawFn, path: str) -> Payload:
    """A valid payload with some fields replaced by anything or dropped, and keys added."""
    payload = dict(draw(_valid_payloads(path)))
    for name in _FIELDS[path]:
        # "keep" first: shrinking leads to the fewest changes that still fail.
        action = draw(st.sampled_from(["keep", "keep", "replace", "drop"]))
        if action == "replace":
            payload[name] = draw(_JSON_VALUES)
        elif action == "drop":
            payload.pop(name, None)
    extra = draw(st.dictionaries(_HOSTILE_TEXT, _JSON_VALUES, max_size=3))
    return {**extra, **payload}


@st.composite
def _encoded(draw: st.DrawFn, value: st.SearchStrategy[object]) -> bytes:
    """A JSON value as bytes: surrogates escaped, raw (invalid UTF-8), or after a BOM."""
    drawn = draw(value)
    style = draw(st.sampled_from(["escaped", "raw", "bom"]))
    if style == "escaped":
        return json.dumps(drawn).encode()
    text = json.dumps(drawn, ensure_ascii=False)
    # surrogatepass writes lone surrogates as 3-byte sequences, which are not UTF-8.
    raw = text.encode("utf-8", "surrogatepass")
    return b"\xef\xbb\xbf" + raw if style == "bom" else raw


_LENIENT_HEADERS: Final = st.sampled_from(
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ]
)


def _core_verdict(path: str, body: bytes) -> frozenset[int]:
    """What the server must answer, by bmcore's own decoding of the same bytes."""
    if len(body) > MAX_BODY_BYTES:
        return frozenset({413})
    decode = bmcore.decode_backup if path == BACKUP else bmcore.decode_notification
    try:
        decode(body, now=datetime.now(UTC))
    except bmcore.PayloadError:
        return _REJECTED
    # Stored, an identical repeat, or a different entry for the same job and timestamp.
    return frozenset({200, 201, 409})


def _post_generated(
    target: Target, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> Answer:
    """POST generated bytes with the valid key, judged, and matched to bmcore's verdict."""
    chosen = dict(headers if headers is not None else {"Content-Type": "application/json"})
    sent = _gzip(body) if chosen.get("Content-Encoding") == "gzip" else body
    answer = target.send("POST", path, body=sent, headers={**chosen, "X-Api-Key": target.key})
    verdict = _core_verdict(path, body)
    assert answer.status in verdict, (answer.status, verdict, answer.body[:600])
    return answer


_PATHS: Final = st.sampled_from([BACKUP, NOTIFICATION])


@_examples(2_000)
@given(path=_PATHS, body=_encoded(_JSON_VALUES), headers=_LENIENT_HEADERS)
def test_random_json_bodies(
    target: Target, tally: Tally, path: str, body: bytes, headers: dict[str, str]
) -> None:
    """Any JSON value as the body, in any lenient content type: bmcore's verdict, never a 5xx."""
    tally.fault("hostile: hypothesis json")
    _post_generated(target, path, body, headers)


@pytest.mark.parametrize("path", [BACKUP, NOTIFICATION], ids=["backup", "notification"])
@_examples(1_500)
@given(data=st.data())
def test_payloads_with_mangled_fields(
    target: Target, tally: Tally, path: str, data: st.DataObject
) -> None:
    """Valid payloads with fields replaced by any JSON or dropped, and odd keys added.

    The answer matches bmcore's verdict on the same bytes: what bmcore accepts is stored, what
    it rejects is a 400 problem with nothing stored.
    """
    tally.fault("hostile: hypothesis fields")
    body = data.draw(_encoded(_mangled(path)))
    _post_generated(target, path, body, data.draw(_LENIENT_HEADERS))


@pytest.mark.parametrize("path", [BACKUP, NOTIFICATION], ids=["backup", "notification"])
@_examples(750)
@given(data=st.data())
def test_hostile_text_in_every_field(
    target: Target, tally: Tally, path: str, data: st.DataObject
) -> None:
    """Every field holds random text (lone surrogates, NUL, BOM, boundary lengths)."""
    tally.fault("hostile: hypothesis text")
    fields = {name: data.draw(_HOSTILE_TEXT, label=name) for name in _FIELDS[path]}
    _post_generated(target, path, data.draw(_encoded(st.just(fields))))


@_examples(1_000)
@given(path=_PATHS, body=st.binary(max_size=512))
def test_random_bytes(target: Target, tally: Tally, path: str, body: bytes) -> None:
    """Random bytes as the body: a 400 problem (or bmcore's verdict), never a 5xx."""
    tally.fault("hostile: hypothesis bytes")
    _post_generated(target, path, body)


@st.composite
def _mutated(draw: st.DrawFn, path: str) -> bytes:
    """A valid payload's bytes with a few bytes flipped, inserted or deleted."""
    body = bytearray(_json(draw(_valid_payloads(path))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body) - 1))
        edit = draw(st.sampled_from(["flip", "insert", "delete"]))
        if edit == "flip":
            body[at] ^= draw(st.integers(1, 255))
        elif edit == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del body[at]
    return bytes(body)


@pytest.mark.parametrize("path", [BACKUP, NOTIFICATION], ids=["backup", "notification"])
@_examples(600)
@given(data=st.data())
def test_mutated_valid_bodies(target: Target, tally: Tally, path: str, data: st.DataObject) -> None:
    """Valid bodies with a few bytes damaged: bmcore's verdict, never a 5xx, never a stray row."""
    tally.fault("hostile: hypothesis mutation")
    _post_generated(target, path, data.draw(_mutated(path)))


@pytest.mark.parametrize("path", [BACKUP, NOTIFICATION], ids=["backup", "notification"])
@_examples(300)
@given(data=st.data())
def test_valid_payloads_are_stored_exactly(target: Target, path: str, data: st.DataObject) -> None:
    """Valid-by-construction payloads get a 201 and read back exactly as bmcore decoded them."""
    payload = data.draw(_valid_payloads(path))
    # A device of its own: the entry is new, never a repeat or a conflict.
    payload = {**payload, "deviceName": f"h{next(target.serial)}:{payload['deviceName']}"}
    body = _json(payload)
    decode = bmcore.decode_backup if path == BACKUP else bmcore.decode_notification
    decoded = decode(body, now=datetime.now(UTC)).value  # the oracle; fails on a generator bug
    answer = target.send("POST", path, body=body, headers=target.json_headers())
    assert answer.status == 201, answer.body[:600]
    created = answer.json()
    assert created["duplicate"] is False
    assert created["kind"] == ("backup" if path == BACKUP else "notification")
    if isinstance(decoded, bmcore.BackupEntry):
        assert created["outcome"] == decoded.outcome.value
    stored = target.send("GET", answer.headers["location"], headers={"X-Api-Key": target.key})
    assert stored.status == 200, stored.body[:600]
    found = stored.json()
    assert found["deviceName"] == decoded.device_name
    assert found["jobName"] == decoded.job_name
    assert found["message"] == decoded.message
    assert found["sender"] == decoded.sender
    moment = datetime.fromisoformat(found["timestamp"])
    assert moment == decoded.timestamp
    assert moment.utcoffset() == decoded.timestamp.utcoffset(), "the offset sent is kept"
    if isinstance(decoded, bmcore.BackupEntry):
        assert found["status"] == decoded.status
    else:
        assert found["severity"] == decoded.severity.value
        assert found["type"] == decoded.type


# --- schemathesis, from the server's own /openapi.json --------------------------------------------

#: Every operation /openapi.json describes; test_the_schema_lists_what_is_fuzzed keeps it true.
_OPERATIONS: Final = (
    ("POST", BACKUP),
    ("POST", NOTIFICATION),
    ("GET", "/api/devices"),
    ("GET", "/api/jobs"),
    ("GET", "/api/backups"),
    ("GET", "/api/notifications"),
    ("GET", "/api/backups/{entry_id}"),
    ("GET", "/api/notifications/{entry_id}"),
    ("GET", "/api/jobs/{job_id}"),
    ("PUT", "/api/jobs/{job_id}/schedule"),
    ("DELETE", "/api/jobs/{job_id}/schedule"),
    ("POST", "/api/jobs/{job_id}/pause"),
    ("POST", "/api/jobs/{job_id}/resume"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
)
# Not positive_data_acceptance: the schema cannot say everything the server checks (the time
# policy, blank names, control characters, limit's range), so schema-valid data may rightly
# get a 400. Not ignored_auth and the other stateful checks: they send requests of their own,
# which would escape the report.
_CHECK_NAMES: Final = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
# By name from schemathesis' registry: the functions' own annotations leave Case generic.
_CHECKS: Final[list[Any]] = [getattr(schemathesis.checks, name) for name in _CHECK_NAMES]
_WRONG_KEYS: Final = (
    "bm_" + "A" * 43,  # well-formed, unknown
    "bm_short",
    "not-a-key",
)


class _FromAddress(HTTPAdapter):
    """A requests adapter whose connections leave from one loopback address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(
        self,
        connections: int,
        maxsize: int,
        block: bool = False,  # noqa: FBT002 - the signature of HTTPAdapter.init_poolmanager
        **pool_kwargs: Any,
    ) -> None:
        """Bind every pooled connection to the address."""
        pool_kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


@pytest.fixture(scope="module")
def schema(target: Target, tally: Tally) -> schemathesis.BaseSchema:
    """The schema the running server serves at /openapi.json."""
    loaded = schemathesis.openapi.from_url(f"{target.server.url}/openapi.json", timeout=_TIMEOUT_S)
    tally.sent(200)  # from_url raises on anything but a success
    return loaded


def test_the_schema_lists_what_is_fuzzed(schema: schemathesis.BaseSchema) -> None:
    """The operations fuzzed below are exactly those /openapi.json describes."""
    described = {(method.upper(), path) for path in schema for method in schema[path]}
    assert described == set(_OPERATIONS)


_WHO: Final = ("all-scopes key", "read-only key", "no key", "wrong key")


@pytest.mark.parametrize("who", _WHO)
@pytest.mark.parametrize(("method", "path"), _OPERATIONS, ids=[f"{m} {p}" for m, p in _OPERATIONS])
def test_schemathesis(
    target: Target,
    tally: Tally,
    schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    who: str,
) -> None:
    """Schema-generated cases, valid and invalid, with each kind of credentials.

    Every answer passes check_answer and schemathesis' response checks against the schema;
    rows grow only by the 201s.
    """
    # Any: schemathesis leaves APIOperation's type parameters open.
    operation = cast("Any", schema[path][method])

    def cases_for(key: str | None, mode: GenerationMode) -> st.SearchStrategy[Any]:
        headers = None if key is None else {"X-Api-Key": key}
        strategy: st.SearchStrategy[Any] = operation.as_strategy(mode, headers=headers)
        return strategy

    keys: dict[str, tuple[str | None, ...]] = {
        "all-scopes key": (target.all_scopes_key,),
        "read-only key": (target.read_only_key,),
        "no key": (None,),
        "wrong key": _WRONG_KEYS,
    }
    source = {"no key": _NO_KEY_SOURCE, "wrong key": _WRONG_KEY_SOURCE}.get(who, HOST)
    full = 100 if who == "all-scopes key" else 25
    has_inputs = bool(list(operation.iter_parameters())) or bool(len(operation.body))
    modes = [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if has_inputs else [])]
    with requests.Session() as session:
        session.mount("http://", _FromAddress(source))
        for mode in modes:
            cases = st.sampled_from(keys[who]).flatmap(functools.partial(cases_for, mode=mode))
            what = f"{method} {path}, {who}, {mode}"
            _fuzz(target, tally, session, cases, full, what=what, drop_key=who == "no key")


def _fuzz(
    target: Target,
    tally: Tally,
    session: requests.Session,
    cases: st.SearchStrategy[Any],
    full: int,
    *,
    what: str,
    drop_key: bool,
) -> None:
    """Send ``scaled(full)`` schemathesis cases, each judged and checked against the schema.

    ``drop_key`` removes any X-Api-Key schemathesis generated from the security scheme.
    """

    # schemathesis' negative mode filters many drawn inputs out: expected, and harmless here.
    @_examples(full, HealthCheck.filter_too_much)
    @given(case=cases)
    def run(case: Any) -> None:
        tally.fault("hostile: schemathesis")
        if drop_key:
            case.headers.pop("X-Api-Key", None)
        before = target.server.count_rows()
        try:
            response = case.call(base_url=target.server.url, session=session, timeout=_TIMEOUT_S)
        except requests.RequestException:
            tally.sent(0)
            raise
        tally.sent(response.status_code)
        answer = Answer(
            response.status_code,
            {name: ", ".join(values) for name, values in response.headers.items()},
            response.content,
        )
        try:
            target.judge(answer, before, case.path, what=what)
        except AssertionError as error:
            error.add_note(f"reproduce with: {case.as_curl_command()}")
            raise
        case.validate_response(response, checks=_CHECKS)

    run()


# --- the module as a whole -----------------------------------------------------------------------


def test_zz_the_module_sent_enough_and_the_server_still_works(target: Target, tally: Tally) -> None:
    """Run last: >= scaled(10,000) requests, no 5xx, no unplanned failure, and still serving.

    Every 201 of the module is one row in the database, and the server never logged an error.
    """
    target.assert_still_serving()
    sent = collections.Counter(tally.statuses)
    sent.subtract(target.baseline)
    total = sum(sent.values())
    assert total >= scaled(10_000), f"only {total} requests: {dict(sent)}"
    server_errors = {status: count for status, count in sent.items() if status >= 500 and count}
    assert not server_errors, f"server errors: {server_errors}"
    assert sent[0] <= target.unanswered_on_purpose, (
        f"{sent[0]} requests got no answer, {target.unanswered_on_purpose} of them on purpose"
    )
    assert target.server.is_running()
    stored = sum(target.server.count_rows().values())
    tally.accounted(acknowledged=sent[201], found=stored)
    assert stored == sent[201], f"{sent[201]} entries acknowledged with a 201, {stored} stored"
    errors = _error_lines(target.server)
    assert not errors, "\n".join(errors[:20])
