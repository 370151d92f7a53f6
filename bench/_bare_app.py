"""The baseline of the HTTP ingest benchmark: the least an ingest endpoint can do on Starlette.

``POST /api/ingest/backup`` reads the body, parses it as JSON and answers 201 with a small
JSON body of about the size of bmserver's answer: no authentication, rate limit, validation or
storage. ``python -m bench._bare_app --port N`` serves it with the uvicorn settings of
``bmserver serve`` (bmserver/_cli.py), so that the two differ only in what the app does.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bmserver import GuardedH11Protocol

__all__ = ["app", "main"]

# bmserver's 201 body for a known device and job, with fixed values: the same shape and size.
_CREATED: Final[dict[str, object]] = {
    "id": "bk_0123456789abcdef",
    "kind": "backup",
    "receivedAt": "2024-06-04T12:05:00.123456+00:00",
    "duplicate": False,
    "device": {"id": "dev_0123456789abcdef", "created": False},
    "job": {"id": "job_0123456789abcdef", "created": False},
    "outcome": "Success",
    "warnings": [],
    "ignoredFields": [],
}


async def ingest(request: Request) -> Response:
    """Parse the body as JSON and answer 201."""
    json.loads(await request.body())
    return JSONResponse(_CREATED, status_code=201)


app: Final = Starlette(routes=[Route("/api/ingest/backup", ingest, methods=["POST"])])


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app on 127.0.0.1 until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m bench._bare_app", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    # As bmserver/_cli.py's _serve: the same logging set-up and uvicorn.run arguments, with
    # bmserver's default of one worker (uvicorn then serves in this process).
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "bench._bare_app:app",
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
        access_log=False,
        server_header=False,
        http=GuardedH11Protocol,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
