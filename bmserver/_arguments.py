"""argparse types shared by the command lines: ``bmserver`` and pytest_bm's ``bm-fake-ingest``.

Exported by :mod:`bmserver`, so that both commands refuse a bad value in the same words::

    parser.add_argument("--rate", type=rate_argument, default="1/s")
"""

from __future__ import annotations

import argparse

import bmcore

__all__ = ["port_argument", "positive_int_argument", "rate_argument"]


def rate_argument(text: str) -> float:
    """A rate such as ``1/s``, ``30/min`` or ``100/h``, in tokens per second.

    >>> rate_argument("30/min")
    0.5
    """
    try:
        return bmcore.parse_rate(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int_argument(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        msg = f"invalid value {text!r}: give a whole number of at least 1"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def port_argument(text: str) -> int:
    """A TCP port, 0 for any free one."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        msg = f"invalid port {text!r}: give a number from 0 to 65535"
        raise argparse.ArgumentTypeError(msg)
    return int(text)
