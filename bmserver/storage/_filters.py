"""A list query's filters as every store compares them: names in canonical form, a time window.

The HTTP layer has checked the values already (bmcore.check_filter); these classes turn them
into what a store compares, once, so that the memory store and the SQL stores cannot disagree
on which rows a filter keeps. :func:`backup_filter` and :func:`notification_filter` are a
query's filters but for its time window in Python, as the memory store applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Self

import attrs

import bmcore
from bmserver.storage._contract import BackupQuery, NotificationQuery

__all__ = ["NameFilter", "TimeWindow", "backup_filter", "notification_filter"]


@attrs.frozen
class NameFilter:
    """A query's name filters in canonical form: names filter as reports are matched.

    A device sent as ``FiltDev`` and as ``filtdev `` is one device, so a filter of either
    spelling finds the entries of both. None means no filter. The SQL stores compare the
    canonical names that every row keeps beside the names as sent (``sender_key``,
    ``device_name_key``, ``job_name_key``); the memory store canonicalises the names of each
    entry (:meth:`matches`).

    >>> names = NameFilter.of(sender=None, device_name=" FiltDev", job_name=None)
    >>> names.matches("script", "filtdev", None), names.matches("script", "srv01", None)
    (True, False)
    """

    sender: str | None
    device_name: str | None
    job_name: str | None

    @classmethod
    def of(cls, *, sender: str | None, device_name: str | None, job_name: str | None) -> Self:
        """The filters of the names as a client sent them."""
        return cls(_canonical(sender), _canonical(device_name), _canonical(job_name))

    def matches(self, sender: str, device_name: str, job_name: str | None) -> bool:
        """Whether names as an entry sent them pass every filter (a job filter needs a job)."""
        return (
            (self.sender is None or bmcore.canonical_name(sender) == self.sender)
            and (self.device_name is None or bmcore.canonical_name(device_name) == self.device_name)
            and (
                self.job_name is None
                or (job_name is not None and bmcore.canonical_name(job_name) == self.job_name)
            )
        )


def _canonical(name: str | None) -> str | None:
    return None if name is None else bmcore.canonical_name(name)


@attrs.frozen
class TimeWindow:
    """The ``since`` (inclusive) and ``until`` (exclusive) filters, in UTC microseconds."""

    since_us: int | None
    until_us: int | None

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None) -> TimeWindow:
        """The window of a query; ValueError for a naive bound."""
        return cls(
            None if since is None else bmcore.split_instant(since)[0],
            None if until is None else bmcore.split_instant(until)[0],
        )

    def __contains__(self, utc_us: int) -> bool:
        return (self.since_us is None or utc_us >= self.since_us) and (
            self.until_us is None or utc_us < self.until_us
        )


def backup_filter(query: BackupQuery) -> Callable[[bmcore.BackupEntry], bool]:
    """Whether a backup passes the query's filters of names, outcome and status."""
    names = NameFilter.of(
        sender=query.sender, device_name=query.device_name, job_name=query.job_name
    )

    def matches(entry: bmcore.BackupEntry) -> bool:
        return (
            (query.outcome is None or entry.outcome.value == query.outcome)
            and (query.status is None or entry.status == query.status)
            and names.matches(entry.sender, entry.device_name, entry.job_name)
        )

    return matches


def notification_filter(query: NotificationQuery) -> Callable[[bmcore.Notification], bool]:
    """Whether a notification passes the query's filters of names, severity and type."""
    names = NameFilter.of(
        sender=query.sender, device_name=query.device_name, job_name=query.job_name
    )

    def matches(notification: bmcore.Notification) -> bool:
        return (
            (query.severity is None or notification.severity.value == query.severity)
            and (query.type is None or notification.type == query.type)
            and names.matches(notification.sender, notification.device_name, notification.job_name)
        )

    return matches
