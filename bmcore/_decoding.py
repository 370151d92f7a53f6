"""Bytes or a parsed mapping in, a validated model or every field error out; and back to JSON.

Built on a cattrs converter of our own: one structure hook per field (renamed to the spec's
camelCase), detailed validation so that every field's problem is collected, and the cattrs
error tree flattened into :class:`FieldError` objects with JSON pointers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final, Generic, TypeAlias, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import ClassValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from bmcore import _fields
from bmcore._errors import FieldError, PayloadError
from bmcore._models import BackupEntry, Decoded, Notification, Outcome, PayloadWarning
from bmcore._timestamps import (
    CLOCK_SKEW_TOLERANCE,
    EARLIEST_TIMESTAMP,
    MAX_FUTURE,
    format_timestamp,
    parse_timestamp,
)

__all__ = ["decode_backup", "decode_notification", "encode_backup", "encode_notification"]

ModelT = TypeVar("ModelT", BackupEntry, Notification)

#: What the decoders accept: the UTF-8 JSON bytes of a request body, or a parsed JSON object.
PayloadInput: TypeAlias = bytes | bytearray | memoryview | Mapping[str, Any]

#: attribute name -> wire name, per model.
_BACKUP_WIRE: Final = {
    "device_name": "deviceName",
    "job_name": "jobName",
    "timestamp": "timestamp",
    "status": "status",
    "message": "message",
    "sender": "sender",
}
_NOTIFICATION_WIRE: Final = {
    "device_name": "deviceName",
    "timestamp": "timestamp",
    "severity": "severity",
    "type": "type",
    "job_name": "jobName",
    "message": "message",
    "sender": "sender",
}


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(
        BackupEntry,
        make_dict_structure_fn(
            BackupEntry,
            converter,
            device_name=override(rename="deviceName", struct_hook=_fields.name_hook("deviceName")),
            job_name=override(rename="jobName", struct_hook=_fields.name_hook("jobName")),
            timestamp=override(struct_hook=_fields.structure_timestamp),
            status=override(struct_hook=_fields.structure_status),
            message=override(struct_hook=_fields.message_hook(required=True)),
            sender=override(struct_hook=_fields.structure_sender),
        ),
    )
    converter.register_structure_hook(
        Notification,
        make_dict_structure_fn(
            Notification,
            converter,
            device_name=override(rename="deviceName", struct_hook=_fields.name_hook("deviceName")),
            timestamp=override(struct_hook=_fields.structure_timestamp),
            severity=override(struct_hook=_fields.structure_severity),
            type=override(struct_hook=_fields.structure_type),
            job_name=override(rename="jobName", struct_hook=_fields.optional_name_hook("jobName")),
            message=override(struct_hook=_fields.message_hook(required=False)),
            sender=override(struct_hook=_fields.structure_sender),
        ),
    )
    converter.register_unstructure_hook(datetime, format_timestamp)
    converter.register_unstructure_hook(
        BackupEntry,
        make_dict_unstructure_fn(
            BackupEntry,
            converter,
            device_name=override(rename="deviceName"),
            job_name=override(rename="jobName"),
        ),
    )
    converter.register_unstructure_hook(
        Notification,
        make_dict_unstructure_fn(
            Notification,
            converter,
            device_name=override(rename="deviceName"),
            job_name=override(rename="jobName"),
        ),
    )
    return converter


_CONVERTER: Final = _make_converter()


@attrs.frozen
class _Schema(Generic[ModelT]):
    """What decoding needs to know about one kind of payload."""

    model: type[ModelT]
    wire: Mapping[str, str]  # attribute name -> wire name, in wire order
    known: frozenset[str]
    structure: Callable[[Mapping[str, Any], type[ModelT]], ModelT]
    order: Mapping[str, int]  # JSON pointer -> position, to report errors in wire order


def _schema(model: type[ModelT], wire: Mapping[str, str]) -> _Schema[ModelT]:
    structure = _CONVERTER.get_structure_hook(model)
    order = {f"/{name}": index for index, name in enumerate(wire.values())}
    return _Schema(model, wire, frozenset(wire.values()), structure, order)


_BACKUP: Final[_Schema[BackupEntry]] = _schema(BackupEntry, _BACKUP_WIRE)
_NOTIFICATION: Final[_Schema[Notification]] = _schema(Notification, _NOTIFICATION_WIRE)


def decode_backup(data: PayloadInput, *, now: datetime) -> Decoded[BackupEntry]:
    """Validate a backup payload: UTF-8 JSON bytes or an already-parsed mapping.

    ``now`` (aware) is the receiver's clock, for the time policy. Returns the entry with its
    warnings and ignored fields, or raises :class:`PayloadError` listing every problem.

    >>> from datetime import datetime, timezone
    >>> decoded = decode_backup(
    ...     b'{"deviceName": "srv1", "jobName": "Nightly", "timestamp": "2024-06-04T12:00:00Z",'
    ...     b' "status": "Success", "message": "142 GB"}',
    ...     now=datetime(2024, 6, 4, 12, 30, tzinfo=timezone.utc),
    ... )
    >>> decoded.value.outcome, decoded.value.sender
    (<Outcome.SUCCESS: 'Success'>, 'unknown@ingest')
    """
    return _decode(data, now, _BACKUP)


def decode_notification(data: PayloadInput, *, now: datetime) -> Decoded[Notification]:
    """Validate a notification payload; see :func:`decode_backup`."""
    return _decode(data, now, _NOTIFICATION)


def encode_backup(entry: BackupEntry) -> bytes:
    """The wire JSON of a backup entry, UTF-8 encoded: the inverse of :func:`decode_backup`.

    >>> from bmcore import parse_timestamp
    >>> encode_backup(BackupEntry(device_name="srv1", job_name="Nightly", status="Success",
    ...     message="ok", timestamp=parse_timestamp("2024-06-04T14:00:00+02:00")))
    b'{"deviceName":"srv1","jobName":"Nightly","timestamp":"2024-06-04T14:00:00+02:00","status":"Success","message":"ok","sender":"unknown@ingest"}'
    """
    return _dump(_CONVERTER.unstructure(entry, BackupEntry))


def encode_notification(notification: Notification) -> bytes:
    """The wire JSON of a notification; absent optional fields are left out."""
    payload = _CONVERTER.unstructure(notification, Notification)
    return _dump({key: value for key, value in payload.items() if value is not None})


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- decoding -------------------------------------------------------------------------------


def _decode(data: PayloadInput, now: datetime, schema: _Schema[ModelT]) -> Decoded[ModelT]:
    if now.tzinfo is None or now.utcoffset() is None:
        msg = f"now must be an aware datetime, got {now!r}; pass e.g. datetime.now(timezone.utc)"
        raise ValueError(msg)
    payload = _as_mapping(data)
    try:
        value = schema.structure(payload, schema.model)
    except ClassValidationError as group:
        errors = _field_errors(group, schema.wire)
        if "/timestamp" not in {error.field for error in errors}:
            errors.extend(_policy_errors_for_raw(payload.get("timestamp"), now))
        raise PayloadError(_in_wire_order(errors, schema.order)) from None
    warnings: list[PayloadWarning] = []
    timestamp = value.timestamp
    # The year test first: comparing datetimes in different zones costs ten times more.
    too_old = timestamp.year <= EARLIEST_TIMESTAMP.year and timestamp < EARLIEST_TIMESTAMP
    if too_old or timestamp - now > CLOCK_SKEW_TOLERANCE:
        policy_errors = _check_time_policy(timestamp, now, warnings)
        if policy_errors:
            raise PayloadError(policy_errors)
    if len(value.message or "") == _fields.MAX_MESSAGE_LENGTH:
        _warn_if_truncated(payload, warnings)
    if type(value) is BackupEntry and value.status not in _RECOMMENDED_STATUSES:
        _warn_if_unknown_status(value, warnings)
    known = schema.known
    ignored = () if known.issuperset(payload) else tuple(key for key in payload if key not in known)
    return Decoded(value=value, warnings=tuple(warnings), ignored_fields=ignored)


def _as_mapping(data: PayloadInput) -> Mapping[str, Any]:
    if type(data) is bytes or isinstance(data, bytes | bytearray | memoryview):
        payload = _load(data)
    else:
        payload = data
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise PayloadError([_not_an_object(payload)])
    return cast("Mapping[str, Any]", payload)


_RECOMMENDED_STATUSES: Final = frozenset(outcome.value for outcome in Outcome) - {"Unknown"}


def _load(data: bytes | bytearray | memoryview) -> object:
    raw = data if type(data) is bytes else bytes(data)
    raw = raw.removeprefix(_UTF8_BOM)  # some Windows tools send one; it is not part of the JSON
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PayloadError(
            [
                FieldError(
                    field="",
                    code="invalid_json",
                    message=(
                        f"the body is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
                        f"{error.start}); send the JSON encoded as UTF-8"
                    ),
                )
            ]
        ) from None
    # The C scanner directly: JSONDecoder.decode() adds two regex calls around it. Anything
    # unusual (leading or trailing whitespace, an error) goes through decode() for its message.
    # (try/except, not contextlib.suppress: this is the hot path and a with block costs more.)
    try:
        parsed, end = _scan_once(text, 0)
    except Exception:  # noqa: BLE001, S110 - StopIteration, RecursionError...: decode() says which
        pass
    else:
        if end == len(text):
            return parsed
    try:
        return _JSON.decode(text)
    except json.JSONDecodeError as error:
        message = (
            f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}; "
            "check quoting and commas (a shell variable containing a double quote breaks "
            "hand-built JSON: build the payload with a JSON tool)"
        )
    except _DuplicateKeyError as error:
        raise PayloadError(
            [
                FieldError(
                    # The JSON decoder's hook does not know where in the document it is.
                    field="",
                    code="duplicate_key",
                    message=f"an object in the body has the key {error.key!r} more than once; "
                    "send each key once",
                )
            ]
        ) from None
    except ValueError as error:  # NaN/Infinity, or an integer too long to convert
        message = f"the body is not valid JSON: {error}"
    except RecursionError:
        message = "the body is not valid JSON: it is nested too deeply"
    raise PayloadError([FieldError(field="", code="invalid_json", message=message)])


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # pragma: no branch - a duplicate exists, the loop finds it
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


def _no_constants(name: str) -> object:
    msg = f"{name} is not allowed in JSON"
    raise ValueError(msg)


_UTF8_BOM: Final = b"\xef\xbb\xbf"
# One decoder, built once: json.loads() with options builds a new one on every call.
_JSON: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)
_scan_once: Final[Callable[[str, int], tuple[object, int]]] = _JSON.scan_once  # type: ignore[attr-defined]


def _not_an_object(payload: object) -> FieldError:
    return FieldError(
        field="",
        code="not_an_object",
        message=(
            f"the body must be a JSON object with the entry's fields, got "
            f'{_fields.json_type_name(payload)}; send {{"deviceName": ..., ...}}'
        ),
    )


def _field_errors(group: ClassValidationError, wire: Mapping[str, str]) -> list[FieldError]:
    with_notes, others = group.group_exceptions()
    errors: list[FieldError] = []
    for error, note in with_notes:
        name = wire.get(note.name, note.name)
        if isinstance(error, _fields.FieldRejectedError):
            errors.append(FieldError(field=f"/{name}", code=error.code, message=error.message))
        elif isinstance(error, KeyError):
            errors.append(
                FieldError(field=f"/{name}", code="missing", message=f"{name} is required")
            )
        else:  # pragma: no cover - every hook raises FieldRejectedError; kept so nothing is lost
            errors.append(FieldError(field=f"/{name}", code="invalid", message=f"{name}: {error}"))
    # Without a note an error did not come from a field; none is known, but never drop one.
    errors.extend(  # pragma: no cover
        FieldError(field="", code="invalid", message=str(error)) for error in others
    )
    return errors


def _in_wire_order(errors: list[FieldError], order: Mapping[str, int]) -> list[FieldError]:
    if len(errors) == 1:
        return errors
    return sorted(errors, key=lambda error: order.get(error.field, len(order)))


def _check_time_policy(
    timestamp: datetime, now: datetime, warnings: list[PayloadWarning]
) -> list[FieldError]:
    if timestamp < EARLIEST_TIMESTAMP:
        return [
            FieldError(
                field="/timestamp",
                code="timestamp_too_old",
                message=(
                    f"timestamp {format_timestamp(timestamp)} is before 2000-01-01T00:00:00Z; "
                    "check the sending machine's clock and date format"
                ),
            )
        ]
    ahead = timestamp - now
    if ahead > MAX_FUTURE:
        return [
            FieldError(
                field="/timestamp",
                code="timestamp_in_future",
                message=(
                    f"timestamp {format_timestamp(timestamp)} is {_duration(ahead)} ahead of the "
                    "server's clock (at most 24 h are accepted); check the sending machine's clock "
                    "and its UTC offset"
                ),
            )
        ]
    if ahead > CLOCK_SKEW_TOLERANCE:
        warnings.append(
            PayloadWarning(
                code="clock_skew",
                field="/timestamp",
                message=(
                    f"timestamp is {_duration(ahead)} ahead of the server's clock; check the "
                    "sending machine's clock and its UTC offset"
                ),
            )
        )
    return []


def _policy_errors_for_raw(raw: object, now: datetime) -> list[FieldError]:
    """The time policy for a payload whose other fields failed, so all errors come at once."""
    if not isinstance(raw, str):
        return []
    return _check_time_policy(parse_timestamp(raw), now, [])


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _warn_if_truncated(payload: Mapping[str, Any], warnings: list[PayloadWarning]) -> None:
    sent = payload.get("message")
    if isinstance(sent, str) and len(sent) > _fields.MAX_MESSAGE_LENGTH:
        warnings.append(
            PayloadWarning(
                code="message_truncated",
                field="/message",
                message=(
                    f"message was {len(sent)} characters and was truncated to the first "
                    f"{_fields.MAX_MESSAGE_LENGTH}"
                ),
            )
        )


def _warn_if_unknown_status(entry: BackupEntry, warnings: list[PayloadWarning]) -> None:
    if entry.outcome is Outcome.UNKNOWN:
        warnings.append(
            PayloadWarning(
                code="unknown_status",
                field="/status",
                message=(
                    f"status {entry.status!r} is not one of the recommended values Success, "
                    "Warning, Error (any case); it was stored as sent with outcome Unknown"
                ),
            )
        )
