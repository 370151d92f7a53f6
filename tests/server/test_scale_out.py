"""Many instances: bmserver processes on one PostgreSQL and one Redis act as one server.

Real processes (``bmserver serve``), a real PostgreSQL database of the test's own and Redis
keys under a prefix of the test's own, over real sockets.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

BURST = 12


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Instance:
    """One ``bmserver serve`` process."""

    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def post(self, key: str, payload: dict[str, str]) -> tuple[int, dict[str, object]]:
        """POST a backup; the status and the parsed body."""
        request = urllib.request.Request(  # noqa: S310 - a loopback URL built by the test
            f"{self.url}/api/ingest/backup",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "X-Api-Key": key},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def start(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Any]:
    """Start instances on the test's database and Redis prefix: ``start(workers=1)``."""
    prefix = f"bm-test-{uuid.uuid4().hex}"
    started: list[Instance] = []

    def run(*, workers: int = 1) -> Instance:
        port = _free_port()
        log = tmp_path / f"instance-{len(started)}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bmserver",
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--rate",
                    "1/h",
                    "--burst",
                    str(BURST),
                    "--log-level",
                    "warning",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                env={
                    **os.environ,
                    "BM_DATABASE_URL": database_url,
                    "BM_REDIS_URL": redis_url,
                    "BM_REDIS_PREFIX": prefix,
                },
            )
        instance = Instance(process, port, log)
        started.append(instance)
        _wait_until_healthy(instance)
        return instance

    try:
        yield run
    finally:
        for instance in started:
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
                instance.process.wait(timeout=60)


def _wait_until_healthy(instance: Instance) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if instance.process.poll() is not None:
            pytest.fail(f"bmserver exited:\n{instance.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{instance.url}/healthz", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)  # readiness polling, not a timing assumption
    pytest.fail(f"bmserver did not become healthy:\n{instance.log.read_text()}")


def _new_key(database_url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bmserver", "keys", "create", "--account", "acme"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "BM_DATABASE_URL": database_url},
    )
    return result.stdout.strip()


def _backup(job: str, minutes_ago: int = 5) -> dict[str, str]:
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "deviceName": "srv01",
        "jobName": job,
        "timestamp": moment.isoformat(timespec="seconds"),
        "status": "Success",
        "message": "ok",
    }


def _stored_ids(database_url: str) -> list[str]:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(database_url) as connection:
        return [str(row[0]) for row in connection.execute("SELECT id FROM backups")]


def _burst(instances: list[Instance], key: str, count: int) -> list[tuple[int, dict[str, object]]]:
    """``count`` unique backups at once, spread over the instances round-robin."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [
            pool.submit(instances[n % len(instances)].post, key, _backup(f"job-{n}"))
            for n in range(count)
        ]
        return [future.result() for future in futures]


def test_a_burst_over_two_instances_admits_exactly_one_quota(start: Any, database_url: str) -> None:
    """Two instances share one bucket per key in Redis: BURST admitted in all, each stored once."""
    first = start()
    second = start()
    key = _new_key(database_url)
    replies = _burst([first, second], key, 3 * BURST)
    statuses = sorted(status for status, _ in replies)
    assert statuses == [201] * BURST + [429] * (2 * BURST), statuses
    acknowledged = sorted(str(body["id"]) for status, body in replies if status == 201)
    assert sorted(_stored_ids(database_url)) == acknowledged


def test_a_repeat_sent_to_the_other_instance_returns_the_same_id(
    start: Any, database_url: str
) -> None:
    """The idempotency key lives in PostgreSQL: any instance answers a repeat with its id."""
    first = start()
    second = start()
    key = _new_key(database_url)
    entry = _backup("nightly")
    created = first.post(key, entry)
    repeated = second.post(key, entry)
    assert created[0] == 201
    assert repeated[0] == 200
    assert repeated[1]["id"] == created[1]["id"]
    changed = second.post(key, {**entry, "message": "different"})
    assert changed[0] == 409
    assert changed[1]["existingId"] == created[1]["id"]
    assert _stored_ids(database_url) == [created[1]["id"]]


def test_concurrent_repeats_on_both_instances_store_one_entry(
    start: Any, database_url: str
) -> None:
    """The same entry sent at once to both instances, many times: one row, one id for all."""
    first = start()
    second = start()
    key = _new_key(database_url)
    entry = _backup("raced")
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit((first, second)[n % 2].post, key, entry) for n in range(BURST)]
        replies = [future.result() for future in futures]
    assert sorted(status for status, _ in replies) == [200] * (BURST - 1) + [201]
    assert len({str(body["id"]) for _, body in replies}) == 1
    assert len(_stored_ids(database_url)) == 1


def test_two_workers_of_one_instance_share_one_quota(start: Any, database_url: str) -> None:
    """With serve --workers 2, the workers' limits are Redis's, so the key still gets one quota."""
    instance = start(workers=2)
    key = _new_key(database_url)
    replies = _burst([instance], key, 3 * BURST)
    assert sorted(status for status, _ in replies) == [201] * BURST + [429] * (2 * BURST)
    acknowledged = sorted(str(body["id"]) for status, body in replies if status == 201)
    assert sorted(_stored_ids(database_url)) == acknowledged
