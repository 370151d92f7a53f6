"""The bm-fake-ingest command: a FakeIngest for shell test suites, run as a real process."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import attrs
import pytest
from _harness import backup

from pytest_bm import FakeIngest
from pytest_bm._cli import follow_real_time, main

#: Bounds every wait here; none is expected to come near it.
PATIENCE_S = 20.0


@attrs.define
class Served:
    """A running bm-fake-ingest process and the lines it printed."""

    process: subprocess.Popen[str]
    printed: list[str]

    @property
    def env(self) -> dict[str, str]:
        """The printed lines as variables, unquoted as the shell would."""
        pairs = (line.partition("=") for line in self.printed)
        return {name: shlex.split(value)[0] for name, _, value in pairs}

    def finish(self, sig: signal.Signals) -> tuple[int, str]:
        """Send ``sig``; the exit status and what the process wrote on stderr."""
        self.process.send_signal(sig)
        _, stderr = self.process.communicate(timeout=PATIENCE_S)
        return self.process.returncode, stderr


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start bm-fake-ingest with arguments; it is killed at teardown if still running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Served:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest_bm._cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        # A hung process would block readline() for ever: the watchdog bounds the wait.
        watchdog = threading.Timer(PATIENCE_S, process.kill)
        watchdog.start()
        printed: list[str] = []
        try:
            while not printed or not printed[-1].startswith("BM_API_KEY="):
                line = process.stdout.readline()
                assert line, f"bm-fake-ingest ended early: {process.communicate()[1]}"
                printed.append(line.rstrip("\n"))
        finally:
            watchdog.cancel()
        return Served(process, printed)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=PATIENCE_S)


def post(url: str, key: str, payload: object) -> tuple[int, dict[str, str]]:
    """POST JSON with urllib; the status and the headers (names lower-case)."""
    request = urllib.request.Request(  # noqa: S310 - an http:// URL the test built
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
        method="POST",
    )
    # No proxy: the one a developer may have configured must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=PATIENCE_S) as response:
        return response.status, {name.lower(): value for name, value in response.headers.items()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_prints_shell_lines_serves_and_exits_0_on_a_signal(
    serve: Callable[..., Served], sig: signal.Signals
) -> None:
    """NAME=value lines a shell can eval, the key last; it serves, and a signal ends it with 0."""
    served = serve("--rate", "30/min", "--burst", "5")
    names = [line.partition("=")[0] for line in served.printed]
    assert names == [
        "BM_INGEST_URL",
        "BM_INGEST_BACKUP_URL",
        "BM_INGEST_NOTIFICATION_URL",
        "NO_PROXY",
        "no_proxy",
        "BM_API_KEY",
    ]
    script = """
        eval "$FAKE_LINES"
        curl -sS -o /dev/null -D - -X POST "$BM_INGEST_BACKUP_URL" \\
          -H "Content-Type: application/json" -H "X-Api-Key: $BM_API_KEY" -d "$PAYLOAD"
    """
    result = subprocess.run(
        ["bash", "-c", script],
        env={
            **os.environ,
            "FAKE_LINES": "\n".join(served.printed),
            "PAYLOAD": json.dumps(backup()),
        },
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 201 ")
    assert 'ratelimit-policy: "default";q=5;w=10' in result.stdout.lower()
    status, stderr = served.finish(sig)
    assert status == 0, stderr
    key = served.env["BM_API_KEY"]
    assert f'"POST /api/ingest/backup" 201 key={key[:11]}' in stderr
    assert key not in stderr


def test_uses_the_given_key(serve: Callable[..., Served]) -> None:
    """--api-key is the key printed and the key accepted."""
    key = "bm_" + "s" * 43
    served = serve("--api-key", key)
    assert served.env["BM_API_KEY"] == key
    status, headers = post(served.env["BM_INGEST_BACKUP_URL"], key, backup())
    assert status == 201
    assert headers["ratelimit-policy"] == '"default";q=60;w=60'
    assert served.finish(signal.SIGTERM)[0] == 0


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--rate", "fast"], "invalid rate 'fast'"),
        (["--burst", "0"], "invalid value '0'"),
        (["--port", "70000"], "invalid port '70000'"),
        (["--api-key", "secret"], "not a valid API key"),
    ],
)
def test_bad_flags_are_usage_errors(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag exits with status 2 and says what is wrong."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_port_in_use_exits_1_with_the_reason() -> None:
    """A port that is taken ends the command with status 1 and the reason, not a hang."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "pytest_bm._cli", "--port", port],
            capture_output=True,
            text=True,
            timeout=PATIENCE_S,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""


def test_the_clock_follows_the_real_time() -> None:
    """A shell cannot call clock.advance(): the command moves the fake's clock itself."""
    fake = FakeIngest()
    stop = threading.Event()
    follower = threading.Thread(target=follow_real_time, args=(fake, stop))
    follower.start()
    try:
        deadline = time.monotonic() + PATIENCE_S
        while fake.clock.monotonic_ns() == 0:
            assert time.monotonic() < deadline, "the clock never moved"
            time.sleep(0.01)
    finally:
        stop.set()
        follower.join(PATIENCE_S)
    assert not follower.is_alive()
