"""The payload models: what a validated backup entry or notification holds."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final, Generic, TypeVar

import attrs

__all__ = [
    "DEFAULT_SENDER",
    "BackupEntry",
    "Decoded",
    "Notification",
    "Outcome",
    "PayloadWarning",
    "Severity",
]

#: The sender an entry gets when the payload names none (the spec's default).
DEFAULT_SENDER: Final = "unknown@ingest"


class Severity(enum.Enum):
    """How serious a notification is. Accepted case-insensitively, stored lowercase."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Outcome(enum.Enum):
    """What a backup's free-form ``status`` means, derived from the spec's recommended values."""

    SUCCESS = "Success"
    WARNING = "Warning"
    ERROR = "Error"
    UNKNOWN = "Unknown"

    @classmethod
    def of_status(cls, status: str) -> Outcome:
        """Derive the outcome of a status: case-insensitive, surrounding whitespace ignored.

        >>> Outcome.of_status("success"), Outcome.of_status("Failed")
        (<Outcome.SUCCESS: 'Success'>, <Outcome.UNKNOWN: 'Unknown'>)
        """
        return _OUTCOMES.get(status.strip().casefold(), cls.UNKNOWN)


_OUTCOMES: Final = {
    "success": Outcome.SUCCESS,
    "warning": Outcome.WARNING,
    "error": Outcome.ERROR,
}


@attrs.frozen(kw_only=True)
class BackupEntry:
    """A backup job's result, as posted to ``POST /api/ingest/backup``.

    Build one from untrusted input with :func:`bmcore.decode_backup`, which validates every
    field; constructing it directly checks nothing, and :func:`bmcore.encode_backup` turns it
    into the wire JSON.
    """

    device_name: str
    job_name: str
    #: When the backup ran: aware, with the UTC offset that was sent.
    timestamp: datetime
    #: The status exactly as sent; see :attr:`outcome` for its meaning.
    status: str
    message: str
    sender: str = DEFAULT_SENDER

    @property
    def outcome(self) -> Outcome:
        """The outcome derived from :attr:`status`."""
        return Outcome.of_status(self.status)


@attrs.frozen(kw_only=True)
class Notification:
    """A free-form event, as posted to ``POST /api/ingest/notification``."""

    device_name: str
    #: When the event occurred: aware, with the UTC offset that was sent.
    timestamp: datetime
    severity: Severity
    #: A short event category such as ``disk_space_low``.
    type: str
    job_name: str | None = None
    message: str | None = None
    sender: str = DEFAULT_SENDER


@attrs.frozen(kw_only=True)
class PayloadWarning:
    """A non-fatal remark about an accepted payload, such as ``message_truncated``."""

    code: str
    message: str
    #: JSON pointer of the field the warning is about, ``""`` for the payload as a whole.
    field: str = ""


ModelT = TypeVar("ModelT", BackupEntry, Notification)


@attrs.frozen(kw_only=True)
class Decoded(Generic[ModelT]):
    """What a successful decode returns: the model, its warnings and the fields it ignored."""

    value: ModelT
    warnings: tuple[PayloadWarning, ...] = ()
    #: Names of unknown top-level fields, in the order they came; they were not stored.
    ignored_fields: tuple[str, ...] = ()
