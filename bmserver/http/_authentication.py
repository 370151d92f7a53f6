"""Who is asking: a request's API key, and the lock-out that keeps keys from being guessed.

Failed authentications are counted per client address in a :class:`~bmserver.Limiter` (the
settings' ``auth_failure_policy``). A try is charged *before* its key is looked up and refunded
once the key proves valid, so that counting and checking are one atomic step of the limiter:
guesses sent all at once from one address get at most the policy's burst of answers that are
not 429. (Checking before the lookup and recording the failure after it let 1,000 concurrent
guesses through.) A full table of addresses refuses a new address with 429, as the rate limiter
does for keys, rather than leaving its failures uncounted.

Charging every request would make a busy client behind one address (several scripts behind a
NAT, say) lock itself out while its own valid requests are in flight on PostgreSQL and Redis.
So an (address, key) pair that authenticated a moment ago is not charged: it is no guess, the
address has shown that it holds the key. The key is still looked up on every request, so a
revocation counts from the next request on. And a try that finds the address's budget taken
while tries of that address are still being looked up in this process waits for their outcome
instead of answering 429 at once: a valid key gives its token back, and only failures lock out.
"""

from __future__ import annotations

import asyncio
from typing import Final

import attrs
from starlette.requests import Request

import bmcore
from bmserver._clock import Clock
from bmserver._settings import Settings
from bmserver.http._gate import LimiterGate
from bmserver.http._problems import Problem, ProblemError
from bmserver.limits._contract import Limiter
from bmserver.storage._contract import ApiKeyRecord, Scope, Store

__all__ = ["WWW_AUTHENTICATE", "Authenticator", "KnownClients", "supplied_key"]

#: RFC 9110 requires a challenge on every 401; this one names the header the key goes in.
WWW_AUTHENTICATE: Final = 'ApiKey header="X-Api-Key"'
_CHALLENGE: Final = {"WWW-Authenticate": WWW_AUTHENTICATE}

_NS_PER_S: Final = 1_000_000_000


class KnownClients:
    """(address, key hash) pairs that authenticated in the last ``ttl_ns``; at most ``max_pairs``.

    >>> known = KnownClients(ttl_ns=10, max_pairs=2)
    >>> known.remember("10.0.0.1", "sha256:aa", now_ns=0)
    >>> known.knows("10.0.0.1", "sha256:aa", now_ns=9), known.knows("10.0.0.1", "sha256:aa", 10)
    (True, False)
    """

    def __init__(self, *, ttl_ns: int = 60 * _NS_PER_S, max_pairs: int = 10_000) -> None:
        self.ttl_ns: Final = ttl_ns
        self.max_pairs: Final = max_pairs
        # Insertion order is the order of last success: the front is the first to go.
        self._until: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        """The number of pairs held, expired ones included until they are pushed out."""
        return len(self._until)

    def knows(self, address: str, key_hash: str, now_ns: int) -> bool:
        """Whether this pair authenticated within the time-to-live."""
        until = self._until.get((address, key_hash))
        return until is not None and now_ns < until

    def remember(self, address: str, key_hash: str, now_ns: int) -> None:
        """Record a success; the oldest pair makes room when the table is full."""
        pair = (address, key_hash)
        self._until.pop(pair, None)
        self._until[pair] = now_ns + self.ttl_ns
        if len(self._until) > self.max_pairs:
            del self._until[next(iter(self._until))]

    def forget(self, address: str, key_hash: str) -> None:
        """Drop a pair whose key stopped working (it was revoked)."""
        self._until.pop((address, key_hash), None)


