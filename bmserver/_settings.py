"""The server's settings: limits and policies, with the defaults the issue fixes."""

from __future__ import annotations

from typing import Final, Literal

import attrs

from bmcore import RatePolicy

__all__ = [
    "DEFAULT_AUTH_FAILURE_POLICY",
    "DEFAULT_RATE_POLICY",
    "DEFAULT_READ_RATE_POLICY",
    "MAX_BODY_BYTES",
    "MAX_PAGE_BYTES",
    "Settings",
]

#: A request body larger than this is refused (413), before and after gzip decompression.
MAX_BODY_BYTES: Final = 64 * 1024
#: Per key: a burst of 60 refilling at 1 per second.
DEFAULT_RATE_POLICY: Final = RatePolicy.per_second(1, burst=60)
#: Per key, for the read side: a burst of 100 refilling at 5 per second, apart from ingest so
#: that a dashboard reading cannot use up the quota of the scripts that report.
DEFAULT_READ_RATE_POLICY: Final = RatePolicy.per_second(5, burst=100)
#: A page of the read side holds at most this many bytes of JSON, then ``nextCursor``.
MAX_PAGE_BYTES: Final = 1024 * 1024
#: Per client address, for failed authentications: 10 tries, then one more every 6 seconds.
DEFAULT_AUTH_FAILURE_POLICY: Final = RatePolicy.per_second(1 / 6, burst=10)


@attrs.frozen(kw_only=True)
class Settings:
    """What an app is configured with; everything else (store, limiter, clock) is passed in."""

    max_body_bytes: int = MAX_BODY_BYTES
    rate_policy: RatePolicy = DEFAULT_RATE_POLICY
    read_rate_policy: RatePolicy = DEFAULT_READ_RATE_POLICY
    auth_failure_policy: RatePolicy = DEFAULT_AUTH_FAILURE_POLICY
    #: HMAC secret for key hashes; None stores plain SHA-256 hashes.
    key_secret: bytes | None = attrs.field(default=None, repr=False)
    #: Seconds a request's body may take to arrive once its headers have: then 408.
    body_timeout_s: float = 10.0
    #: When the rate limiter's backend (Redis) cannot be reached: "open" admits the request and
    #: logs a warning (nothing a client sends is lost), "closed" answers 503 (quotas hold).
    on_limiter_error: Literal["open", "closed"] = "open"
    #: Default and largest page size of the read side.
    default_page_size: int = 100
    max_page_size: int = 1000
    #: Bytes of JSON a page may hold; a page always holds at least one item.
    max_page_bytes: int = MAX_PAGE_BYTES
