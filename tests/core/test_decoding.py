import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from bmcore import (
    DEFAULT_SENDER,
    MAX_MESSAGE_LENGTH,
    BackupEntry,
    Decoded,
    FieldError,
    Notification,
    Outcome,
    PayloadError,
    Severity,
    decode_backup,
    decode_notification,
    encode_backup,
    encode_notification,
    format_timestamp,
)
from bmcore._matching import DEFAULT_IGNORABLE_RANGES

#: The receiver's clock in every test.
NOW = datetime(2024, 6, 4, 12, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))

DOCUMENTED_ERROR_CODES = frozenset(
    {
        "invalid_json",
        "duplicate_key",
        "not_an_object",
        "missing",
        "wrong_type",
        "blank",
        "too_long",
        "control_character",
        "bidi_control",
        "whitespace",
        "invalid_unicode",
        "missing_utc_offset",
        "invalid_timestamp",
        "timestamp_in_future",
        "timestamp_too_old",
        "invalid_severity",
    }
)

BACKUP_FIELDS = ("deviceName", "jobName", "timestamp", "status", "message", "sender")
NOTIFICATION_FIELDS = (
    "deviceName",
    "timestamp",
    "severity",
    "type",
    "jobName",
    "message",
    "sender",
)


def backup(**changes: object) -> dict[str, object]:
    """A valid backup payload with some fields replaced."""
    payload: dict[str, object] = {
        "deviceName": "srv01",
        "jobName": "Nightly Full Backup",
        "timestamp": "2024-06-04T14:00:00+02:00",
        "status": "Success",
        "message": "Backup completed. 142 GB transferred.",
    }
    payload.update(changes)
    return payload


def notification(**changes: object) -> dict[str, object]:
    """A valid notification payload with some fields replaced."""
    payload: dict[str, object] = {
        "deviceName": "srv01",
        "timestamp": "2024-06-04T14:00:00+02:00",
        "severity": "warning",
        "type": "disk_space_low",
    }
    payload.update(changes)
    return payload


def without(payload: Mapping[str, object], *names: str) -> dict[str, object]:
    """The payload without the named fields."""
    return {key: value for key, value in payload.items() if key not in names}


def as_bytes(payload: Mapping[str, object]) -> bytes:
    """The payload as compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def backup_errors(data: bytes | Mapping[str, object]) -> tuple[FieldError, ...]:
    """The field errors decode_backup raises for the data."""
    with pytest.raises(PayloadError) as caught:
        decode_backup(data, now=NOW)
    return caught.value.errors


def notification_errors(data: bytes | Mapping[str, object]) -> tuple[FieldError, ...]:
    """The field errors decode_notification raises for the data."""
    with pytest.raises(PayloadError) as caught:
        decode_notification(data, now=NOW)
    return caught.value.errors


def only_error(errors: tuple[FieldError, ...]) -> FieldError:
    """The one error of a PayloadError that must hold exactly one."""
    assert len(errors) == 1, errors
    return errors[0]


def where(errors: tuple[FieldError, ...]) -> list[tuple[str, str]]:
    """Each error as (field, code)."""
    return [(error.field, error.code) for error in errors]


# --- valid payloads ------------------------------------------------------------------------

EXPECTED_ENTRY = BackupEntry(
    device_name="srv01",
    job_name="Nightly Full Backup",
    timestamp=datetime(2024, 6, 4, 14, tzinfo=PLUS_TWO),
    status="Success",
    message="Backup completed. 142 GB transferred.",
    sender="script-srv01",
)


def test_decodes_a_valid_backup_from_bytes() -> None:
    """A valid backup body decodes to the entry, with the offset that was sent and no remarks."""
    decoded = decode_backup(as_bytes(backup(sender="script-srv01")), now=NOW)
    assert isinstance(decoded, Decoded)
    assert decoded.value == EXPECTED_ENTRY
    assert decoded.value.timestamp.utcoffset() == timedelta(hours=2)
    assert decoded.value.outcome is Outcome.SUCCESS
    assert decoded.warnings == ()
    assert decoded.ignored_fields == ()


def test_decodes_a_valid_backup_from_a_mapping() -> None:
    """An already-parsed mapping decodes exactly like its bytes."""
    decoded = decode_backup(backup(sender="script-srv01"), now=NOW)
    assert decoded.value == EXPECTED_ENTRY
    assert decoded.value.timestamp.utcoffset() == timedelta(hours=2)
    assert decoded.warnings == ()


@pytest.mark.parametrize("as_json", [True, False], ids=["bytes", "mapping"])
def test_decodes_a_valid_notification(as_json: bool) -> None:
    """A full notification decodes to its model from bytes and from a mapping."""
    payload = notification(
        severity="Critical", jobName="Nightly", message="Disk C: 95% full", sender="agent-7"
    )
    decoded = decode_notification(as_bytes(payload) if as_json else payload, now=NOW)
    assert decoded.value == Notification(
        device_name="srv01",
        timestamp=datetime(2024, 6, 4, 14, tzinfo=PLUS_TWO),
        severity=Severity.CRITICAL,
        type="disk_space_low",
        job_name="Nightly",
        message="Disk C: 95% full",
        sender="agent-7",
    )
    assert decoded.value.timestamp.utcoffset() == timedelta(hours=2)
    assert decoded.warnings == ()
    assert decoded.ignored_fields == ()


def test_a_minimal_notification_leaves_optional_fields_absent() -> None:
    """Without jobName, message and sender a notification has None, None and the default."""
    value = decode_notification(as_bytes(notification()), now=NOW).value
    assert value.job_name is None
    assert value.message is None
    assert value.sender == DEFAULT_SENDER


def test_sender_defaults_to_unknown_at_ingest() -> None:
    """A backup without sender gets the spec's default sender."""
    assert DEFAULT_SENDER == "unknown@ingest"
    assert decode_backup(as_bytes(backup()), now=NOW).value.sender == "unknown@ingest"


