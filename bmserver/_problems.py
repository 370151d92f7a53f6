"""RFC 9457 problem responses: every error bmserver sends has this shape."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Final

import attrs
from starlette.responses import JSONResponse, Response

from bmcore import FieldError

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "AsciiJSONResponse",
    "ProblemError",
    "problem_response",
    "shown",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

_TITLES: Final = {
    "invalid_json": "The body is not valid JSON",
    "validation_failed": "The payload has invalid fields",
    "missing_api_key": "No API key was sent",
    "invalid_api_key": "The API key is not valid",
    "insufficient_scope": "The API key may not do this",
    "rate_limited": "Too many requests",
    "payload_too_large": "The body is too large",
    "unsupported_media_type": "The body's type or encoding is not supported",
    "conflict": "A different entry exists for this job and timestamp",
    "not_found": "Nothing is here",
    "method_not_allowed": "This method is not allowed here",
    "invalid_query": "The query parameters are not valid",
    "internal_error": "The server failed",
    "service_unavailable": "The service is not available",
    "request_timeout": "The body did not arrive in time",
    "rate_limiter_unavailable": "The rate limiter cannot be reached",
    "malformed_http": "The request is not valid HTTP",
    "storage_unavailable": "The database is not available",
}


#: How much of a value a client sent a problem may quote: enough to recognise it.
MAX_SHOWN: Final = 64


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` quoted in a problem's detail: cut to ``limit`` characters, with how long it was.

    An answer never echoes all of a huge query string or path back.

    >>> shown("x" * 100, limit=8)
    'xxxxxxxx... (100 characters)'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def problem_title(code: str) -> str:
    """The human title of a problem code."""
    return _TITLES.get(code, code)


def problem_type(code: str) -> str:
    """The problem type URI for a code (a URN: stable, and needs no host to resolve)."""
    return f"urn:bm-ingest:problem:{code}"


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    errors: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Response:
    """A problem+json response with a stable ``code`` and, for field errors, ``errors``."""
    body: dict[str, object] = {
        "type": problem_type(code),
        "title": _TITLES.get(code, code),
        "status": status,
        "detail": detail,
        "code": code,
    }
    listed = [{"field": e.field, "code": e.code, "message": e.message} for e in errors]
    if listed:
        body["errors"] = listed
    if extra:
        body.update(extra)
    return Response(
        # ensure_ascii: a detail may quote what the client sent, lone surrogates included,
        # which UTF-8 cannot encode; escaped, every string is valid JSON.
        json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii"),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_CONTENT_TYPE,
    )


@attrs.frozen
class ProblemError(Exception):
    """Raised anywhere in a request to answer with a problem+json response."""

    status: int
    code: str
    detail: str
    errors: tuple[FieldError, ...] = ()
    headers: Mapping[str, str] = attrs.field(factory=dict[str, str])
    extra: Mapping[str, object] = attrs.field(factory=dict[str, object])

    def response(self) -> Response:
        """The problem+json response this error stands for."""
        return problem_response(
            self.status,
            self.code,
            self.detail,
            errors=self.errors,
            headers=self.headers,
            extra=self.extra,
        )


class AsciiJSONResponse(JSONResponse):
    r"""JSON with non-ASCII characters escaped: a response can then never fail to encode.

    Starlette's JSONResponse writes UTF-8, which cannot hold a lone surrogate; a client can
    send one (an escaped ``"\ud800"``) in an unknown field name that the answer echoes.
    """

    def render(self, content: object) -> bytes:
        """``content`` as compact ASCII JSON; NaN and infinities are refused like Starlette."""
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")
