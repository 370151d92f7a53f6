"""Checks for single payload fields; each returns the clean value or raises FieldRejectedError.

These are the structure hooks the decoding converter runs per field. They know the field's
wire name, so every message names the field, says what was expected, what came, and how to
fix it.

Text that is shown to people (the names, status and type) must read as what it is:

- ``blank``: empty, only whitespace, or only default-ignorable characters (zero-width spaces,
  Hangul fillers and the like, see :data:`bmcore._matching.DEFAULT_IGNORABLE_RANGES`) with or
  without whitespace: a name nobody can see;
- ``control_character``: a C0 or C1 control character (line breaks, tabs, escapes);
- ``bidi_control``: a bidirectional embedding, override (U+202A-U+202E) or isolate
  (U+2066-U+2069). These reorder how the text around them is displayed, so that a name can
  show as another one ("Trojan Source", CVE-2021-42574). The bidirectional marks (U+200E,
  U+200F, U+061C) only lend a direction to neutral characters and are allowed; matching ignores
  them like every default-ignorable character.

A message is free text and is checked only for NUL and valid Unicode. Printable ASCII, what
nearly every payload holds, needs none of the Unicode checks and takes a fast path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Final, NoReturn

from bmcore._errors import TimestampError
from bmcore._matching import DEFAULT_IGNORABLE_CLASS
from bmcore._models import DEFAULT_SENDER, Severity
from bmcore._timestamps import parse_timestamp

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_STATUS_LENGTH",
    "MAX_TYPE_LENGTH",
    "FieldRejectedError",
    "json_type_name",
]

#: deviceName, jobName and sender: at most this many characters.
MAX_NAME_LENGTH: Final = 255
#: type: 1 to this many characters, without whitespace or control characters.
MAX_TYPE_LENGTH: Final = 100
#: status: 1 to this many characters, stored exactly as sent.
MAX_STATUS_LENGTH: Final = 64
#: message: longer messages are truncated to this many characters (warning ``message_truncated``).
MAX_MESSAGE_LENGTH: Final = 16_384

# Unicode category Cc: C0 controls, DEL and C1 controls.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_WHITESPACE: Final = re.compile(r"\s")
# Bidirectional embeddings, overrides and isolates; see the module documentation.
_BIDI_CONTROL: Final = re.compile("[\u202a-\u202e\u2066-\u2069]")
_IGNORABLE: Final = re.compile(f"[{DEFAULT_IGNORABLE_CLASS}]")
# A character that is neither whitespace nor default-ignorable: one that can be seen.
_VISIBLE: Final = re.compile(f"[^\\s{DEFAULT_IGNORABLE_CLASS}]")


class FieldRejectedError(ValueError):
    """Raised by a field hook; the decoder turns it into a FieldError at the field's pointer."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


_JSON_TYPE_NAMES: Final[tuple[tuple[type[object] | tuple[type[object], ...], str], ...]] = (
    (bool, "boolean"),  # before int: bool is a subclass of int
    ((int, float), "number"),
    (str, "string"),
    ((list, tuple), "array"),
    (dict, "object"),
)


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    for types, name in _JSON_TYPE_NAMES:
        if isinstance(value, types):
            return name
    return type(value).__name__


def _shown(value: object) -> str:
    """A short JSON-like rendering of a value for a message; never raises."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > _MAX_SHOWN_BITS:
        return f"(an integer of {value.bit_length()} bits)"
    try:
        text = repr(value)
    except ValueError:  # e.g. a huge integer nested in a list: int-to-str has a digit limit
        return f"(a {json_type_name(value)})"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


_MAX_SHOWN: Final = 40
_MAX_SHOWN_BITS: Final = 128


def _require_string(name: str, value: object) -> str:
    if isinstance(value, str):  # a str subclass from a caller's own mapping becomes a str
        return str(value)
    if value is None:
        raise FieldRejectedError("missing", f"{name} is required and must not be null")
    return _wrong_type(name, value, "a string")


def _wrong_type(name: str, value: object, expected: str) -> NoReturn:
    kind = json_type_name(value)
    hint = ""
    if kind in {"number", "boolean"}:
        hint = f'; put it in quotes: "{name}": "{_shown(value)}"'
    raise FieldRejectedError(
        "wrong_type", f"{name} must be {expected}, got {kind} {_shown(value)}{hint}"
    )


def _check_unicode(name: str, value: str) -> None:
    r"""Refuse lone surrogates (JSON "\ud800" escapes): they cannot be stored or sent as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = value[error.start]
        raise FieldRejectedError(
            "invalid_unicode",
            f"{name} contains an unpaired UTF-16 surrogate (U+{ord(bad):04X}) at position "
            f"{error.start}; send valid Unicode text",
        ) from None


def _check_printable(name: str, value: str) -> None:
    # isprintable() is a fast C check that accepts almost all real names; it is also False for
    # harmless non-ASCII spaces and format characters, so only then look for real controls.
    if value.isprintable():
        return
    found = _CONTROL.search(value)
    if found is not None:
        raise FieldRejectedError(
            "control_character",
            f"{name} contains the control character U+{ord(found.group()):04X} at position "
            f"{found.start()}; remove line breaks, tabs and other control characters",
        )
    # Bidirectional controls are format characters: isprintable() is False for them too.
    found = _BIDI_CONTROL.search(value)
    if found is not None:
        raise FieldRejectedError(
            "bidi_control",
            f"{name} contains the bidirectional control character U+{ord(found.group()):04X} "
            f"at position {found.start()}, which changes the order in which text is displayed; "
            "remove it",
        )