def test_null_on_optional_fields_means_absent() -> None:
    """JSON null on sender, jobName or message (where optional) is the same as leaving it out."""
    entry = decode_backup(b'{"sender": null, ' + as_bytes(backup())[1:], now=NOW)
    assert entry.value.sender == DEFAULT_SENDER
    assert entry.ignored_fields == ()
    value = decode_notification(
        as_bytes(notification(jobName=None, message=None, sender=None)), now=NOW
    ).value
    assert (value.job_name, value.message, value.sender) == (None, None, DEFAULT_SENDER)


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("info", Severity.INFO),
        ("INFO", Severity.INFO),
        ("Warning", Severity.WARNING),
        ("eRRoR", Severity.ERROR),
        ("CRITICAL", Severity.CRITICAL),
    ],
)
def test_severity_is_case_insensitive_and_stored_lowercase(sent: str, expected: Severity) -> None:
    """Severity accepts any case and becomes the Severity member with a lowercase value."""
    severity = decode_notification(notification(severity=sent), now=NOW).value.severity
    assert severity is expected
    assert severity.value == sent.lower()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("Success", Outcome.SUCCESS),
        ("success", Outcome.SUCCESS),
        ("SUCCESS", Outcome.SUCCESS),
        ("  Warning ", Outcome.WARNING),
        ("warning", Outcome.WARNING),
        (" ERROR", Outcome.ERROR),
        ("Error", Outcome.ERROR),
    ],
)
def test_status_is_stored_as_sent_and_gives_the_outcome(status: str, outcome: Outcome) -> None:
    """The status is kept verbatim; its outcome ignores case and surrounding spaces."""
    decoded = decode_backup(backup(status=status), now=NOW)
    assert decoded.value.status == status
    assert decoded.value.outcome is outcome
    assert decoded.warnings == ()


@pytest.mark.parametrize("status", ["Failed", "OK", "Success!", "Succes"])
def test_unknown_status_is_accepted_with_a_warning(status: str) -> None:
    """Any other status is stored with outcome Unknown and warning unknown_status."""
    decoded = decode_backup(backup(status=status), now=NOW)
    assert decoded.value.status == status
    assert decoded.value.outcome is Outcome.UNKNOWN
    (warning,) = decoded.warnings
    assert warning.code == "unknown_status"
    assert warning.field == "/status"
    for recommended in ("Success", "Warning", "Error"):
        assert recommended in warning.message


def test_unknown_fields_are_ignored_and_reported_in_order() -> None:
    """Unknown top-level fields are reported in ignored_fields in the order they came."""
    body = b'{"zeta": 1, ' + as_bytes(backup())[1:-1] + b', "alpha": {"x": []}, "extra": null}'
    decoded = decode_backup(body, now=NOW)
    assert decoded.ignored_fields == ("zeta", "alpha", "extra")
    assert decoded.value == decode_backup(backup(), now=NOW).value
    mapping = {"severityLevel": "high", **notification(), "Type": "x"}
    assert decode_notification(mapping, now=NOW).ignored_fields == ("severityLevel", "Type")


def test_backup_only_fields_are_unknown_to_notifications() -> None:
    """Fields of the other kind are unknown: status on a notification, type on a backup."""
    assert decode_notification(notification(status="Success"), now=NOW).ignored_fields == (
        "status",
    )
    assert decode_backup(backup(type="x", severity="info"), now=NOW).ignored_fields == (
        "type",
        "severity",
    )


# --- invalid bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"deviceName": "srv01",}',
        b'{"deviceName": "srv01"',
        b"{'deviceName': 'srv01'}",
        b"",
        b"   ",
        b'{"deviceName": "srv01"} {}',
        b'{"deviceName": NaN}',
        b'{"deviceName": Infinity}',
        b'{"deviceName": -Infinity}',
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
        b'{"deviceName": ' + b"7" * 5000 + b"}",
    ],
    ids=[
        "trailing-comma",
        "unterminated",
        "single-quotes",
        "empty",
        "blank",
        "extra-data",
        "nan",
        "infinity",
        "minus-infinity",
        "deep-open",
        "deep-closed",
        "deep-objects",
        "5000-digits",
    ],
)
def test_invalid_json_is_invalid_json(body: bytes) -> None:
    """Bad syntax, NaN/Infinity, deep nesting and huge integers are one invalid_json error."""
    error = only_error(backup_errors(body))
    assert (error.field, error.code) == ("", "invalid_json")
    assert "JSON" in error.message


def test_syntax_error_message_says_where_and_how_to_fix() -> None:
    """A JSON syntax error names the line and column and suggests building JSON with a tool."""
    error = only_error(backup_errors(b'{\n"deviceName": "srv"01"}'))
    assert "line 2" in error.message
    assert "column" in error.message
    assert "JSON tool" in error.message


@pytest.mark.parametrize(
    "body", [b'{"deviceName": "srv\xff01"}', b"\xff\xfe{}", b'{"deviceName": "\xc3"}']
)
def test_invalid_utf8_is_invalid_json(body: bytes) -> None:
    """A body that is not UTF-8 is invalid_json, and the message asks for UTF-8."""
    error = only_error(backup_errors(body))
    assert (error.field, error.code) == ("", "invalid_json")
    assert "UTF-8" in error.message


def test_deep_nesting_raises_payload_error_not_recursion_error() -> None:
    """100,000 open brackets give a PayloadError, never a RecursionError."""
    with pytest.raises(PayloadError) as caught:
        decode_notification(b"[" * 100_000, now=NOW)
    assert caught.value.codes == ("invalid_json",)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"deviceName": "a", "jobName": "j", "deviceName": "b"}', "deviceName"),
        (b'{"a/b": 1, "a/b": 2}', "a/b"),
        (b'{"extra": {"k": 1, "k": 2}, "deviceName": "a"}', "k"),
    ],
)
def test_duplicate_key_is_refused_and_named(body: bytes, key: str) -> None:
    """A key repeated in any object is duplicate_key on the whole body, naming the key."""
    error = only_error(backup_errors(body))
    assert (error.field, error.code) == ("", "duplicate_key")
    assert repr(key) in error.message
    assert "once" in error.message


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[]", "array"),
        (b'["srv01"]', "array"),
        (b'"srv01"', "string"),
        (b"null", "null"),
        (b"42", "number"),
        (b"4.5", "number"),
        (b"true", "boolean"),
    ],
)
def test_a_body_that_is_not_an_object_is_not_an_object(body: bytes, kind: str) -> None:
    """A JSON array, string, null, number or boolean is not_an_object, naming what came."""
    error = only_error(backup_errors(body))
    assert (error.field, error.code) == ("", "not_an_object")
    assert kind in error.message
    assert notification_errors(body)[0].code == "not_an_object"


