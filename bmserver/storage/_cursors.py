"""Pages of a list: how large one may be, where the next one starts, and the cursor that says so.

The cursor rule, which every store follows (:class:`~bmserver.MemoryStore` in Python, the SQL
stores in SQL through :class:`bmserver.storage._sql.Select`):

1. A list (``devices``, ``jobs``, ``backups``, ``notifications``) is one account's rows, newest
   first, ordered by (time in UTC microseconds, order of insertion). The time is an entry's
   timestamp, or a device's or job's creation.
2. A row's *place* is (its time, its rank): the rank counts, from 1 in order of insertion, the
   rows of the same account in that list with exactly that time, the row included. Ranks are
   counted over all of the account's rows of the list, before any filter, so that a place
   means the same in every filtered view of the list and in every store.
3. A page's cursor is the place of its last row. The next page holds the caller's rows
   strictly after that place, in the list's order: rank 0 is before the first row at its
   time (only earlier times follow), and a rank beyond the rows at its time is after all of
   them.
4. A place is made of the account's own data only. A store's insertion sequence is shared by
   every account, so a cursor holding it would tell an account how much the others wrote in
   between (the reason ids are random, see :func:`~bmserver.storage._entries.new_id`). A place
   needs no row to be there: a cursor of another account is just a place in the caller's own
   list, and its answer depends on nothing but the caller's data and the cursor's text.

A cursor is the place, tagged with the cursor's version and the list, in unpadded base64url:
opaque to clients, safe in a URL, with exactly one spelling.
"""

from __future__ import annotations

import base64
import re
from typing import Final

from bmserver.storage._contract import InvalidCursorError

__all__ = ["MAX_LIMIT", "Place", "check_limit", "decode_cursor", "encode_cursor", "page_start"]

#: The largest page a list may ask for.
MAX_LIMIT: Final = 1000

#: A row's place in its list: (time in UTC microseconds, rank among the account's rows at it).
Place = tuple[int, int]

# Cursors are versioned: "v2" holds a place (time, rank). The first version, untagged, held
# (time, seq), a sequence shared by every account; such a cursor no longer matches, so it is an
# InvalidCursorError (400), never misread as a place.
_CURSOR: Final = re.compile(r"v2:(?P<kind>[a-z]+):(?P<time>-?[0-9]{1,19}):(?P<rank>[0-9]{1,19})")
_INT64: Final = range(-(2**63), 2**63)
# A real cursor is about 40 characters; anything much longer is not ours, decode nothing.
_MAX_CURSOR_LENGTH: Final = 100


def check_limit(limit: int) -> None:
    """Refuse a page size outside 1..MAX_LIMIT (the HTTP layer checks it first)."""
    if not 1 <= limit <= MAX_LIMIT:
        msg = f"limit must be between 1 and {MAX_LIMIT}, got {limit}"
        raise ValueError(msg)


def encode_cursor(kind: str, place: Place) -> str:
    """The opaque cursor after the row at ``place`` in one account's list ``kind``.

    >>> encode_cursor("backups", (1717502400000000, 2))
    'djI6YmFja3VwczoxNzE3NTAyNDAwMDAwMDAwOjI'
    """
    utc_us, rank = place
    raw = f"v2:{kind}:{utc_us:d}:{rank:d}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> Place:
    """The place of a cursor of the list ``kind``; InvalidCursorError for anything else.

    Only the exact text :func:`encode_cursor` produces is accepted, so that a cursor has one
    spelling, and a cursor of another list (devices given to backups) or of the previous format
    is refused.
    """
    invalid = InvalidCursorError(f"not a cursor of this list: {cursor[:_MAX_CURSOR_LENGTH]!r}")
    if len(cursor) > _MAX_CURSOR_LENGTH:
        raise invalid
    try:
        padded = (cursor + "=" * (-len(cursor) % 4)).encode("ascii")
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except ValueError:  # binascii.Error and the Unicode errors are all ValueErrors
        raise invalid from None
    match = _CURSOR.fullmatch(raw)
    if match is None or match["kind"] != kind:
        raise invalid
    place = int(match["time"]), int(match["rank"])
    # int64 only (what SQLite can bind), and one spelling only ("-0", "007" are refused).
    if place[0] not in _INT64 or place[1] not in _INT64 or encode_cursor(kind, place) != cursor:
        raise invalid
    return place


def page_start(kind: str, limit: int, cursor: str | None) -> Place | None:
    """Check a page request before any read: the place it starts after, or None for the first.

    ValueError for a limit out of range, InvalidCursorError for a cursor that is not one of
    this list's.
    """
    check_limit(limit)
    return None if cursor is None else decode_cursor(kind, cursor)
