"""Per-resident state shared through Redis (XIAOYU_REDIS_URL): the Redis stores behave as their SQLite twins (one
contract, run against both), and several services on different data dirs share sessions, the question log, the
request queue, rate limits and the login throttle. A real redis-server on loopback, no mocks."""

from __future__ import annotations

import dataclasses
import shutil
import time

import pytest

from assistant.config import Settings, StaffSettings, WebSettings
from assistant.services import build_services
from assistant.state.questionlog import QuestionLog, QuestionQuery
from assistant.state.ratelimit import LoginThrottle, RateLimiter, limits_storage
from assistant.state.redis_state import (
    RedisQuestionLog,
    RedisRequestStore,
    RedisSessionStore,
    RedisUnavailable,
    connect,
    shared_secret,
)
from assistant.state.requests import RequestStore
from assistant.state.sessions import SessionStore
from assistant.types import Answer, AnswerKind, Channel, Citation, ComposeMode, Evidence, RequestStatus, Turn

FIRST = "调解协议怎么申请司法确认？"
FOLLOW_UP = "要多久？"  # meaningless alone (refused); about 司法确认 with the first question as history


class Clock:
    """Dates the log and the requests: ordering and retention are tested by moving it, not by sleeping."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """Builds the stores of one implementation: SQLite files in tmp_path, or one Redis database."""

    def __init__(self, kind: str, tmp_path, redis_url: str | None):
        self.kind = kind
        self._tmp = tmp_path
        self._client = connect(redis_url) if redis_url else None

    def sessions(self, max_turns: int = 12, ttl_seconds: float = 3600) -> SessionStore | RedisSessionStore:
        if self._client is None:
            return SessionStore(self._tmp / "sessions.sqlite3", max_turns, ttl_seconds)
        return RedisSessionStore(self._client, "test", max_turns, ttl_seconds)

    def log(self, clock: Clock) -> QuestionLog | RedisQuestionLog:
        if self._client is None:
            return QuestionLog(self._tmp / "questions.sqlite3", "salt", clock)
        return RedisQuestionLog(self._client, "test", "salt", clock)

    def requests(self, clock: Clock) -> RequestStore | RedisRequestStore:
        if self._client is None:
            return RequestStore(self._tmp / "requests.sqlite3", clock)
        return RedisRequestStore(self._client, "test", clock)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(request.param, tmp_path, url)


def _answer(text: str = "按合同约定交纳。", refused: bool = False, answer_id: str | None = None,
            mode: ComposeMode = ComposeMode.EXTRACTIVE) -> Answer:
    citations = () if refused else (Citation(1, "物业/物业管理条例.md", "物业管理条例", "第四十一条", "……"),)
    return Answer(text, citations, AnswerKind.REFUSED if refused else AnswerKind.ANSWERED, query="物业费 交纳",
                  mode=mode, notes=("bm25", "dense"), answer_id=answer_id)


# ---- sessions: one contract, both implementations ---------------------------------------------------------------
def test_issued_ids_are_128_bit_and_valid_only_in_their_namespace(backend):
    store = backend.sessions()
    session_id = store.issue("web")

    assert len(session_id) == 22 and session_id != store.issue("web")  # 16 random bytes, URL-safe base64
    assert store.is_issued(f"web:{session_id}")
    assert not store.is_issued(f"wechat:{session_id}") and not store.is_issued("web:never-issued")


def test_history_keeps_only_the_most_recent_turns_in_order(backend):
    store = backend.sessions(max_turns=4)
    for i in range(5):
        store.append("web:s1", Turn("user", f"问题{i}"), Turn("assistant", f"回答{i}"))

    assert [t.content for t in store.history("web:s1")] == ["问题3", "回答3", "问题4", "回答4"]
    assert store.history("web:other") == []


def test_reset_forgets_the_conversation_and_revokes_the_id_of_that_session_only(backend):
    store = backend.sessions()
    kept, dropped = store.issue("web"), store.issue("web")
    store.append(f"web:{kept}", Turn("user", "甲"))
    store.append(f"web:{dropped}", Turn("user", "乙"))

    store.reset(f"web:{dropped}")

    assert store.history(f"web:{dropped}") == [] and not store.is_issued(f"web:{dropped}")
    assert store.history(f"web:{kept}") == [Turn("user", "甲")] and store.is_issued(f"web:{kept}")


def test_a_session_expires_after_its_ttl_unless_it_is_seen(backend):
    # Real seconds: Redis expires keys by its own clock. Margins of 0.4 s either side of each deadline.
    store = backend.sessions(ttl_seconds=1.0)
    idle, active = store.issue("web"), store.issue("web")
    store.append("web:talk", Turn("user", "物业费怎么交？"))

    time.sleep(0.6)
    assert store.is_issued(f"web:{active}")  # seen: its expiry slides
    time.sleep(0.6)

    assert store.is_issued(f"web:{active}")
    assert not store.is_issued(f"web:{idle}")
    assert store.history("web:talk") == []  # the last turn is 1.2 s old


# ---- question log ----------------------------------------------------------------------------------------------
def test_logged_questions_get_increasing_ids_and_keep_every_field(backend):
    clock = Clock()
    log = backend.log(clock)
    evidence = Evidence(True, "证据充分", dense_top=0.91, overlap=0.5)

    first = log.record(Channel.WEB, "resident-1", "物业费怎么交？", _answer(answer_id="a1"), 12.5, evidence)
    clock.now += 1
    second = log.record(Channel.WECHAT, None, "房价会涨吗？", _answer("不知道", refused=True), 3.0)

    assert (first, second) == (1, 2)
    row = log.get(first)
    assert row is not None and log.by_answer("a1") == row
    assert (row.ts, row.channel, row.question, row.query, row.answer) == (
        1_700_000_000.0, "web", "物业费怎么交？", "物业费 交纳", "按合同约定交纳。")
    assert (row.refused, row.mode, row.latency_ms, row.notes) == (False, "extractive", 12.5, "bm25; dense")
    assert row.citations == [{"index": 1, "source": "物业/物业管理条例.md", "title": "物业管理条例",
                              "section": "第四十一条"}]
    assert (row.dense_top, row.overlap, row.evidence) == (0.91, 0.5, "证据充分")
    assert row.user_hash == log.hash_user("resident-1") and len(row.user_hash) == 16
    assert (row.answer_id, row.rating, row.comment, row.rated_at) == ("a1", None, "", None)
    other = log.get(second)
    assert other is not None and other.refused and other.user_hash == "" and other.answer_id is None
    assert (other.dense_top, other.overlap, other.evidence) == (None, None, "")
    assert log.get(99) is None and log.by_answer("nope") is None


def test_both_implementations_store_the_same_row(tmp_path, redis_url):
    sqlite, redis = Backend("sqlite", tmp_path, None).log(Clock()), Backend("redis", tmp_path, redis_url).log(Clock())
    for log in (sqlite, redis):
        log.record(Channel.WEB, "resident-1", "物业费怎么交？", _answer(answer_id="a1"), 12.5,
                   Evidence(True, "证据充分", dense_top=0.91, overlap=0.5))
        log.rate("a1", "down", "没看懂")

    assert dataclasses.asdict(redis.get(1)) == dataclasses.asdict(sqlite.get(1))


def test_a_second_rating_replaces_the_first_and_unknown_answers_cannot_be_rated(backend):
    clock = Clock()
    log = backend.log(clock)
    log.record(Channel.WEB, None, "物业费怎么交？", _answer(answer_id="a1"), 1.0)

    assert log.rate("a1", "up")
    clock.now += 60
    assert log.rate("a1", "down", "没看懂")
    assert not log.rate("missing", "up")

    rated = log.by_answer("a1")
    assert rated is not None and (rated.rating, rated.comment, rated.rated_at) == ("down", "没看懂", clock.now)


def test_recent_reads_newest_first_with_every_filter(backend):
    clock = Clock()
    log = backend.log(clock)
    rows = [  # channel, question, refused, dense_top
        (Channel.WEB, "物业费怎么交？", False, 0.95),
        (Channel.WECHAT, "停车位归谁？", False, 0.70),
        (Channel.WEB, "房价会涨吗？", True, 0.40),
        (Channel.EVAL, "物业费标准", False, 0.60),
        (Channel.API, "物业费发票", False, None),
    ]
    for channel, question, refused, dense_top in rows:
        evidence = Evidence(not refused, "", dense_top=dense_top) if dense_top is not None else None
        log.record(channel, None, question, _answer(refused=refused), 1.0, evidence)
        clock.now += 1

    def ids(**query) -> list[int]:
        return [q.id for q in log.recent(QuestionQuery(**query))]

    assert ids() == [5, 4, 3, 2, 1]
    assert ids(limit=2) == [5, 4]
    assert ids(refused=True) == [3] and ids(refused=False) == [5, 4, 2, 1]
    assert ids(channel="web") == [3, 1]
    assert ids(below_confidence=0.8) == [4, 2]  # answered, with a dense score, under it
    assert ids(exclude_channels=("eval", "api")) == [3, 2, 1]
    assert ids(contains="物业费") == [5, 4, 1]
    assert ids(contains="物业费", exclude_channels=("eval",), limit=1) == [5]


def test_purge_deletes_the_rows_before_the_cutoff_and_says_how_many(backend):
    clock = Clock()
    log = backend.log(clock)
    log.record(Channel.WEB, None, "旧问题", _answer(answer_id="old"), 1.0)
    clock.now += 100
    log.record(Channel.WEB, None, "新问题", _answer(answer_id="new"), 1.0)

    assert log.purge(clock.now) == 1
    assert log.purge(clock.now) == 0

    assert [q.question for q in log.recent()] == ["新问题"]
    assert log.get(1) is None and log.by_answer("old") is None and not log.rate("old", "up")
    assert log.record(Channel.WEB, None, "再问", _answer(), 1.0) == 3  # ids are never reused


def test_asked_reads_a_time_range_oldest_first_without_small_talk(backend):
    clock = Clock()
    log = backend.log(clock)
    log.record(Channel.WEB, None, "物业费怎么交？", _answer(answer_id="a1"), 1.0)
    clock.now += 10
    log.record(Channel.WEB, None, "你好", _answer("您好！", mode=ComposeMode.TEMPLATE), 1.0)
    log.record(Channel.EVAL, None, "评测问题", _answer(), 1.0)
    log.record(Channel.WECHAT, None, "房价会涨吗？", _answer(refused=True), 1.0)
    clock.now += 10
    log.record(Channel.WEB, None, "太晚了", _answer(), 1.0)
    log.rate("a1", "down")

    asked = log.asked(1_700_000_000.0, 1_700_000_010.0, exclude_channels=("eval",))

    assert [(a.id, a.question, a.refused, a.down_voted) for a in asked] == [
        (1, "物业费怎么交？", False, True), (4, "房价会涨吗？", True, False)]
    assert [a.channel for a in asked] == ["web", "wechat"] and asked[0].ts == 1_700_000_000.0


# ---- hand-off requests -----------------------------------------------------------------------------------------
def test_a_request_is_read_back_only_with_the_session_that_opened_it(backend):
    store = backend.requests(Clock())
    history = [Turn("user", "物业费怎么交？"), Turn("assistant", "按合同约定交纳。")]

    opened = store.add("web", "web:s1", "请人工回复", "138****0000", history, answer_id="a1")

    assert opened.status is RequestStatus.OPEN and opened.history == tuple(history)
    assert (opened.reply, opened.delivered, opened.answer_id, opened.contact) == ("", False, "a1", "138****0000")
    assert store.get(opened.id) == opened == store.owned(opened.id, "web:s1")
    assert store.owned(opened.id, "web:s2") is None and store.owned("unknown", "web:s1") is None
    assert store.get("unknown") is None
    assert store.add("web", "web:s1", "再问一次", "", []).answer_id is None


def test_the_queue_is_oldest_first_and_follows_status_changes(backend):
    clock = Clock()
    store = backend.requests(clock)
    first = store.add("web", "web:s1", "一", "", [])
    clock.now += 1
    second = store.add("wechat", "wechat:o1", "二", "", [])
    clock.now += 1
    third = store.add("web", "web:s2", "三", "", [])

    clock.now += 1
    replied = store.reply(second.id, "已处理", RequestStatus.ANSWERED)

    assert replied is not None and (replied.reply, replied.status, replied.updated_at) == (
        "已处理", RequestStatus.ANSWERED, clock.now)
    assert replied.created_at == second.created_at
    assert [r.id for r in store.queue()] == [first.id, second.id, third.id]
    assert [r.id for r in store.queue(limit=2)] == [first.id, second.id]
    assert [r.id for r in store.queue(RequestStatus.OPEN)] == [first.id, third.id]
    assert [r.id for r in store.queue(RequestStatus.ANSWERED)] == [second.id]
    assert store.queue(RequestStatus.CLOSED) == []
    assert store.reply("unknown", "x", RequestStatus.CLOSED) is None


def test_requests_opened_at_the_same_moment_are_queued_by_id(backend):
    store = backend.requests(Clock())
    ids = [store.add("web", f"web:s{i}", f"留言{i}", "", []).id for i in range(6)]

    assert [r.id for r in store.queue()] == sorted(ids)


def test_a_reply_is_delivered_once_and_a_changed_reply_is_undelivered_again(backend):
    clock = Clock()
    store = backend.requests(clock)
    request = store.add("wechat", "wechat:o1", "请回复", "", [])
    assert store.undelivered("wechat:o1") == []

    clock.now += 1
    replied = store.reply(request.id, "已处理", RequestStatus.ANSWERED)
    assert replied is not None and [r.id for r in store.undelivered("wechat:o1")] == [request.id]
    assert store.mark_delivered(request.id, replied.updated_at)
    assert not store.mark_delivered(request.id, replied.updated_at)  # exactly one caller delivers it
    assert store.undelivered("wechat:o1") == []

    clock.now += 1
    closed = store.reply(request.id, "已处理", RequestStatus.CLOSED)  # the same reply: still delivered
    assert closed is not None and closed.delivered and closed.status is RequestStatus.CLOSED

    clock.now += 1
    changed = store.reply(request.id, "补充：请带身份证", RequestStatus.ANSWERED)
    assert changed is not None and not changed.delivered
    assert not store.mark_delivered(request.id, replied.updated_at)  # a stale reply does not mark the new one
    assert [r.reply for r in store.undelivered("wechat:o1")] == ["补充：请带身份证"]
    assert store.undelivered("wechat:other") == []


def test_purge_deletes_only_closed_requests_last_touched_before_the_cutoff(backend):
    clock = Clock()
    store = backend.requests(clock)
    old_closed = store.add("web", "web:s1", "旧的已关闭", "", [])
    clock.now += 1
    old_open = store.add("web", "web:s1", "旧的未处理", "", [])
    clock.now += 1
    reopened = store.add("web", "web:s1", "关闭后又回复", "", [])
    store.reply(old_closed.id, "好的", RequestStatus.CLOSED)
    store.reply(reopened.id, "好的", RequestStatus.CLOSED)
    clock.now += 100
    store.reply(reopened.id, "再补充", RequestStatus.ANSWERED)
    recent_closed = store.add("web", "web:s1", "新的已关闭", "", [])
    store.reply(recent_closed.id, "好的", RequestStatus.CLOSED)

    assert store.purge_closed(clock.now) == 1
    assert store.purge_closed(clock.now) == 0

    assert store.get(old_closed.id) is None and store.owned(old_closed.id, "web:s1") is None
    assert [r.id for r in store.queue()] == [old_open.id, reopened.id, recent_closed.id]
    assert [r.id for r in store.queue(RequestStatus.CLOSED)] == [recent_closed.id]
    assert old_closed.id not in {r.id for r in store.undelivered("web:s1")}


# ---- several processes, one Redis ------------------------------------------------------------------------------
@pytest.fixture
def two_hosts(kb_data_dir, embedder, tmp_path, redis_url):
    """Two services as two `xiaoyu serve` hosts would build them: their own data dirs, the same Redis."""
    hosts = []
    for name in ("host-a", "host-b"):
        data_dir = tmp_path / name
        shutil.copytree(kb_data_dir, data_dir)
        hosts.append(build_services(Settings(data_dir=data_dir, redis_url=redis_url), embedder))
    return hosts


def test_a_conversation_started_on_one_host_continues_on_another(two_hosts):
    a, b = two_hosts

    first = a.chat.ask(FIRST, channel=Channel.WEB, start_session=True)
    follow = b.chat.ask(FOLLOW_UP, session_id=first.session_id, channel=Channel.WEB)

    assert not first.refused and follow.session_id == first.session_id
    assert not follow.refused and "司法确认" in follow.query


def test_staff_on_any_host_see_one_log_and_one_request_queue(two_hosts):
    a, b = two_hosts
    first = a.chat.ask(FIRST, channel=Channel.WEB, start_session=True)
    b.chat.ask(FOLLOW_UP, session_id=first.session_id, channel=Channel.WEB)
    b.staff.questions()  # waits for host b's background writer (a.staff waits for host a's)

    logged = a.staff.questions()
    assert [q.question for q in logged] == [FOLLOW_UP, FIRST]
    assert logged[0].user_hash == logged[1].user_hash != ""  # one install secret: hosts hash a user alike

    request = b.desk.open(first.session_id, "请人工回复", channel=Channel.WEB)
    assert [r.id for r in a.desk.queue()] == [request.id]
    assert len(a.desk.detail(request.id).history) == 4  # the turns of both hosts
    a.desk.reply(request.id, "已转物业处理")
    assert b.desk.status(request.id, first.session_id).reply == "已转物业处理"


def test_the_chat_rate_limit_of_the_http_api_counts_the_questions_sent_to_every_host(two_hosts):
    from fastapi.testclient import TestClient

    from assistant.api import create_app

    def app(services):
        settings = services.settings.model_copy(update={"web": WebSettings(rate_limit_per_minute=2),
                                                        "staff": StaffSettings(console_enabled=False)})
        return TestClient(create_app(settings, services))

    with app(two_hosts[0]) as a, app(two_hosts[1]) as b:
        statuses = [client.post("/api/chat", json={"question": FIRST}).status_code for client in (a, b, a)]

    assert statuses == [200, 200, 429]


def test_every_host_gets_the_same_install_secret(redis_url):
    client = connect(redis_url)

    assert shared_secret(client, "xiaoyu") == shared_secret(connect(redis_url), "xiaoyu")
    assert len(shared_secret(client, "xiaoyu")) == 64 and shared_secret(client, "other") != shared_secret(
        client, "xiaoyu")


def test_deployments_with_different_prefixes_do_not_see_each_other(redis_url):
    client = connect(redis_url)
    one, two = RedisSessionStore(client, "one"), RedisSessionStore(client, "two")
    session_id = one.issue("web")
    one.append(f"web:{session_id}", Turn("user", "甲"))

    assert not two.is_issued(f"web:{session_id}") and two.history(f"web:{session_id}") == []
    assert RedisQuestionLog(client, "one", "s").record(Channel.WEB, None, "问", _answer(), 1.0) == 1
    assert RedisQuestionLog(client, "two", "s").recent() == []


def test_rate_limits_count_the_questions_of_every_host_together(redis_url):
    a, b = RateLimiter(3, limits_storage(redis_url, "t")), RateLimiter(3, limits_storage(redis_url, "t"))

    assert [a.hit("203.0.113.7"), b.hit("203.0.113.7"), a.hit("203.0.113.7")] == [0, 0, 0]
    assert 0 < b.hit("203.0.113.7") <= 60 and a.hit("203.0.113.7") > 0
    assert a.hit("198.51.100.1") == 0  # another client has its own window


def test_without_redis_each_process_counts_on_its_own(redis_url):
    a, b = RateLimiter(1), RateLimiter(1)

    assert a.hit("203.0.113.7") == 0 and b.hit("203.0.113.7") == 0


def test_the_login_throttle_locks_an_account_on_every_host(redis_url):
    a = LoginThrottle(per_account=2, per_ip=10, minutes=1, storage=limits_storage(redis_url, "t"))
    b = LoginThrottle(per_account=2, per_ip=10, minutes=1, storage=limits_storage(redis_url, "t"))

    a.failed("203.0.113.7", "staff")
    b.failed("198.51.100.1", "staff")

    assert 0 < a.locked("192.0.2.9", "staff") <= 60 and b.locked("192.0.2.9", "staff") > 0
    assert b.locked("192.0.2.9", "other") == 0
    b.succeeded("staff")
    assert a.locked("192.0.2.9", "staff") == 0


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1:1/0", "http://:hunter2@127.0.0.1:1/0"])
def test_an_unusable_redis_url_stops_the_start_naming_the_url_without_its_password(url, tmp_path, embedder):
    with pytest.raises(RedisUnavailable) as services_error:
        build_services(Settings(data_dir=tmp_path, redis_url=url), embedder)
    with pytest.raises(RedisUnavailable) as limits_error:
        limits_storage(url)

    for error in (services_error, limits_error):
        assert "127.0.0.1:1" in str(error.value) and "hunter2" not in str(error.value)
    assert isinstance(services_error.value, ValueError)


def test_a_follow_ups_history_is_logged_with_it_and_masked_for_staff(backend):
    from assistant.services import masked_question

    log = backend.log(time.time)
    history = (Turn("user", "物业费怎么交？我电话13812345678"), Turn("assistant", "按合同约定交纳。"))
    log.record("web", "u", "那多久交一次？", Answer("按季度。", (), AnswerKind.ANSWERED, answer_id="a1"), 3.0,
               condensed_with=history)
    log.record("web", "u", "入党要什么条件？", Answer("年满十八岁。", (), AnswerKind.ANSWERED, answer_id="a2"), 3.0)
    follow, alone = sorted(log.recent(), key=lambda q: q.id)
    assert follow.condensed_with == history and alone.condensed_with == ()
    assert masked_question(follow).condensed_with[0].content == "物业费怎么交？我电话138****5678"