# --- field errors --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deviceName", "jobName", "timestamp", "status", "message"])
def test_absent_required_backup_field_is_missing(name: str) -> None:
    """Leaving out a required backup field is missing at its pointer."""
    error = only_error(backup_errors(as_bytes(without(backup(), name))))
    assert (error.field, error.code) == (f"/{name}", "missing")
    assert name in error.message


@pytest.mark.parametrize("name", ["deviceName", "jobName", "timestamp", "status", "message"])
def test_null_required_backup_field_is_missing(name: str) -> None:
    """JSON null on a required backup field is missing at its pointer."""
    error = only_error(backup_errors(as_bytes(backup(**{name: None}))))
    assert (error.field, error.code) == (f"/{name}", "missing")
    assert name in error.message


@pytest.mark.parametrize("name", ["deviceName", "timestamp", "severity", "type"])
def test_absent_or_null_required_notification_field_is_missing(name: str) -> None:
    """Leaving out a required notification field, or sending null, is missing."""
    for payload in (without(notification(), name), notification(**{name: None})):
        error = only_error(notification_errors(as_bytes(payload)))
        assert (error.field, error.code) == (f"/{name}", "missing")


def test_an_empty_object_lists_every_missing_field() -> None:
    """{} is missing each required field, in wire order."""
    assert where(backup_errors(b"{}")) == [
        ("/deviceName", "missing"),
        ("/jobName", "missing"),
        ("/timestamp", "missing"),
        ("/status", "missing"),
        ("/message", "missing"),
    ]
    assert where(notification_errors(b"{}")) == [
        ("/deviceName", "missing"),
        ("/timestamp", "missing"),
        ("/severity", "missing"),
        ("/type", "missing"),
    ]


@pytest.mark.parametrize("value", [42, 4.5, -1, True, False, [], ["srv01"], {}, {"a": "b"}])
@pytest.mark.parametrize("name", ["deviceName", "jobName", "status", "message", "sender"])
def test_a_non_string_is_wrong_type(name: str, value: object) -> None:
    """A number, boolean, array or object where a backup's string belongs is wrong_type."""
    error = only_error(backup_errors(as_bytes(backup(**{name: value}))))
    assert (error.field, error.code) == (f"/{name}", "wrong_type")
    assert "string" in error.message


@pytest.mark.parametrize("name", ["deviceName", "severity", "type", "jobName", "message", "sender"])
def test_a_non_string_notification_field_is_wrong_type(name: str) -> None:
    """A number where a notification's string belongs is wrong_type."""
    error = only_error(notification_errors(as_bytes(notification(**{name: 7}))))
    assert (error.field, error.code) == (f"/{name}", "wrong_type")


def test_a_number_message_suggests_quotes() -> None:
    """For a number in a string field the message shows the value quoted."""
    error = only_error(backup_errors(as_bytes(backup(deviceName=42))))
    assert error.code == "wrong_type"
    assert "quotes" in error.message
    assert '"deviceName": "42"' in error.message


@pytest.mark.parametrize("value", [1717502400, 1717502400.5])
def test_an_epoch_timestamp_is_wrong_type(value: float) -> None:
    """An epoch number as timestamp is wrong_type, saying epoch numbers are not accepted."""
    error = only_error(backup_errors(as_bytes(backup(timestamp=value))))
    assert (error.field, error.code) == ("/timestamp", "wrong_type")
    assert "epoch numbers are not accepted" in error.message
    assert "2024-06-04T12:00:00Z" in error.message


@pytest.mark.parametrize("value", [True, [], {}])
def test_a_non_string_timestamp_is_wrong_type(value: object) -> None:
    """A boolean, array or object as timestamp is wrong_type."""
    error = only_error(backup_errors(as_bytes(backup(timestamp=value))))
    assert (error.field, error.code) == ("/timestamp", "wrong_type")


class _Text(str):
    """A str subclass, as a caller's own mapping may hold (e.g. from an ORM or a template)."""

    __slots__ = ()


def test_str_subclasses_from_a_mapping_are_accepted_in_every_field() -> None:
    """String subclasses are strings: every field, timestamp included, accepts them."""
    payload = {key: _Text(str(value)) for key, value in notification(jobName="j").items()}
    assert (
        decode_notification(payload, now=NOW).value
        == decode_notification(notification(jobName="j"), now=NOW).value
    )
    entry = {key: _Text(str(value)) for key, value in backup(sender="s").items()}
    assert decode_backup(entry, now=NOW).value == decode_backup(backup(sender="s"), now=NOW).value


def test_a_huge_integer_in_a_mapping_is_wrong_type() -> None:
    """An integer too long to print, from a caller's mapping, is still wrong_type."""
    error = only_error(backup_errors(backup(deviceName=10**5000)))
    assert (error.field, error.code) == ("/deviceName", "wrong_type")


@pytest.mark.parametrize("value", ["", " ", "   ", "\u00a0", " \u3000 "])
@pytest.mark.parametrize("name", ["deviceName", "jobName", "status", "sender"])
def test_empty_or_whitespace_text_is_blank(name: str, value: str) -> None:
    """An empty or whitespace-only name or status is blank."""
    error = only_error(backup_errors(as_bytes(backup(**{name: value}))))
    assert (error.field, error.code) == (f"/{name}", "blank")


def test_an_empty_type_is_blank() -> None:
    """An empty notification type is blank, with an example identifier."""
    error = only_error(notification_errors(as_bytes(notification(type=""))))
    assert (error.field, error.code) == ("/type", "blank")
    assert "disk_space_low" in error.message


