"""What only MemoryStore has: it needs no open(), reset() and clear(), and threads of its own.

MemoryStore serves the ``bm_fake_ingest`` fixture, whose server thread writes while the test
thread reads and resets. The contract every store keeps is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from _stores import NOW, backup, backups_of, lists_of, notification, notifications_of, run_async

from bmserver.storage._contract import StoreError, WriteResult
from bmserver.storage._memory import MemoryStore


@run_async
async def test_memory_reset_keeps_accounts_and_keys() -> None:
    """reset() forgets entries, devices and jobs, and keeps accounts and keys."""
    store = MemoryStore()
    owner = await store.create_account("acme", now=NOW)
    await store.add_api_key(
        account_id=owner.id, key_hash="h", prefix="p", scopes=frozenset(), now=NOW
    )
    await store.add_backup(owner.id, backup(), now=NOW)
    await store.add_notification(owner.id, notification(), now=NOW)
    store.reset()
    assert await store.count_accounts() == 1
    assert await store.find_api_key("h") is not None
    assert await backups_of(store, owner.id) == []
    assert await notifications_of(store, owner.id) == []
    for fetch in lists_of(store, owner.id).values():
        assert (await fetch(None)).items == []
    again = await store.add_backup(owner.id, backup(), now=NOW)
    assert (again.duplicate, again.device_created, again.job_created) == (False, True, True)


@run_async
async def test_memory_clear_forgets_everything() -> None:
    """clear() forgets accounts and keys too; the store stays usable."""
    store = MemoryStore()
    owner = await store.create_account("acme", now=NOW)
    await store.add_api_key(
        account_id=owner.id, key_hash="h", prefix="p", scopes=frozenset(), now=NOW
    )
    await store.add_backup(owner.id, backup(), now=NOW)
    store.clear()
    assert await store.count_accounts() == 0
    assert await store.find_api_key("h") is None
    assert await store.list_api_keys() == []
    assert await backups_of(store, owner.id) == []
    with pytest.raises(StoreError, match="unknown account"):
        await store.add_backup(owner.id, backup(), now=NOW)
    assert (await store.create_account("acme", now=NOW)).id != owner.id


@run_async
async def test_memory_store_needs_no_open() -> None:
    """A MemoryStore works before open() and after close(), keeping its data."""
    store = MemoryStore()
    owner = await store.create_account("acme", now=NOW)
    await store.close()
    await store.add_backup(owner.id, backup(), now=NOW)
    await store.open()
    assert len(await backups_of(store, owner.id)) == 1


_THREADED_WRITES = 5000


def test_memory_store_is_thread_safe() -> None:
    """Two threads, each with its own loop, writing the same entries: each stored once."""
    store = MemoryStore()
    owner = asyncio.run(store.create_account("acme", now=NOW))
    base = datetime(2024, 1, 1, tzinfo=UTC)
    entries = [
        attrs.evolve(backup(f"job {index % 7}", device=f"srv{index % 3}"), timestamp=stamp)
        for index in range(_THREADED_WRITES)
        for stamp in [base + timedelta(hours=index)]
    ]
    results: list[list[WriteResult]] = [[], []]
    start = threading.Barrier(2)

    def writer(mine: list[WriteResult]) -> None:
        async def write_all() -> None:
            start.wait()
            mine.extend([await store.add_backup(owner.id, entry, now=NOW) for entry in entries])

        asyncio.run(write_all())

    threads = [threading.Thread(target=writer, args=(mine,)) for mine in results]
    # Switch threads as often as possible, so that unlocked check-then-insert would interleave.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    first, second = results
    assert [result.id for result in first] == [result.id for result in second]
    assert sum(not result.duplicate for result in [*first, *second]) == _THREADED_WRITES
    assert sum(result.device_created for result in [*first, *second]) == 3
    assert sum(result.job_created for result in [*first, *second]) == 7 * 3
    assert len(asyncio.run(backups_of(store, owner.id))) == _THREADED_WRITES
