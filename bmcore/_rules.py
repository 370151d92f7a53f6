"""The ingest rules: what "the same entry" means, and what to do when one arrives again.

An entry has an *identity*, the entry a store keeps at most once, and a *fingerprint*, its
content. A store looks up what it holds under the incoming entry's identity and asks
:func:`classify`: nothing stored is :attr:`Verdict.NEW` (store it, answer ``201``), the same
fingerprint is :attr:`Verdict.REPEAT` (store nothing, answer ``200`` with the original: a
retry is safe) and another fingerprint is :attr:`Verdict.CONFLICT` (store nothing, answer
``409``). The first entry of an identity is kept; nothing ever replaces it.

- A **backup**'s identity is its job (:class:`~bmcore.JobKey`: sender, device and job name in
  canonical form) and its instant in UTC. The same instant sent at another UTC offset, or with
  another status, message or spelling of a name, has the same identity and another
  fingerprint: a conflict, for a job cannot have two different results at one moment.
- A **notification**'s identity is its content: an identical notification is a repeat,
  anything else is new, and a notification never conflicts.

The keys on the facts say which device and which job an entry matches: stores index devices
and jobs by the keys' ``digest`` and filter by their canonical names (``sender``,
``device_name``, ``job_name``).

The fingerprint is the SHA-256 digest (32 bytes) of the entry's canonical wire JSON, as
:func:`~bmcore.encode_backup` and :func:`~bmcore.encode_notification` write it: names,
status and message as sent, the timestamp at its own offset. Fingerprints are stored, so
they must not change: ``tests/core/test_rules.py`` pins them with fixed vectors. A change to
them (or to the wire encoding they hash) breaks stored data: a stored backup sent again would
be a conflict, a stored notification sent again would be stored twice. Changing them needs a
version and a migration of what is stored.

Instants are integer microseconds since the Unix epoch in UTC, with the UTC offset in
minutes beside them (:func:`split_instant`, :func:`join_instant`): exact, and sortable as the
instants they stand for.

>>> from bmcore import BackupEntry, parse_timestamp
>>> def backup(timestamp: str) -> BackupEntry:
...     return BackupEntry(device_name="srv01", job_name="Nightly", status="Success",
...         message="ok", timestamp=parse_timestamp(timestamp))
>>> first = backup_facts(backup("2024-06-04T14:00:00+02:00"))
>>> stored = {first.identity: first.fingerprint}
>>> again = backup_facts(backup("2024-06-04T14:00:00+02:00"))
>>> elsewhere = backup_facts(backup("2024-06-04T12:00:00Z"))
>>> classify(again, stored.get(again.identity)), classify(elsewhere, stored.get(elsewhere.identity))
(<Verdict.REPEAT: 'repeat'>, <Verdict.CONFLICT: 'conflict'>)
"""

from __future__ import annotations

import enum
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

import attrs

from bmcore._decoding import encode_backup, encode_notification
from bmcore._matching import DeviceKey, JobKey
from bmcore._models import BackupEntry, Notification

