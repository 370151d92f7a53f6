"""Asking a rate limiter from a request: the 429 and its headers, and what to do when it is down.

Every caller of a :class:`~bmserver.Limiter` in the HTTP layer goes through one
:class:`LimiterGate`, so that the operator's choice for an unreachable backend (Redis) is
applied the same way to ingest, reads and the lock-out of key guessing, and logged once per
interval rather than once per request.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

import attrs

import bmcore
from bmserver.http._problems import Problem, ProblemError
from bmserver.limits._contract import Limiter, LimiterUnavailableError

__all__ = ["LimiterGate", "rate_limit_headers", "rate_limit_problem"]

log = logging.getLogger("bmserver")

#: How long a client is told to wait when the limiter is unavailable and the setting is closed.
_UNAVAILABLE_RETRY_AFTER_S: Final = 5
_WARNING_INTERVAL_NS: Final = 10 * 1_000_000_000


def rate_limit_headers(policy: bmcore.RatePolicy, decision: bmcore.Decision) -> dict[str, str]:
    """The RateLimit-Policy and RateLimit headers of draft-ietf-httpapi-ratelimit-headers."""
    return {
        "RateLimit-Policy": f'"default";q={policy.burst};w={policy.window_s}',
        "RateLimit": f'"default";r={decision.remaining};t={decision.reset_s}',
    }


def rate_limit_problem(
    policy: bmcore.RatePolicy, decision: bmcore.Decision, *, what: str = "requests"
) -> ProblemError:
    """The 429 of a denied ``decision``: Retry-After and the RateLimit headers.

    pytest_bm's ``throttle_next`` answers with it too, so that a planned 429 is the real one.

    >>> policy = bmcore.RatePolicy.per_second(1, burst=2)
    >>> denied = bmcore.Decision(allowed=False, remaining=0, retry_after_s=3, reset_s=2)
    >>> error = rate_limit_problem(policy, denied)
    >>> error.status, error.headers["Retry-After"], error.detail
    (429, '3', 'this key sent more than its quota of 2 requests; retry after 3 s')
    """
    return ProblemError(
        Problem.RATE_LIMITED,
        f"this key sent more than its quota of {policy.burst} {what}; "
        f"retry after {decision.retry_after_s} s",
        headers={
            **rate_limit_headers(policy, decision),
            "Retry-After": str(decision.retry_after_s),
        },
    )


@attrs.define
class LimiterGate:
    """Calls limiters; when one's backend cannot be reached, ``on_error`` decides.

    "open" admits (the decision is None) and "closed" answers 503 ``rate_limiter_unavailable``.
    """

    on_error: Literal["open", "closed"]
    # When a backend was last reported unreachable: one warning per interval.
    _last_warning_ns: int | None = attrs.field(default=None, init=False)

    async def decide(
        self, limiter: Limiter, key: str, now_ns: int, cost: int = 1
    ) -> bmcore.Decision | None:
        """The limiter's decision; None when it is unreachable and the setting is "open"."""
        try:
            return await limiter.decide(key, now_ns, cost)
        except LimiterUnavailableError as error:
            self._warn(error, now_ns)
            if self.on_error == "open":
                return None
            raise ProblemError(
                Problem.RATE_LIMITER_UNAVAILABLE,
                "the rate limiter cannot be reached, so no request is admitted; retry later",
                headers={"Retry-After": str(_UNAVAILABLE_RETRY_AFTER_S)},
            ) from None

    async def refund(self, limiter: Limiter, key: str, now_ns: int, cost: int = 1) -> None:
        """Give tokens back; an unreachable backend only costs the client a token it paid."""
        try:
            await limiter.refund(key, now_ns, cost)
        except LimiterUnavailableError as error:
            self._warn(error, now_ns)

    async def admit(self, limiter: Limiter, key: str, now_ns: int, *, what: str) -> dict[str, str]:
        """Charge one request of ``what`` to ``key``: its RateLimit headers, or a 429 problem."""
        decision = await self.decide(limiter, key, now_ns)
        if decision is None:  # unreachable, and the setting is to fail open
            return {}
        if not decision.allowed:
            raise rate_limit_problem(limiter.policy, decision, what=what)
        return rate_limit_headers(limiter.policy, decision)

    def _warn(self, error: LimiterUnavailableError, now_ns: int) -> None:
        last = self._last_warning_ns
        if last is not None and now_ns - last < _WARNING_INTERVAL_NS:
            return  # one line per interval, not one per request, while it lasts
        self._last_warning_ns = now_ns
        admitted = (
            "admitting requests unlimited"
            if self.on_error == "open"
            else "refusing requests with 503"
        )
        log.warning("rate limiter unavailable (%s): %s", error, admitted)
