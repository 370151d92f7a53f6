"""The errors bmcore raises.

Every error bmcore raises on bad input derives from :class:`BmError` and from the builtin
it narrows, so callers may catch either::

    BmError(Exception)
    ├── PayloadError(BmError, ValueError)       a payload failed validation: .errors lists all
    ├── TimestampError(BmError, ValueError)     parse_timestamp() refused a string: .code says why
    └── ApiKeyFormatError(BmError, ValueError)  a string is not an API key: .reason says why

Each carries a ``status_hint``: the HTTP status an adapter should answer with, so that the
mapping from error to status lives in one place (the h11 habit of ``error_status_hint``).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["ApiKeyFormatError", "BmError", "FieldError", "PayloadError", "TimestampError"]


class BmError(Exception):
    """Base class of every error bmcore raises on bad input."""

    #: The HTTP status an adapter should answer with when this error reaches a client.
    status_hint: int = 400


@attrs.frozen(kw_only=True)
class FieldError:
    """One problem with one field of a payload.

    ``field`` is a JSON pointer (RFC 6901) into the payload: ``/timestamp``, or ``""`` for the
    payload as a whole. ``code`` is a stable machine-readable code such as ``missing`` or
    ``missing_utc_offset``; ``message`` says what was wrong and how to fix it.
    """

    field: str
    code: str
    message: str

    def __str__(self) -> str:
        where = self.field or "(payload)"
        return f"{where}: {self.message} [{self.code}]"


class PayloadError(BmError, ValueError):
    """A payload was not valid; ``errors`` lists every problem found, never only the first.

    >>> from datetime import datetime, timezone
    >>> from bmcore import decode_backup
    >>> try:
    ...     decode_backup(b'{"deviceName": ""}', now=datetime.now(timezone.utc))
    ... except PayloadError as error:
    ...     [e.field for e in error.errors]
    ['/deviceName', '/jobName', '/timestamp', '/status', '/message']
    """

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        if not self.errors:
            msg = "PayloadError needs at least one FieldError"
            raise ValueError(msg)
        super().__init__(*self.errors)

    def __str__(self) -> str:
        # Built when shown, not when raised: a server renders the errors, not this text.
        count = len(self.errors)
        heading = "1 problem" if count == 1 else f"{count} problems"
        lines = "\n".join(f"  {error}" for error in self.errors)
        return f"invalid payload, {heading}:\n{lines}"

    @property
    def codes(self) -> tuple[str, ...]:
        """The machine codes of all errors, in order."""
        return tuple(error.code for error in self.errors)


class TimestampError(BmError, ValueError):
    """A string is not an ISO 8601 timestamp with a UTC offset.

    ``code`` is ``missing_utc_offset`` when the string is a valid local time without an offset,
    ``invalid_timestamp`` otherwise.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class ApiKeyFormatError(BmError, ValueError):
    """A string is not in the API key format; ``reason`` says what is wrong with it."""

    status_hint = 401

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"not a valid API key: {reason}")
