"""The outgoing webhook for new hand-off requests: JSON POSTed off the request path, signed, retried with backoff.

The receiver checks `X-Xiaoyu-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body with the shared secret.
Deliveries wait in memory only: a restart drops the ones not yet sent (staff still see every request in the queue)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor, wait

log = logging.getLogger("xiaoyu")
SIGNATURE_HEADER = "X-Xiaoyu-Signature"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class Webhook:
    def __init__(self, url: str, secret: str = "", attempts: int = 4, backoff: float = 2.0, timeout: float = 10.0,
                 sleep=time.sleep):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"XIAOYU_REQUESTS_WEBHOOK_URL must be an http(s) URL, got {url!r}")
        self.url = url
        self._secret = secret
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._sleep = sleep
        # One thread: deliveries go out in order, and a slow receiver never takes more than one thread.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def send(self, event: str, payload: dict) -> None:
        """Queue one delivery and return at once."""
        body = json.dumps({"event": event, **payload}, ensure_ascii=False).encode("utf-8")
        with self._lock:
            future = self._pool.submit(self._deliver, event, body)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _deliver(self, event: str, body: bytes) -> bool:
        headers = {"content-type": "application/json; charset=utf-8", "user-agent": "xiaoyu-webhook",
                   "x-xiaoyu-event": event}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        for attempt in range(1, self._attempts + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self._timeout) as response:  # an http(s) URL: checked in __init__
                    if 200 <= response.status < 300:
                        return True
                    reason = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:  # refused, timed out, DNS …
                reason = str(exc)
            if attempt < self._attempts:
                log.warning("webhook %s: attempt %d failed (%s), retrying", event, attempt, reason)
                self._sleep(self._backoff * 2 ** (attempt - 1))
            else:
                log.error("webhook %s: gave up after %d attempts (%s)", event, attempt, reason)
        return False

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the queued deliveries; False on timeout (tests, and a clean shutdown)."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = wait(pending, timeout)
        return not not_done

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
