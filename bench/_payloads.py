"""The realistic payloads the decoding benchmarks feed to every library alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

#: The receiver's clock for the time policy; every payload is dated shortly before it.
NOW: Final = datetime(2024, 6, 4, 12, 30, tzinfo=UTC)

_LONG_MESSAGE: Final = (
    "Backup completed with 3 warnings.\n"
    + "".join(
        f"Skipped C:\\Users\\user{n}\\AppData\\Local\\Temp\\locked-{n}.tmp\n" for n in range(40)
    )
    + "Transferred 1,284,551 files (412.7 GB) in 3h 12m."
)


def _encode(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload).encode()


#: Valid backup results: short and long messages, the timestamp forms scripts send.
VALID_BACKUPS: Final = [
    _encode(payload)
    for payload in [
        {
            "deviceName": "srv01",
            "jobName": "Nightly",
            "timestamp": "2024-06-04T12:00:00Z",
            "status": "Success",
            "message": "ok",
        },
        {
            "deviceName": "FILESERVER-02.corp.example",
            "jobName": "Daily full backup (Veeam)",
            "timestamp": "2024-06-04T14:00:00+02:00",
            "status": "Warning",
            "message": _LONG_MESSAGE,
            "sender": "veeam@fileserver-02",
        },
        {
            "deviceName": "db-primary",
            "jobName": "pg_dump hourly",
            "timestamp": "2024-06-04T12:15:03.123456Z",
            "status": "Error",
            "message": "pg_dump: error: connection to server failed: FATAL: too many clients",
        },
        {
            "deviceName": "laptop-anna",
            "jobName": "Time Machine",
            "timestamp": "2024-06-04T08:00:00.5-04:00",
            "status": "success",
            "message": "Backup finished",
            "sender": "backup-script",
            "extra": "ignored",
        },
    ]
]

#: Valid notifications: minimal and complete.
VALID_NOTIFICATIONS: Final = [
    _encode(payload)
    for payload in [
        {
            "deviceName": "srv01",
            "timestamp": "2024-06-04T12:00:00Z",
            "severity": "warning",
            "type": "disk_space_low",
        },
        {
            "deviceName": "nas-01",
            "jobName": "Offsite sync",
            "timestamp": "2024-06-04T14:05:00+02:00",
            "severity": "CRITICAL",
            "type": "raid_degraded",
            "message": "Disk 3 failed; the array is degraded and rebuilding.",
            "sender": "nas-monitor",
        },
    ]
]

#: Invalid backup results, as broken scripts send them.
INVALID_BACKUPS: Final = [
    _encode(payload)
    for payload in list[dict[str, object]](
        [
            {"deviceName": "srv01", "timestamp": "2024-06-04T12:00:00Z", "status": "Success"},
            {
                "deviceName": "srv01",
                "jobName": "Nightly",
                "timestamp": "2024-06-04T12:00:00",
                "status": "Success",
                "message": "no offset",
            },
            {
                "deviceName": "srv01",
                "jobName": "Nightly",
                "timestamp": 1717502400,
                "status": "Success",
                "message": "epoch",
            },
            {
                "deviceName": "",
                "jobName": "Nightly",
                "timestamp": "2024-06-04T12:00:00Z",
                "status": 0,
                "message": "blank name, number status",
            },
        ]
    )
]
