"""pytest_bm: ``bm_fake_ingest``, a real loopback BackupMonitor ingest endpoint for tests.

The fixture comes with the ``pytest11`` entry point: install bm-ingest and use it. Outside
pytest::

    from pytest_bm import FakeIngest

    with FakeIngest.running() as fake:
        subprocess.run(["./backup.sh"], env={**os.environ, **fake.env}, check=True)
        fake.assert_backup(job_name="Nightly Full Backup", status="Success")

Names are imported lazily, so that loading the pytest plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_bm._fake import FakeIngest
    from pytest_bm._faults import Delay, Drop, Fail, Interrupted, Throttle
    from pytest_bm._records import ReceivedBackup, ReceivedNotification, RecordedRequest

__all__ = [
    "Delay",
    "Drop",
    "Fail",
    "FakeIngest",
    "Interrupted",
    "ReceivedBackup",
    "ReceivedNotification",
    "RecordedRequest",
    "Throttle",
]

_WHERE = {
    "FakeIngest": "pytest_bm._fake",
    # The faults a request's record names (RecordedRequest.applied_fault), to branch on.
    "Delay": "pytest_bm._faults",
    "Drop": "pytest_bm._faults",
    "Fail": "pytest_bm._faults",
    "Interrupted": "pytest_bm._faults",
    "Throttle": "pytest_bm._faults",
    "ReceivedBackup": "pytest_bm._records",
    "ReceivedNotification": "pytest_bm._records",
    "RecordedRequest": "pytest_bm._records",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module 'pytest_bm' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
