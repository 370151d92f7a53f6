"""1. Core decoding: bytes to a validated BackupEntry or Notification, beside pydantic and msgspec.

Each library decodes the same payloads (bench/_payloads.py) into a model with the same rules
(bench/_alternatives.py). The figure is the mean time per payload over the whole set, so that
short and long messages and every timestamp form weigh alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import msgspec
import pydantic

from bench._alternatives import (
    MsgspecBackup,
    MsgspecNotification,
    PydanticBackup,
    PydanticNotification,
)
from bench._payloads import INVALID_BACKUPS, NOW, VALID_BACKUPS, VALID_NOTIFICATIONS
from bench._report import Figure, Goal, per_call
from bmcore import PayloadError, decode_backup, decode_notification

NAME: Final = "1. Core decoding"
GOAL: Final = Goal(on="ratio", bound="at most", limit=2.0)

_Decoder = Callable[[bytes], object]


class _Library(NamedTuple):
    """How one library decodes, what it raises, and how its errors become a client's answer."""

    decode: _Decoder
    error: type[Exception]
    # bmcore builds every field's message when it raises; pydantic builds its list of errors
    # only when asked. A server must render the errors to answer, so each loop renders them.
    render: Callable[[Any], object]


def _all_of(library: _Library, payloads: Sequence[bytes]) -> Callable[[], None]:
    """A loop that decodes every payload once; rendering a rejection is part of the work."""
    decode, error, render = library

    def loop() -> None:
        for payload in payloads:
            try:
                decode(payload)
            except error as rejected:
                render(rejected)

    return loop


def _check_outcomes(library: _Library, payloads: Sequence[bytes], *, valid: bool) -> None:
    """Refuse to time a library that does not accept (or reject) what the others do."""
    for payload in payloads:
        try:
            library.decode(payload)
        except library.error:
            accepted = False
        else:
            accepted = True
        if accepted != valid:
            msg = f"{library.decode!r} {'rejected' if valid else 'accepted'} {payload[:80]!r}"
            raise AssertionError(msg)


def _bmcore_backup(data: bytes) -> object:
    return decode_backup(data, now=NOW)


def _bmcore_notification(data: bytes) -> object:
    return decode_notification(data, now=NOW)


def _bmcore_errors(error: PayloadError) -> object:
    return error.errors


def _pydantic_errors(error: pydantic.ValidationError) -> object:
    return error.errors()


def _libraries() -> dict[str, dict[str, _Library]]:
    return {
        "backup": {
            "bmcore": _Library(_bmcore_backup, PayloadError, _bmcore_errors),
            "pydantic": _Library(
                PydanticBackup.model_validate_json, pydantic.ValidationError, _pydantic_errors
            ),
            "msgspec": _Library(
                msgspec.json.Decoder(MsgspecBackup).decode, msgspec.ValidationError, str
            ),
        },
        "notification": {
            "bmcore": _Library(_bmcore_notification, PayloadError, _bmcore_errors),
            "pydantic": _Library(
                PydanticNotification.model_validate_json, pydantic.ValidationError, _pydantic_errors
            ),
            "msgspec": _Library(
                msgspec.json.Decoder(MsgspecNotification).decode, msgspec.ValidationError, str
            ),
        },
    }


def run(*, smoke: bool) -> list[Figure]:
    """Microseconds per payload for each library, and bmcore's ratio to pydantic and msgspec."""
    libraries = _libraries()
    cases = [
        ("valid backups", "backup", VALID_BACKUPS, True),
        ("valid notifications", "notification", VALID_NOTIFICATIONS, True),
        ("invalid backups", "backup", INVALID_BACKUPS, False),
    ]
    figures: list[Figure] = []
    totals: dict[str, float] = {}
    count = 0
    for label, kind, payloads, valid in cases:
        micros: dict[str, float] = {}
        for library_name, library in libraries[kind].items():
            _check_outcomes(library, payloads, valid=valid)
            seconds = per_call(_all_of(library, payloads), smoke=smoke)
            micros[library_name] = seconds / len(payloads) * 1e6
            totals[library_name] = totals.get(library_name, 0.0) + seconds * 1e6
        count += len(payloads)
        figures.extend(_figures(f"{label} ({len(payloads)} payloads)", micros))
    whole = {library_name: total / count for library_name, total in totals.items()}
    figures.extend(_figures(f"the whole set ({count} payloads)", whole))
    return figures


def _figures(name: str, micros: dict[str, float]) -> list[Figure]:
    mine = micros["bmcore"]
    return [
        Figure(NAME, f"bmcore, {name}", mine, "us/payload", "pydantic", micros["pydantic"], GOAL),
        Figure(NAME, f"bmcore, {name}", mine, "us/payload", "msgspec", micros["msgspec"]),
    ]
