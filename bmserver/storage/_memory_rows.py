"""The memory store's rows, and its pages of them: the cursor rule in Python.

The SQL stores follow the rule in SQL (:class:`bmserver.storage._sql.Select`); the memory store
ranks its rows (:func:`ranked`) and cuts a page (:func:`page`) here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import attrs

from bmserver.storage._contract import Page
from bmserver.storage._cursors import Place, encode_cursor

__all__ = ["Row", "page", "ranked"]

R = TypeVar("R")


@attrs.define
class Row(Generic[R]):
    """A record with its sort key (time in UTC microseconds, insertion sequence).

    An entry's row keeps its fingerprint too (bmcore's, as the SQL stores' content_hash).
    """

    key: tuple[int, int]
    record: R
    fingerprint: bytes = b""


def ranked(rows: Iterable[Row[R]]) -> list[tuple[Place, Row[R]]]:
    """One account's rows of one list with their places (time, rank among equal times).

    Ranked over all of the account's rows, before any filter, as the cursor rule says.
    """
    ranked: list[tuple[Place, Row[R]]] = []
    for row in sorted(rows, key=lambda row: row.key):
        tied = bool(ranked) and ranked[-1][0][0] == row.key[0]
        rank = ranked[-1][0][1] + 1 if tied else 1
        ranked.append(((row.key[0], rank), row))
    return ranked


def page(
    ranked: Iterable[tuple[Place, Row[R]]],
    kind: str,
    limit: int,
    after: Place | None,
) -> Page[R]:
    """One page of ranked rows: those strictly after the place ``after``, newest first."""
    # The cursor rule: everything strictly after the cursor's place, newest first. Within one
    # account, places are in the same order as the sort keys (time, seq).
    candidates = sorted(
        (item for item in ranked if after is None or item[0] < after),
        key=lambda item: item[0],
        reverse=True,
    )
    items = candidates[:limit]
    more = len(candidates) > limit
    return Page(
        items=[row.record for _, row in items],
        next_cursor=encode_cursor(kind, items[-1][0]) if more else None,
    )
