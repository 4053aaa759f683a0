"""Hand-off requests (转人工 / 留言), persisted in SQLite: what the resident wrote, how to reach them, the
conversation that led there, and the staff reply.

A request belongs to the session key it was opened from ("web:<id>", "wechat:<openid>"): the resident reads it by
presenting that session, so the session id is the capability and the request id alone reveals nothing.

A request opened while a webhook is configured also waits in an outbox until the webhook accepts its notification
(webhook.py): `notified` says whether it has, and a claim (`notify_lease`, a time) lets one process at a time send it.

`Requests` is the interface; `RequestStore` (SQLite, one host) and `redis_state.RedisRequestStore` (one queue for
several hosts) implement it, and build_services() picks one."""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from assistant.state.sqlite import SQLiteFile
from assistant.types import RequestStatus, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    channel TEXT NOT NULL,
    session_key TEXT NOT NULL,
    answer_id TEXT,
    message TEXT NOT NULL,
    contact TEXT NOT NULL DEFAULT '',
    history TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    reply TEXT NOT NULL DEFAULT '',
    delivered INTEGER NOT NULL DEFAULT 0  -- the reply reached a WeChat resident (pushed or on the next message)
);
CREATE INDEX IF NOT EXISTS requests_by_status ON requests(status, created_at);
CREATE INDEX IF NOT EXISTS requests_by_session ON requests(session_key);
"""
# Columns added after the first release. Added with ALTER TABLE when missing, so older request files keep working.
_ADDED_COLUMNS = {
    # The webhook accepted the notification of this request, or none was due: no webhook was configured when it was
    # opened, or it predates the outbox (its one in-memory delivery was tried then; resending now could duplicate).
    "notified": "INTEGER NOT NULL DEFAULT 1",
    "notify_attempts": "INTEGER NOT NULL DEFAULT 0",  # POSTs made so far
    "notify_after": "REAL NOT NULL DEFAULT 0",  # after a failed round: the next round not before (unix seconds)
    "notify_lease": "REAL NOT NULL DEFAULT 0",  # a process is sending it until then; its value is the claim's token
}


@dataclass(frozen=True)
class HelpRequest:
    id: str
    created_at: float
    updated_at: float
    channel: str
    session_key: str
    answer_id: str | None
    message: str
    contact: str
    history: tuple[Turn, ...]
    status: RequestStatus
    reply: str
    delivered: bool  # the staff reply reached a WeChat resident
    notified: bool = True  # the webhook accepted the notification of this request (or none was due)
    notify_attempts: int = 0
    notify_after: float = 0.0
    notify_lease: float = 0.0


class Requests(Protocol):
    def add(self, channel: str, session_key: str, message: str, contact: str, history: list[Turn],
            answer_id: str | None = None, notify: bool = False) -> HelpRequest: ...
    def get(self, request_id: str) -> HelpRequest | None: ...
    def owned(self, request_id: str, session_key: str) -> HelpRequest | None: ...
    def queue(self, status: RequestStatus | None = None, limit: int = 200) -> list[HelpRequest]: ...
    def reply(self, request_id: str, reply: str, status: RequestStatus) -> HelpRequest | None: ...
    def undelivered(self, session_key: str) -> list[HelpRequest]: ...
    def mark_delivered(self, request_id: str, updated_at: float) -> bool: ...
    def purge_closed(self, before: float) -> int: ...
    # The webhook's outbox: see RequestStore for what each one promises.
    def unnotified(self, max_age: float, limit: int = 100) -> list[HelpRequest]: ...
    def claim_notification(self, request_id: str, lease: float, due_only: bool = True) -> HelpRequest | None: ...
    def mark_notified(self, request_id: str, attempts: int) -> bool: ...
    def release_notification(self, request_id: str, lease_token: float, attempts: int, retry_in: float) -> bool: ...


def owned_by(request: HelpRequest | None, session_key: str) -> HelpRequest | None:
    """`request` if `session_key` opened it, else None; compared in constant time, so that timing reveals nothing."""
    if request is None or not hmac.compare_digest(request.session_key.encode(), session_key.encode()):
        return None
    return request


class RequestStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self._db = SQLiteFile(path, _SCHEMA)
        self._clock = clock
        self._migrate()

    def _migrate(self) -> None:
        self._db.add_columns("requests", _ADDED_COLUMNS)
        with self._db.connect() as db:
            # After the columns. Partial: the outbox is the few undelivered ones, not the whole history.
            db.execute("CREATE INDEX IF NOT EXISTS requests_unnotified ON requests(created_at) WHERE notified = 0")

    def add(self, channel: str, session_key: str, message: str, contact: str, history: list[Turn],
            answer_id: str | None = None, notify: bool = False) -> HelpRequest:
        """A new open request; with `notify`, its webhook notification waits in the outbox until mark_notified."""
        request_id = secrets.token_urlsafe(9)
        now = self._clock()
        turns = json.dumps([{"role": t.role, "content": t.content} for t in history], ensure_ascii=False)
        with self._db.connect() as db:
            db.execute("INSERT INTO requests (id, created_at, updated_at, channel, session_key, answer_id, message,"
                       " contact, history, status, notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (request_id, now, now, channel, session_key, answer_id, message, contact, turns,
                        RequestStatus.OPEN.value, 0 if notify else 1))
        found = self.get(request_id)
        assert found is not None
        return found

    def get(self, request_id: str) -> HelpRequest | None:
        with self._db.connect() as db:
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return _request(row) if row else None

    def owned(self, request_id: str, session_key: str) -> HelpRequest | None:
        """The request if `session_key` opened it, else None (the same answer as for an unknown id)."""
        return owned_by(self.get(request_id), session_key)

    def queue(self, status: RequestStatus | None = None, limit: int = 200) -> list[HelpRequest]:
        """Oldest first: a queue is worked from its front."""
        where, args = ("WHERE status = ?", (status.value,)) if status else ("", ())
        with self._db.connect() as db:
            rows = db.execute(f"SELECT * FROM requests {where} ORDER BY created_at, id LIMIT ?",
                              (*args, limit)).fetchall()
        return [_request(r) for r in rows]

    def reply(self, request_id: str, reply: str, status: RequestStatus) -> HelpRequest | None:
        """Set the reply and status; a changed reply is undelivered again. None for an unknown id."""
        with self._db.connect() as db:
            # SET reads the row's old values: the delivered flag survives closing with the same reply.
            cur = db.execute("UPDATE requests SET delivered = CASE WHEN reply = ? THEN delivered ELSE 0 END,"
                             " reply = ?, status = ?, updated_at = ? WHERE id = ?",
                             (reply, reply, status.value, self._clock(), request_id))
            if cur.rowcount != 1:
                return None
        return self.get(request_id)

    def undelivered(self, session_key: str) -> list[HelpRequest]:
        """Replied requests of this session whose reply has not reached the resident yet, oldest first."""
        with self._db.connect() as db:
            rows = db.execute("SELECT * FROM requests WHERE session_key = ? AND reply != '' AND delivered = 0"
                              " ORDER BY updated_at", (session_key,)).fetchall()
        return [_request(r) for r in rows]

    def mark_delivered(self, request_id: str, updated_at: float) -> bool:
        """True if this reply (not a newer one staff wrote since) is now marked delivered, by this call."""
        with self._db.connect() as db:
            cur = db.execute("UPDATE requests SET delivered = 1 WHERE id = ? AND updated_at = ? AND delivered = 0",
                             (request_id, updated_at))
            return cur.rowcount == 1

    def purge_closed(self, before: float) -> int:
        """Delete closed requests last touched before `before` (unix seconds): the retention period."""
        with self._db.connect() as db:
            return db.execute("DELETE FROM requests WHERE status = ? AND updated_at < ?",
                              (RequestStatus.CLOSED.value, before)).rowcount

    # ---- the webhook's outbox ----------------------------------------------------------------------------------
    def unnotified(self, max_age: float, limit: int = 100) -> list[HelpRequest]:
        """Requests opened in the last `max_age` seconds whose notification the webhook has not accepted yet, claimed
        or not, oldest first. Older ones are given up: staff have seen them in the queue long since."""
        with self._db.connect() as db:
            rows = db.execute("SELECT * FROM requests WHERE notified = 0 AND created_at >= ?"
                              " ORDER BY created_at, id LIMIT ?", (self._clock() - max_age, limit)).fetchall()
        return [_request(r) for r in rows]

    def claim_notification(self, request_id: str, lease: float, due_only: bool = True) -> HelpRequest | None:
        """Claim the sending of this notification for `lease` seconds: the request, its notify_lease the claim's
        token, or None if it is delivered, claimed by someone else (until their lease runs out) or, with `due_only`,
        waiting for its next round (notify_after). One UPDATE: of two processes claiming at once, one wins."""
        now = self._clock()
        with self._db.connect() as db:
            cur = db.execute("UPDATE requests SET notify_lease = ? WHERE id = ? AND notified = 0 AND notify_lease <= ?"
                             " AND (? OR notify_after <= ?)", (now + lease, request_id, now, not due_only, now))
            if cur.rowcount != 1:
                return None
        return self.get(request_id)

    def mark_notified(self, request_id: str, attempts: int) -> bool:
        """The webhook accepted it after `attempts` more POSTs: it leaves the outbox. False if it had already."""
        with self._db.connect() as db:
            cur = db.execute("UPDATE requests SET notified = 1, notify_lease = 0, notify_attempts = notify_attempts + ?"
                             " WHERE id = ? AND notified = 0", (attempts, request_id))
            return cur.rowcount == 1

    def release_notification(self, request_id: str, lease_token: float, attempts: int, retry_in: float) -> bool:
        """A round of `attempts` POSTs failed: give the claim back and try again in `retry_in` seconds. Only the
        holder of the claim (`lease_token`, the claimed request's notify_lease) can; False for anyone else."""
        with self._db.connect() as db:
            cur = db.execute("UPDATE requests SET notify_lease = 0, notify_after = ?,"
                             " notify_attempts = notify_attempts + ? WHERE id = ? AND notified = 0 AND notify_lease = ?",
                             (self._clock() + retry_in, attempts, request_id, lease_token))
            return cur.rowcount == 1


def _request(row: sqlite3.Row) -> HelpRequest:
    history = tuple(Turn(t["role"], t["content"]) for t in json.loads(row["history"]))
    return HelpRequest(**{**dict(row), "history": history, "status": RequestStatus(row["status"]),
                          "delivered": bool(row["delivered"]), "notified": bool(row["notified"])})
