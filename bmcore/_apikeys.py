"""API keys: generation, format check, hashing for storage, constant-time verification.

A key is ``bm_`` followed by at least 32 URL-safe base64 characters (``A-Z a-z 0-9 - _``);
generated keys carry 256 random bits (43 characters). Only a hash is ever stored, with a short
display prefix that lets operators and logs tell keys apart without revealing them.

Stored hashes name their algorithm: ``sha256:<hex>``, or ``hmac-sha256:<hex>`` when the
server has a secret (a stolen database then does not even allow an offline check of a key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Final

from bmcore._errors import ApiKeyFormatError

__all__ = [
    "API_KEY_PREFIX",
    "check_api_key_format",
    "display_prefix",
    "generate_api_key",
    "hash_api_key",
    "verify_api_key",
]

#: Every API key starts with this.
API_KEY_PREFIX: Final = "bm_"
_MIN_BODY: Final = 32
_MAX_BODY: Final = 256
_RANDOM_BYTES: Final = 32
_DISPLAY_BODY: Final = 8
_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def generate_api_key(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A new API key: ``bm_`` and 43 URL-safe characters from 32 random bytes.

    ``random_bytes`` is the source of randomness, :func:`secrets.token_bytes` unless a test
    passes its own.

    >>> generate_api_key(lambda n: bytes(n))
    'bm_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
    """
    raw = random_bytes(_RANDOM_BYTES)
    if len(raw) != _RANDOM_BYTES:
        msg = f"random_bytes({_RANDOM_BYTES}) returned {len(raw)} bytes"
        raise ValueError(msg)
    return API_KEY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def check_api_key_format(text: str) -> str:
    """Return ``text`` if it has the API key format, else raise :class:`ApiKeyFormatError`.

    The error's ``reason`` says what is wrong without repeating the key itself.

    >>> check_api_key_format("bm_short")
    Traceback (most recent call last):
    ...
    bmcore._errors.ApiKeyFormatError: not a valid API key: it has 5 characters after bm_, ...
    """
    if text != text.strip():
        raise ApiKeyFormatError("it has leading or trailing whitespace; send the key alone")
    if not text.startswith(API_KEY_PREFIX):
        raise ApiKeyFormatError(f"it does not start with {API_KEY_PREFIX!r}")
    body = text[len(API_KEY_PREFIX) :]
    bad = next((index for index, char in enumerate(body) if char not in _ALPHABET), None)
    if bad is not None:
        char = body[bad]
        shown = "whitespace" if char.isspace() else f"the character {char!r}"
        reason = (
            f"it contains {shown} at position {bad + len(API_KEY_PREFIX)}; keys use only "
            "letters, digits, '-' and '_'"
        )
        raise ApiKeyFormatError(reason)
    if len(body) < _MIN_BODY:
        reason = (
            f"it has {len(body)} characters after {API_KEY_PREFIX}, at least {_MIN_BODY} are needed"
        )
        raise ApiKeyFormatError(reason)
    if len(body) > _MAX_BODY:
        reason = (
            f"it has {len(body)} characters after {API_KEY_PREFIX}, at most {_MAX_BODY} are allowed"
        )
        raise ApiKeyFormatError(reason)
    return text


def hash_api_key(key: str, *, secret: bytes | None = None) -> str:
    """The storable hash of a key: ``sha256:<hex>``, or ``hmac-sha256:<hex>`` with a secret.

    >>> hash_api_key("bm_" + "A" * 43)[:15]
    'sha256:20c0bf77'
    """
    data = key.encode("utf-8", "surrogatepass")
    if secret is None:
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return "hmac-sha256:" + hmac.new(secret, data, hashlib.sha256).hexdigest()


def verify_api_key(key: str, stored_hash: str, *, secret: bytes | None = None) -> bool:
    """Whether ``key`` matches ``stored_hash``, compared in constant time.

    A hash made with a secret only verifies with the same secret, and one made without a
    secret only without one.
    """
    expected = hash_api_key(key, secret=secret).encode("ascii")
    return hmac.compare_digest(expected, stored_hash.encode("utf-8", "surrogatepass"))


def display_prefix(key: str) -> str:
    """The part of a key that may be shown in lists and logs: ``bm_`` and 8 characters.

    >>> display_prefix("bm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_xyz")
    'bm_AbCdEfGh'
    """
    return key[: len(API_KEY_PREFIX) + _DISPLAY_BODY]
