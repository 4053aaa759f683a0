"""Every resident question with its channel, answer, refusal, citations and latency. No personal data: user ids
(session ids, OpenIDs, IPs) are stored only as salted hashes.

`Questions` is the interface; `QuestionLog` (SQLite, one host) and `redis_state.RedisQuestionLog` (one log for several
hosts) implement it, and build_services() picks one."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from assistant.state.sqlite import SQLiteFile
from assistant.types import Answer, ComposeMode, Evidence, Turn

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
# Columns added after the first release. Added with ALTER TABLE when missing, so older log files keep working.
_ADDED_COLUMNS = {
    "dense_top": "REAL",  # retrieval evidence behind the answer (NULL when nothing was retrieved)
    "overlap": "REAL",
    "evidence": "TEXT NOT NULL DEFAULT ''",  # the evidence reason, e.g. "证据不足：语义相似度 0.78 …"
    "answer_id": "TEXT",  # the random id the resident's client got with the answer (feedback names it)
    "rating": "TEXT",  # "up" | "down" | NULL (not rated); a second rating replaces the first
    "comment": "TEXT NOT NULL DEFAULT ''",  # the resident's reason, with a 👎
    "rated_at": "REAL",
    "condensed_with": "TEXT NOT NULL DEFAULT '[]'",  # a follow-up's history turns, as JSON (staff see what it leant on)
}


def turns_json(turns: Sequence[Turn]) -> str:
    return json.dumps([{"role": t.role, "content": t.content} for t in turns], ensure_ascii=False)


def turns_of(text: str | None) -> tuple[Turn, ...]:
    return tuple(Turn(t["role"], t["content"]) for t in json.loads(text or "[]"))


def citation_rows(answer: Answer) -> list[dict]:
    """What the log keeps of an answer's citations (the quote is in the answer text)."""
    return [{"index": c.index, "source": c.source, "title": c.title, "section": c.section} for c in answer.citations]


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
    dense_top: float | None = None
    overlap: float | None = None
    evidence: str = ""
    answer_id: str | None = None
    rating: str | None = None
    comment: str = ""
    rated_at: float | None = None
    condensed_with: tuple[Turn, ...] = ()  # the turns a follow-up was condensed with (none for a standalone question)


SECRET_FILE = "install-secret"


def install_secret(data_dir: Path) -> str:
    """A per-install random secret, made on first start and kept in the data dir: the salt of user hashes, so that
    a WeChat OpenID can't be recovered from the log by hashing candidate ids with a salt everybody knows."""
    path = data_dir / SECRET_FILE
    try:
        # O_EXCL: two workers starting together must end up with one secret, not overwrite each other's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if secret:
            return secret
        # An empty file: a crash between create and write. Nobody has hashed with it yet, so replace it.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        secret = secrets.token_hex(32)
        fh.write(secret)
    return secret