@pytest.mark.parametrize(
    ("name", "limit"),
    [("deviceName", 255), ("jobName", 255), ("sender", 255), ("status", 64)],
)
def test_backup_text_longer_than_its_limit_is_too_long(name: str, limit: int) -> None:
    """Names accept 255 characters and status 64; one more is too_long, naming the limit."""
    value = decode_backup(backup(**{name: "x" * limit}), now=NOW).value
    stored = {
        "deviceName": value.device_name,
        "jobName": value.job_name,
        "sender": value.sender,
        "status": value.status,
    }
    assert stored[name] == "x" * limit
    error = only_error(backup_errors(backup(**{name: "x" * (limit + 1)})))
    assert (error.field, error.code) == (f"/{name}", "too_long")
    assert str(limit) in error.message


def test_limits_count_characters_not_bytes() -> None:
    """255 non-ASCII characters are a valid name although they take more than 255 bytes."""
    assert decode_backup(as_bytes(backup(deviceName="é" * 255)), now=NOW).value.device_name == (
        "é" * 255
    )
    error = only_error(backup_errors(as_bytes(backup(deviceName="é" * 256))))
    assert error.code == "too_long"


def test_type_longer_than_100_is_too_long() -> None:
    """A type of 100 characters is fine; 101 is too_long."""
    assert decode_notification(notification(type="t" * 100), now=NOW).value.type == "t" * 100
    error = only_error(notification_errors(notification(type="t" * 101)))
    assert (error.field, error.code) == ("/type", "too_long")
    assert "100" in error.message


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize("name", ["deviceName", "jobName", "status", "sender"])
def test_control_characters_in_names_are_refused(name: str, char: str) -> None:
    """A control character inside a name or status is control_character, saying what to remove."""
    error = only_error(backup_errors(as_bytes(backup(**{name: f"srv{char}01"}))))
    assert (error.field, error.code) == (f"/{name}", "control_character")
    assert f"U+{ord(char):04X}" in error.message
    assert "remove" in error.message


@pytest.mark.parametrize("char", ["\n", "\x00", "\x7f"])
def test_control_characters_in_type_are_refused(char: str) -> None:
    """A control character inside a notification type is control_character."""
    error = only_error(notification_errors(as_bytes(notification(type=f"disk{char}low"))))
    assert (error.field, error.code) == ("/type", "control_character")


@pytest.mark.parametrize("char", ["\u00a0", "\u200b", "\u3000", "\u00ad"])
def test_non_ascii_spaces_and_format_characters_in_names_are_fine(char: str) -> None:
    """Non-ASCII spaces and format characters inside a name are not control characters."""
    name = f"srv{char}01"
    decoded = decode_backup(as_bytes(backup(deviceName=name, jobName=name, sender=name)), now=NOW)
    assert decoded.value.device_name == name
    assert decoded.value.job_name == name
    assert decoded.value.sender == name


# Bidirectional embeddings (LRE, RLE), the closing PDF, overrides (LRO, RLO) and isolates
# (LRI, RLI, FSI, PDI): the "Trojan Source" characters.
BIDI_CONTROLS = [*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
# Any character a valid name may hold: no controls, surrogates or bidi controls.
_NAME_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="".join(BIDI_CONTROLS)
)
# Invisible text: zero-width space, joiner and non-joiner, word joiner, byte order mark, soft
# hyphen, Hangul fillers, a variation selector, a tag character, alone or among whitespace.
INVISIBLE = [
    "\u200b",
    "\u200b\u200c\u200d",
    " \u2060 ",
    "\ufeff",
    "\u00ad",
    "\u3164",
    "\u115f\u1160",
    "\uffa0",
    "\ufe0f",
    "\U000e0041",
    "\u00a0\u200b\u3000",
    "\u200e\u200f",
]


@pytest.mark.parametrize("value", INVISIBLE)
@pytest.mark.parametrize("name", ["deviceName", "jobName", "status", "sender"])
def test_invisible_text_is_blank(name: str, value: str) -> None:
    """A name or status of default-ignorable characters only (and whitespace) is blank."""
    error = only_error(backup_errors(as_bytes(backup(**{name: value}))))
    assert (error.field, error.code) == (f"/{name}", "blank")
    assert "invisible" in error.message
    assert "U+" in error.message


@pytest.mark.parametrize("value", ["\u200b", "\u3164", "\ufeff\u2060"])
@pytest.mark.parametrize("name", ["deviceName", "jobName", "type", "sender"])
def test_invisible_notification_text_is_blank(name: str, value: str) -> None:
    """A notification's names and type made of invisible characters only are blank."""
    error = only_error(notification_errors(as_bytes(notification(**{name: value}))))
    assert (error.field, error.code) == (f"/{name}", "blank")


@pytest.mark.parametrize("char", BIDI_CONTROLS)
@pytest.mark.parametrize("name", ["deviceName", "jobName", "status", "sender"])
def test_bidi_controls_in_names_and_status_are_refused(name: str, char: str) -> None:
    """An embedding, override or isolate in a name or status is bidi_control, naming it."""
    error = only_error(backup_errors(as_bytes(backup(**{name: f"srv{char}10"}))))
    assert (error.field, error.code) == (f"/{name}", "bidi_control")
    assert f"U+{ord(char):04X}" in error.message
    assert "position 3" in error.message


@pytest.mark.parametrize("char", BIDI_CONTROLS)
@pytest.mark.parametrize("name", ["deviceName", "jobName", "type", "sender"])
def test_bidi_controls_in_notifications_are_refused(name: str, char: str) -> None:
    """An embedding, override or isolate in a notification's names or type is bidi_control."""
    error = only_error(notification_errors(as_bytes(notification(**{name: f"disk{char}low"}))))
    assert (error.field, error.code) == (f"/{name}", "bidi_control")


def test_a_control_character_is_named_before_a_bidi_control() -> None:
    """Text with both is control_character: one error per field, the older check first."""
    error = only_error(backup_errors(as_bytes(backup(deviceName="a\u202eb\nc"))))
    assert error.code == "control_character"


