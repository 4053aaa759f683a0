"""Every resident question with its channel, answer, refusal, citations and latency. No personal data: user ids
(session ids, OpenIDs, IPs) are stored only as salted hashes."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from assistant.sqlite import SQLiteFile
from assistant.types import Answer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    channel TEXT NOT NULL,
    user_hash TEXT NOT NULL DEFAULT '',
    question TEXT NOT NULL,
    query TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL,
    refused INTEGER NOT NULL,
    mode TEXT NOT NULL DEFAULT '',
    citations TEXT NOT NULL DEFAULT '[]',
    latency_ms REAL NOT NULL,
    notes TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS questions_by_ts ON questions(ts);
"""


@dataclass(frozen=True)
class LoggedQuestion:
    id: int
    ts: float
    channel: str
    user_hash: str
    question: str
    query: str
    answer: str
    refused: bool
    mode: str
    citations: list[dict]
    latency_ms: float
    notes: str


class QuestionLog:
    def __init__(self, path: Path, salt: str = "xiaoyu"):
        self._db = SQLiteFile(path, _SCHEMA)
        self._salt = salt

    def hash_user(self, user: str | None) -> str:
        if not user:
            return ""
        return hashlib.sha256(f"{self._salt}:{user}".encode()).hexdigest()[:16]

    def record(self, channel: str, user: str | None, question: str, answer: Answer, latency_ms: float) -> int:
        citations = [{"index": c.index, "source": c.source, "title": c.title, "section": c.section}
                     for c in answer.citations]
        with self._db.connect() as db:
            cur = db.execute(
                "INSERT INTO questions (ts, channel, user_hash, question, query, answer, refused, mode, citations,"
                " latency_ms, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), channel, self.hash_user(user), question, answer.query, answer.text, int(answer.refused),
                 answer.mode, json.dumps(citations, ensure_ascii=False), latency_ms, "; ".join(answer.notes)),
            )
            return int(cur.lastrowid)

    def recent(self, limit: int = 200, refused: bool | None = None, channel: str | None = None) -> list[LoggedQuestion]:
        where, args = [], []
        if refused is not None:
            where.append("refused = ?")
            args.append(int(refused))
        if channel:
            where.append("channel = ?")
            args.append(channel)
        sql = "SELECT * FROM questions" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._db.connect() as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [LoggedQuestion(**{**dict(r), "refused": bool(r["refused"]), "citations": json.loads(r["citations"])})
                for r in rows]