class _InFlight:
    """Charged tries per address whose lookup has not ended, and a way to wait for one to end."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._ended: dict[str, asyncio.Event] = {}

    def started(self, address: str) -> None:
        self._counts[address] = self._counts.get(address, 0) + 1

    def pending(self, address: str) -> bool:
        return address in self._counts

    def settled(self, address: str) -> None:
        left = self._counts[address] - 1
        if left:
            self._counts[address] = left
        else:
            del self._counts[address]
        ended = self._ended.pop(address, None)
        if ended is not None:
            ended.set()  # every waiter charges again; the next wait makes a new event

    async def wait(self, address: str) -> None:
        ended = self._ended.get(address)
        if ended is None:
            ended = self._ended[address] = asyncio.Event()
        await ended.wait()


@attrs.define
class Authenticator:
    """Turns a request's ``X-Api-Key`` into its key record, or a 401, 403 or 429 problem."""

    settings: Settings
    store: Store
    clock: Clock
    #: Failed authentications per client address.
    failures: Limiter
    gate: LimiterGate
    known: KnownClients = attrs.field(factory=KnownClients)
    _in_flight: _InFlight = attrs.field(factory=_InFlight, init=False)

    async def authenticate(
        self, request: Request, scope: Scope, *, bearer: bool = False
    ) -> ApiKeyRecord:
        """The key record of the request's key, or a 401/403/429 problem.

        The key comes in ``X-Api-Key``; with ``bearer`` (GET /metrics only: what Prometheus's
        ``authorization`` setting sends) also as ``Authorization: Bearer <key>``. Everywhere
        else a key in any other place is refused like no key at all, so that a client's mistake
        shows at once rather than in one endpoint only.
        """
        address = request.client.host if request.client else "unknown"
        now_ns = self.clock.monotonic_ns()
        supplied = supplied_key(request, bearer=bearer)
        if not supplied:
            await self._refuse_if_locked_out(address, now_ns)
            detail = "send your API key in the X-Api-Key header"
            if bearer:
                detail += " or as Authorization: Bearer"
            if "api_key" in request.query_params or "apiKey" in request.query_params:
                detail += "; keys in the URL end up in logs and are not accepted"
            raise ProblemError(Problem.MISSING_API_KEY, detail, headers=_CHALLENGE)
        key_hash = bmcore.hash_api_key(supplied, secret=self.settings.key_secret)
        known = self.known.knows(address, key_hash, now_ns)
        # Charged before the lookup: an address that failed too often is refused before its
        # key is even looked at, so a guess that happens to be right is not told apart from a
        # wrong one.
        charged = not known and await self._charge(address)
        try:
            record = await self._look_up(supplied, key_hash)
        except ProblemError:
            if known:  # revoked since: a failure like any other, counted now
                self.known.forget(address, key_hash)
                await self.gate.decide(self.failures, address, self.clock.monotonic_ns(), 1)
            raise
        else:
            if charged:
                await self.gate.refund(self.failures, address, self.clock.monotonic_ns())
            self.known.remember(address, key_hash, now_ns)
        finally:
            if charged:
                self._in_flight.settled(address)
        request.state.key_prefix = record.prefix
        if scope not in record.scopes:
            raise ProblemError(
                Problem.INSUFFICIENT_SCOPE,
                f"this key ({record.prefix}...) lacks the {scope.value!r} scope; create a key "
                f"with it: bmserver keys create --scope {scope.value}",
            )
        return record

    async def _charge(self, address: str) -> bool:
        """Charge one try to ``address``: whether a token was taken, or a 429 problem.

        No token is taken when the limiter is unreachable and the setting is "open".
        """
        while True:
            now_ns = self.clock.monotonic_ns()
            decision = await self.gate.decide(self.failures, address, now_ns, 1)
            if decision is None:
                return False
            if decision.allowed:
                self._in_flight.started(address)
                return True
            if not self._in_flight.pending(address):
                raise _too_many_failures(decision.retry_after_s)
            # Tokens are held by tries of this address still being looked up: their outcome
            # decides, and a valid key gives its token back.
            await self._in_flight.wait(address)

    async def _look_up(self, supplied: str, key_hash: str) -> ApiKeyRecord:
        try:
            bmcore.check_api_key_format(supplied)
        except bmcore.ApiKeyFormatError as error:
            raise ProblemError(Problem.INVALID_API_KEY, str(error), headers=_CHALLENGE) from None
        record = await self.store.find_api_key(key_hash)
        if record is None:
            raise ProblemError(
                Problem.INVALID_API_KEY,
                "this API key is unknown or was revoked; check the key",
                headers=_CHALLENGE,
            )
        return record

    async def _refuse_if_locked_out(self, address: str, now_ns: int) -> None:
        # A peek: sending no key guesses nothing, but a locked-out address hears 429 whatever
        # it sends.
        standing = await self.gate.decide(self.failures, address, now_ns, 0)
        if standing is not None and standing.remaining < 1:
            # At most one interval until the next try is earned.
            raise _too_many_failures(-(-self.failures.policy.interval_ns // _NS_PER_S))


def _too_many_failures(retry_after_s: int) -> ProblemError:
    wait = max(1, retry_after_s)
    return ProblemError(
        Problem.RATE_LIMITED,
        f"too many failed authentications from this address; retry after {wait} s",
        headers={"Retry-After": str(wait)},
    )


def supplied_key(request: Request, *, bearer: bool) -> str | None:
    """The key a request carries: ``X-Api-Key``, else (if ``bearer``) a Bearer token."""
    key = request.headers.get("x-api-key")
    if key or not bearer:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.casefold() == "bearer" and token.strip():
        return token.strip()
    return None
