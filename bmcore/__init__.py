"""bmcore: the pure core of the BackupMonitor Custom Ingest API.

Payload models and validation, ISO 8601 timestamps with a mandatory UTC offset, the
device/job matching key, the ingest rules (an entry's identity and fingerprint, and whether it
is new, a repeat or a conflict), job schedules and health, token-bucket rate limiting and
API-key handling. No I/O, no clock reads, no globals: time and randomness come in as arguments.

>>> from datetime import datetime, timezone
>>> import bmcore
>>> decoded = bmcore.decode_notification(
...     b'{"deviceName": "srv01", "timestamp": "2024-06-04T14:00:00+02:00",'
...     b' "severity": "WARNING", "type": "disk_space_low"}',
...     now=datetime(2024, 6, 4, 12, 5, tzinfo=timezone.utc),
... )
>>> decoded.value.severity
<Severity.WARNING: 'warning'>
"""

from bmcore._apikeys import (
    API_KEY_PREFIX,
    check_api_key_format,
    display_prefix,
    generate_api_key,
    hash_api_key,
    verify_api_key,
)
from bmcore._decoding import decode_backup, decode_notification, encode_backup, encode_notification
from bmcore._errors import ApiKeyFormatError, BmError, FieldError, PayloadError, TimestampError
from bmcore._fields import MAX_MESSAGE_LENGTH, MAX_NAME_LENGTH, MAX_STATUS_LENGTH, MAX_TYPE_LENGTH
from bmcore._filters import FILTERABLE_FIELDS, check_filter
from bmcore._health import (
    RECENT_REPORTS,
    JobHealth,
    JobState,
    Pause,
    ReportSummary,
    assess,
    suggest_schedule,
    summarize,
)
from bmcore._matching import DeviceKey, JobKey, canonical_name
from bmcore._models import (
    DEFAULT_SENDER,
    BackupEntry,
    Decoded,
    Notification,
    Outcome,
    PayloadWarning,
    Severity,
)
from bmcore._ratelimit import Decision, KeyedLimiter, RatePolicy, decide, parse_rate, refund
from bmcore._rules import (
    BackupFacts,
    NotificationFacts,
    Verdict,
    backup_facts,
    classify,
    join_instant,
    notification_facts,
    split_instant,
)
from bmcore._schedules import (
    Schedule,
    format_duration,
    parse_duration,
    parse_schedule,
)
from bmcore._timestamps import (
    CLOCK_SKEW_TOLERANCE,
    EARLIEST_TIMESTAMP,
    MAX_FUTURE,
    format_timestamp,
    parse_timestamp,
)

__all__ = [
    "API_KEY_PREFIX",
    "CLOCK_SKEW_TOLERANCE",
    "DEFAULT_SENDER",
    "EARLIEST_TIMESTAMP",
    "FILTERABLE_FIELDS",
    "MAX_FUTURE",
    "MAX_MESSAGE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_STATUS_LENGTH",
    "MAX_TYPE_LENGTH",
    "RECENT_REPORTS",
    "ApiKeyFormatError",
    "BackupEntry",
    "BackupFacts",
    "BmError",
    "Decision",
    "Decoded",
    "DeviceKey",
    "FieldError",
    "JobHealth",
    "JobKey",
    "JobState",
    "KeyedLimiter",
    "Notification",
    "NotificationFacts",
    "Outcome",
    "Pause",
    "PayloadError",
    "PayloadWarning",
    "RatePolicy",
    "ReportSummary",
    "Schedule",
    "Severity",
    "TimestampError",
    "Verdict",
    "assess",
    "backup_facts",
    "canonical_name",
    "check_api_key_format",
    "check_filter",
    "classify",
    "decide",
    "decode_backup",
    "decode_notification",
    "display_prefix",
    "encode_backup",
    "encode_notification",
    "format_duration",
    "format_timestamp",
    "generate_api_key",
    "hash_api_key",
    "join_instant",
    "notification_facts",
    "parse_duration",
    "parse_rate",
    "parse_schedule",
    "parse_timestamp",
    "refund",
    "split_instant",
    "suggest_schedule",
    "summarize",
    "verify_api_key",
]
