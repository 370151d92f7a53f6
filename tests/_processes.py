"""Running the bmserver command as users do: a subprocess, a free port, HTTP over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

__all__ = ["bmserver", "free_port", "post", "wait_until_healthy"]


def bmserver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one bmserver command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bmserver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    """A port that was free a moment ago (serve needs a number to print its curl example)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post(url: str, key: str, payload: dict[str, str]) -> tuple[int, dict[str, object]]:
    """POST JSON with a key; returns the status and the parsed body."""
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL built by the test
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until_healthy(url: str, process: subprocess.Popen[str]) -> None:
    """Poll /healthz until the server answers (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)  # readiness polling, not a timing assumption
    pytest.fail("bmserver serve did not become healthy within 30 s")
