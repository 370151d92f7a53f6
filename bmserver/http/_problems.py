"""RFC 9457 problem responses, and the one table of every problem bmserver answers with.

:class:`Problem` pairs each stable ``code`` with its HTTP status and title. Everything that
answers with a problem names a member: the app's exception handlers, ingest, the read side,
authentication, the limiter gate, the protocol guard (``malformed_http``, answered before any
app runs) and pytest_bm's planned failures. No code is spelled anywhere else.

Where a bmcore error or verdict stands behind a problem, the status is that error's
``status_hint`` (the h11 habit): bmcore says which status its errors deserve, and this table
is the one place an adapter reads it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from typing import Final, Self

import attrs
from starlette.responses import JSONResponse, Response

import bmcore

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "AsciiJSONResponse",
    "Problem",
    "ProblemError",
    "problem_document",
    "problem_response",
    "shown",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


class Problem(enum.Enum):
    """A problem: its stable ``code`` (the value), its HTTP status and its title.

    ``status`` is None for the two problems whose status varies with the occasion
    (``http_error``, ``planned_failure``); the status is then given with the answer. Where
    several problems share a status, the first listed is the one that status stands for
    (:meth:`for_status`).

    >>> Problem.CONFLICT.status, Problem.CONFLICT.title
    (409, 'A different entry exists for this job and timestamp')
    >>> Problem("rate_limited") is Problem.RATE_LIMITED
    True
    >>> Problem.for_status(401), Problem.for_status(418)
    (<Problem.INVALID_API_KEY: 'invalid_api_key'>, None)
    """

    status: int | None
    title: str

    def __new__(cls, code: str, status: int | None, title: str) -> Self:
        member = object.__new__(cls)
        member._value_ = code
        member.status = status
        member.title = title
        return member

    VALIDATION_FAILED = (
        "validation_failed",
        bmcore.PayloadError.status_hint,
        "The payload has invalid fields",
    )
    INVALID_JSON = ("invalid_json", bmcore.PayloadError.status_hint, "The body is not valid JSON")
    INVALID_QUERY = ("invalid_query", 400, "The query parameters are not valid")
    MALFORMED_HTTP = ("malformed_http", 400, "The request is not valid HTTP")
    INVALID_API_KEY = (
        "invalid_api_key",
        bmcore.ApiKeyFormatError.status_hint,
        "The API key is not valid",
    )
    MISSING_API_KEY = ("missing_api_key", 401, "No API key was sent")
    INSUFFICIENT_SCOPE = ("insufficient_scope", 403, "The API key may not do this")
    NOT_FOUND = ("not_found", 404, "Nothing is here")
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405, "This method is not allowed here")
    REQUEST_TIMEOUT = ("request_timeout", 408, "The body did not arrive in time")
    CONFLICT = (
        "conflict",
        bmcore.Verdict.CONFLICT.status_hint,
        "A different entry exists for this job and timestamp",
    )
    PAYLOAD_TOO_LARGE = ("payload_too_large", 413, "The body is too large")
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        415,
        "The body's type or encoding is not supported",
    )
    RATE_LIMITED = ("rate_limited", 429, "Too many requests")
    INTERNAL_ERROR = ("internal_error", 500, "The server failed")
    # Answered by no bmserver code path today: it is what a bare 503 stands for (a planned
    # failure of the fake, a proxy's own 503 in front of the service).
    SERVICE_UNAVAILABLE = ("service_unavailable", 503, "The service is not available")
    STORAGE_UNAVAILABLE = ("storage_unavailable", 503, "The database is not available")
    RATE_LIMITER_UNAVAILABLE = (
        "rate_limiter_unavailable",
        503,
        "The rate limiter cannot be reached",
    )
    #: Any other error Starlette raises as an HTTPException, with its own status.
    HTTP_ERROR = ("http_error", None, "The request failed")
    #: pytest_bm's fail_next() with a status no problem above stands for.
    PLANNED_FAILURE = ("planned_failure", None, "A failure the test planned")

    @property
    def code(self) -> str:
        """The stable machine code, as a problem body's ``code`` carries it."""
        return str(self.value)

    @property
    def type_uri(self) -> str:
        """The problem type URI (a URN: stable, and it needs no host to resolve)."""
        return f"urn:bm-ingest:problem:{self.code}"

    @classmethod
    def for_status(cls, status: int) -> Problem | None:
        """The problem a bare ``status`` stands for: the first listed with it, or None."""
        return _BY_STATUS.get(status)

    def answered_with(self, status: int | None = None) -> int:
        """The status this problem is answered with; ``status`` only where it varies.

        >>> Problem.HTTP_ERROR.answered_with(400), Problem.NOT_FOUND.answered_with()
        (400, 404)
        """
        if self.status is None:
            if status is None:
                raise ValueError(f"{self} has no status of its own; pass the status")
            return status
        if status not in {None, self.status}:
            raise ValueError(f"{self} is always answered with {self.status}, not {status}")
        return self.status


_BY_STATUS: Final[Mapping[int, Problem]] = {
    problem.status: problem
    for problem in reversed(Problem)  # the first listed wins
    if problem.status is not None
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


def problem_document(
    problem: Problem,
    detail: str,
    *,
    status: int | None = None,
    errors: Iterable[bmcore.FieldError] = (),
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The problem+json document: type, title, status, detail, code, and field ``errors``."""
    body: dict[str, object] = {
        "type": problem.type_uri,
        "title": problem.title,
        "status": problem.answered_with(status),
        "detail": detail,
        "code": problem.code,
    }
    listed = [{"field": e.field, "code": e.code, "message": e.message} for e in errors]
    if listed:
        body["errors"] = listed
    if extra:
        body.update(extra)
    return body


def problem_response(
    problem: Problem,
    detail: str,
    *,
    status: int | None = None,
    errors: Iterable[bmcore.FieldError] = (),
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Response:
    """A problem+json response; ``status`` only for a problem whose status varies."""
    body = problem_document(problem, detail, status=status, errors=errors, extra=extra)
    return Response(
        # ensure_ascii: a detail may quote what the client sent, lone surrogates included,
        # which UTF-8 cannot encode; escaped, every string is valid JSON.
        json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii"),
        status_code=problem.answered_with(status),
        headers=dict(headers or {}),
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _own_status(error: ProblemError) -> int:
    return error.problem.answered_with()


def _check_status(error: ProblemError, _: attrs.Attribute[int], status: int) -> None:
    error.problem.answered_with(status)


@attrs.frozen
class ProblemError(Exception):
    """Raised anywhere in a request to answer with a problem+json response.

    >>> ProblemError(Problem.NOT_FOUND, "no such entry").status
    404
    """

    problem: Problem
    detail: str
    errors: tuple[bmcore.FieldError, ...] = ()
    headers: Mapping[str, str] = attrs.field(factory=dict[str, str])
    extra: Mapping[str, object] = attrs.field(factory=dict[str, object])
    #: The answer's status: the problem's own, or the one given for a problem whose status varies.
    status: int = attrs.field(
        kw_only=True,
        default=attrs.Factory(_own_status, takes_self=True),
        validator=_check_status,
    )

    @property
    def code(self) -> str:
        """The problem's stable machine code."""
        return self.problem.code

    def response(self) -> Response:
        """The problem+json response this error stands for."""
        return problem_response(
            self.problem,
            self.detail,
            status=self.status,
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
