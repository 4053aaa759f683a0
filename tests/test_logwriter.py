"""The question log's background writer: answers don't wait for the log, and no row is lost or missed."""

from __future__ import annotations

import threading

from assistant.state.logwriter import BackgroundLog
from assistant.state.questionlog import QuestionLog, QuestionQuery
from assistant.types import Answer, AnswerKind


def _answer(text: str, answer_id: str) -> Answer:
    return Answer(text, (), AnswerKind.ANSWERED, answer_id=answer_id)


class StalledLog(QuestionLog):
    """A real SQLite log whose writes wait until `go` is set: a disk that stalls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.go = threading.Event()
        self.writing = threading.Event()
        self.writers: list[str] = []

    def record(self, *args, **kwargs):
        self.writers.append(threading.current_thread().name)
        self.writing.set()
        self.go.wait(timeout=30)
        return super().record(*args, **kwargs)


def test_a_rating_right_after_the_answer_finds_its_row(tmp_path):
    log = BackgroundLog(QuestionLog(tmp_path / "q.sqlite3", "salt"))
    for i in range(50):
        log.record("web", "u", f"问题{i}", _answer("回答", f"id{i}"), 3.0)
        assert log.rate(f"id{i}", "down", "没说清楚"), i
    rows = log.recent(QuestionQuery(limit=100))
    assert len(rows) == 50 and all(r.rating == "down" for r in rows)
    log.close()


def test_answers_do_not_wait_for_a_stalled_log_and_nothing_is_lost(tmp_path):
    stalled = StalledLog(tmp_path / "q.sqlite3", "salt")
    log = BackgroundLog(stalled, max_queued=2)
    log.record("web", "u", "问题0", _answer("回答", "id0"), 3.0)
    assert stalled.writing.wait(timeout=30)  # the writer holds 问题0 (stalled)
    for i in (1, 2):  # two more fill the queue: none of them written on this thread
        log.record("web", "u", f"问题{i}", _answer("回答", f"id{i}"), 3.0)
    assert threading.current_thread().name not in stalled.writers
    stalled.go.set()  # the 4th finds the queue full or drained; either way it is written
    log.record("web", "u", "问题3", _answer("回答", "id3"), 3.0)
    assert sorted(r.question for r in log.recent()) == ["问题0", "问题1", "问题2", "问题3"]
    log.close()


def test_one_failing_row_does_not_stop_the_writer(tmp_path):
    log = BackgroundLog(QuestionLog(tmp_path / "q.sqlite3", "salt"))
    log.record("web", "u", "好问题", _answer("回答", "same"), 3.0)
    log.record("web", "u", "重复的答案编号", _answer("回答", "same"), 3.0)  # violates the unique answer_id index
    log.record("web", "u", "后来的问题", _answer("回答", "later"), 3.0)
    assert [r.question for r in log.recent()] == ["后来的问题", "好问题"]
    log.close()


def test_close_writes_what_is_queued_and_later_rows_are_written_inline(tmp_path):
    path = tmp_path / "q.sqlite3"
    log = BackgroundLog(QuestionLog(path, "salt"))
    for i in range(20):
        log.record("web", "u", f"问题{i}", _answer("回答", f"id{i}"), 3.0)
    log.close()
    log.record("web", "u", "关闭以后", _answer("回答", "after"), 3.0)
    assert len(QuestionLog(path, "salt").recent()) == 21
