"""The read side's limits: a rate limit per key, and pages capped in bytes as well as items."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import timedelta

import hypothesis
import pytest
from _harness import START, Client, RunningServer, assert_problem, backup
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from bmserver import (
    MAX_PAGE_BYTES,
    BackupQuery,
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Scope,
    Settings,
    issue_api_key,
)
from bmserver.http._gate import LimiterGate
from bmserver.http._reads import (  # the paging under test
    _ENVELOPE_BYTES,  # pyright: ignore[reportPrivateUsage]
    ReadSide,
)
from bmserver.http._representations import backup_json, json_bytes

BACKUP = "/api/ingest/backup"
READ_BURST = 3


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Bmserver's own stores: the fake keeps the default read policy."""
    return str(request.param)


@pytest.fixture
def settings() -> Settings:
    """A read burst of 3, a roomy ingest quota."""
    return Settings(
        rate_policy=bmcore.RatePolicy.per_second(1, burst=100),
        read_rate_policy=bmcore.RatePolicy.per_second(1, burst=READ_BURST),
    )


# --- the read quota -----------------------------------------------------------------------------


def test_reads_count_against_the_key_s_read_quota(running: RunningServer) -> None:
    """Past the read burst: 429 with Retry-After and the RateLimit headers; later it passes."""
    client = running.client
    replies = [client.get(path) for path in ["/api/backups", "/api/devices", "/api/jobs"]]
    assert [reply.status for reply in replies] == [200] * READ_BURST
    assert replies[0].headers["ratelimit-policy"] == f'"default";q={READ_BURST};w={READ_BURST}'
    assert replies[-1].headers["ratelimit"] == f'"default";r=0;t={READ_BURST}'
    limited = client.get("/api/notifications")
    body = assert_problem(limited, 429, "rate_limited")
    assert "read requests" in body["detail"]
    assert limited.headers["retry-after"] == "1"
    assert_problem(client.get("/api/backups/bk_0000000000000000"), 429, "rate_limited")
    running.clock.advance(1)
    assert client.get("/api/backups").status == 200


def test_invalid_queries_count_too(running: RunningServer) -> None:
    """The quota is charged before the query is checked, as ingest charges rejected payloads."""
    for _ in range(READ_BURST):
        assert running.client.get("/api/backups?limit=0").status == 400
    assert_problem(running.client.get("/api/backups"), 429, "rate_limited")


def test_reads_and_ingest_have_quotas_of_their_own(running: RunningServer) -> None:
    """A key that used up its reads still reports; another key still reads."""
    client = running.client
    for _ in range(READ_BURST + 1):
        client.get("/api/devices")
    assert client.post(BACKUP, backup()).status == 201
    other = running.new_key("other", {Scope.READ})
    assert client.get("/api/devices", key=other).status == 200


# --- pages capped in bytes ----------------------------------------------------------------------

#: The longest message of emoji a 64 KiB body holds: 4 UTF-8 bytes each, 12 escaped.
EMOJI_MESSAGE = "\N{GRINNING FACE}" * 16_000


def test_a_page_of_escaped_emoji_stays_under_the_byte_cap(running: RunningServer) -> None:
    """limit=1000 over messages that escape to 192 kB each: pages of at most 1 MiB, all reached."""
    client = running.client
    posted: list[str] = []
    for hour in range(12):
        timestamp = (START - timedelta(hours=hour)).isoformat()
        payload = backup(message=EMOJI_MESSAGE, timestamp=timestamp)
        reply = client.request("POST", BACKUP, json.dumps(payload, ensure_ascii=False).encode())
        assert reply.status == 201, reply.body
        posted.append(reply.json["id"])
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        running.clock.advance(1)  # the read quota of this module is small
        reply = client.get(f"/api/backups?limit=1000{cursor}")
        assert reply.status == 200, reply.body
        assert len(reply.body) <= MAX_PAGE_BYTES
        page = reply.json
        assert page["items"], "a page holds at least one item"
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        if page["nextCursor"] is None:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert seen == posted  # newest first: each once, none missed
    assert pages >= 3


# --- the paging itself, against the byte budget -------------------------------------------------


Item = dict[str, object]


async def _walk(
    messages: list[int], budget: int, limit: int
) -> tuple[list[list[Item]], list[int], list[str]]:
    """Store backups with messages of these lengths; page through them; (pages, sizes, ids)."""
    store = MemoryStore()
    clock = ManualClock(START)
    _, record = await issue_api_key(store, account="acme", scopes={Scope.READ}, now=START)
    expected: list[str] = []
    for index, length in enumerate(messages):
        entry = bmcore.BackupEntry(
            device_name="srv01",
            job_name="Nightly",
            timestamp=START - timedelta(minutes=index),
            status="Success",
            message="\N{GRINNING FACE}" * length,
        )
        expected.append((await store.add_backup(record.account_id, entry, now=START)).id)
    read_side = ReadSide(
        settings=Settings(max_page_bytes=budget),
        store=store,
        clock=clock,
        authenticate=lambda _request, _scope: asyncio.sleep(0, record),
        limiter=MemoryLimiter(Settings().read_rate_policy),
        gate=LimiterGate("closed"),
    )
    pages: list[list[Item]] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        at = cursor
        response = await read_side._page(  # pyright: ignore[reportPrivateUsage]
            lambda size, place: store.list_backups(
                record.account_id, BackupQuery(), limit=size, cursor=place
            ),
            backup_json,
            limit=limit,
            cursor=at,
            headers={},
        )
        body = bytes(response.body)
        page = json.loads(body)
        pages.append(page["items"])
        sizes.append(len(body))
        cursor = page["nextCursor"]
        if cursor is None:
            return pages, sizes, expected


@hypothesis.settings(max_examples=60)
@given(
    messages=st.lists(st.integers(0, 3000), max_size=25),
    budget=st.integers(2_000, 150_000),
    limit=st.integers(1, 30),
)
def test_pages_hold_every_item_once_within_the_budget(
    messages: list[int], budget: int, limit: int
) -> None:
    """Whatever the sizes: every item once, in order; each page within limit and budget.

    A page goes over the budget only when its one item alone is larger.
    """
    pages, sizes, expected = asyncio.run(_walk(messages, budget, limit))
    assert [item["id"] for page in pages for item in page] == expected
    for page, size in zip(pages, sizes, strict=True):
        assert len(page) <= limit
        assert size <= budget or len(page) == 1
        assert page or not expected
    # No page is cut short for nothing: fewer items than the limit means the next one would not
    # have fitted beside them and the room kept for the page's envelope.
    for page, following in itertools.pairwise(pages):
        if len(page) < limit:
            items = sum(len(json_bytes(item)) + 1 for item in page)
            assert items + len(json_bytes(following[0])) + 1 > budget - _ENVELOPE_BYTES


def test_a_default_page_fits_the_default_budget(client: Client) -> None:
    """Ordinary pages are whole: 100 short backups come back as one page of 100."""
    for minute in range(100):
        timestamp = (START - timedelta(minutes=minute)).isoformat()
        assert client.post(BACKUP, backup(timestamp=timestamp)).status == 201
    page = client.get("/api/backups").json
    assert len(page["items"]) == 100
    assert page["nextCursor"] is None
