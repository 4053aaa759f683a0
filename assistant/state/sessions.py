"""Conversation history per session, persisted in SQLite: survives restarts, keeps only the most recent turns, and
forgets sessions idle longer than the TTL.

Web sessions are issued by the server (`issue`): a session id is a 128-bit capability, so a client can only continue
a conversation it was handed, never guess or pick one. Keys carry their channel's namespace ("web:…", "wechat:…"),
so no web request can name a WeChat resident's conversation.

`Sessions` is the interface; `SessionStore` (SQLite, one host) and `redis_state.RedisSessionStore` (shared by several
hosts) implement it, and build_services() picks one."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Protocol

from assistant.state.sqlite import SQLiteFile
from assistant.types import Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX IF NOT EXISTS turns_by_time ON turns(created_at);
CREATE TABLE IF NOT EXISTS issued (
    session_id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS issued_by_time ON issued(seen_at);
"""


class Sessions(Protocol):
    """What the chat service and the request desk need of a session store; keys are f"{namespace}:{id}"."""

    def issue(self, namespace: str) -> str: ...
    def is_issued(self, key: str) -> bool: ...
    def history(self, key: str) -> list[Turn]: ...
    def append(self, key: str, *turns: Turn) -> None: ...
    def reset(self, key: str) -> None: ...


class SessionStore:
    def __init__(self, path: Path, max_turns: int = 12, ttl_seconds: float = 7 * 24 * 3600):
        self._db = SQLiteFile(path, _SCHEMA)
        self.max_turns = max_turns
        self.ttl_seconds = ttl_seconds

    def issue(self, namespace: str) -> str:
        """A new session id (128 bits, URL-safe) for `namespace`; its key is f"{namespace}:{id}"."""
        session_id = secrets.token_urlsafe(16)
        with self._db.connect() as db:
            db.execute("INSERT INTO issued (session_id, seen_at) VALUES (?, ?)", (f"{namespace}:{session_id}",
                                                                                   time.time()))
        return session_id

    def is_issued(self, key: str) -> bool:
        """True for a key issue() made that has not expired; marks it as seen, so an active session stays alive."""
        now = time.time()
        with self._db.connect() as db:
            cur = db.execute("UPDATE issued SET seen_at = ? WHERE session_id = ? AND seen_at >= ?",
                             (now, key, now - self.ttl_seconds))
            return cur.rowcount == 1

    def history(self, key: str) -> list[Turn]:
        cutoff = time.time() - self.ttl_seconds
        with self._db.connect() as db:
            last = db.execute("SELECT MAX(created_at) FROM turns WHERE session_id = ?", (key,)).fetchone()[0]
            if last is None or last < cutoff:
                db.execute("DELETE FROM turns WHERE session_id = ?", (key,))
                return []
            rows = db.execute(
                "SELECT role, content FROM turns WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                (key, self.max_turns),
            ).fetchall()
        return [Turn(r["role"], r["content"]) for r in reversed(rows)]

    def append(self, key: str, *turns: Turn) -> None:
        now = time.time()
        with self._db.connect() as db:
            # Take the write lock before reading MAX(seq): two concurrent appends must not pick the same seq.
            db.execute("BEGIN IMMEDIATE")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM turns WHERE session_id = ?", (key,)).fetchone()[0]
            db.executemany(
                "INSERT INTO turns (session_id, seq, role, content, created_at) VALUES (?, ?, ?, ?, ?)",
                [(key, seq + i, t.role, t.content, now) for i, t in enumerate(turns, 1)],
            )
            # Bound the stored length, not just what is read: a chatty session must not grow without limit.
            db.execute("DELETE FROM turns WHERE session_id = ? AND seq <= ?", (key, seq + len(turns) - self.max_turns))
            db.execute("DELETE FROM turns WHERE created_at < ?", (now - self.ttl_seconds,))
            db.execute("DELETE FROM issued WHERE seen_at < ?", (now - self.ttl_seconds,))

    def reset(self, key: str) -> None:
        """Forget the conversation and revoke its id: a later request with it starts a new session."""
        with self._db.connect() as db:
            db.execute("DELETE FROM turns WHERE session_id = ?", (key,))
            db.execute("DELETE FROM issued WHERE session_id = ?", (key,))
