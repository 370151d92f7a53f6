"""Issuing API keys: the one place a key exists in clear, just before it is shown once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import bmcore
from bmserver.storage._contract import ApiKeyRecord, Scope, Store

__all__ = ["issue_api_key"]


async def issue_api_key(
    store: Store,
    *,
    account: str,
    scopes: Iterable[Scope],
    now: datetime,
    secret: bytes | None = None,
    key: str | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Create (or reuse) the account and store a new key's hash; returns the key and its record.

    ``key`` lets a test fixture choose its own key; it must pass bmcore's format check.
    """
    clear = bmcore.check_api_key_format(key) if key is not None else bmcore.generate_api_key()
    owner = await store.create_account(account, now=now)
    record = await store.add_api_key(
        account_id=owner.id,
        key_hash=bmcore.hash_api_key(clear, secret=secret),
        prefix=bmcore.display_prefix(clear),
        scopes=frozenset(scopes),
        now=now,
    )
    return clear, record