def _check_length(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise FieldRejectedError(
            "too_long",
            f"{name} must be at most {limit} characters, got {len(value)}; shorten it",
        )


def _check_not_blank(name: str, value: str) -> None:
    if not value or value.isspace():
        raise FieldRejectedError("blank", f"{name} must not be empty or only whitespace")
    if not value.isascii():  # ASCII has no default-ignorable character
        _check_visible(name, value)


def _check_visible(name: str, value: str) -> None:
    """Refuse text of default-ignorable characters, with or without whitespace, and nothing else."""
    if _VISIBLE.search(value) is None:
        invisible = _IGNORABLE.search(value)
        if invisible is not None:  # otherwise it is only whitespace, which callers refuse
            raise FieldRejectedError(
                "blank",
                f"{name} holds only invisible characters (such as U+{ord(invisible.group()):04X})"
                "; send text that can be read",
            )


def _check_text(name: str, value: str, limit: int) -> str:
    # The fast path accepts what nearly every payload holds: printable ASCII, not blank, short.
    if (
        value
        and value.isascii()
        and value.isprintable()
        and len(value) <= limit
        and not value.isspace()
    ):
        return value
    _check_not_blank(name, value)
    _check_length(name, value, limit)
    _check_unicode(name, value)
    _check_printable(name, value)
    return value


def name_hook(name: str) -> Callable[[object, object], str]:
    """deviceName, jobName: required, 1-255 characters, visible, no control or bidi controls."""

    def structure(value: object, _: object) -> str:
        if type(value) is not str:
            value = _require_string(name, value)
        return _check_text(name, value, MAX_NAME_LENGTH)

    return structure


def optional_name_hook(name: str) -> Callable[[object, object], str | None]:
    """A name that may be absent; JSON null means absent."""
    required = name_hook(name)

    def structure(value: object, type_: object) -> str | None:
        return None if value is None else required(value, type_)

    return structure


def structure_sender(value: object, type_: object) -> str:
    """sender: optional name; absent or null means the default sender."""
    return DEFAULT_SENDER if value is None else _SENDER(value, type_)


_SENDER: Final = name_hook("sender")


def structure_status(value: object, _: object) -> str:
    """status: 1-64 characters, visible, no (bidi) controls, stored exactly as sent."""
    if type(value) is not str:
        value = _require_string("status", value)
    return _check_text("status", value, MAX_STATUS_LENGTH)


def structure_type(value: object, _: object) -> str:
    """type: a short identifier, 1-100 characters, visible, no whitespace or (bidi) controls."""
    # The fast path: printable ASCII has one whitespace character, the space.
    if (
        type(value) is str
        and value.isascii()
        and value.isprintable()
        and 0 < len(value) <= MAX_TYPE_LENGTH
        and " " not in value
    ):
        return value
    text = _require_string("type", value)
    if not text:
        raise FieldRejectedError(
            "blank", "type must not be empty; send a short identifier such as disk_space_low"
        )
    ascii_only = text.isascii()
    if not ascii_only:
        _check_visible("type", text)
    _check_length("type", text, MAX_TYPE_LENGTH)
    if not ascii_only:
        _check_unicode("type", text)
    _check_printable("type", text)
    found = _WHITESPACE.search(text)
    if found is not None:
        raise FieldRejectedError(
            "whitespace",
            f"type must not contain whitespace (found at position {found.start()}); use an "
            "identifier such as disk_space_low",
        )
    return text


def message_hook(*, required: bool) -> Callable[[object, object], str | None]:
    """message: any text without NUL; longer than the limit is truncated (the decoder warns)."""

    def structure(value: object, _: object) -> str | None:
        if type(value) is not str:
            if value is None and not required:
                return None
            value = _require_string("message", value)
        if len(value) > MAX_MESSAGE_LENGTH:
            value = value[:MAX_MESSAGE_LENGTH]
        if not value.isascii():
            _check_unicode("message", value)
        if "\x00" in value:
            raise FieldRejectedError(
                "control_character",
                f"message contains a NUL character (U+0000) at position {value.index(chr(0))}; "
                "remove it",
            )
        return value

    return structure


_SEVERITIES: Final = {severity.value: severity for severity in Severity}
_SEVERITY_CHOICES: Final = ", ".join(severity.value for severity in Severity)


def structure_severity(value: object, _: object) -> Severity:
    """severity: one of the four values, case-insensitive."""
    if type(value) is str and value.isascii():  # the fast path
        severity = _SEVERITIES.get(value.lower())
        if severity is not None:
            return severity
    text = _require_string("severity", value)
    severity = _SEVERITIES.get(text.lower() if text.isascii() else text)
    if severity is None:
        raise FieldRejectedError(
            "invalid_severity",
            f"severity must be one of {_SEVERITY_CHOICES} (any case), got {_shown(text)}",
        )
    return severity


def structure_timestamp(value: object, _: object) -> datetime:
    """timestamp: ISO 8601 with a UTC offset; the time policy is applied by the decoder."""
    if type(value) is not str:
        if isinstance(value, str):  # a str subclass from a caller's own mapping
            return structure_timestamp(str(value), _)
        if value is None:
            raise FieldRejectedError("missing", "timestamp is required and must not be null")
        if json_type_name(value) == "number":
            raise FieldRejectedError(
                "wrong_type",
                f"timestamp must be an ISO 8601 string such as 2024-06-04T12:00:00Z, got number "
                f"{_shown(value)}; epoch numbers are not accepted",
            )
        _wrong_type("timestamp", value, "an ISO 8601 string such as 2024-06-04T12:00:00Z")
    try:
        return parse_timestamp(value)
    except TimestampError as error:
        raise FieldRejectedError(error.code, f"timestamp {error.message}") from None
