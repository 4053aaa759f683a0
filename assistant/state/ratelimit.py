"""Per-client limits: one resident (or one script) can't take the CPU from everyone else, and nobody can try
passwords at the speed of the machine.

Moving windows from the `limits` package, in process memory by default: with several worker processes each counts on
its own, which is fine for limits meant to stop floods rather than to bill. With XIAOYU_REDIS_URL they live in Redis
(limits' RedisStorage, whose Lua scripts keep each window atomic), so every host counts against the same windows and
a password guesser gets no more tries by spreading them over hosts. The windows are timed by each host's clock: keep
the hosts' clocks in sync (NTP)."""

from __future__ import annotations

import logging
import time

from redis import RedisError

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.errors import ConfigurationError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger("xiaoyu")
# A login tried while the shared counters can't be read waits this long: staff can't work without Redis anyway, and
# an outage must not become a window for unlimited password guesses.
_OUTAGE_WAIT = 30


def limits_storage(redis_url: str = "", prefix: str = "xiaoyu") -> Storage:
    """Where the windows live: this process's memory without a URL, else Redis under f"{prefix}:limits:…". Checked
    here, so that an unreachable Redis stops the start rather than failing the first question."""
    if not redis_url:
        return MemoryStorage()
    from assistant.state.redis_state import unusable  # the redis client only when configured

    try:
        storage = storage_from_string(redis_url, key_prefix=f"{prefix}:limits", socket_connect_timeout=5,
                                      socket_timeout=10)
    except (ConfigurationError, ValueError) as exc:
        raise unusable(redis_url, exc, " for rate limits") from None  # unchained: the cause quotes the URL
    if not storage.check():
        raise unusable(redis_url, ConnectionError("Redis does not answer a PING"), " for rate limits")
    return storage


def _wait(limiter: MovingWindowRateLimiter, item: RateLimitItem, key: str) -> int:
    reset_at = limiter.get_window_stats(item, key).reset_time
    return max(1, int(reset_at - time.time() + 0.999))


class RateLimiter:
    def __init__(self, per_minute: int, storage: Storage | None = None):
        if per_minute < 1:
            raise ValueError(f"per_minute ({per_minute}) must be >= 1; leave the limiter out to turn limiting off")
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(per_minute, namespace="chat")
        self._limiter = MovingWindowRateLimiter(storage if storage is not None else MemoryStorage())

    def hit(self, client: str) -> int:
        """Count one question from `client`. 0 when it may go ahead, else whole seconds until it may ask again."""
        try:
            if self._limiter.hit(self._item, client):
                return 0
            return _wait(self._limiter, self._item, client)
        except RedisError as exc:
            # Open, not closed: a flood limit must not take every resident's questions down with Redis.
            log.warning("rate limit not counted, Redis unavailable: %s", exc)
            return 0


class LoginThrottle:
    """Failed console logins, counted per account and per client IP over a window of `minutes`. An account (or an
    IP) with that many failures is locked out until the oldest failure leaves the window; a success clears the
    account's count. Per IP the allowance is larger: an office behind one address has several staff."""

    def __init__(self, per_account: int = 5, per_ip: int = 20, minutes: int = 15, storage: Storage | None = None):
        if min(per_account, per_ip, minutes) < 1:
            raise ValueError("login throttle limits must be >= 1")
        self.minutes = minutes
        self._account = RateLimitItemPerMinute(per_account, minutes, namespace="login-account")
        self._ip = RateLimitItemPerMinute(per_ip, minutes, namespace="login-ip")
        self._limiter = MovingWindowRateLimiter(storage if storage is not None else MemoryStorage())

    def locked(self, ip: str, account: str) -> int:
        """0 when a login may be tried, else whole seconds until it may."""
        try:
            for item, key in ((self._account, account), (self._ip, ip)):
                if not self._limiter.test(item, key):
                    return _wait(self._limiter, item, key)
            return 0
        except RedisError as exc:
            log.warning("login refused for now, Redis unavailable: %s", exc)
            return _OUTAGE_WAIT

    def failed(self, ip: str, account: str) -> None:
        try:
            self._limiter.hit(self._account, account)
            self._limiter.hit(self._ip, ip)
        except RedisError as exc:
            log.warning("failed login not counted, Redis unavailable: %s", exc)

    def succeeded(self, account: str) -> None:
        try:
            self._limiter.clear(self._account, account)
        except RedisError as exc:
            log.warning("login count not cleared, Redis unavailable: %s", exc)
