"""The loop back from residents, over the real service and the demo index: answer ids on every answer, 👍/👎
(POST /api/feedback), hand-offs to a person (POST /api/requests) read back only by their session, the staff queue
and replies (/admin/requests), masking of personal numbers in what staff read, retention, the signed webhook
against a real local receiver, WeChat's 有用 / 没用 / 转人工, and the console's handlers."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil

import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import RequestSettings, StaffSettings, WebSettings
from assistant.services import build_services
from assistant.state.webhook import SIGNATURE_HEADER
from tests.conftest import WebhookReceiver, make_settings
from tests.test_wechat import QUESTION, make_wechat, wechat_api  # noqa: F401  (fixtures)
from ui.console import handlers as h

TOKEN = "test-admin-token-feedback-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROPERTY_FEE = "物业费不交会怎么样？"
PHONE = "13812345678"
DAY = 24 * 3600.0


class FakeClock:
    """Stands in for time.time in the stores and the retention: a test can't wait 180 days."""

    def __init__(self, now: float = 1_750_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _app(data_dir, embedder, clock=None, **settings):
    settings = make_settings(data_dir, staff=StaffSettings(admin_token=TOKEN, console_enabled=False,
                                                           **settings.pop("staff", {})),
                             web=WebSettings(rate_limit_per_minute=0), **settings)
    services = build_services(settings, embedder, clock) if clock else build_services(settings, embedder)
    return create_app(settings, services), services


@pytest.fixture(scope="module")
def api(kb_data_dir, embedder, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("feedback") / "data"
    shutil.copytree(kb_data_dir, data_dir)
    app, _ = _app(data_dir, embedder)
    with TestClient(app) as client:
        yield client


def _chat(api, question=PROPERTY_FEE, session_id=None) -> dict:
    r = api.post("/api/chat", json={"question": question, "session_id": session_id})
    assert r.status_code == 200, r.text
    return r.json()


# ---- answer ids and feedback ---------------------------------------------------------------------------------------
def test_every_answer_carries_a_fresh_unguessable_answer_id_in_chat_stream_and_v1(api):
    first, second = _chat(api), _chat(api)
    assert len(first["answer_id"]) >= 16 and first["answer_id"] != second["answer_id"]

    with api.stream("POST", "/api/chat/stream", json={"question": PROPERTY_FEE}) as r:
        body = "".join(r.iter_text())
    done = json.loads(body.split("event: done", 1)[1].split("data: ", 1)[1].splitlines()[0])
    assert len(done["answer_id"]) >= 16

    completion = api.post("/v1/chat/completions",
                          json={"model": "xiaoyu", "messages": [{"role": "user", "content": PROPERTY_FEE}]}).json()
    assert len(completion["answer_id"]) >= 16 and completion["citations"]
    with api.stream("POST", "/v1/chat/completions", json={"model": "xiaoyu", "stream": True, "messages": [
            {"role": "user", "content": PROPERTY_FEE}]}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert len(chunks[-1]["answer_id"]) >= 16 and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    ids = {first["answer_id"], second["answer_id"], done["answer_id"], completion["answer_id"],
           chunks[-1]["answer_id"]}
    logged = {q["answer_id"] for q in api.get("/admin/questions", headers=AUTH).json()}
    assert ids <= logged  # each id names its row in the question log


def test_a_rating_is_201_and_a_second_rating_of_the_same_answer_replaces_the_first(api):
    answer_id = _chat(api, "入党需要什么条件？")["answer_id"]

    r = api.post("/api/feedback", json={"answer_id": answer_id, "rating": "up"})
    assert r.status_code == 201 and r.json() == {"answer_id": answer_id, "rating": "up"}
    r = api.post("/api/feedback", json={"answer_id": answer_id, "rating": "down", "comment": f"没说清楚，电话{PHONE}"})
    assert r.status_code == 201

    row = next(q for q in api.get("/admin/questions", headers=AUTH).json() if q["answer_id"] == answer_id)
    assert row["rating"] == "down"
    assert row["comment"] == "没说清楚，电话138****5678"  # masked as staff read it


def test_rating_an_unknown_answer_is_404_and_a_bad_rating_is_422_in_chinese(api):
    r = api.post("/api/feedback", json={"answer_id": "no-such-answer", "rating": "up"})
    assert r.status_code == 404 and "找不到这个回答" in r.json()["detail"]

    answer_id = _chat(api)["answer_id"]
    r = api.post("/api/feedback", json={"answer_id": answer_id, "rating": "meh"})
    assert r.status_code == 422 and r.json()["detail"] == "字段 评价 的类型不正确"
    r = api.post("/api/feedback", json={"answer_id": answer_id, "rating": "down", "comment": "长" * 501})
    assert r.status_code == 422 and r.json()["detail"] == "字段 意见 太长"


# ---- hand-off requests ---------------------------------------------------------------------------------------------
def test_a_request_from_an_issued_session_is_201_and_staff_see_the_conversation_that_led_to_it(api):
    answered = _chat(api, "调解协议怎么申请司法确认？")
    session_id = answered["session_id"]
    refused = _chat(api, "今天股市行情怎么样", session_id)

    r = api.post("/api/requests", json={"session_id": session_id, "answer_id": refused["answer_id"],
                                        "message": "我想问股票的事", "contact": f"王女士 {PHONE}"})
    assert r.status_code == 201
    opened = r.json()
    assert opened["status"] == "open" and len(opened["id"]) >= 12

    detail = api.get(f"/admin/requests/{opened['id']}", headers=AUTH).json()
    assert [t["role"] for t in detail["history"]] == ["user", "assistant", "user", "assistant"]
    assert detail["history"][0]["content"] == "调解协议怎么申请司法确认？"
    assert detail["history"][2]["content"] == "今天股市行情怎么样"
    assert detail["question"] == "今天股市行情怎么样" and detail["answer"] == refused["answer"]
    assert detail["channel"] == "web"


def test_a_request_from_a_session_the_server_never_issued_is_404_with_a_chinese_message(api):
    r = api.post("/api/requests", json={"session_id": "made-up-session-id", "message": "请联系我"})
    assert r.status_code == 404 and "请先向小玉提一个问题" in r.json()["detail"]


def test_an_empty_or_too_long_request_is_422(api):
    session_id = _chat(api)["session_id"]
    for body, detail in (({"message": "   "}, "请写下您想留言的内容。"), ({"message": "长" * 1001}, "字段 留言 太长"),
                         ({"message": "你好", "contact": "1" * 101}, "字段 联系方式 太长"), ({}, "缺少字段：留言")):
        r = api.post("/api/requests", json={"session_id": session_id, **body})
        assert r.status_code == 422 and r.json()["detail"] == detail, body


def test_control_characters_are_dropped_and_ids_that_were_never_issued_name_nothing(api):
    session_id = _chat(api)["session_id"]
    raw = json.dumps({"session_id": session_id, "message": "请\u0000回电\u001b", "contact": "\u0007"})
    r = api.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 201
    stored = api.get(f"/admin/requests/{r.json()['id']}", headers=AUTH).json()
    assert (stored["message"], stored["contact"]) == ("请回电", "")
    for path, body in (("/api/requests", '{"session_id": "会话 1", "message": "你好"}'),
                       ("/api/feedback", '{"answer_id": "a\\u0000b", "rating": "up"}')):
        assert api.post(path, content=body, headers={"content-type": "application/json"}).status_code == 404
    lone = json.dumps({"session_id": session_id, "message": "\ud800"})  # a lone surrogate: refused, not a 500
    assert api.post("/api/requests", content=lone, headers={"content-type": "application/json"}).status_code == 422
    assert api.get("/api/requests/x", params={"session_id": "a b"}).status_code == 404


def test_only_the_session_that_opened_a_request_can_read_it_and_then_sees_the_staff_reply(api):
    mine, theirs = _chat(api)["session_id"], _chat(api)["session_id"]
    request_id = api.post("/api/requests", json={"session_id": mine, "message": "物业不修电梯怎么办"}).json()["id"]

    r = api.get(f"/api/requests/{request_id}", params={"session_id": mine})
    assert r.status_code == 200
    assert r.json()["status"] == "open" and r.json()["reply"] is None and r.json()["updated_at"] > 0
    for session_id, rid in ((theirs, request_id), (mine, "no-such-request")):
        r = api.get(f"/api/requests/{rid}", params={"session_id": session_id})
        assert r.status_code == 404 and r.json()["detail"] == "找不到这条留言。"

    r = api.post(f"/admin/requests/{request_id}/reply", headers=AUTH,
                 json={"reply": "您好，请拨打物业服务监督电话。", "status": "answered"})
    assert r.status_code == 200 and r.json()["status"] == "answered"
    seen = api.get(f"/api/requests/{request_id}", params={"session_id": mine}).json()
    assert seen["status"] == "answered" and seen["reply"] == "您好，请拨打物业服务监督电话。"

    # Closing keeps the reply; the queue filters by status.
    api.post(f"/admin/requests/{request_id}/reply", headers=AUTH, json={"reply": "", "status": "closed"})
    assert api.get(f"/api/requests/{request_id}", params={"session_id": mine}).json()["reply"].startswith("您好")
    closed = api.get("/admin/requests", params={"status": "closed"}, headers=AUTH).json()
    assert request_id in {r["id"] for r in closed}
    assert request_id not in {r["id"] for r in api.get("/admin/requests?status=open", headers=AUTH).json()}


def test_replying_to_an_unknown_request_is_404_and_a_bad_status_is_422(api):
    r = api.post("/admin/requests/no-such-request/reply", headers=AUTH, json={"reply": "好的", "status": "answered"})
    assert r.status_code == 404
    assert api.get("/admin/requests/no-such-request", headers=AUTH).status_code == 404
    session_id = _chat(api)["session_id"]
    request_id = api.post("/api/requests", json={"session_id": session_id, "message": "你好"}).json()["id"]
    r = api.post(f"/admin/requests/{request_id}/reply", headers=AUTH, json={"reply": "好的", "status": "open"})
    assert r.status_code == 422 and r.json()["detail"] == "字段 状态 的类型不正确"
    assert api.get("/admin/requests?status=pending", headers=AUTH).status_code == 422


def test_the_staff_routes_need_the_admin_token(api):
    for method, path in (("get", "/admin/requests"), ("get", "/admin/requests/x"), ("post", "/admin/requests/x/reply")):
        assert api.request(method, path).status_code == 401


# ---- privacy -------------------------------------------------------------------------------------------------------
def test_the_queue_and_the_log_mask_personal_numbers_and_only_the_detail_shows_the_contact_in_full(api):
    question = f"我的车牌苏E12345被物业拦了，身份证320502199001011234，电话{PHONE}，物业可以不让进吗"
    session_id = _chat(api, question)["session_id"]
    request_id = api.post("/api/requests", json={"session_id": session_id, "message": f"请回电 {PHONE}",
                                                 "contact": f"李先生 {PHONE}"}).json()["id"]

    listed = next(r for r in api.get("/admin/requests", headers=AUTH).json() if r["id"] == request_id)
    assert listed["contact"] == "李先生 138****5678" and listed["message"] == "请回电 138****5678"
    detail = api.get(f"/admin/requests/{request_id}", headers=AUTH).json()
    assert detail["contact"] == f"李先生 {PHONE}" and detail["message"] == f"请回电 {PHONE}"
    assert detail["history"][0]["content"] == ("我的车牌苏E***45被物业拦了，身份证3205**********1234，"
                                               "电话138****5678，物业可以不让进吗")

    logged = next(q for q in api.get("/admin/questions", headers=AUTH).json() if "物业拦了" in q["question"])
    assert PHONE not in logged["question"] and "320502199001011234" not in logged["question"]
    assert "138****5678" in logged["question"]


# ---- retention -----------------------------------------------------------------------------------------------------
def test_retention_deletes_old_log_rows_and_closed_requests_and_keeps_open_ones(kb_data_dir, embedder, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    clock = FakeClock()
    app, services = _app(data_dir, embedder, clock, staff={"log_retention_days": 180})
    with TestClient(app) as api:
        old = _chat(api, "入党需要什么条件？")
        closed = api.post("/api/requests", json={"session_id": old["session_id"], "message": "已解决"}).json()["id"]
        still_open = api.post("/api/requests", json={"session_id": old["session_id"], "message": "还没人回"}).json()["id"]
        api.post(f"/admin/requests/{closed}/reply", headers=AUTH, json={"reply": "好的", "status": "closed"})

        clock.now += 179 * DAY
        _chat(api, "调解协议怎么申请司法确认？")  # a write a day later: retention runs, nothing is old enough yet
        assert len(api.get("/admin/questions", headers=AUTH).json()) == 2

        clock.now += 2 * DAY  # the first question and the closed request are now 181 days old
        recent = _chat(api, PROPERTY_FEE)
        questions = [q["question"] for q in api.get("/admin/questions", headers=AUTH).json()]
        assert questions == [PROPERTY_FEE, "调解协议怎么申请司法确认？"]
        assert api.get(f"/admin/requests/{closed}", headers=AUTH).status_code == 404
        assert api.get(f"/admin/requests/{still_open}", headers=AUTH).json()["status"] == "open"
        assert api.post("/api/feedback", json={"answer_id": old["answer_id"], "rating": "up"}).status_code == 404
        assert api.post("/api/feedback", json={"answer_id": recent["answer_id"], "rating": "up"}).status_code == 201

    # A restart runs it too, before anything is written.
    clock.now += 200 * DAY
    assert build_services(services.settings, embedder, clock).staff.questions() == []


def test_retention_zero_keeps_everything(kb_data_dir, embedder, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    clock = FakeClock()
    app, services = _app(data_dir, embedder, clock, staff={"log_retention_days": 0})
    with TestClient(app) as api:
        _chat(api)
        clock.now += 10_000 * DAY
        _chat(api)
    assert len(build_services(services.settings, embedder, clock).staff.questions()) == 2


# ---- webhook -------------------------------------------------------------------------------------------------------
@pytest.fixture
def receiver():
    made = []

    def make(statuses=(200,)) -> WebhookReceiver:
        made.append(WebhookReceiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_a_new_request_is_posted_to_the_webhook_signed_and_retried_until_accepted(kb_data_dir, embedder, tmp_path,
                                                                                     receiver):
    hook = receiver(statuses=(503, 500, 200))
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    secret = "hook-secret-42"
    app, _ = _app(data_dir, embedder, requests=RequestSettings(
        webhook_url=hook.url, webhook_secret=secret, webhook_attempts=4, webhook_backoff=0.05))
    with TestClient(app) as api:
        session_id = _chat(api, "调解协议怎么申请司法确认？")["session_id"]
        r = api.post("/api/requests", json={"session_id": session_id, "message": "请联系我", "contact": PHONE})
        assert r.status_code == 201  # answered before the webhook is done: it runs off the request path
        assert hook.arrived.wait(30)

    assert len(hook.received) == 3  # two failures, then accepted
    headers, body = hook.received[-1]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
    assert all(b == body for _, b in hook.received)  # each retry is the same signed body
    payload = json.loads(body)
    assert payload["event"] == "request.opened" and payload["id"] == r.json()["id"]
    assert payload["contact"] == PHONE and payload["message"] == "请联系我"
    assert payload["history"][0] == {"role": "user", "content": "调解协议怎么申请司法确认？"}


def test_a_webhook_that_never_accepts_is_given_up_after_the_configured_attempts(kb_data_dir, embedder, tmp_path,
                                                                                 receiver):
    hook = receiver(statuses=(500,))
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    app, services = _app(data_dir, embedder, requests=RequestSettings(
        webhook_url=hook.url, webhook_attempts=3, webhook_backoff=0.01))
    with TestClient(app) as api:
        session_id = _chat(api)["session_id"]
        assert api.post("/api/requests", json={"session_id": session_id, "message": "你好"}).status_code == 201
        assert services.desk._webhook.drain(30)  # the test's one look inside: wait for the background thread
    assert len(hook.received) == 3
    assert SIGNATURE_HEADER.lower() not in hook.received[0][0]  # no secret configured, no signature


# ---- WeChat --------------------------------------------------------------------------------------------------------
def _logged(services, text: str):
    return next(q for q in services.staff.questions() if q.question == text)


def test_wechat_useful_and_useless_right_after_an_answer_rate_it(make_wechat, kb_services):  # noqa: F811
    wx = make_wechat()
    assert "司法确认" in wx.send(QUESTION, openid="oRater")
    assert wx.send("有用", openid="oRater") == "谢谢您的反馈！"
    assert _logged(kb_services, QUESTION).rating == "up"
    assert wx.send("没用。", openid="oRater").startswith("抱歉这次没能帮上忙")
    assert _logged(kb_services, QUESTION).rating == "down"  # the second rating replaces the first
    # Nobody else's answer is rated: another resident's 有用 without an answer of their own is just a message.
    assert wx.send("有用", openid="oStranger") != "谢谢您的反馈！"
    assert _logged(kb_services, QUESTION).rating == "down"


def test_wechat_handoff_opens_a_request_and_the_staff_reply_comes_with_the_next_message(make_wechat,  # noqa: F811
                                                                                      kb_services):
    wx = make_wechat()
    wx.send(QUESTION, openid="oHelp")
    reply = wx.send("转人工 我想当面咨询，电话13812345678", openid="oHelp")
    assert reply.startswith("已为您转人工（留言编号 ")
    request_id = reply.split("留言编号 ", 1)[1].split("）", 1)[0]
    request = kb_services.desk.detail(request_id)
    assert request.channel == "wechat" and request.message == "我想当面咨询，电话13812345678"
    assert request.history[0].content == QUESTION
    assert request.answer_id == _logged(kb_services, QUESTION).answer_id

    kb_services.desk.reply(request_id, "您好，请周三上午到社区服务中心。", "answered")  # staff, in the console
    nxt = wx.send("入党需要什么条件？", openid="oHelp")
    assert nxt.startswith("工作人员回复了您的留言：\n您好，请周三上午到社区服务中心。")
    assert "入党" in nxt
    assert "工作人员回复" not in wx.send("物业费不交会怎么样？", openid="oHelp")  # delivered once
    # 转人工 alone still opens a request, with the conversation as its context.
    assert wx.send("转人工", openid="oAlone").startswith("已为您转人工")


def test_wechat_staff_reply_is_pushed_when_an_appsecret_is_configured(make_wechat, kb_services,  # noqa: F811
                                                                       wechat_api):  # noqa: F811
    api = wechat_api()
    wx = make_wechat(appsecret="s3cret", api_base_url=api.base_url)
    reply = wx.send("转人工 停车位的事", openid="oPush")
    assert "答复会通过本公众号发给您" in reply
    request_id = reply.split("留言编号 ", 1)[1].split("）", 1)[0]

    kb_services.desk.reply(request_id, "已转交物业处理。", "answered")
    assert wx.bridge.wait_idle(60)
    assert [(m["touser"], m["text"]["content"]) for m in api.sent] == [("oPush", "工作人员回复了您的留言：\n已转交物业处理。")]
    assert "工作人员回复" not in wx.send(PROPERTY_FEE, openid="oPush")  # pushed, so not repeated


# ---- console ---------------------------------------------------------------------------------------------------------
def test_console_queue_detail_reply_and_log_show_requests_and_ratings(kb_services):
    answer = kb_services.chat.ask(PROPERTY_FEE, start_session=True)
    kb_services.desk.rate(answer.answer_id, "down", "太长了")
    opened = kb_services.desk.open(answer.session_id, "想找人问", f"电话 {PHONE}", answer.answer_id)

    rows = h.request_rows(kb_services, "待处理")
    assert [r[0] for r in rows] == [opened.id]
    assert len(rows[0]) == len(h.REQUEST_HEADERS) and rows[0][5] == "电话 138****5678"
    detail = h.request_detail(kb_services, opened.id)
    assert f"电话 {PHONE}" in detail and PROPERTY_FEE in detail and "想找人问" in detail

    assert h.reply_request(kb_services, opened.id, "请到居委会咨询", "已答复").startswith("✅")
    assert h.request_rows(kb_services, "待处理") == []
    assert h.request_rows(kb_services, "已答复")[0][0] == opened.id
    assert h.reply_request(kb_services, "", "x", "已答复").startswith("❌")
    assert h.reply_request(kb_services, opened.id, "", "已答复").startswith("❌ 请填写答复内容")

    row = h.log_rows(kb_services, "全部", 0.86)[0]
    assert len(row) == len(h.LOG_HEADERS) and row[-2:] == ["👎", "太长了"]
