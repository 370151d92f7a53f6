"""A rate limiter in Redis, shared by every bmserver instance: bmcore's GCRA as one Lua script.

Why a script: the read-decide-write of GCRA must be atomic across instances, and one EVALSHA
is one round trip. Why Redis's clock (``TIME``) and not the caller's: instances whose clocks
disagree would otherwise disagree on every bucket. Why a TTL on every key: a bucket that has
refilled holds no state, exactly as in :class:`bmcore.KeyedLimiter`, so idle keys cost nothing.

Lua numbers are doubles, exact only below 2**53, and nanoseconds since 1970 are beyond that:
the script keeps times as whole seconds plus nanoseconds, and only ever computes *offsets from
now*, which are at most ``burst * interval`` and checked to be exact. ``tests/server/
test_redis_limiter.py`` checks with hypothesis that its decisions equal :func:`bmcore.decide`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

from bmcore import Decision, RatePolicy
from bmserver.limits._contract import LimiterUnavailableError

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisLimiter", "connect_redis"]

_NS_PER_S: Final = 1_000_000_000
#: The largest integer a Lua number (a double) holds exactly.
_EXACT_LIMIT: Final = 2**53

# Whole-number division that stays exact on Lua's doubles, for both scripts.
_DIVISION: Final = """
local function floordiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function ceildiv(a, b) return -floordiv(-a, b) end
"""

# KEYS[1]: the bucket. ARGV: interval_ns, burst, cost, and for tests only now_s and now_ns.
# The state is a hash {s, n}: the theoretical arrival time as seconds and nanoseconds.
# Returns {allowed (0/1), remaining, retry_after_s, reset_s}, as bmcore.decide() does.
GCRA_SCRIPT: Final = (
    _DIVISION
    + """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now_s, now_ns
if ARGV[4] then
  now_s, now_ns = tonumber(ARGV[4]), tonumber(ARGV[5])
else
  local time = redis.call('TIME')
  now_s, now_ns = tonumber(time[1]), tonumber(time[2]) * 1000
end
local capacity = burst * interval

-- start: how far max(TAT, now) lies ahead of now, in nanoseconds.
local start = 0
local stored = redis.call('HMGET', KEYS[1], 's', 'n')
if stored[1] then
  local ahead = (tonumber(stored[1]) - now_s) * 1e9 + (tonumber(stored[2]) - now_ns)
  if ahead > 0 then start = ahead end
end

local backlog = start + cost * interval
if backlog <= capacity then
  if cost > 0 then
    local total = now_ns + backlog
    local carry = floordiv(total, 1e9)
    redis.call('HSET', KEYS[1], 's', now_s + carry, 'n', total - carry * 1e9)
    -- Gone a minute after the bucket is full again: a full bucket needs no state. The grace
    -- keeps the state of decisions made at explicit times (tests), which Redis's TTL clock
    -- does not follow; a stale state past its time reads as a full bucket anyway.
    redis.call('PEXPIRE', KEYS[1], ceildiv(backlog, 1e6) + 60000)
  elseif start == 0 and stored[1] then
    redis.call('DEL', KEYS[1])
  end
  return {1, floordiv(capacity - backlog, interval), 0, ceildiv(backlog, 1e9)}
end
-- Denied: the state is unchanged, so a denied request costs nothing.
local remaining = floordiv(capacity - start, interval)
if remaining < 0 then remaining = 0 end
local retry = ceildiv(backlog - capacity, 1e9)
if retry < 1 then retry = 1 end
return {0, remaining, retry, ceildiv(start, 1e9)}
"""
)

# KEYS[1]: the bucket. ARGV: interval_ns, cost, and for tests only now_s and now_ns.
# bmcore.refund(): the TAT moves back by cost * interval; a bucket that is full again loses its
# state. Offsets from now stay below burst * interval, as in GCRA_SCRIPT, so they are exact.
REFUND_SCRIPT: Final = (
    _DIVISION
    + """
local interval = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local now_s, now_ns
if ARGV[3] then
  now_s, now_ns = tonumber(ARGV[3]), tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now_s, now_ns = tonumber(time[1]), tonumber(time[2]) * 1000