@pytest.mark.parametrize("char", BIDI_CONTROLS)
def test_bidi_controls_in_a_message_are_fine(char: str) -> None:
    """A message is free text: bidirectional controls in it are kept as sent."""
    message = f"copied {char}12 files"
    assert decode_backup(as_bytes(backup(message=message)), now=NOW).value.message == message


@pytest.mark.parametrize(
    "name",
    [
        "srv\u200b01",  # a zero-width space inside a name
        "\u05e9\u05e8\u05ea-01\u200e",  # Hebrew with a left-to-right mark, which is allowed
        "\U0001f468\u200d\U0001f4bb",  # an emoji sequence with a zero-width joiner
        "\u2764\ufe0f-nas",  # a variation selector
        "\u3164x",  # a Hangul filler beside a letter
    ],
)
def test_visible_text_with_invisible_characters_is_fine(name: str) -> None:
    """Default-ignorable characters beside visible ones are accepted and kept as sent."""
    decoded = decode_backup(as_bytes(backup(deviceName=name, jobName=name, sender=name)), now=NOW)
    assert decoded.value.device_name == decoded.value.job_name == decoded.value.sender == name
    assert decode_notification(notification(type=name), now=NOW).value.type == name


_IGNORABLE_CHARS = st.one_of(
    [st.integers(first, last).map(chr) for first, last in DEFAULT_IGNORABLE_RANGES]
)
_SPACES = st.sampled_from(" \t\xa0\u2003\u3000")


@given(st.text(_IGNORABLE_CHARS | _SPACES, max_size=20).filter(lambda text: text.strip()))
def test_any_text_of_invisible_characters_and_spaces_is_blank(value: str) -> None:
    """Whatever default-ignorable characters and whitespace a name holds, alone it is blank."""
    codes = {(error.field, error.code) for error in backup_errors(backup(deviceName=value))}
    assert codes == {("/deviceName", "blank")}


@given(
    st.text(_NAME_CHARS, min_size=1, max_size=20),
    st.sampled_from(BIDI_CONTROLS),
    st.data(),
)
def test_a_bidi_control_anywhere_is_refused(text: str, char: str, data: st.DataObject) -> None:
    """A bidi control at any position of an otherwise valid name is bidi_control."""
    position = data.draw(st.integers(0, len(text)))
    value = "x" + text[:position] + char + text[position:]
    (error,) = backup_errors(backup(jobName=value))
    assert (error.field, error.code) == ("/jobName", "bidi_control")
    assert f"position {position + 1}" in error.message


def test_nul_in_message_is_refused() -> None:
    """A NUL character in a message is control_character at /message."""
    error = only_error(backup_errors(as_bytes(backup(message="done\x00"))))
    assert (error.field, error.code) == ("/message", "control_character")
    assert "U+0000" in error.message
    error = only_error(notification_errors(as_bytes(notification(message="\x00"))))
    assert (error.field, error.code) == ("/message", "control_character")


def test_line_breaks_and_tabs_in_message_are_fine() -> None:
    """A message may hold newlines, tabs and other controls except NUL."""
    message = "line 1\nline 2\r\n\tindented \x1b[0m \x7f \x85 ü"
    assert decode_backup(as_bytes(backup(message=message)), now=NOW).value.message == message


@pytest.mark.parametrize(
    "value", ["disk space", " disk", "disk_space ", "disk\u00a0space", "a\u3000b"]
)
def test_whitespace_in_type_is_refused(value: str) -> None:
    """Whitespace anywhere in a type, ASCII or not, is whitespace with an example identifier."""
    error = only_error(notification_errors(as_bytes(notification(type=value))))
    assert (error.field, error.code) == ("/type", "whitespace")
    assert "disk_space_low" in error.message


@pytest.mark.parametrize("name", ["deviceName", "jobName", "status", "message", "sender"])
def test_lone_surrogate_escape_is_invalid_unicode(name: str) -> None:
    r"""A JSON escape of an unpaired surrogate ("\ud800") in a string is invalid_unicode."""
    body = as_bytes(without(backup(), name))[:-1] + f', "{name}": "srv\\ud800"}}'.encode()
    error = only_error(backup_errors(body))
    assert (error.field, error.code) == (f"/{name}", "invalid_unicode")
    assert "U+D800" in error.message


@pytest.mark.parametrize("name", ["deviceName", "type", "jobName", "message", "sender"])
def test_lone_low_surrogate_in_a_notification_is_invalid_unicode(name: str) -> None:
    """A lone low surrogate in a notification's string field is invalid_unicode."""
    body = as_bytes(without(notification(), name))[:-1] + f', "{name}": "x\\udc00"}}'.encode()
    error = only_error(notification_errors(body))
    assert (error.field, error.code) == (f"/{name}", "invalid_unicode")


def test_a_surrogate_pair_escape_is_fine() -> None:
    """A properly paired surrogate escape is the astral character it encodes."""
    body = as_bytes(without(backup(), "deviceName"))[:-1] + b', "deviceName": "srv\\ud83d\\ude00"}'
    assert decode_backup(body, now=NOW).value.device_name == "srv\U0001f600"


@pytest.mark.parametrize("value", ["2024-06-04T14:00:00", "2024-06-04 14:00", "2024-06-04"])
def test_timestamp_without_offset_is_missing_utc_offset(value: str) -> None:
    """A timestamp without offset is missing_utc_offset, suggesting Z or +02:00."""
    error = only_error(backup_errors(as_bytes(backup(timestamp=value))))
    assert (error.field, error.code) == ("/timestamp", "missing_utc_offset")
    assert "Z" in error.message
    assert "+02:00" in error.message


@pytest.mark.parametrize("value", ["yesterday", "", "2024-06-31T12:00:00Z", "1717502400"])
def test_unparseable_timestamp_is_invalid_timestamp(value: str) -> None:
    """A string that is not an ISO 8601 timestamp is invalid_timestamp."""
    error = only_error(notification_errors(as_bytes(notification(timestamp=value))))
    assert (error.field, error.code) == ("/timestamp", "invalid_timestamp")
    assert "2024-06-04T12:00:00Z" in error.message


