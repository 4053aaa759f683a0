"""Conversation history per session id (web) or OpenID (WeChat), persisted in SQLite: survives restarts,
keeps only the most recent turns, and forgets sessions idle longer than the TTL."""

from __future__ import annotations

import time
from pathlib import Path

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
"""


class SessionStore:
    def __init__(self, path: Path, max_turns: int = 12, ttl_seconds: float = 7 * 24 * 3600):
        self._db = SQLiteFile(path, _SCHEMA)
        self.max_turns = max_turns
        self.ttl_seconds = ttl_seconds

    def history(self, session_id: str) -> list[Turn]:
        cutoff = time.time() - self.ttl_seconds
        with self._db.connect() as db:
            last = db.execute("SELECT MAX(created_at) FROM turns WHERE session_id = ?", (session_id,)).fetchone()[0]
            if last is None or last < cutoff:
                db.execute("DELETE FROM turns WHERE session_id = ?", (session_id,))
                return []
            rows = db.execute(
                "SELECT role, content FROM turns WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                (session_id, self.max_turns),
            ).fetchall()
        return [Turn(r["role"], r["content"]) for r in reversed(rows)]

    def append(self, session_id: str, *turns: Turn) -> None:
        now = time.time()
        with self._db.connect() as db:
            # Take the write lock before reading MAX(seq): two concurrent appends must not pick the same seq.
            db.execute("BEGIN IMMEDIATE")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM turns WHERE session_id = ?", (session_id,)).fetchone()[0]
            db.executemany(
                "INSERT INTO turns (session_id, seq, role, content, created_at) VALUES (?, ?, ?, ?, ?)",
                [(session_id, seq + i, t.role, t.content, now) for i, t in enumerate(turns, 1)],
            )
            # Bound the stored length, not just what is read: a chatty session must not grow without limit.
            db.execute("DELETE FROM turns WHERE session_id = ? AND seq <= ?", (session_id, seq + len(turns) - self.max_turns))
            db.execute("DELETE FROM turns WHERE created_at < ?", (now - self.ttl_seconds,))

    def reset(self, session_id: str) -> None:
        with self._db.connect() as db:
            db.execute("DELETE FROM turns WHERE session_id = ?", (session_id,))
