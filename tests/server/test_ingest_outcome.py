"""The ingest endpoints leave what they decided in the request's scope, for whoever serves the app.

pytest_bm's journal reads it there instead of decoding the body again; these tests drive the
app in process, as an ASGI server would, and compare the outcome with bmcore and the answer.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
from types import EllipsisType
from typing import Any

import attrs
from _harness import START, backup, notification
from hypothesis import event, given
from hypothesis import strategies as st
from starlette.types import ASGIApp, Message

import bmcore
from bmserver import (
    INGEST_OUTCOME,
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Scope,
    Settings,
    create_app,
    ingest_outcome,
    issue_api_key,
)

BACKUP = "/api/ingest/backup"
NOTIFICATION = "/api/ingest/notification"


@attrs.frozen
class _App:
    """An app on a memory store with one key, and the clock it decides by."""

    app: ASGIApp
    key: str
    clock: ManualClock


@functools.cache
def _app() -> _App:
    """One app for every example: what was stored before makes repeats and conflicts."""
    settings = Settings(rate_policy=bmcore.RatePolicy.per_second(1000, burst=1_000_000))
    store = MemoryStore()
    clock = ManualClock(START)
    key, _ = asyncio.run(
        issue_api_key(store, account="acme", scopes={Scope.INGEST, Scope.READ}, now=START)
    )
    app = create_app(
        settings, store=store, limiter=MemoryLimiter(settings.rate_policy), clock=clock
    )
    return _App(app, key, clock)


def _post(
    target: _App, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """POST ``body`` to the app as an ASGI server would: the status, the JSON answer, the scope."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in {**headers, "X-Api-Key": target.key}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    incoming: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def serve() -> None:
        await target.app(scope, receive, send)

    asyncio.run(serve())
    answer = b"".join(message.get("body", b"") for message in sent[1:])
    return int(sent[0]["status"]), json.loads(answer), scope


def _backup(device: str, status: str, extra: dict[str, int], stamp: str) -> dict[str, Any]:
    return backup(deviceName=device, status=status, timestamp=stamp, **extra)


def _notification(device: str, severity: str, job: str | EllipsisType) -> dict[str, Any]:
    return notification(deviceName=device, severity=severity, jobName=job)


_NAMES = st.sampled_from(["srv01", "srv02", " SRV01 ", "db"])
_PAYLOADS = st.one_of(
    st.builds(
        _backup,
        _NAMES,
        st.sampled_from(["Success", "warning", "Failed", "", "x" * 65]),
        st.dictionaries(st.sampled_from(["colour", "size"]), st.integers(), max_size=2),
        st.sampled_from(["2024-06-04T14:00:00+02:00", "2024-06-04T12:00:00Z", "2024-06-04"]),
    ).map(lambda payload: (BACKUP, payload)),
    st.builds(
        _notification,
        _NAMES,
        st.sampled_from(["info", "ERROR", "loud"]),
        st.sampled_from(["Nightly", ...]),  # ... leaves jobName out
    ).map(lambda payload: (NOTIFICATION, payload)),
)


@given(sent=_PAYLOADS, gzipped=st.booleans())
def test_the_outcome_is_what_the_app_decoded_stored_and_answered(
    sent: tuple[str, dict[str, Any]], gzipped: bool
) -> None:
    """201 and 200 leave an outcome equal to bmcore's decode and the answer; a problem, none."""
    target = _app()
    path, payload = sent
    raw = json.dumps(payload).encode()
    body, headers = (gzip.compress(raw), {"Content-Encoding": "gzip"}) if gzipped else (raw, {})
    status, answer, scope = _post(
        target, path, body, {"Content-Type": "application/json", **headers}
    )
    outcome = ingest_outcome(scope)
    event(f"answered {status}")
    if status not in {200, 201}:
        assert outcome is None, answer
        assert INGEST_OUTCOME not in scope["state"]
        return
    assert outcome is not None
    decode = bmcore.decode_backup if path == BACKUP else bmcore.decode_notification
    assert outcome.decoded == decode(raw, now=target.clock.now())
    assert outcome.kind == answer["kind"] == ("backup" if path == BACKUP else "notification")
    assert outcome.result.id == answer["id"]
    assert outcome.result.duplicate is answer["duplicate"] is (status == 200)
    assert bmcore.format_timestamp(outcome.result.received_at) == answer["receivedAt"]
    assert list(outcome.decoded.ignored_fields) == answer["ignoredFields"]


def test_other_paths_and_foreign_state_have_no_outcome() -> None:
    """A scope without state, or with something else under the key, has no outcome."""
    assert ingest_outcome({"type": "http"}) is None
    assert ingest_outcome({"state": None}) is None
    assert ingest_outcome({"state": {INGEST_OUTCOME: "forged"}}) is None
