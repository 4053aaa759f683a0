"""Per-client limits: one resident (or one script) can't take the CPU from everyone else, and nobody can try
passwords at the speed of the machine.

Moving windows in process memory, from the `limits` package: with several worker processes each counts on its own,
which is fine for limits meant to stop floods rather than to bill."""

from __future__ import annotations

import time

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


def _wait(limiter: MovingWindowRateLimiter, item: RateLimitItem, key: str) -> int:
    reset_at = limiter.get_window_stats(item, key).reset_time
    return max(1, int(reset_at - time.time() + 0.999))


class RateLimiter:
    def __init__(self, per_minute: int):
        if per_minute < 1:
            raise ValueError(f"per_minute ({per_minute}) must be >= 1; leave the limiter out to turn limiting off")
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, client: str) -> int:
        """Count one question from `client`. 0 when it may go ahead, else whole seconds until it may ask again."""
        if self._limiter.hit(self._item, client):
            return 0
        return _wait(self._limiter, self._item, client)


class LoginThrottle:
    """Failed console logins, counted per account and per client IP over a window of `minutes`. An account (or an
    IP) with that many failures is locked out until the oldest failure leaves the window; a success clears the
    account's count. Per IP the allowance is larger: an office behind one address has several staff."""

    def __init__(self, per_account: int = 5, per_ip: int = 20, minutes: int = 15):
        if min(per_account, per_ip, minutes) < 1:
            raise ValueError("login throttle limits must be >= 1")
        self.minutes = minutes
        self._account = RateLimitItemPerMinute(per_account, minutes, namespace="login-account")
        self._ip = RateLimitItemPerMinute(per_ip, minutes, namespace="login-ip")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def locked(self, ip: str, account: str) -> int:
        """0 when a login may be tried, else whole seconds until it may."""
        for item, key in ((self._account, account), (self._ip, ip)):
            if not self._limiter.test(item, key):
                return _wait(self._limiter, item, key)
        return 0

    def failed(self, ip: str, account: str) -> None:
        self._limiter.hit(self._account, account)
        self._limiter.hit(self._ip, ip)

    def succeeded(self, account: str) -> None:
        self._limiter.clear(self._account, account)
