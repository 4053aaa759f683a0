"""A small helper for the SQLite files in the data dir (sessions, question log): WAL, one connection per thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SQLiteFile:
    def __init__(self, path: Path, schema: str):
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # a property of the file: once is enough
            db.executescript(schema)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction on this thread's connection: commits, or rolls back on error.

        sqlite3 connections are not thread-safe and the API answers from a thread pool, so each thread keeps its
        own. Kept open, not opened per call: open + WAL pragma + close cost ~2 ms of every question."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last turns
            self._local.db = db
        with db:
            yield db

    def add_columns(self, table: str, columns: dict[str, str]) -> None:
        """ALTER TABLE ADD COLUMN for each of `columns` (name -> declaration) the table lacks: files written by an
        older release keep working. Several processes may start at once; a column another one just added is fine."""
        with self.connect() as db:
            have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    try:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                    except sqlite3.OperationalError as exc:
                        if "duplicate column" not in str(exc):
                            raise
