"""Hand-off requests (转人工 / 留言), persisted in SQLite: what the resident wrote, how to reach them, the
conversation that led there, and the staff reply.

A request belongs to the session key it was opened from ("web:<id>", "wechat:<openid>"): the resident reads it by
presenting that session, so the session id is the capability and the request id alone reveals nothing.

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
    delivered: bool


class Requests(Protocol):
    def add(self, channel: str, session_key: str, message: str, contact: str, history: list[Turn],
            answer_id: str | None = None) -> HelpRequest: ...
    def get(self, request_id: str) -> HelpRequest | None: ...
    def owned(self, request_id: str, session_key: str) -> HelpRequest | None: ...
    def queue(self, status: RequestStatus | None = None, limit: int = 200) -> list[HelpRequest]: ...
    def reply(self, request_id: str, reply: str, status: RequestStatus) -> HelpRequest | None: ...
    def undelivered(self, session_key: str) -> list[HelpRequest]: ...
    def mark_delivered(self, request_id: str, updated_at: float) -> bool: ...
    def purge_closed(self, before: float) -> int: ...


def owned_by(request: HelpRequest | None, session_key: str) -> HelpRequest | None:
    """`request` if `session_key` opened it, else None; compared in constant time, so that timing reveals nothing."""
    if request is None or not hmac.compare_digest(request.session_key.encode(), session_key.encode()):
        return None
    return request


class RequestStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self._db = SQLiteFile(path, _SCHEMA)
        self._clock = clock

    def add(self, channel: str, session_key: str, message: str, contact: str, history: list[Turn],
            answer_id: str | None = None) -> HelpRequest:
        request_id = secrets.token_urlsafe(9)
        now = self._clock()
        turns = json.dumps([{"role": t.role, "content": t.content} for t in history], ensure_ascii=False)
        with self._db.connect() as db:
            db.execute("INSERT INTO requests (id, created_at, updated_at, channel, session_key, answer_id, message,"
                       " contact, history, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (request_id, now, now, channel, session_key, answer_id, message, contact, turns,
                        RequestStatus.OPEN.value))
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


def _request(row: sqlite3.Row) -> HelpRequest:
    history = tuple(Turn(t["role"], t["content"]) for t in json.loads(row["history"]))
    return HelpRequest(**{**dict(row), "history": history, "status": RequestStatus(row["status"]),
                          "delivered": bool(row["delivered"])})
