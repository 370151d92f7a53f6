r"""The ``bm-fake-ingest`` command: serve a FakeIngest for shell test suites (bats, ...).

It prints ``NAME=value`` lines on stdout, quoted for the shell, ``BM_API_KEY`` last, then
serves until SIGTERM or SIGINT (Ctrl-C) and exits 0. A shell test cannot call
``clock.advance()``, so here the fake's clock follows the real time (to a tenth of a second):
the rate limiter refills as bmserver's does, and ``receivedAt`` is the real time::

    bm-fake-ingest > fake.env &
    until grep -q BM_API_KEY fake.env; do sleep 0.1; done
    set -a; . ./fake.env; set +a
    curl -fsS -H "X-Api-Key: $BM_API_KEY" -H 'Content-Type: application/json' \
        -d @payload.json "$BM_INGEST_BACKUP_URL"
    kill %1
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Final

import bmcore
from bmserver import DEFAULT_RATE_POLICY, port_argument, positive_int_argument, rate_argument
from pytest_bm._fake import FakeIngest

__all__ = ["main"]


def _api_key(text: str) -> str:
    try:
        return bmcore.check_api_key_format(text)
    except bmcore.ApiKeyFormatError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bm-fake-ingest",
        description="Serve a fake BackupMonitor ingest endpoint (bmserver's app, in memory) "
        "for shell test suites. Prints NAME=value lines for the shell on stdout, then serves "
        "until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (%(default)s)")
    parser.add_argument(
        "--port", type=port_argument, default=0, help="port; 0 picks a free one (%(default)s)"
    )
    parser.add_argument(
        "--api-key", type=_api_key, help="the key to accept (default: a fresh random one)"
    )
    parser.add_argument(
        "--rate",
        type=rate_argument,
        default="1/s",
        help="sustained requests per API key, e.g. 1/s or 30/min (%(default)s)",
    )
    parser.add_argument(
        "--burst",
        type=positive_int_argument,
        default=DEFAULT_RATE_POLICY.burst,
        help="requests a key may send at once (%(default)s)",
    )
    return parser


#: How often the clock catches up with the real time.
CLOCK_STEP_S: Final = 0.1


def follow_real_time(fake: FakeIngest, stop: threading.Event) -> None:
    """Advance the fake's clock with the real time until ``stop`` is set (by a signal)."""
    last = time.monotonic()
    while not stop.wait(CLOCK_STEP_S):
        now = time.monotonic()
        fake.clock.advance(now - last)
        last = now


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def handle(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    # Installed before the server starts, so that a signal sent as soon as the lines are
    # printed already stops it cleanly.
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # The access log (method, path, status, key prefix; never the key) on stderr.
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("bmserver.access").setLevel(logging.INFO)
        fake = FakeIngest(
            api_key=args.api_key,
            rate_policy=bmcore.RatePolicy.per_second(args.rate, burst=args.burst),
            host=args.host,
            port=args.port,
        )
        try:
            fake.start()
        except RuntimeError as error:
            sys.stderr.write(f"bm-fake-ingest: {error}\n")
            return 1
        try:
            env = fake.env
            # The key last: a script that sees its line knows that every line is there.
            key = env.pop("BM_API_KEY")
            for name, value in [*env.items(), ("BM_API_KEY", key)]:
                sys.stdout.write(f"{name}={shlex.quote(value)}\n")
            sys.stdout.flush()
            sys.stderr.write(f"bm-fake-ingest: serving at {fake.url}; stop with Ctrl-C\n")
            follow_real_time(fake, stop)
        finally:
            fake.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
