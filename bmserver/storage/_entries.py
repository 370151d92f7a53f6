"""Storing an entry, as every store does it: new ids, and bmcore's verdict turned into an answer.

A store looks up what it holds under an incoming entry's identity (``facts.identity``:
a backup's job and instant, a notification's content), and :func:`answer_to_repeat` asks
:func:`bmcore.classify` what that makes the entry. A new entry is the store's to keep; a repeat
is answered with the original, and a conflict is :class:`~bmserver.ConflictError`. The stores
only keep what the rules decide: the device and job of a new entry are those of its facts'
keys (``facts.device``, ``facts.job``: found by their digests, filtered by their canonical
names), its instant is ``facts.instant_us`` and ``facts.offset_minutes``, and the
``content_hash`` column holds ``facts.fingerprint``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import NamedTuple

import bmcore
from bmserver.storage._contract import ConflictError, WriteResult

__all__ = ["Original", "answer_to_repeat", "created", "new_id"]


def new_id(kind: str) -> str:
    """A new opaque id such as ``bk_3f9c0a1b2c3d4e5f``: 64 random bits after a readable kind.

    Random rather than sequential, so that ids reveal nothing about volumes and cannot be
    enumerated; the kind makes a stray id in a log or a bug report self-explanatory.
    """
    return f"{kind}_{secrets.token_hex(8)}"


class Original(NamedTuple):
    """The entry a store holds under an identity: what a repeat or a conflict is answered with.

    A NamedTuple rather than an attrs class: every repeat builds one, on the write path.
    """

    id: str
    #: The stored content_hash: bmcore's fingerprint of the original's content.
    fingerprint: bytes
    received_at: datetime
    device_id: str
    job_id: str | None


def answer_to_repeat(
    facts: bmcore.BackupFacts | bmcore.NotificationFacts, original: Original | None
) -> WriteResult | None:
    """What the rules make of an entry, given the original stored under its identity, if any.

    None for :attr:`bmcore.Verdict.NEW` (the store keeps the entry); for a repeat, the
    original's ids and receipt time, marked duplicate and creating nothing; ConflictError,
    naming the original, for a conflict.
    """
    verdict = bmcore.classify(facts, None if original is None else original.fingerprint)
    if original is None or verdict is bmcore.Verdict.NEW:
        return None
    if verdict is bmcore.Verdict.CONFLICT:
        raise ConflictError(original.id)
    return WriteResult(
        id=original.id,
        received_at=original.received_at,
        device_id=original.device_id,
        device_created=False,
        job_id=original.job_id,
        job_created=False,
        duplicate=True,
    )


def created(
    entry_id: str, received_at: datetime, device: tuple[str, bool], job: tuple[str | None, bool]
) -> WriteResult:
    """The answer to a new entry: its id, and its device and job, each (id, created now)."""
    (device_id, device_created), (job_id, job_created) = device, job
    return WriteResult(
        id=entry_id,
        received_at=received_at,
        device_id=device_id,
        device_created=device_created,
        job_id=job_id,
        job_created=job_created,
        duplicate=False,
    )
