"""Query parameters and path ids of the read side, checked before any store is asked.

Query values are checked by the rules the fields had to pass when they were posted
(:func:`bmcore.check_filter`); every problem is reported at once, as one ``invalid_query``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Final, TypeVar

from starlette.requests import Request

import bmcore
from bmserver._settings import Settings
from bmserver.http._problems import Problem, ProblemError, shown
from bmserver.storage._contract import InvalidCursorError, Page

__all__ = ["Params", "could_be_an_id", "no_such_item", "paged"]

T = TypeVar("T")

#: Query errors listed in one answer: a huge query string is not echoed back whole.
_MAX_LISTED_ERRORS: Final = 20

_MAX_ID_LENGTH: Final = 100


def could_be_an_id(entry_id: str) -> bool:
    """Whether a path segment could be an id this server handed out (printable ASCII, short).

    Anything else is not found without asking the store: PostgreSQL refuses a NUL outright.
    """
    return len(entry_id) <= _MAX_ID_LENGTH and entry_id.isascii() and entry_id.isprintable()


def no_such_item(kind: str, entry_id: str, headers: dict[str, str]) -> ProblemError:
    # Another account's entry is "not found" too: its existence is not revealed.
    return ProblemError(
        Problem.NOT_FOUND,
        f"this account has no {kind} with id {shown(entry_id)!r}",
        headers=headers,
    )


_MAX_LIMIT_DIGITS = 9
#: No ISO 8601 timestamp is longer; a longer value is refused without being parsed or echoed.
_MAX_TIMESTAMP_LENGTH = 64


class Params:
    """Query parameters, checked one by one; every problem is reported at once by done()."""

    def __init__(self, request: Request, settings: Settings, *, allowed: set[str]) -> None:
        self._query = request.query_params
        self._settings = settings
        self.errors: list[bmcore.FieldError] = [
            bmcore.FieldError(
                field=shown(name),
                code="unknown_parameter",
                message=f"{shown(name)} is not a parameter here; use one of "
                f"{', '.join(sorted(allowed))}",
            )
            for name in self._query
            if name not in allowed
        ]

    def page(self) -> tuple[int, str | None]:
        limit = self._settings.default_page_size
        raw = self._query.get("limit")
        if raw is not None:
            # isascii: str.isdigit() accepts "²" and other digits that int() refuses; the
            # length: int() refuses more than 4300 digits, and no page is that large anyway.
            if (
                raw.isascii()
                and raw.isdigit()
                and len(raw) <= _MAX_LIMIT_DIGITS
                and 1 <= int(raw) <= self._settings.max_page_size
            ):
                limit = int(raw)
            else:
                self.errors.append(
                    bmcore.FieldError(
                        field="limit",
                        code="invalid_limit",
                        message=f"limit must be a whole number from 1 to "
                        f"{self._settings.max_page_size}, got {shown(raw, 12)!r}",
                    )
                )
        return limit, self._query.get("cursor") or None

    def text(self, name: str) -> str | None:
        """A filter on a text field; empty means no filter."""
        raw = self._query.get(name)
        if not raw:
            return None
        error = bmcore.check_filter(name, raw)
        if error is not None:
            self.errors.append(error)
            return None
        return raw

    def choice(self, name: str, choices: dict[str, str]) -> str | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        value = choices.get(raw.casefold())
        if value is None:
            self.errors.append(
                bmcore.FieldError(
                    field=name,
                    code="invalid_choice",
                    message=f"{name} must be one of {', '.join(sorted(choices.values()))}, "
                    f"got {shown(raw)!r}",
                )
            )
        return value

    def timestamp(self, name: str) -> datetime | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        if len(raw) > _MAX_TIMESTAMP_LENGTH:
            self._invalid_timestamp(name, f"is {len(raw)} characters long")
            return None
        try:
            moment = bmcore.parse_timestamp(raw)
            # Within datetime's range at its own offset, but perhaps not in UTC, which is what
            # every store compares: 0001-01-01T00:00:00+01:00 is in year 0.
            moment.astimezone(UTC)
        except bmcore.TimestampError as error:
            self.errors.append(
                bmcore.FieldError(field=name, code=error.code, message=error.message)
            )
            return None
        except OverflowError:
            self.errors.append(
                bmcore.FieldError(
                    field=name,
                    code="timestamp_out_of_range",
                    message=f"{name} {raw!r} lies outside the years 1 to 9999 in UTC; send a "
                    "time within them, such as 2000-01-01T00:00:00Z",
                )
            )
            return None
        return moment

    def _invalid_timestamp(self, name: str, why: str) -> None:
        self.errors.append(
            bmcore.FieldError(
                field=name,
                code="invalid_timestamp",
                message=f"{name} {why}; send an ISO 8601 timestamp with a UTC offset such as "
                "2024-06-04T12:00:00Z",
            )
        )

    def done(self) -> None:
        count = len(self.errors)
        if not count:
            return
        detail = f"{count} query parameter(s) are invalid; see errors"
        if count > _MAX_LISTED_ERRORS:
            detail += f" (the first {_MAX_LISTED_ERRORS} are listed)"
        raise ProblemError(
            Problem.INVALID_QUERY, detail, errors=tuple(self.errors[:_MAX_LISTED_ERRORS])
        )


async def paged(listing: Awaitable[Page[T]]) -> Page[T]:
    try:
        return await listing
    except InvalidCursorError:
        raise ProblemError(
            Problem.INVALID_QUERY,
            "the cursor is not one this server handed out; start again without a cursor",
            errors=(bmcore.FieldError(field="cursor", code="invalid_cursor", message="unknown"),),
        ) from None
