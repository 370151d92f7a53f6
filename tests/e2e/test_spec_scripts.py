"""The spec's own curl scripts, unchanged but for the URL and the key, against a real server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _harness import RunningServer

from bmserver import ManualClock

SCRIPTS = Path(__file__).parent / "scripts"
SPEC_URL = "https://ingest.backupmonitor.io"
SPEC_KEY = "bm_your-api-key-here"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def clock() -> ManualClock:
    """The scripts date their posts with the real `date`, so the server's clock starts now."""
    return ManualClock(datetime.now(UTC))


def run_script(name: str, running: RunningServer, *, path: str | None = None) -> str:
    """Run a spec script with only the URL and the API key replaced; returns its output."""
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    assert SPEC_URL in text
    assert SPEC_KEY in text
    script = text.replace(SPEC_URL, running.client.url).replace(SPEC_KEY, running.client.api_key)
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_report_backup_script(running: RunningServer) -> None:
    """The spec's backup script gets 201 and its entry is listed for the account."""
    output = run_script("report-backup.sh", running)
    assert output.startswith("HTTP/1.1 201"), output
    items = running.client.get("/api/backups").json["items"]
    assert [(item["jobName"], item["status"]) for item in items] == [
        ("Nightly Full Backup", "Success")
    ]
    assert items[0]["deviceName"] == socket.gethostname()
    assert items[0]["sender"] == f"script-{socket.gethostname()}"


def test_post_notification_script(running: RunningServer) -> None:
    """The spec's notification script gets 201 with its job matched."""
    output = run_script("post-notification.sh", running)
    assert output.startswith("HTTP/1.1 201"), output
    items = running.client.get("/api/notifications").json["items"]
    assert [(item["severity"], item["type"], item["jobName"]) for item in items] == [
        ("info", "some_alert", "Job")
    ]


def test_disk_space_alert_script(running: RunningServer, tmp_path: Path) -> None:
    """The disk-space script posts a warning and an error for the full disks, nothing else."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    df = fake_bin / "df"
    df.write_text(
        "#!/bin/sh\n"
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        "echo '/dev/vda1 100 85 15 85% /'\n"
        "echo '/dev/vdb1 100 95 5 95% /data'\n"
        "echo '/dev/vdc1 100 10 90 10% /roomy'\n",
        encoding="utf-8",
    )
    df.chmod(0o755)
    output = run_script(
        "disk-space-alert.sh", running, path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    )
    assert "[ok] /roomy" in output
    items = running.client.get("/api/notifications").json["items"]
    found = sorted((item["severity"], item["message"]) for item in items)
    assert found == [
        ("error", "Drive /data (/dev/vdb1) has only 5% free space remaining."),
        ("warning", "Drive / (/dev/vda1) has only 15% free space remaining."),
    ]