@pytest.mark.parametrize("value", ["urgent", "", "information", " info", "warn"])
def test_unknown_severity_lists_the_four_values(value: str) -> None:
    """Any other severity is invalid_severity, and the message lists the four values."""
    error = only_error(notification_errors(as_bytes(notification(severity=value))))
    assert (error.field, error.code) == ("/severity", "invalid_severity")
    for allowed in ("info", "warning", "error", "critical"):
        assert allowed in error.message


# --- time policy ---------------------------------------------------------------------------


def at(delta: timedelta, offset: timedelta = timedelta(hours=-7)) -> str:
    """NOW + delta as it would be sent from a machine at the given UTC offset."""
    return format_timestamp((NOW + delta).astimezone(timezone(offset)))


def test_exactly_24_hours_ahead_is_accepted_with_clock_skew() -> None:
    """A timestamp exactly 24 h ahead is accepted, with warning clock_skew."""
    decoded = decode_backup(backup(timestamp=at(timedelta(hours=24))), now=NOW)
    assert decoded.value.timestamp == NOW + timedelta(hours=24)
    (warning,) = decoded.warnings
    assert (warning.field, warning.code) == ("/timestamp", "clock_skew")
    assert "clock" in warning.message


def test_more_than_24_hours_ahead_is_timestamp_in_future() -> None:
    """One microsecond more than 24 h ahead is refused as timestamp_in_future."""
    error = only_error(backup_errors(backup(timestamp=at(timedelta(hours=24, microseconds=1)))))
    assert (error.field, error.code) == ("/timestamp", "timestamp_in_future")
    assert "clock" in error.message
    error = only_error(notification_errors(notification(timestamp=at(timedelta(days=400)))))
    assert error.code == "timestamp_in_future"


def test_exactly_5_minutes_ahead_has_no_warning() -> None:
    """A timestamp exactly 5 minutes ahead is within the tolerated clock skew."""
    decoded = decode_backup(backup(timestamp=at(timedelta(minutes=5))), now=NOW)
    assert decoded.warnings == ()


def test_more_than_5_minutes_ahead_warns_clock_skew() -> None:
    """One microsecond more than 5 minutes ahead is accepted with warning clock_skew."""
    for decoded in (
        decode_backup(backup(timestamp=at(timedelta(minutes=5, microseconds=1))), now=NOW),
        decode_notification(notification(timestamp=at(timedelta(hours=2))), now=NOW),
    ):
        assert [(w.field, w.code) for w in decoded.warnings] == [("/timestamp", "clock_skew")]


def test_the_past_is_fine_back_to_the_year_2000() -> None:
    """Backfilled entries are accepted, down to exactly 2000-01-01T00:00:00Z."""
    for sent in ("2000-01-01T00:00:00Z", "2000-01-01T01:00:00+01:00", "2010-03-01T08:00:00-05:00"):
        decoded = decode_backup(backup(timestamp=sent), now=NOW)
        assert decoded.warnings == ()
    assert decode_backup(backup(timestamp="2000-01-01T00:00:00Z"), now=NOW).value.timestamp == (
        bmcore.EARLIEST_TIMESTAMP
    )


@pytest.mark.parametrize(
    "value", ["1999-12-31T23:59:59.999999Z", "2000-01-01T00:59:59+01:00", "1970-01-01T00:00:00Z"]
)
def test_before_2000_is_timestamp_too_old(value: str) -> None:
    """An instant before 2000-01-01T00:00:00Z is timestamp_too_old."""
    error = only_error(backup_errors(backup(timestamp=value)))
    assert (error.field, error.code) == ("/timestamp", "timestamp_too_old")
    assert "2000-01-01" in error.message


def test_policy_uses_the_now_that_is_passed_in_any_offset() -> None:
    """The policy compares instants: a now given at another offset gives the same result."""
    now_elsewhere = NOW.astimezone(timezone(timedelta(hours=9, minutes=30)))
    sent = at(timedelta(minutes=6))
    assert decode_backup(backup(timestamp=sent), now=now_elsewhere).warnings[0].code == (
        "clock_skew"
    )


# --- message truncation --------------------------------------------------------------------


def test_a_long_message_is_truncated_with_a_warning() -> None:
    """A message over 16,384 characters keeps its first 16,384, with warning message_truncated."""
    message = "".join(chr(ord("a") + i % 26) for i in range(MAX_MESSAGE_LENGTH + 100))
    decoded = decode_backup(as_bytes(backup(message=message)), now=NOW)
    assert decoded.value.message == message[:MAX_MESSAGE_LENGTH]
    (warning,) = decoded.warnings
    assert (warning.field, warning.code) == ("/message", "message_truncated")
    assert str(MAX_MESSAGE_LENGTH + 100) in warning.message


def test_a_message_of_exactly_the_limit_is_kept_whole() -> None:
    """A message of exactly 16,384 characters has no warning; 16,385 is truncated."""
    assert MAX_MESSAGE_LENGTH == 16_384
    exact = decode_notification(notification(message="é" * 16_384), now=NOW)
    assert exact.value.message == "é" * 16_384
    assert exact.warnings == ()
    over = decode_notification(notification(message="é" * 16_385), now=NOW)
    assert over.value.message == "é" * 16_384
    assert [w.code for w in over.warnings] == ["message_truncated"]


# --- inputs ---------------------------------------------------------------------------------


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    """A UTF-8 BOM before the JSON is tolerated."""
    decoded = decode_backup(b"\xef\xbb\xbf" + as_bytes(backup()), now=NOW)
    assert decoded.value == decode_backup(backup(), now=NOW).value


def test_bytearray_and_memoryview_work_like_bytes() -> None:
    """Bytearray and memoryview bodies decode like bytes, with their warnings and ignored fields."""
    body = as_bytes(backup(status="Done", note="x"))
    expected = decode_backup(body, now=NOW)
    assert decode_backup(bytearray(body), now=NOW) == expected
    assert decode_backup(memoryview(body), now=NOW) == expected
    with pytest.raises(PayloadError):
        decode_notification(bytearray(b"[]"), now=NOW)