__all__ = [
    "BackupFacts",
    "NotificationFacts",
    "Verdict",
    "backup_facts",
    "classify",
    "join_instant",
    "notification_facts",
    "split_instant",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_MINUTE: Final = timedelta(minutes=1)


class Verdict(enum.Enum):
    """What an incoming entry is, compared with what is stored under its identity."""

    #: Nothing is stored under the identity: store the entry.
    NEW = "new"
    #: The same content is stored: an idempotent repeat, store nothing, answer with the original.
    REPEAT = "repeat"
    #: Different content is stored under a backup's identity: refuse it, keep the original.
    CONFLICT = "conflict"

    @property
    def status_hint(self) -> int:
        """The HTTP status an adapter answers with: 201, 200 or 409.

        >>> [verdict.status_hint for verdict in Verdict]
        [201, 200, 409]
        """
        return _STATUS_HINTS[self]


_STATUS_HINTS: Final = {Verdict.NEW: 201, Verdict.REPEAT: 200, Verdict.CONFLICT: 409}


def split_instant(moment: datetime) -> tuple[int, int]:
    """An aware datetime as (microseconds since the epoch in UTC, UTC offset in minutes).

    Integer microseconds are exact (a datetime has no finer resolution) and sort like the
    instants they stand for. Raises ValueError for a naive datetime, or for an offset that is
    not a whole number of minutes (an ISO 8601 offset always is).

    >>> from bmcore import parse_timestamp
    >>> split_instant(parse_timestamp("2024-06-04T14:00:00.5+02:00"))
    (1717502400500000, 120)
    """
    offset = moment.utcoffset()
    if offset is None:
        msg = (
            f"expected an aware datetime, got {moment!r}; attach its UTC offset, "
            "e.g. .replace(tzinfo=timezone.utc)"
        )
        raise ValueError(msg)
    if offset % _MINUTE:
        msg = (
            f"the UTC offset of {moment!r} is not a whole number of minutes; "
            "convert it to a fixed offset such as +02:00 first"
        )
        raise ValueError(msg)
    return (moment - _EPOCH) // _MICROSECOND, offset // _MINUTE


def join_instant(utc_us: int, offset_minutes: int) -> datetime:
    """The inverse of :func:`split_instant`: the instant, at its original fixed offset.

    The result's ``tzinfo`` is a :class:`datetime.timezone`, whatever zone the datetime that
    was split had: a stored instant keeps its offset, not its zone.

    >>> join_instant(1717502400500000, 120).isoformat()
    '2024-06-04T14:00:00.500000+02:00'
    """
    zone = timezone(timedelta(minutes=offset_minutes))
    return (_EPOCH + timedelta(microseconds=utc_us)).astimezone(zone)


@attrs.frozen(kw_only=True)
class BackupFacts:
    """What the ingest rules know about a backup entry; build it with :func:`backup_facts`."""

    #: The job the entry matches; ``job.device`` is its device.
    job: JobKey
    #: When the backup ran: microseconds since the Unix epoch, in UTC.
    instant_us: int
    #: The UTC offset, in minutes, that the timestamp was sent with.
    offset_minutes: int
    #: SHA-256 of the entry's canonical wire JSON: equal fingerprints, identical content.
    fingerprint: bytes

    @property
    def device(self) -> DeviceKey:
        """The device the entry matches: the job's device."""
        return self.job.device

    @property
    def identity(self) -> tuple[JobKey, int]:
        """What a store keeps at most one backup of: (job, UTC instant); the offset is not in it."""
        return (self.job, self.instant_us)


@attrs.frozen(kw_only=True)
class NotificationFacts:
    """What the ingest rules know about a notification; build it with :func:`notification_facts`."""

    #: The device the notification matches.
    device: DeviceKey
    #: The job it matches, or None when it names no job.
    job: JobKey | None
    #: When the event occurred: microseconds since the Unix epoch, in UTC.
    instant_us: int
    #: The UTC offset, in minutes, that the timestamp was sent with.
    offset_minutes: int
    #: SHA-256 of the notification's canonical wire JSON.
    fingerprint: bytes

    @property
    def identity(self) -> bytes:
        """What a store keeps at most one notification of: its content, so the fingerprint."""
        return self.fingerprint


def backup_facts(entry: BackupEntry) -> BackupFacts:
    """The facts of a backup entry: its job, instant, offset and fingerprint.

    Raises ValueError if the timestamp is naive or its offset not a whole number of minutes
    (a decoded entry's never is).

    >>> from bmcore import BackupEntry, parse_timestamp
    >>> facts = backup_facts(BackupEntry(device_name="SRV01", job_name="Nightly",
    ...     status="Success", message="ok", timestamp=parse_timestamp("2024-06-04T14:00:00+02:00")))
    >>> facts.job.text, facts.instant_us, facts.offset_minutes
    ('job:v1:14:unknown@ingest5:srv017:nightly', 1717502400000000, 120)
    >>> facts.fingerprint.hex()
    '127dc569c07a163d36855b44710ee64bd44d94e4e2891686e86230cf1ceba58b'
    """
    instant_us, offset_minutes = split_instant(entry.timestamp)
    return BackupFacts(
        job=JobKey.of(entry.sender, entry.device_name, entry.job_name),
        instant_us=instant_us,
        offset_minutes=offset_minutes,
        fingerprint=hashlib.sha256(encode_backup(entry)).digest(),
    )


def notification_facts(notification: Notification) -> NotificationFacts:
    """The facts of a notification: its device, job if any, instant, offset and fingerprint.

    Raises ValueError as :func:`backup_facts` does.

    >>> from bmcore import Notification, Severity, parse_timestamp
    >>> facts = notification_facts(Notification(device_name="srv01", severity=Severity.INFO,
    ...     type="disk_space_low", timestamp=parse_timestamp("2024-06-04T12:00:00Z")))
    >>> facts.device.text, facts.job
    ('device:v1:14:unknown@ingest5:srv01', None)
    """
    instant_us, offset_minutes = split_instant(notification.timestamp)
    device = DeviceKey.of(notification.sender, notification.device_name)
    job_name = notification.job_name
    return NotificationFacts(
        device=device,
        job=None if job_name is None else JobKey.of(device.sender, device.device_name, job_name),
        instant_us=instant_us,
        offset_minutes=offset_minutes,
        fingerprint=hashlib.sha256(encode_notification(notification)).digest(),
    )


def classify(facts: BackupFacts | NotificationFacts, stored_fingerprint: bytes | None) -> Verdict:
    """The verdict on an incoming entry, given the fingerprint stored under its identity.

    ``stored_fingerprint`` is what the store holds under ``facts.identity``, or None when it
    holds nothing there. The answer depends only on whether the two fingerprints are equal,
    so it is the same whichever of two entries arrived first.

    A notification's identity is its fingerprint, so a fingerprint stored under it is equal to
    it: a different one means the store looked it up by something else, and is a ValueError.

    >>> from bmcore import Notification, Severity, parse_timestamp
    >>> facts = notification_facts(Notification(device_name="srv01", severity=Severity.INFO,
    ...     type="disk_space_low", timestamp=parse_timestamp("2024-06-04T12:00:00Z")))
    >>> classify(facts, None), classify(facts, facts.fingerprint)
    (<Verdict.NEW: 'new'>, <Verdict.REPEAT: 'repeat'>)
    """
    if stored_fingerprint is None:
        return Verdict.NEW
    if stored_fingerprint == facts.fingerprint:
        return Verdict.REPEAT
    if isinstance(facts, BackupFacts):
        return Verdict.CONFLICT
    msg = (
        f"the fingerprint {stored_fingerprint.hex()} is not the notification's own "
        f"({facts.fingerprint.hex()}): a notification never conflicts, so what is stored "
        "under its identity has its fingerprint; look it up by facts.identity"
    )
    raise ValueError(msg)