end
local stored = redis.call('HMGET', KEYS[1], 's', 'n')
if not stored[1] then return 0 end
local ahead = (tonumber(stored[1]) - now_s) * 1e9 + (tonumber(stored[2]) - now_ns) - cost * interval
if ahead <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local total = now_ns + ahead
local carry = floordiv(total, 1e9)
redis.call('HSET', KEYS[1], 's', now_s + carry, 'n', total - carry * 1e9)
redis.call('PEXPIRE', KEYS[1], ceildiv(ahead, 1e6) + 60000)
return 1
"""
)


#: Seconds to connect to Redis and to wait for an answer: a rate limit decision must be quick,
#: and a Redis that does not answer in time is treated as unreachable.
REDIS_TIMEOUT_S: Final = 0.5


def connect_redis(url: str, *, timeout_s: float = REDIS_TIMEOUT_S) -> redis.asyncio.Redis:
    """A client for ``url`` that fails fast: short time-outs, one immediate retry, no backoff.

    redis-py's default retries with exponential backoff for seconds, which would hold every
    request that long while Redis is down; the app's on_limiter_error setting decides instead.
    """
    import redis.asyncio  # noqa: PLC0415 - only a server started with --redis needs the driver
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    # redis-py types from_url's options as **kwargs: Any.
    return redis.asyncio.Redis.from_url(  # pyright: ignore[reportUnknownMemberType]
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1),
    )


class RedisLimiter:
    """Decides requests per key in Redis, so that N instances share one quota per key.

    ``now_ns`` passed to :meth:`decide` is ignored: Redis's own clock decides, so that
    instances with skewed clocks agree. Errors reaching Redis raise
    :class:`LimiterUnavailableError`; what to do then is the app's setting, not the limiter's.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        policy: RatePolicy,
        *,
        namespace: str = "bm:rate",
        owns_client: bool = False,
    ) -> None:
        if policy.burst * policy.interval_ns >= _EXACT_LIMIT:
            msg = (
                f"burst * interval ({policy.burst} * {policy.interval_ns} ns) must be below 2**53"
                " ns (about 104 days) for Redis's Lua numbers to stay exact; lower the burst"
            )
            raise ValueError(msg)
        self._client = client
        self._owns_client = owns_client
        self._policy = policy
        self._namespace = namespace
        # Sent by its SHA (EVALSHA); redis-py loads it once if the server does not know it.
        self._script = client.register_script(GCRA_SCRIPT)
        self._refund_script = client.register_script(REFUND_SCRIPT)

    @property
    def policy(self) -> RatePolicy:
        """The policy every key is limited by."""
        return self._policy

    async def decide(self, key: str, now_ns: int, cost: int = 1) -> Decision:  # noqa: ARG002 - Redis's clock decides
        """Decide one request on Redis's clock; LimiterUnavailableError if Redis is unreachable."""
        return await self._run(key, cost, ())

    async def decide_at(self, key: str, at_ns: int, cost: int = 1) -> Decision:
        """Decide at ``at_ns`` nanoseconds since the epoch instead of Redis's clock (for tests)."""
        return await self._run(key, cost, divmod(at_ns, _NS_PER_S))

    async def refund(self, key: str, now_ns: int, cost: int = 1) -> None:  # noqa: ARG002 - Redis's clock decides
        """Give back ``cost`` tokens on Redis's clock; LimiterUnavailableError if unreachable."""
        await self._run_refund(key, cost, ())

    async def refund_at(self, key: str, at_ns: int, cost: int = 1) -> None:
        """Refund at ``at_ns`` nanoseconds since the epoch instead of Redis's clock (for tests)."""
        await self._run_refund(key, cost, divmod(at_ns, _NS_PER_S))

    async def reset(self) -> None:
        """Forget every key's state in this namespace."""
        pattern = f"{self._namespace}:*"
        try:
            cursor = 0
            while True:  # SCAN, not KEYS: it does not block Redis for the whole keyspace
                # redis-py leaves the reply of scan() untyped (a cursor and a list of names).
                cursor, names = await self._client.scan(  # pyright: ignore[reportUnknownMemberType]
                    cursor, match=pattern, count=1000
                )
                if names:
                    await self._client.delete(*names)
                if cursor == 0:
                    break
        except Exception as error:
            raise LimiterUnavailableError(str(error)) from error

    async def close(self) -> None:
        """Close the Redis client if this limiter owns it (``owns_client=True``)."""
        if self._owns_client:
            await self._client.aclose()

    def _check_cost(self, cost: int) -> None:
        if not 0 <= cost <= self._policy.burst:
            msg = f"cost must be between 0 and the burst ({self._policy.burst}), got {cost}"
            raise ValueError(msg)

    async def _run_refund(self, key: str, cost: int, at: tuple[int, ...]) -> None:
        self._check_cost(cost)
        try:
            await self._refund_script(
                keys=[f"{self._namespace}:{key}"], args=[self._policy.interval_ns, cost, *at]
            )
        except Exception as error:  # connection refused, timeout, READONLY, OOM...
            raise LimiterUnavailableError(f"Redis: {error}") from error

    async def _run(self, key: str, cost: int, at: tuple[int, ...]) -> Decision:
        policy = self._policy
        self._check_cost(cost)
        try:
            # redis-py leaves Script.__call__ unannotated; name the reply's type here.
            reply: object = await self._script(
                keys=[f"{self._namespace}:{key}"],
                args=[policy.interval_ns, policy.burst, cost, *at],
            )
        except Exception as error:  # connection refused, timeout, READONLY, OOM...
            raise LimiterUnavailableError(f"Redis: {error}") from error
        allowed, remaining, retry_after_s, reset_s = _four_integers(reply)
        return Decision(bool(allowed), remaining, retry_after_s, reset_s)


def _four_integers(reply: object) -> tuple[int, int, int, int]:
    """The GCRA script's reply, or LimiterUnavailableError if the server sent anything else."""
    if isinstance(reply, list | tuple):
        values = cast("list[object] | tuple[object, ...]", reply)
        if len(values) == 4 and all(isinstance(value, int) for value in values):
            first, second, third, fourth = cast("tuple[int, int, int, int]", tuple(values))
            return first, second, third, fourth
    raise LimiterUnavailableError(f"Redis: the rate-limit script replied {reply!r}")
