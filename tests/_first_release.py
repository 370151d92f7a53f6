"""Rows as the first release stored them: matching keys computed by the old canonical form.

The first canonical form kept default-ignorable characters (``srv<U+200B>01`` was not
``srv01``); schema migration 3 re-keys such rows. The migration tests of the SQL stores
(``tests/server/test_sql_stores.py``, on SQLite and PostgreSQL alike) build their version-2
databases with these.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from typing import Any

#: account id, sender, device name, job name
Report = tuple[str, str, str, str]


def old_canonical(name: str) -> str:
    """canonical_name as it was before it removed default-ignorable characters."""
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())
    return " ".join(folded.split())


def old_digest(kind: str, *names: str) -> str:
    """A device or job digest as the first release computed it (bmcore's documented form)."""
    parts = "".join(f"{len(part)}:{part}" for part in map(old_canonical, names))
    return hashlib.sha256(f"{kind}:v1:{parts}".encode()).hexdigest()[:32]


def old_tables(reports: Sequence[Report]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The devices and jobs rows, oldest first, that the first release made of these reports.

    Devices are (id, account_id, digest, sender, device_name), jobs (id, account_id, device_id,
    digest, sender, device_name, job_name): what migration 3's backfill reads. Ids count up
    from ``dev_0000000000000000`` and ``job_0000000000000000``.
    """
    devices: dict[tuple[str, str], tuple[Any, ...]] = {}
    jobs: dict[tuple[str, str], tuple[Any, ...]] = {}
    for account, sender, device, job in reports:
        device_digest = old_digest("device", sender, device)
        found = devices.setdefault(
            (account, device_digest),
            (f"dev_{len(devices):016x}", account, device_digest, sender, device),
        )
        job_digest = old_digest("job", sender, device, job)
        jobs.setdefault(
            (account, job_digest),
            (f"job_{len(jobs):016x}", account, found[0], job_digest, sender, device, job),
        )
    return list(devices.values()), list(jobs.values())
