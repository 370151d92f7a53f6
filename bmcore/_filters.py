"""Filter values: whether a text could be a field of a stored entry, by the payload's own rules.

A service that lists entries filtered by a name (a dashboard's ``?deviceName=``) checks the
filter with the rules the field had to pass when it was posted: a value no payload could carry
(a NUL, a control character, 300 characters) can match nothing, and is better refused with the
same message a payload would get than sent to a database, some of which refuse a NUL outright.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from bmcore._errors import FieldError
from bmcore._fields import FieldRejectedError, name_hook, structure_status, structure_type

__all__ = ["FILTERABLE_FIELDS", "check_filter"]

_CHECKS: Final[dict[str, Callable[[object, object], object]]] = {
    "deviceName": name_hook("deviceName"),
    "jobName": name_hook("jobName"),
    "sender": name_hook("sender"),
    "status": structure_status,
    "type": structure_type,
}

#: The wire names of the fields :func:`check_filter` knows.
FILTERABLE_FIELDS: Final = frozenset(_CHECKS)


def check_filter(field: str, value: str) -> FieldError | None:
    r"""The error a payload with ``value`` as its ``field`` would get, or None if it is valid.

    ``field`` is a wire name (``deviceName``, ``jobName``, ``sender``, ``status``, ``type``);
    the error's ``field`` is that name, as a query parameter is named.

    >>> check_filter("deviceName", "srv01") is None
    True
    >>> check_filter("deviceName", "srv\x0001").code
    'control_character'
    """
    check = _CHECKS.get(field)
    if check is None:
        msg = f"no filter rules for {field!r}; use one of {', '.join(sorted(_CHECKS))}"
        raise ValueError(msg)
    try:
        check(value, str)
    except FieldRejectedError as error:
        return FieldError(field=field, code=error.code, message=error.message)
    return None
