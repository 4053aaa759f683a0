"""Per-client question limit: one resident (or one script) can't take the CPU from everyone else.

A moving window in process memory, from the `limits` package: with several worker processes each counts on its
own, which is fine for a limit meant to stop floods rather than to bill."""

from __future__ import annotations

import time

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


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
        reset_at = self._limiter.get_window_stats(self._item, client).reset_time
        return max(1, int(reset_at - time.time() + 0.999))