def test_a_naive_now_is_a_value_error() -> None:
    """A naive now is a ValueError (not a PayloadError about the body): now must be aware."""
    naive = datetime(2024, 6, 4, 12, 0)  # noqa: DTZ001 - naive on purpose
    with pytest.raises(ValueError, match="aware") as caught:
        decode_backup(as_bytes(backup()), now=naive)
    assert not isinstance(caught.value, PayloadError)
    with pytest.raises(ValueError, match="aware") as caught:
        decode_notification(notification(), now=naive)
    assert not isinstance(caught.value, PayloadError)


# --- every problem at once -----------------------------------------------------------------


def test_every_backup_problem_is_reported_in_wire_order() -> None:
    """A backup with every field wrong lists all the errors, in wire order, whatever the body's."""
    payload: dict[str, object] = {
        "sender": "a\nb",
        "message": None,
        "status": "s" * 65,
        "timestamp": "2024-06-04T14:00:00",
        "jobName": 5,
        "deviceName": "",
    }
    assert where(backup_errors(as_bytes(payload))) == [
        ("/deviceName", "blank"),
        ("/jobName", "wrong_type"),
        ("/timestamp", "missing_utc_offset"),
        ("/status", "too_long"),
        ("/message", "missing"),
        ("/sender", "control_character"),
    ]


def test_every_notification_problem_is_reported_in_wire_order() -> None:
    """A notification with every field wrong lists all the errors in wire order."""
    payload: dict[str, object] = {
        "sender": "",
        "message": "\x00",
        "jobName": [],
        "type": "a b",
        "severity": "high",
        "timestamp": "soon",
        "deviceName": "x" * 256,
    }
    assert where(notification_errors(as_bytes(payload))) == [
        ("/deviceName", "too_long"),
        ("/timestamp", "invalid_timestamp"),
        ("/severity", "invalid_severity"),
        ("/type", "whitespace"),
        ("/jobName", "wrong_type"),
        ("/message", "control_character"),
        ("/sender", "blank"),
    ]


@pytest.mark.parametrize(
    ("timestamp", "code"),
    [
        ("1999-06-04T12:00:00Z", "timestamp_too_old"),
        ("2024-06-06T12:00:00+02:00", "timestamp_in_future"),
    ],
)
def test_time_policy_errors_come_with_the_other_field_errors(timestamp: str, code: str) -> None:
    """A policy error on the timestamp is reported together with other fields' errors."""
    payload = {"message": 1, **without(backup(), "message"), "deviceName": "srv\n01"}
    payload["timestamp"] = timestamp
    assert where(backup_errors(as_bytes(payload))) == [
        ("/deviceName", "control_character"),
        ("/timestamp", code),
        ("/message", "wrong_type"),
    ]
    assert where(notification_errors(notification(timestamp=timestamp, severity="?"))) == [
        ("/timestamp", code),
        ("/severity", "invalid_severity"),
    ]


def test_payload_error_is_a_value_error_and_lists_each_problem() -> None:
    """PayloadError is a ValueError and BmError; str() lists every problem; codes are in order."""
    with pytest.raises(PayloadError) as caught:
        decode_backup(backup(deviceName="", status=None, timestamp="1999-01-01Z"), now=NOW)
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, bmcore.BmError)
    assert error.codes == ("blank", "invalid_timestamp", "missing")
    assert error.codes == tuple(problem.code for problem in error.errors)
    text = str(error)
    assert "3 problems" in text
    for problem in error.errors:
        assert problem.field in text
        assert problem.code in text
        assert problem.message in text


# --- encoding -------------------------------------------------------------------------------


def test_encode_backup_gives_compact_camel_case_json() -> None:
    """encode_backup writes compact camelCase JSON with the timestamp's original offset."""
    entry = BackupEntry(
        device_name="srv01",
        job_name="Nightly",
        timestamp=datetime(2024, 6, 4, 14, 0, tzinfo=PLUS_TWO),
        status="Success",
        message="ok",
    )
    assert encode_backup(entry) == (
        b'{"deviceName":"srv01","jobName":"Nightly","timestamp":"2024-06-04T14:00:00+02:00",'
        b'"status":"Success","message":"ok","sender":"unknown@ingest"}'
    )


def test_encode_notification_omits_absent_optional_fields() -> None:
    """encode_notification leaves out jobName and message when they are None."""
    value = Notification(
        device_name="srv01",
        timestamp=datetime(2024, 6, 4, 14, 0, 0, 500000, tzinfo=timezone(-timedelta(hours=5))),
        severity=Severity.ERROR,
        type="disk_space_low",
    )
    assert encode_notification(value) == (
        b'{"deviceName":"srv01","timestamp":"2024-06-04T14:00:00.500000-05:00",'
        b'"severity":"error","type":"disk_space_low","sender":"unknown@ingest"}'
    )


def test_encode_writes_non_ascii_as_utf8() -> None:
    """Non-ASCII text is written as UTF-8, not as escapes."""
    value = Notification(
        device_name="Zürich-01",
        timestamp=datetime(2024, 6, 4, 14, 0, tzinfo=UTC),
        severity=Severity.INFO,
        type="ok",
        job_name="Sicherung ☃",
        message="fertig",
    )
    encoded = encode_notification(value)
    assert "Zürich-01".encode() in encoded
    assert b'"jobName":"Sicherung \xe2\x98\x83","message":"fertig"' in encoded
    assert encoded.startswith(b'{"deviceName"')
    assert b'"timestamp":"2024-06-04T14:00:00+00:00"' in encoded


# --- properties -----------------------------------------------------------------------------

_TEXT = _NAME_CHARS
_TYPE_TEXT = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    exclude_characters="".join(BIDI_CONTROLS),
)
_MESSAGE_TEXT = st.characters(codec="utf-8", exclude_characters="\x00")


