"""Rate-limit backends: bmcore's limiter in memory (one process), or Redis (many instances)."""

from __future__ import annotations

from typing import Protocol

from bmcore import Decision, KeyedLimiter, RatePolicy

__all__ = ["Limiter", "LimiterUnavailableError", "MemoryLimiter"]


class LimiterUnavailableError(Exception):
    """The limiter's backend (Redis) cannot be reached; the app's setting decides what then."""


class Limiter(Protocol):
    """Decides requests per key under one policy."""

    @property
    def policy(self) -> RatePolicy:
        """The policy every key is limited by (shown in the RateLimit-Policy header)."""
        ...

    async def decide(self, key: str, now_ns: int, cost: int = 1) -> Decision:
        """Decide one request of ``cost`` tokens for ``key`` at monotonic time ``now_ns``."""
        ...

    async def refund(self, key: str, now_ns: int, cost: int = 1) -> None:
        """Give back ``cost`` tokens that an admitted :meth:`decide` took (bmcore.refund)."""
        ...

    async def reset(self) -> None:
        """Forget every key's state."""
        ...

    async def close(self) -> None:
        """Release connections; the app's lifespan calls it at shutdown, after the store."""
        ...


class MemoryLimiter:
    """bmcore's KeyedLimiter behind the async Limiter interface, in this process's memory."""

    def __init__(self, policy: RatePolicy, *, max_keys: int = 100_000) -> None:
        self._limiter: KeyedLimiter[str] = KeyedLimiter(policy, max_keys=max_keys)

    @property
    def policy(self) -> RatePolicy:
        """The policy every key is limited by."""
        return self._limiter.policy

    async def decide(self, key: str, now_ns: int, cost: int = 1) -> Decision:
        """Decide at once: the state is in memory."""
        return self._limiter.decide(key, now_ns, cost)

    async def refund(self, key: str, now_ns: int, cost: int = 1) -> None:
        """Give the tokens back at once: the state is in memory."""
        self._limiter.refund(key, now_ns, cost)

    async def reset(self) -> None:
        """Forget every key's state."""
        self._limiter.clear()

    async def close(self) -> None:
        """Nothing to release: the state is in memory."""
