"""The one HTTP client of benchmark 5, in process and in the test files it generates.

Both fakes get the very same request from the very same code: a valid backup result, POSTed
by urllib on a new connection. Standard library only, so that importing this module from a
generated test file costs both sides of the comparison the same.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from typing import Final

#: Where both fakes are sent the backup result (bm_fake_ingest serves it; pytest-httpserver
#: is told to expect it).
BACKUP_PATH: Final = "/api/ingest/backup"

# A proxy set in the environment must not sit between a benchmark and its loopback server.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def backup_body() -> bytes:
    """A valid backup result, timestamped now so that the fake's time policy accepts it."""
    return json.dumps(
        {
            "deviceName": "srv01",
            "jobName": "Nightly",
            "status": "Success",
            "message": "Backup completed.",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    ).encode()


def post_backup(url: str, api_key: str) -> int:
    """POST a backup result to ``url``, read the whole answer; its status (HTTPError if 4xx/5xx)."""
    request = urllib.request.Request(  # noqa: S310 - a fixture's http:// loopback URL
        url,
        data=backup_body(),
        method="POST",
        headers={"Content-Type": "application/json", "X-Api-Key": api_key},
    )
    with _OPENER.open(request, timeout=5) as response:
        response.read()
        status: int = response.status
    return status
