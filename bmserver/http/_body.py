"""An ingest request's body: read within its size cap and time-out, its type checked, gzip undone.

Three steps, because authentication and the rate limit come between them: the body is read
first (:func:`read_body`, so that a connection never holds an unread body while a key is
looked up), and its type and encoding are looked at only for a request that is admitted
(:func:`check_content_type`, :func:`decode_content`).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Final

from starlette.requests import Request

from bmserver.http._problems import Problem, ProblemError

__all__ = ["check_content_type", "decode_content", "read_body"]

_JSON_MEDIA: Final = frozenset({"application/json", "text/json"})
# Sent by curl -d without -H "Content-Type: application/json", or by careless tools: the body
# is still tried as JSON, and the response carries a warning.
_LENIENT_MEDIA: Final = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})


async def read_body(
    request: Request, limit: int, timeout_s: float, *, advice: str = "shorten the message field"
) -> bytes:
    """The body, read only up to ``limit`` bytes and ``timeout_s`` seconds.

    A larger body is refused, never buffered; a body still arriving after ``timeout_s`` gets a
    408, so that a client trickling its body cannot hold a connection (and a graceful
    shutdown) for ever.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, f"Content-Length is {declared}", advice)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, "the body is longer", advice)
                chunks.append(chunk)
    except TimeoutError:
        raise ProblemError(
            Problem.REQUEST_TIMEOUT,
            f"the body did not arrive within {timeout_s:g} s ({size} bytes came); send it at "
            "once, with an accurate Content-Length",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def _too_large(limit: int, what: str, advice: str) -> ProblemError:
    return ProblemError(
        Problem.PAYLOAD_TOO_LARGE, f"the body may be at most {limit} bytes and {what}; {advice}"
    )


def check_content_type(request: Request) -> list[dict[str, str]]:
    """Refuse types that are clearly not JSON; warn about a missing or form type."""
    header = request.headers.get("content-type", "")
    media, _, params = header.partition(";")
    media = media.strip().lower()
    charset = _charset(params)
    if charset not in {None, "utf-8", "utf8"}:
        raise ProblemError(Problem.UNSUPPORTED_MEDIA_TYPE, f"the body must be UTF-8, not {charset}")
    if media in _JSON_MEDIA or media.endswith("+json"):
        return []
    if media in _LENIENT_MEDIA:
        shown = f"Content-Type {media}" if media else "no Content-Type"
        return [
            {
                "code": "content_type",
                "message": f"the request had {shown}; send Content-Type: application/json",
            }
        ]
    raise ProblemError(
        Problem.UNSUPPORTED_MEDIA_TYPE,
        f"the body must be JSON, but Content-Type is {media}; send Content-Type: application/json",
    )


def _charset(params: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def decode_content(request: Request, raw: bytes, limit: int) -> bytes:
    """Undo Content-Encoding gzip, never producing more than ``limit`` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in {"identity", ""}:
        return raw
    if encoding not in {"gzip", "x-gzip"}:
        raise ProblemError(
            Problem.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding} is not supported; send the body as is, or gzip",
        )
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as error:
        raise ProblemError(
            Problem.INVALID_JSON, f"the gzip body could not be decompressed: {error}"
        ) from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, "the decompressed body is longer", "shorten the message field")
    if not inflater.eof:
        raise ProblemError(Problem.INVALID_JSON, "the gzip body is truncated")
    if inflater.unused_data:
        # zlib stops at the end of the first member; gzip -d (and a proxy or an inspector)
        # would go on, and see another body than the one stored.
        raise ProblemError(
            Problem.INVALID_JSON,
            f"the gzip body has {len(inflater.unused_data)} bytes after its end (a second gzip "
            "member or trailing data); send one gzip member holding the whole JSON body",
        )
    return body
