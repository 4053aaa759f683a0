"""The question log, written off the request path.

Logging a question is a SQLite insert and commit (or a Redis round trip when scaled out): small, but it sits between
the answer and the resident, and under load the commits of many threads queue on the database's one write lock. So
answers hand their row to one writer thread and return. Nothing is dropped: when the queue is full (the disk is
stalled), record() writes on the caller's thread instead, which slows that answer but loses no row.

Reads and updates (ratings, the staff views, the topics report) first wait for the rows queued before them, so a
resident who rates an answer right after getting it, or staff looking at the log, never miss it."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

from assistant.state.questionlog import AskedQuestion, LoggedQuestion, QuestionQuery, Questions
from assistant.types import Answer, Evidence, Turn

log = logging.getLogger("xiaoyu")

_STOP = object()


class BackgroundLog:
    def __init__(self, questions: Questions, max_queued: int = 10_000):
        self._log = questions
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._drain, name="xiaoyu-question-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a CLI run or a server stopping writes its last rows before it exits

    def record(self, channel: str, user: str | None, question: str, answer: Answer, latency_ms: float,
               evidence: Evidence | None = None, condensed_with: Sequence[Turn] = ()) -> None:
        row = (channel, user, question, answer, latency_ms, evidence, tuple(condensed_with))
        if not self._thread.is_alive():
            self._log.record(*row)  # after close(): nobody would drain the queue
            return
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            log.warning("question log queue full: writing on the request thread")
            self._log.record(*row)

    def _drain(self) -> None:
        while True:
            row = self._queue.get()
            try:
                if row is _STOP:
                    return
                self._log.record(*row)
            except Exception:  # noqa: BLE001 - one bad row must not stop the writer for every later answer
                log.exception("question log write failed")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every row queued so far is written."""
        if self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the writer (at shutdown)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # Everything else reads or changes written rows: it waits for the queue first.
    def hash_user(self, user: str | None) -> str:
        return self._log.hash_user(user)

    def rate(self, answer_id: str, rating: str, comment: str = "") -> bool:
        self.flush()
        return self._log.rate(answer_id, rating, comment)

    def by_answer(self, answer_id: str) -> LoggedQuestion | None:
        self.flush()
        return self._log.by_answer(answer_id)

    def get(self, question_id: int) -> LoggedQuestion | None:
        self.flush()
        return self._log.get(question_id)

    def recent(self, query: QuestionQuery = QuestionQuery()) -> list[LoggedQuestion]:
        self.flush()
        return self._log.recent(query)

    def asked(self, since: float, until: float, exclude_channels: tuple[str, ...] = ()) -> list[AskedQuestion]:
        self.flush()
        return self._log.asked(since, until, exclude_channels)

    def purge(self, before: float) -> int:
        self.flush()
        return self._log.purge(before)
