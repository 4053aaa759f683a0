"""The outgoing webhook for new hand-off requests: JSON POSTed off the request path, signed, retried with backoff, and
durable: the request store is its outbox, so that a restart, a crash or a receiver down for hours loses nothing.

The receiver checks `X-Xiaoyu-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body with the shared secret.
Delivery is at least once: a process that dies after the receiver accepted a POST but before it recorded that sends it
again, so receivers deduplicate on `X-Xiaoyu-Delivery` (the request id, also the body's "id"): it is the same on every
attempt, from every process.

How it stays durable (requests.py keeps the state, both stores alike):
- a request opened with a webhook configured is stored undelivered (`notified` false) before anything is sent;
- to send, a process first claims it for a lease (an atomic "claim until T" in SQLite, a Lua script in Redis), so of
  several processes on one store one sends it; a process that dies mid-send leaves the lease to run out;
- a round of `attempts` POSTs either marks it delivered or gives the claim back with a next round later;
- the Webhook's one thread sweeps the outbox at start (every undelivered one younger than `max_age`, at once) and every
  `sweep_seconds` (those whose next round is due)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from assistant.state.requests import HelpRequest, Requests

log = logging.getLogger("xiaoyu")
SIGNATURE_HEADER = "X-Xiaoyu-Signature"
DELIVERY_HEADER = "X-Xiaoyu-Delivery"
EVENT = "request.opened"
DAY = 24 * 3600.0
_SWEEP = object()  # a queue item: look through the outbox


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class Webhook:
    """Notifies `url` of each new request in `requests`, whose body `payload(request)` gives.

    One thread: deliveries go out in order, and a slow receiver never takes more than one thread. It starts with the
    Webhook, as the question log's writer does; close() stops it (a claim it held is given back)."""

    MAX_RETRY = 3600.0  # the longest wait between two rounds for a receiver that stays down

    def __init__(self, url: str, requests: Requests, payload: Callable[[HelpRequest], dict[str, Any]],
                 secret: str = "", attempts: int = 4, backoff: float = 2.0, timeout: float = 10.0, *,
                 max_age: float = 7 * DAY, sweep_seconds: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"XIAOYU_REQUESTS_WEBHOOK_URL must be an http(s) URL, got {url!r}")
        if sweep_seconds <= 0:
            raise ValueError(f"sweep_seconds ({sweep_seconds}) must be > 0")
        self.url = url
        self._requests = requests
        self._payload = payload
        self._secret = secret
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._max_age = max_age
        self._sweep_seconds = sweep_seconds
        # Longer than a whole round can take (every attempt timing out, every backoff waited), so that a live sender
        # never loses its claim; a dead one's runs out a minute after that.
        self._lease = attempts * timeout + backoff * (2 ** (attempts - 1) - 1) + 60.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0  # items queued or being worked on (drain waits for none)
        self._thread = threading.Thread(target=self._run, name="xiaoyu-webhook", daemon=True)
        self._put(_SWEEP)  # the start sweep, before any request this process opens
        self._thread.start()

    def notify(self, request: HelpRequest) -> None:
        """Send the notification of `request` (stored with notify=True) soon, off the caller's thread."""
        self._put(request.id)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the queued work is done, the start sweep included; False on timeout (tests, a clean stop)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self) -> None:
        """Stop the thread without waiting for it: a round in progress stops at its next backoff and gives its claim
        back, so that another process (or the next start) sends it at once."""
        self._stop.set()
        self._queue.put(None)

    # ---- the thread --------------------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        with self._idle:
            self._busy += 1
        self._queue.put(item)

    def _run(self) -> None:
        start, next_sweep = True, time.monotonic() + self._sweep_seconds
        while not self._stop.is_set():
            if time.monotonic() >= next_sweep:  # checked first: a steady stream of new requests must not starve it
                item, next_sweep = _SWEEP, time.monotonic() + self._sweep_seconds
                with self._idle:
                    self._busy += 1
            else:
                try:
                    item = self._queue.get(timeout=next_sweep - time.monotonic())
                except queue.Empty:
                    continue
            if item is None:  # close()
                return
            try:
                if item is _SWEEP:
                    self._sweep(due_only=not start)
                    start = False
                else:
                    self._send(item, due_only=True)
            except Exception:  # a store outage must not stop the thread, and every later notification with it
                log.exception("webhook: the outbox could not be read or updated; retrying at the next sweep")
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _sweep(self, due_only: bool) -> None:
        """Send what waits in the outbox, oldest first. At start, all of it (due_only False): a restart resends at
        once. A failed round ends the sweep: the receiver is down, and the next sweep tries again."""
        for request in self._requests.unnotified(self._max_age):
            if self._stop.is_set() or self._send(request.id, due_only) is False:
                return

    def _send(self, request_id: str, due_only: bool) -> bool | None:
        """One round for one request: None if it was not ours to send (delivered, or claimed elsewhere)."""
        claimed = self._requests.claim_notification(request_id, self._lease, due_only)
        if claimed is None:
            return None
        body = json.dumps({"event": EVENT, **self._payload(claimed)}, ensure_ascii=False).encode("utf-8")
        delivered, attempts = self._deliver(request_id, body)
        if delivered:
            self._requests.mark_notified(request_id, attempts)
            return True
        # Stopped mid-round: give it back for the next start. Else wait longer after each failed round, up to an hour.
        rounds = (claimed.notify_attempts + attempts) // self._attempts
        retry_in = 0.0 if self._stop.is_set() else min(self.MAX_RETRY, self._sweep_seconds * 2 ** min(rounds - 1, 16))
        self._requests.release_notification(request_id, claimed.notify_lease, attempts, retry_in)
        return False

    def _deliver(self, request_id: str, body: bytes) -> tuple[bool, int]:
        """POST `body` up to `attempts` times: (accepted, POSTs made)."""
        headers = {"content-type": "application/json; charset=utf-8", "user-agent": "xiaoyu-webhook",
                   "x-xiaoyu-event": EVENT, DELIVERY_HEADER: request_id}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        for attempt in range(1, self._attempts + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self._timeout) as response:  # an http(s) URL: checked in __init__
                    if 200 <= response.status < 300:
                        return True, attempt
                    reason = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:  # refused, timed out, DNS …
                reason = str(exc)
            if attempt < self._attempts:
                log.warning("webhook %s for request %s: attempt %d failed (%s), retrying", EVENT, request_id, attempt,
                            reason)
                if self._stop.wait(self._backoff * 2 ** (attempt - 1)):
                    return False, attempt
            else:
                log.error("webhook %s for request %s: round of %d attempts failed (%s); it stays in the outbox",
                          EVENT, request_id, attempt, reason)
        return False, self._attempts
