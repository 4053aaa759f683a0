"""Several `xiaoyu serve` processes behind one load balancer, sharing WeChat's state through a real Redis.

Each "process" here is its own services and app (its own bridge, pool and Redis client) over one data dir, as two
workers on one host would be; only XIAOYU_REDIS_URL ties their WeChat state together. WeChat's retries of a message and
the resident's next message are sent to whichever one the test names, signed as WeChat signs them (WeChatSim)."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import WeChatSettings
from assistant.services import build_services
from assistant.wechat import format as fmt
from assistant.wechat.state import JOB_TTL, PENDING_TTL, Job, MemoryBridgeState, RedisBridgeState
from tests.conftest import make_settings
from tests.test_wechat import AES_KEY, ANSWER_MARK, APPID, QUESTION, TOKEN, SlowAsk, WeChatSim

OTHER_QUESTION = "物业服务企业可以停水停电催交物业费吗？"


@pytest.fixture
def processes(kb_data_dir, embedder, tmp_path, redis_url):
    """make(**wechat_overrides) -> (a, b): two WeChatSims, each over its own services and app, sharing one Redis."""
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    clients, slowed = [], []

    def one(overrides: dict) -> WeChatSim:
        services = build_services(make_settings(data_dir, redis_url=redis_url), embedder)
        values = {"token": TOKEN, "appid": APPID, "aes_key": AES_KEY, "reply_budget": 120.0, "retry_hold": 0.0}
        settings = services.settings.model_copy(update={"wechat": WeChatSettings(**(values | overrides))})
        client = TestClient(create_app(settings, services))
        client.__enter__()
        clients.append(client)
        wx = WeChatSim(client, "safe")
        wx.services = services
        return wx

    def make(**overrides) -> tuple[WeChatSim, WeChatSim]:
        return one(overrides), one(overrides)

    def slow(wx: WeChatSim, gated: bool = True) -> SlowAsk:
        slowed.append(SlowAsk(wx.services, slow=gated))
        return slowed[-1]

    make.slow = slow
    yield make
    for ask in slowed:
        ask.release()  # a failed test must not leave a pool blocked
    for client in clients:
        client.__exit__(None, None, None)


def _wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _logged(services, text: str):
    return next(q for q in services.staff.questions() if q.question == text)


# ---- one computation per MsgId -----------------------------------------------------------------------------------
def test_a_retry_reaching_another_process_waits_for_the_owners_answer_and_replies_the_same_text(processes):
    a, b = processes()
    slow_a, ask_b = processes.slow(a), processes.slow(b, gated=False)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(a.send, QUESTION, "5001")
        _wait_until(lambda: slow_a.calls == 1)  # A has claimed the message and is answering it
        retry = pool.submit(b.send, QUESTION, "5001")  # WeChat's retry, balanced to B while A still works
        time.sleep(0.5)
        assert not retry.done()  # B waits for A's answer rather than compute its own
        slow_a.release()
        replies = [first.result(120), retry.result(120)]
    replies.append(b.send(QUESTION, msg_id="5001"))  # the last retry, after the answer: the same reply again
    assert replies[0] == replies[1] == replies[2]
    assert ANSWER_MARK in replies[0]
    assert slow_a.calls == 1 and ask_b.calls == 0


def test_a_message_both_processes_receive_at_once_is_answered_once(processes):
    a, b = processes()
    ask_a, ask_b = processes.slow(a, gated=False), processes.slow(b, gated=False)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda wx: wx.send(QUESTION, msg_id="5101"), (a, b)))
    assert replies[0] == replies[1] and ANSWER_MARK in replies[0]
    assert ask_a.calls + ask_b.calls == 1


# ---- late answers ------------------------------------------------------------------------------------------------
def test_an_answer_deferred_on_one_process_comes_with_the_residents_next_message_on_another(processes):
    a, b = processes(reply_budget=0.2)
    slow_a, ask_b = processes.slow(a), processes.slow(b, gated=False)
    # The three requests of one message, spread over both: the third is the last wherever it lands.
    assert a.send(QUESTION, msg_id="8001") == "success"
    assert b.send(QUESTION, msg_id="8001") == "success"
    assert b.send(QUESTION, msg_id="8001") == fmt.PLACEHOLDER
    # Too early, on B: told to wait, and not asked as a question, though B never saw the answer start.
    assert b.send("好的", msg_id="8002") == fmt.STILL_WORKING
    slow_a.release()
    assert a.bridge.wait_idle(120)
    reply = b.send("1", msg_id="8003")
    assert reply.startswith(f"您之前的问题“{QUESTION}”查到了")
    assert ANSWER_MARK in reply
    # Delivered once: on A too, the next message is a question again.
    again = a.send(OTHER_QUESTION, msg_id="8004")
    assert not again.startswith("您之前的问题") and "【1】" in again
    assert slow_a.calls == 2 and ask_b.calls == 0


# ---- "继续" and 有用 / 没用 ----------------------------------------------------------------------------------------
def test_continue_on_another_process_returns_the_next_pages_of_an_answer_given_on_the_first(processes):
    a, b = processes(reply_max_bytes=400)
    expected = fmt.format_answer(a.services.chat.ask(QUESTION))  # the same answer, asked without a session
    pages = [a.send(QUESTION)]
    # WeChat retries one "继续" on the other process: the same page, not the one after it.
    second = [b.send("继续", msg_id="9201"), a.send("继续", msg_id="9201")]
    assert second[0] == second[1]
    pages.append(second[0])
    while pages[-1].endswith(fmt.MORE_HINT):
        pages.append((a, b)[len(pages) % 2].send("继续"))
        assert len(pages) < 20
    assert len(pages) >= 3
    joined = "".join(p.removesuffix("\n\n" + fmt.MORE_HINT) for p in pages)
    assert "".join(joined.split()) == "".join(expected.split())
    assert b.send("继续") == a.send("继续") == fmt.NO_MORE


def test_useful_on_another_process_rates_the_answer_given_on_the_first(processes):
    a, b = processes()
    assert "司法确认" in a.send(QUESTION, openid="oRater")
    assert b.send("有用", openid="oRater") == "谢谢您的反馈！"
    assert _logged(b.services, QUESTION).rating == "up"
    assert a.send("没用", openid="oRater").startswith("抱歉这次没能帮上忙")
    assert _logged(a.services, QUESTION).rating == "down"
    # 重新开始 on B forgets the answer for A too: 有用 is then just a message.
    assert b.send("重新开始", openid="oRater") == fmt.RESET_DONE
    assert a.send("有用", openid="oRater") != "谢谢您的反馈！"


def test_every_key_the_bridge_leaves_in_redis_expires(processes, redis_url):
    a, b = processes(reply_budget=0.2, reply_max_bytes=400)
    slow_a = processes.slow(a)
    assert [a.send(QUESTION, msg_id="7001"), b.send(QUESTION, msg_id="7001"), a.send(QUESTION, msg_id="7001")] == [
        "success", "success", fmt.PLACEHOLDER]
    slow_a.release()
    assert a.bridge.wait_idle(120)
    b.send("1", msg_id="7002")  # takes the late answer, leaves "继续" pages
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(f"xiaoyu:wechat:{APPID}:*")]
    kinds = {k.rsplit("}:", 1)[1].split(":", 1)[0] for k in keys}
    assert {"claim", "msg", "more", "answered"} <= kinds  # (the late set, emptied, is gone)
    for key in keys:
        assert 0 < client.pttl(key) <= PENDING_TTL * 1000, key
    client.close()


# ---- the state's contract, in memory and in Redis ------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def state(request):
    if request.param == "memory":
        yield MemoryBridgeState()
        return
    url = request.getfixturevalue("redis_url")
    shared = RedisBridgeState(redis.Redis.from_url(url, decode_responses=True))
    yield shared
    shared.close()


def _job(key: str, text: str | None = None) -> Job:
    return Job("oContract", f"问题{key}", key=key, text=text)


def test_the_first_served_reply_is_fixed_and_its_pages_wait_for_continue(state):
    job = _job("m1", "全文")
    assert state.attempt(job) == 1 and state.attempt(job) == 2
    state.finish(job)
    assert state.serve(job, "第一页", ["第二页", "第三页"]) == "第一页"
    assert state.serve(job, "另一页", ["别的"]) == "第一页"  # a retry gets what the first request got
    assert [state.next_page("oContract") for _ in range(3)] == ["第二页", "第三页", None]


def test_a_late_answer_is_delivered_once(state):
    job = _job("m2")
    state.add_late(job)
    assert [(j.key, j.question, j.text) for j in state.late("oContract")] == [("m2", "问题m2", None)]
    job.text = "答案"
    assert state.finish(job) is False  # its last request has not passed: nobody asked for a push
    late = state.late("oContract")
    assert [j.text for j in late] == ["答案"]
    assert state.take_late(late[0]) is True
    assert state.take_late(late[0]) is False
    assert state.late("oContract") == []
    assert state.serve(job, "第一页", None) == ""  # a straggling retry: delivered already, no reply
    state.restore_late(job)  # the push failed: it is late again
    assert [j.key for j in state.late("oContract")] == ["m2"]


def test_deferring_says_whether_the_answer_has_already_finished(state):
    early, done = _job("m3"), _job("m4", "答案")
    assert state.defer(early) is None
    early.text = "稍后的答案"
    assert state.finish(early) is True  # deferred before it finished: the finisher pushes
    state.finish(done)
    assert state.defer(done) == ("答案", True)  # finished before it was deferred: the deferrer pushes


def test_forgetting_a_resident_drops_its_late_answers_pages_and_last_answer(state):
    state.add_late(_job("m5"))
    state.set_pages("oContract", ["第二页"])
    state.set_answered("oContract", "ans-1")
    assert state.answered("oContract") == "ans-1"
    state.forget("oContract")
    assert state.late("oContract") == [] and state.next_page("oContract") is None
    assert state.answered("oContract") is None


def test_only_the_first_process_claims_a_message(redis_url):
    first, second = (RedisBridgeState(redis.Redis.from_url(redis_url, decode_responses=True)) for _ in range(2))
    assert first.claim("m6", "oContract") is True
    assert second.claim("m6", "oContract") is False
    first.close()
    second.close()
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl("xiaoyu:wechat:{oContract}:claim:m6") <= JOB_TTL * 1000
    client.close()
