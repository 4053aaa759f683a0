"""Conversation sessions: history lives in SQLite in the data dir, survives a restart, is bounded and expires."""

from __future__ import annotations

import shutil
import types

import pytest
from fastapi.testclient import TestClient

import assistant.state.sessions as sessions_module
from assistant.api import create_app
from assistant.config import Settings, StaffSettings
from assistant.services import build_services
from assistant.state.sessions import SessionStore
from assistant.types import Channel, Turn
from assistant.wechat.bridge import session_id as wechat_session

FIRST = "调解协议怎么申请司法确认？"
FOLLOW_UP = "要多久？"  # meaningless alone (refused); about 司法确认 with the first question as history


class FakeClock:
    """Stands in for time.time() in assistant.state.sessions: expiry is tested by moving the clock, not by sleeping."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sessions_module, "time", types.SimpleNamespace(time=fake.time))
    return fake


def test_history_survives_a_new_store_on_the_same_file(tmp_path):
    path = tmp_path / "sessions.sqlite3"
    SessionStore(path).append("s1", Turn("user", "物业费怎么交？"), Turn("assistant", "按合同约定交纳。"))

    reopened = SessionStore(path)

    assert reopened.history("s1") == [Turn("user", "物业费怎么交？"), Turn("assistant", "按合同约定交纳。")]
    assert reopened.history("other") == []


def test_only_the_most_recent_turns_are_stored(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite3", max_turns=4)
    for i in range(5):
        store.append("s1", Turn("user", f"问题{i}"), Turn("assistant", f"回答{i}"))

    assert [t.content for t in store.history("s1")] == ["问题3", "回答3", "问题4", "回答4"]
    # Bounded on disk too, not only when read.
    with store._db.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM turns WHERE session_id = 's1'").fetchone()[0] == 4


def test_a_session_idle_longer_than_the_ttl_is_forgotten(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", ttl_seconds=3600)
    store.append("s1", Turn("user", "物业费怎么交？"), Turn("assistant", "按合同约定交纳。"))

    clock.now += 3599
    assert len(store.history("s1")) == 2
    store.append("s1", Turn("user", "逾期呢？"), Turn("assistant", "可以催交。"))
    clock.now += 3599  # the last turn keeps the whole conversation alive
    assert len(store.history("s1")) == 4

    clock.now += 2
    assert store.history("s1") == []


def test_expired_sessions_are_deleted_from_disk_when_others_write(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", ttl_seconds=60)
    store.append("old", Turn("user", "甲"), Turn("assistant", "乙"))
    clock.now += 120
    store.append("new", Turn("user", "丙"), Turn("assistant", "丁"))

    with store._db.connect() as db:
        assert {r[0] for r in db.execute("SELECT DISTINCT session_id FROM turns")} == {"new"}


def test_reset_forgets_only_that_session(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite3")
    store.append("a", Turn("user", "甲"))
    store.append("b", Turn("user", "乙"))

    store.reset("a")

    assert store.history("a") == [] and store.history("b") == [Turn("user", "乙")]


# ---- through the HTTP API, across a restart ---------------------------------------------------------------
@pytest.fixture
def data_dir(kb_data_dir, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(kb_data_dir, target)
    return target


def _client(data_dir, embedder) -> TestClient:
    settings = Settings(data_dir=data_dir, staff=StaffSettings(console_enabled=False))
    return TestClient(create_app(settings, build_services(settings, embedder)))


def test_api_chat_follow_up_uses_the_session_history_after_a_restart(data_dir, embedder):
    with _client(data_dir, embedder) as first_run:
        r = first_run.post("/api/chat", json={"question": FIRST})
        assert r.status_code == 200 and not r.json()["refused"]
        issued = r.json()["session_id"]

    # A new service and app over the same data dir: what a restart of the server does.
    with _client(data_dir, embedder) as second_run:
        follow = second_run.post("/api/chat", json={"question": FOLLOW_UP, "session_id": issued}).json()
        stranger = second_run.post("/api/chat", json={"question": FOLLOW_UP, "session_id": "resident-2"}).json()

    assert not follow["refused"]
    assert "司法确认" in follow["query"]
    # Answered from a time limit of 司法确认 (人民调解法's 三十日内 to apply, or the rules' 十五日内 to decide).
    assert "司法确认" in follow["citations"][0]["quote"] and "日内" in follow["answer"].split("【1】")[0]
    assert stranger["refused"]  # another session has no history to lean on


def test_deleting_a_session_makes_the_follow_up_stand_alone(data_dir, embedder):
    with _client(data_dir, embedder) as client:
        issued = client.post("/api/chat", json={"question": FIRST}).json()["session_id"]

        assert client.delete(f"/api/chat/sessions/{issued}").status_code == 204
        after = client.post("/api/chat", json={"question": FOLLOW_UP, "session_id": issued}).json()

    assert after["refused"] and after["session_id"] != issued  # the deleted id is revoked, not reused


def test_every_answer_carries_a_server_issued_128_bit_session_id(data_dir, embedder):
    with _client(data_dir, embedder) as client:
        first = client.post("/api/chat", json={"question": FIRST}).json()
        again = client.post("/api/chat", json={"question": FIRST}).json()
        follow = client.post("/api/chat", json={"question": FOLLOW_UP, "session_id": first["session_id"]}).json()

    assert len(first["session_id"]) >= 22 and first["session_id"] != again["session_id"]
    assert follow["session_id"] == first["session_id"] and not follow["refused"]


def test_a_session_id_the_server_did_not_issue_starts_a_new_session(data_dir, embedder):
    with _client(data_dir, embedder) as client:
        chosen = client.post("/api/chat", json={"question": FIRST, "session_id": "my-own-id"}).json()
        follow = client.post("/api/chat", json={"question": FOLLOW_UP, "session_id": "my-own-id"}).json()

    assert chosen["session_id"] != "my-own-id"
    assert follow["refused"]  # nothing was stored under the client's own id


def test_no_web_request_can_read_or_delete_a_wechat_conversation(data_dir, embedder):
    settings = Settings(data_dir=data_dir, staff=StaffSettings(console_enabled=False))
    services = build_services(settings, embedder)

    services.chat.ask(FIRST, session_id=wechat_session("oAlice"), channel=Channel.WECHAT, user="oAlice")
    with TestClient(create_app(settings, services)) as client:
        read = client.post("/api/chat", json={"question": FOLLOW_UP, "session_id": wechat_session("oAlice")}).json()
        deleted = client.delete(f"/api/chat/sessions/{wechat_session('oAlice')}")

    assert read["refused"] and read["session_id"] != wechat_session("oAlice")
    assert deleted.status_code == 204
    stored = SessionStore(data_dir / "sessions.sqlite3").history(wechat_session("oAlice"))
    assert [t.content for t in stored if t.role == "user"] == [FIRST]  # untouched by the web requests


def test_an_issued_session_expires_with_the_ttl(tmp_path, clock):
    store = SessionStore(tmp_path / "s.sqlite3", ttl_seconds=3600)
    issued = store.issue("web")
    assert store.is_issued(f"web:{issued}") and not store.is_issued(f"wechat:{issued}")
    clock.now += 3601
    assert not store.is_issued(f"web:{issued}")


def test_an_overlong_session_id_is_rejected_in_chinese(data_dir, embedder):
    with _client(data_dir, embedder) as client:
        r = client.post("/api/chat", json={"question": FIRST, "session_id": "x" * 200})

    assert r.status_code == 422
    assert "会话 ID" in r.json()["detail"]