def user_hash(salt: str, user: str | None) -> str:
    """How a user id is kept in the log (both implementations): hosts sharing a salt hash an id the same way."""
    if not user:
        return ""
    return hashlib.sha256(f"{salt}:{user}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QuestionQuery:
    """Which logged questions to read, newest first."""

    limit: int = 200
    refused: bool | None = None
    channel: str | None = None
    below_confidence: float | None = None  # answered questions whose top dense similarity is under this
    exclude_channels: tuple[str, ...] = ()
    contains: str = ""  # a substring of the question


@dataclass(frozen=True)
class AskedQuestion:
    """One logged question as the topics report reads it: what was asked, when, and how it went."""

    id: int
    ts: float
    channel: str
    question: str
    refused: bool
    down_voted: bool = False  # the resident rated the answer 👎


class Questions(Protocol):
    """What the services need of a question log. record()'s signature is part of it: a wrapper (a background writer)
    may stand in front of either implementation, and then returns None, the row not being written yet."""

    def hash_user(self, user: str | None) -> str: ...
    def record(self, channel: str, user: str | None, question: str, answer: Answer, latency_ms: float,
               evidence: Evidence | None = None, condensed_with: Sequence[Turn] = ()) -> int | None: ...
    def rate(self, answer_id: str, rating: str, comment: str = "") -> bool: ...
    def by_answer(self, answer_id: str) -> LoggedQuestion | None: ...
    def purge(self, before: float) -> int: ...
    def recent(self, query: QuestionQuery = QuestionQuery()) -> list[LoggedQuestion]: ...
    def get(self, question_id: int) -> LoggedQuestion | None: ...
    def asked(self, since: float, until: float, exclude_channels: tuple[str, ...] = ()) -> list[AskedQuestion]: ...


class QuestionLog:
    def __init__(self, path: Path, salt: str, clock: Callable[[], float] = time.time):
        self._db = SQLiteFile(path, _SCHEMA)
        self._salt = salt
        self._clock = clock
        self._migrate()

    def _migrate(self) -> None:
        self._db.add_columns("questions", _ADDED_COLUMNS)
        with self._db.connect() as db:
            # After the columns: an old file gets its answer_id column first.
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS questions_by_answer ON questions(answer_id)")

    def hash_user(self, user: str | None) -> str:
        return user_hash(self._salt, user)

    def record(self, channel: str, user: str | None, question: str, answer: Answer, latency_ms: float,
               evidence: Evidence | None = None, condensed_with: Sequence[Turn] = ()) -> int:
        citations = citation_rows(answer)
        with self._db.connect() as db:
            cur = db.execute(
                "INSERT INTO questions (ts, channel, user_hash, question, query, answer, refused, mode, citations,"
                " latency_ms, notes, dense_top, overlap, evidence, answer_id, condensed_with)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._clock(), channel, self.hash_user(user), question, answer.query, answer.text, int(answer.refused),
                 answer.mode, json.dumps(citations, ensure_ascii=False), latency_ms, "; ".join(answer.notes),
                 evidence.dense_top if evidence else None, evidence.overlap if evidence else None,
                 evidence.reason if evidence else "", answer.answer_id, turns_json(condensed_with)),
            )
            return int(cur.lastrowid)

    def rate(self, answer_id: str, rating: str, comment: str = "") -> bool:
        """Store (or replace) the rating of an answer; False when no logged answer has this id."""
        with self._db.connect() as db:
            cur = db.execute("UPDATE questions SET rating = ?, comment = ?, rated_at = ? WHERE answer_id = ?",
                             (rating, comment, self._clock(), answer_id))
            return cur.rowcount == 1

    def by_answer(self, answer_id: str) -> LoggedQuestion | None:
        with self._db.connect() as db:
            row = db.execute("SELECT * FROM questions WHERE answer_id = ?", (answer_id,)).fetchone()
        return _logged(row) if row else None

    def purge(self, before: float) -> int:
        """Delete the rows logged before `before` (unix seconds): the retention period. Returns how many."""
        with self._db.connect() as db:
            return db.execute("DELETE FROM questions WHERE ts < ?", (before,)).rowcount

    def recent(self, query: QuestionQuery = QuestionQuery()) -> list[LoggedQuestion]:
        """Newest first."""
        q = query
        limit, refused, channel, below_confidence = q.limit, q.refused, q.channel, q.below_confidence
        exclude_channels, contains = q.exclude_channels, q.contains
        where, args = [], []
        if refused is not None:
            where.append("refused = ?")
            args.append(int(refused))
        if channel:
            where.append("channel = ?")
            args.append(channel)
        if below_confidence is not None:
            where.append("refused = 0 AND dense_top IS NOT NULL AND dense_top < ?")
            args.append(below_confidence)
        if exclude_channels:
            where.append(f"channel NOT IN ({', '.join('?' * len(exclude_channels))})")
            args.extend(exclude_channels)
        if contains:
            where.append("instr(question, ?) > 0")
            args.append(contains)
        sql = "SELECT * FROM questions" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._db.connect() as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [_logged(r) for r in rows]

    def get(self, question_id: int) -> LoggedQuestion | None:
        with self._db.connect() as db:
            row = db.execute("SELECT * FROM questions WHERE id = ?", (question_id,)).fetchone()
        return _logged(row) if row else None

    def asked(self, since: float, until: float, exclude_channels: tuple[str, ...] = ()) -> list[AskedQuestion]:
        """Questions logged from `since` to `until` (unix seconds, both included), oldest first, small talk (你好,
        谢谢) left out. (_migrate gave an older log the rating column: its rows read as not rated.)"""
        with self._db.connect() as db:
            where = ["ts >= ?", "ts <= ?", f"NOT (mode = '{ComposeMode.TEMPLATE}' AND refused = 0)"]
            if exclude_channels:
                where.append(f"channel NOT IN ({', '.join('?' * len(exclude_channels))})")
            rows = db.execute("SELECT id, ts, channel, question, refused, rating = 'down' AS down_voted FROM questions"
                              f" WHERE {' AND '.join(where)} ORDER BY ts, id", (since, until, *exclude_channels)).fetchall()
        return [AskedQuestion(r["id"], r["ts"], r["channel"], r["question"], bool(r["refused"]), bool(r["down_voted"]))
                for r in rows]


def _logged(row: sqlite3.Row) -> LoggedQuestion:
    return LoggedQuestion(**{**dict(row), "refused": bool(row["refused"]), "citations": json.loads(row["citations"]),
                             "condensed_with": turns_of(row["condensed_with"])})