def _texts(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    """Visible text of 1 to max_size characters, often short and sometimes near the limit."""
    return st.one_of(
        st.text(alphabet, min_size=1, max_size=max_size),
        st.text(alphabet, min_size=max_size - 3, max_size=max_size),
    ).filter(lambda text: bmcore.canonical_name(text) != "")  # neither blank nor invisible


def _minutes(count: int) -> timedelta:
    return timedelta(minutes=count)


def _in_zone(moment: datetime, zone: timezone) -> datetime:
    return moment.replace(tzinfo=UTC).astimezone(zone)


def _repeated(piece: str, times: int) -> str:
    return (piece * times)[:MAX_MESSAGE_LENGTH]


_NAMES = _texts(_TEXT, bmcore.MAX_NAME_LENGTH)
_STATUSES = st.one_of(
    st.sampled_from(["Success", "Warning", "Error", " success ", "ERROR", "Failed"]),
    _texts(_TEXT, bmcore.MAX_STATUS_LENGTH),
)
_TYPES = _texts(_TYPE_TEXT.filter(lambda char: not char.isspace()), bmcore.MAX_TYPE_LENGTH)
_MESSAGES = st.one_of(
    st.text(_MESSAGE_TEXT, max_size=50),
    st.builds(
        _repeated,
        st.text(_MESSAGE_TEXT, min_size=1, max_size=10),
        st.integers(1, MAX_MESSAGE_LENGTH),
    ),
)
_OFFSETS = st.builds(timezone, st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(_minutes))
_EARLIEST = datetime(2000, 1, 1)  # noqa: DTZ001 - UTC wall times, made aware by _in_zone
_LATEST = (NOW + bmcore.CLOCK_SKEW_TOLERANCE).replace(tzinfo=None)
_TIMESTAMPS = st.builds(
    _in_zone,
    st.one_of(
        st.datetimes(min_value=_EARLIEST, max_value=_LATEST),
        st.sampled_from([_EARLIEST, _LATEST, NOW.replace(tzinfo=None)]),
    ),
    _OFFSETS,
)
_SENDERS = st.one_of(st.just(DEFAULT_SENDER), _NAMES)

_BACKUPS = st.builds(
    BackupEntry,
    device_name=_NAMES,
    job_name=_NAMES,
    timestamp=_TIMESTAMPS,
    status=_STATUSES,
    message=_MESSAGES,
    sender=_SENDERS,
)
_NOTIFICATIONS = st.builds(
    Notification,
    device_name=_NAMES,
    timestamp=_TIMESTAMPS,
    severity=st.sampled_from(Severity),
    type=_TYPES,
    job_name=st.none() | _NAMES,
    message=st.none() | _MESSAGES,
    sender=_SENDERS,
)


@given(_BACKUPS)
def test_decode_inverts_encode_for_every_valid_backup(entry: BackupEntry) -> None:
    """decode_backup(encode_backup(entry)) is the entry, with its offset, and no new warnings."""
    decoded = decode_backup(encode_backup(entry), now=NOW)
    assert decoded.value == entry
    assert decoded.value.timestamp.utcoffset() == entry.timestamp.utcoffset()
    assert [w.code for w in decoded.warnings] == (
        ["unknown_status"] if entry.outcome is Outcome.UNKNOWN else []
    )
    assert decoded.ignored_fields == ()


@given(_NOTIFICATIONS)
def test_decode_inverts_encode_for_every_valid_notification(value: Notification) -> None:
    """decode_notification(encode_notification(n)) is n, with its offset, and no warnings."""
    decoded = decode_notification(encode_notification(value), now=NOW)
    assert decoded.value == value
    assert decoded.value.timestamp.utcoffset() == value.timestamp.utcoffset()
    assert decoded.warnings == ()
    assert decoded.ignored_fields == ()


_JSON_VALUES: st.SearchStrategy[object] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)
_PLAUSIBLE = st.sampled_from(
    [
        "srv01",
        "",
        " ",
        "Success",
        "info",
        "WARNING",
        "disk_space_low",
        "2024-06-04T14:00:00+02:00",
        "2024-06-04T14:00:00",
        "1999-01-01T00:00:00Z",
        "2024-06-09T00:00:00Z",
        "2024-06-04T12:10:00Z",
        "x" * 300,
        "a\nb",
        "\ud800",
        "\u200b",
        "a\u202eb",
    ]
)
_KEYS = st.sampled_from((*NOTIFICATION_FIELDS, "status", "extra")) | st.text(max_size=5)
_OVERLAYS = st.dictionaries(_KEYS, _JSON_VALUES | _PLAUSIBLE, max_size=6)
_DROPS = st.sets(st.sampled_from((*NOTIFICATION_FIELDS, "status")), max_size=3)


def _codes(data: bytes | Mapping[str, object]) -> tuple[str, ...]:
    """The error codes of decoding the data as a backup and as a notification."""
    codes: tuple[str, ...] = ()
    try:
        decode_backup(data, now=NOW)
    except PayloadError as error:
        codes += error.codes
    try:
        decode_notification(data, now=NOW)
    except PayloadError as error:
        codes += error.codes
    return codes


def _check_only_payload_errors(payload: dict[str, object]) -> None:
    for data in (payload, json.dumps(payload).encode("utf-8")):
        unknown = set(_codes(data)) - DOCUMENTED_ERROR_CODES
        assert not unknown, f"undocumented codes {unknown} for {data!r}"


@given(_OVERLAYS, _DROPS)
def test_any_json_object_decodes_or_raises_payload_error(
    overlay: dict[str, object], drops: set[str]
) -> None:
    """Any JSON object gives a Decoded or a PayloadError with documented codes, nothing else."""
    base = {**backup(), **notification()}
    payload = {key: value for key, value in {**base, **overlay}.items() if key not in drops}
    _check_only_payload_errors(payload)


@given(st.dictionaries(st.text(), _JSON_VALUES, max_size=8))
def test_any_random_json_object_decodes_or_raises_payload_error(payload: dict[str, object]) -> None:
    """A JSON object of random keys and values never raises anything but PayloadError."""
    _check_only_payload_errors(payload)


def test_a_payload_error_needs_at_least_one_field_error() -> None:
    """An empty PayloadError would say nothing about what to fix: it is refused."""
    with pytest.raises(ValueError, match="at least one FieldError"):
        bmcore.PayloadError([])
