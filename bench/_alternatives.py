"""The payload models of the decoding benchmark, rebuilt in pydantic v2 and in msgspec.

They follow bmcore's rules as far as each library allows, so that the comparison is of equal
work: strict types (no number for a string, no epoch number for a timestamp), lengths, no
blank names, no control characters, an aware timestamp inside the time policy, severity in
any case, unknown fields ignored. What they cannot express: bmcore truncates a long message
with a warning where these refuse it, and bmcore names each field in a hand-written message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec
import pydantic
from pydantic.alias_generators import to_camel

from bench._payloads import NOW
from bmcore import DEFAULT_SENDER, EARLIEST_TIMESTAMP, MAX_FUTURE, MAX_MESSAGE_LENGTH

# A name: not blank, no C0/C1 control characters. Rust's regex engine runs these in pydantic.
_NAME_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
_TYPE_PATTERN: Final = r"^[^\s\x00-\x1f\x7f-\x9f]+$"
_MESSAGE_PATTERN: Final = r"^[^\x00]*$"


def _within_policy(moment: datetime) -> datetime:
    if moment < EARLIEST_TIMESTAMP:
        raise ValueError("timestamp is before 2000-01-01")
    if moment - NOW > MAX_FUTURE:
        raise ValueError("timestamp is more than 24 hours ahead")
    return moment


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


_PydanticName = Annotated[
    str, pydantic.StringConstraints(min_length=1, max_length=255, pattern=_NAME_PATTERN)
]
_PydanticTimestamp = Annotated[pydantic.AwareDatetime, pydantic.AfterValidator(_within_policy)]
_PydanticMessage = Annotated[
    str, pydantic.StringConstraints(max_length=MAX_MESSAGE_LENGTH, pattern=_MESSAGE_PATTERN)
]
_CONFIG: Final = pydantic.ConfigDict(strict=True, extra="ignore", alias_generator=to_camel)


class PydanticBackup(pydantic.BaseModel):
    """bmcore.BackupEntry's rules in pydantic v2."""

    model_config = _CONFIG

    device_name: _PydanticName
    job_name: _PydanticName
    timestamp: _PydanticTimestamp
    status: Annotated[
        str, pydantic.StringConstraints(min_length=1, max_length=64, pattern=_NAME_PATTERN)
    ]
    message: _PydanticMessage
    sender: _PydanticName | None = DEFAULT_SENDER


class PydanticNotification(pydantic.BaseModel):
    """bmcore.Notification's rules in pydantic v2."""

    model_config = _CONFIG

    device_name: _PydanticName
    timestamp: _PydanticTimestamp
    severity: Annotated[
        Literal["info", "warning", "error", "critical"], pydantic.BeforeValidator(_lower)
    ]
    type: Annotated[
        str, pydantic.StringConstraints(min_length=1, max_length=100, pattern=_TYPE_PATTERN)
    ]
    job_name: _PydanticName | None = None
    message: _PydanticMessage | None = None
    sender: _PydanticName | None = DEFAULT_SENDER


_MsgspecName = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=_NAME_PATTERN)]
_MsgspecTimestamp = Annotated[datetime, msgspec.Meta(tz=True)]
_MsgspecMessage = Annotated[
    str, msgspec.Meta(max_length=MAX_MESSAGE_LENGTH, pattern=_MESSAGE_PATTERN)
]
_SEVERITIES: Final = frozenset({"info", "warning", "error", "critical"})


class MsgspecBackup(msgspec.Struct, rename="camel", kw_only=True):
    """bmcore.BackupEntry's rules in msgspec."""

    device_name: _MsgspecName
    job_name: _MsgspecName
    timestamp: _MsgspecTimestamp
    status: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_NAME_PATTERN)]
    message: _MsgspecMessage
    sender: _MsgspecName | None = DEFAULT_SENDER

    def __post_init__(self) -> None:
        """The time policy, which msgspec's constraints cannot express."""
        _within_policy(self.timestamp)


class MsgspecNotification(msgspec.Struct, rename="camel", kw_only=True):
    """bmcore.Notification's rules in msgspec."""

    device_name: _MsgspecName
    timestamp: _MsgspecTimestamp
    severity: str
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=_TYPE_PATTERN)]
    job_name: _MsgspecName | None = None
    message: _MsgspecMessage | None = None
    sender: _MsgspecName | None = DEFAULT_SENDER

    def __post_init__(self) -> None:
        """The time policy and the case-insensitive severity."""
        _within_policy(self.timestamp)
        self.severity = self.severity.lower()
        if self.severity not in _SEVERITIES:
            raise ValueError("severity must be one of info, warning, error, critical")
