"""A real Prometheus scrapes a real `bmserver serve`, with the README's configuration and rule.

The rule must fire for a job whose report is overdue, and not for a healthy one. Prometheus is
Debian's package (`.ci/run` installs it); without it the test skips, except in CI
(BM_REQUIRE_SERVICES=1), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from shutil import which
from typing import cast

import pytest
from _processes import bmserver, free_port, post, wait_until_healthy

README = Path(__file__).parents[2] / "README.md"


def _readme_yaml(first_line: str) -> str:
    for block in re.findall(
        r"^```yaml\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
    ):
        if block.startswith(first_line):
            return str(block)
    pytest.fail(f"the README has no yaml block starting {first_line!r}")


@pytest.fixture
def prometheus_binary() -> str:
    found = which("prometheus")
    if found is None:
        if os.environ.get("BM_REQUIRE_SERVICES") == "1":
            pytest.fail(
                "prometheus is not installed (Debian: apt-get install prometheus); CI requires it"
            )
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    return found


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`bmserver serve` on SQLite: its URL and a key with the ingest, read and manage scopes."""
    database = tmp_path / "ingest.sqlite3"
    env = {"BM_DATABASE": str(database)}
    created = bmserver(
        "keys",
        "create",
        "--account",
        "ops",
        "--scope",
        "ingest",
        "--scope",
        "read",
        "--scope",
        "manage",
        env=env,
    )
    assert created.returncode == 0, created.stderr
    key = re.search(r"bm_[A-Za-z0-9_-]{20,}", created.stdout)
    assert key is not None, created.stdout
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bmserver", "serve", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process)
        yield url, key[0]
    finally:
        _stop(process)
        if process.stderr is not None:
            process.stderr.close()


def _put_schedule(url: str, key: str, job_id: str, schedule: dict[str, str]) -> None:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL built by the test
        f"{url}/api/jobs/{job_id}/schedule",
        data=json.dumps(schedule).encode(),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 200


def _firing(prometheus_url: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/alerts", timeout=5) as response:  # noqa: S310
        alerts = json.loads(response.read())["data"]["alerts"]
    return [alert["labels"] for alert in alerts if alert["state"] == "firing"]


def test_the_readme_rule_fires_for_an_overdue_job_only(
    prometheus_binary: str, server: tuple[str, str], tmp_path: Path
) -> None:
    url, key = server
    now = datetime.now(UTC)
    jobs: dict[str, str] = {}
    for name, ran in [
        ("overdue", now - timedelta(hours=3)),
        ("healthy", now - timedelta(minutes=5)),
    ]:
        status, body = post(
            f"{url}/api/ingest/backup",
            key,
            {
                "deviceName": "srv01",
                "jobName": name,
                "timestamp": ran.isoformat(),
                "status": "Success",
                "message": "ok",
            },
        )
        assert status == 201, body
        job = cast("dict[str, object]", body["job"])
        jobs[name] = str(job["id"])
    _put_schedule(url, key, jobs["overdue"], {"every": "1h", "grace": "10m"})
    _put_schedule(url, key, jobs["healthy"], {"every": "1d", "grace": "1h"})

    # The README's configuration, pointed at this server and scraping every second.
    (tmp_path / "key").write_text(key)
    scrape = _readme_yaml("# prometheus.yml")
    for old, new in [
        ("/etc/prometheus/bm-read-key", str(tmp_path / "key")),
        ("bm-ingest.internal:8080", url.removeprefix("http://")),
        ("scrape_interval: 60s", "scrape_interval: 1s"),
        ("rule_files: [bm-ingest-rules.yml]", f"rule_files: [{tmp_path / 'rules.yml'}]"),
    ]:
        assert old in scrape
        scrape = scrape.replace(old, new)
    (tmp_path / "prometheus.yml").write_text("global:\n  evaluation_interval: 1s\n" + scrape)
    (tmp_path / "rules.yml").write_text(_readme_yaml("# bm-ingest-rules.yml"))

    port = free_port()
    prometheus = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        prometheus_url = f"http://127.0.0.1:{port}"
        firing: list[dict[str, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not firing:
            assert prometheus.poll() is None, prometheus.stderr.read() if prometheus.stderr else ""
            with contextlib.suppress(OSError):
                firing = _firing(prometheus_url)
            time.sleep(0.5)  # polling Prometheus's evaluation, not a timing assumption
        assert [alert["job"] for alert in firing] == ["overdue"], firing
        alert = firing[0]
        assert (alert["alertname"], alert["device"], alert["state"]) == (
            "BackupMissing",
            "srv01",
            "missing",
        )
        # A few more evaluations: the healthy job never fires.
        time.sleep(3)
        assert [alert["job"] for alert in _firing(prometheus_url)] == ["overdue"]
    finally:
        _stop(prometheus)
        if prometheus.stderr is not None:
            prometheus.stderr.close()
