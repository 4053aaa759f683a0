"""What the widget talks to: /api/chat/stream (SSE), /widget.js, the demo page, /sources/{id}, and the embedding
safety around them (origin allowlist, CORS, per-client rate limit, markup always escaped)."""

from __future__ import annotations

import json
import logging
import textwrap

import httpx
import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import Settings, StaffSettings, WebSettings
from assistant.services import build_services
from tests.conftest import live_chunks

FIRST = "调解协议怎么申请司法确认？"
FOLLOW_UP = "要多久？"
SHEQU = "https://shequ.example"


@pytest.fixture(scope="module")
def service(module_services):
    return module_services


def make_app(service, **web):
    settings = service.settings.model_copy(update={"web": WebSettings(**web),
                                                   "staff": StaffSettings(console_enabled=False)})
    return create_app(settings, service)


@pytest.fixture(scope="module")
def client(service):
    return TestClient(make_app(service, rate_limit_per_minute=0))


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        kind = next((line[6:].strip() for line in lines if line.startswith("event:")), "message")
        data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
        if data:
            events.append((kind, json.loads(data)))
    return events


# ---- /api/chat/stream -----------------------------------------------------------------------------------
def test_stream_sends_citations_then_text_deltas_then_done(client):
    r = client.post("/api/chat/stream", json={"question": FIRST})

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    kinds = [k for k, _ in events]
    assert kinds[0] == "citations" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) > 4
    done = events[-1][1]
    assert "".join(d["text"] for k, d in events if k == "delta") == done["answer"]
    assert events[0][1]["citations"] == done["citations"]
    assert done["citations"][0]["title"] == "最高人民法院关于人民调解协议司法确认程序的若干规定"
    assert {"第二条", "第三条"} & {c["section"] for c in done["citations"]} and done["citations"][0]["chunk_id"]
    assert done["refused"] is False


def test_stream_answers_match_the_json_endpoint(client):
    streamed = sse_events(client.post("/api/chat/stream", json={"question": FIRST}).text)[-1][1]
    plain = client.post("/api/chat", json={"question": FIRST}).json()

    assert streamed["answer"] == plain["answer"] and streamed["citations"] == plain["citations"]


def test_stream_with_a_session_remembers_the_conversation(client):
    first = sse_events(client.post("/api/chat/stream", json={"question": FIRST}).text)
    issued = first[-1][1]["session_id"]
    follow = sse_events(client.post("/api/chat/stream", json={"question": FOLLOW_UP, "session_id": issued}).text)
    alone = sse_events(client.post("/api/chat/stream", json={"question": FOLLOW_UP, "session_id": "widget-s2"}).text)

    assert follow[-1][1]["refused"] is False and follow[-1][1]["session_id"] == issued
    assert alone[-1][1]["refused"] is True and alone[-1][1]["session_id"] not in (issued, "widget-s2")


@pytest.mark.parametrize("question, reason", [("  ", "问题不能为空"), ("问" * 1001, "问题太长了")])
def test_bad_question_is_a_chinese_422_before_any_streaming(client, question, reason):
    r = client.post("/api/chat/stream", json={"question": question})

    assert r.status_code == 422 and reason in r.json()["detail"]


def test_malformed_body_is_a_chinese_422(client):
    r = client.post("/api/chat/stream", content=b"{not json", headers={"content-type": "application/json"})

    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_client_leaving_mid_stream_does_not_crash_the_server(service, live_server, caplog):
    caplog.set_level(logging.WARNING)
    with live_server(make_app(service, rate_limit_per_minute=0)) as url:
        with httpx.stream("POST", f"{url}/api/chat/stream", json={"question": FIRST}, timeout=120) as r:
            first = next(r.iter_lines())
        # The connection is closed after one line; the server must carry on and serve the next resident.
        after = httpx.post(f"{url}/api/chat", json={"question": FIRST}, timeout=120)

    assert first.startswith("event: citations")
    assert after.status_code == 200 and after.json()["citations"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text


# ---- static widget and demo page ------------------------------------------------------------------------
def test_widget_script_and_styles_are_served(client):
    js = client.get("/widget.js")
    css = client.get("/widget.css")

    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "/api/chat/stream" in js.text and "data-title" in js.text
    # The XSS rule of the widget, checked at the source: no HTML parsing of anything (the browser test checks
    # the behaviour).
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js.text


def test_demo_page_embeds_the_widget_with_one_script_tag(client):
    page = client.get("/")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("<script") == 1
    assert '<script src="/widget.js" data-title="社区小助手"' in page.text
    # The copyable snippet for administrators is shown as text, with this server's absolute URL.
    assert "&lt;script src=&quot;http://testserver/widget.js&quot;" in page.text


# ---- /sources/{id} --------------------------------------------------------------------------------------
def test_source_page_shows_the_document_with_the_cited_passage_highlighted(client, service):
    citation = client.post("/api/chat", json={"question": FIRST}).json()["citations"][0]
    chunk = live_chunks(service)[citation["chunk_id"]]

    page = client.get(f"/sources/{citation['chunk_id']}")

    assert page.status_code == 200
    marked = page.text.split('<mark id="cited" tabindex="-1">', 1)[1].split("</mark>", 1)[0]
    assert marked == chunk.body  # exactly the cited provision (this corpus has no markup to escape)
    assert "当事人申请确认调解协议" in marked
    before, after = page.text.split(marked, 1)
    assert "第一条" in before and "第十三条" in after  # the whole document is there, around the passage
    assert "最高人民法院关于人民调解协议司法确认程序的若干规定" in page.text
    assert "2011-03-23" in page.text and "第三条" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_unknown_source_is_a_chinese_404_page(client):
    page = client.get("/sources/0123456789abcdef")

    assert page.status_code == 404 and "找不到这段原文" in page.text


HOSTILE_DOC = textwrap.dedent("""\
    # 春晖小区管理规约

    第一条 业主应当在小区划定的停车位内停放机动车辆。<script>window.__pwned = "doc"</script>
    第二条 业主饲养宠物应当遵守养犬管理规定，<img src=x onerror="window.__pwned='img'">不得干扰他人正常生活。
    第三条 业主装修房屋，应当事先告知物业服务企业。
    """)
HOSTILE_MANIFEST = [{"file": "物业/管理规约.md", "title": "<i>春晖</i>小区管理规约", "category": "物业",
                     "issuer": "春晖小区<b>业主大会</b>", "date": "2024-01-01", "kind": "法规"}]


@pytest.fixture(scope="module")
def hostile_service(embedder, tmp_path_factory):
    """A knowledge base whose document and metadata carry markup, as a careless upload might."""
    root = tmp_path_factory.mktemp("hostile-kb")
    (root / "物业").mkdir()
    (root / "物业" / "管理规约.md").write_text(HOSTILE_DOC, encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps(HOSTILE_MANIFEST, ensure_ascii=False), encoding="utf-8")
    service = build_services(Settings(data_dir=root.parent / "hostile-data", knowledge_base=root), embedder)
    assert not service.knowledge.ingest([root]).failed
    return service


def test_markup_in_a_document_is_shown_as_text_on_the_source_page(hostile_service):
    client = TestClient(make_app(hostile_service))
    chunk = next(c for c in live_chunks(hostile_service).values() if "停放" in c.text)

    page = client.get(f"/sources/{chunk.id}").text

    assert "<script>window" not in page and "<img" not in page and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;window.__pwned = &quot;doc&quot;&lt;/script&gt;" in page
    assert "&lt;i&gt;春晖&lt;/i&gt;小区管理规约" in page


# ---- origin allowlist and CORS -------------------------------------------------------------------------
def test_allowed_origin_gets_cors_headers_for_preflight_and_answers(service):
    client = TestClient(make_app(service, cors_origins=[SHEQU]))

    preflight = client.options("/api/chat/stream", headers={
        "origin": SHEQU, "access-control-request-method": "POST", "access-control-request-headers": "content-type"})
    answer = client.post("/api/chat/stream", json={"question": FIRST}, headers={"origin": SHEQU})

    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == SHEQU
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == SHEQU


def test_origin_not_on_the_allowlist_is_refused_in_chinese(service):
    client = TestClient(make_app(service, cors_origins=[SHEQU]))

    preflight = client.options("/api/chat/stream", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    # A "simple" request skips the preflight, so the server itself must refuse to do the work.
    direct = client.post("/api/chat/stream", content=json.dumps({"question": FIRST}),
                         headers={"origin": "https://evil.example", "content-type": "text/plain"})
    openai_path = client.post("/v1/chat/completions", headers={"origin": "https://evil.example"},
                              json={"model": "xiaoyu", "messages": [{"role": "user", "content": FIRST}]})

    assert "access-control-allow-origin" not in preflight.headers
    assert direct.status_code == 403 and "未获授权" in direct.json()["detail"]
    assert openai_path.status_code == 403 and openai_path.json()["error"]["code"] == "origin_not_allowed"


def test_with_no_allowlist_only_the_own_site_and_non_browser_clients_may_ask(service):
    client = TestClient(make_app(service))

    own = client.post("/api/chat", json={"question": FIRST}, headers={"origin": "http://testserver"})
    script = client.post("/api/chat", json={"question": FIRST})  # curl, the openai client: no Origin header
    foreign = client.post("/api/chat", json={"question": FIRST}, headers={"origin": SHEQU})
    sandboxed = client.post("/api/chat", json={"question": FIRST}, headers={"origin": "null"})

    assert own.status_code == 200 and script.status_code == 200
    assert foreign.status_code == 403 and sandboxed.status_code == 403
    assert "access-control-allow-origin" not in own.headers


def test_star_allows_any_site(service):
    client = TestClient(make_app(service, cors_origins=["*"]))

    r = client.post("/api/chat", json={"question": FIRST}, headers={"origin": "https://any.example"})

    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_allowlist_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("XIAOYU_WEB_CORS_ORIGINS", "https://a.example, https://b.example/")
    monkeypatch.setenv("XIAOYU_WEB_RATE_LIMIT_PER_MINUTE", "7")

    web = Settings().web

    assert web.cors_origins == ["https://a.example", "https://b.example"] and web.rate_limit_per_minute == 7


# ---- rate limit ----------------------------------------------------------------------------------------
def test_questions_over_the_limit_get_a_chinese_429_with_retry_after(service):
    app = make_app(service, rate_limit_per_minute=3, cors_origins=[SHEQU])
    resident = TestClient(app, client=("203.0.113.7", 50000))
    neighbour = TestClient(app, client=("203.0.113.8", 50000))

    statuses = [resident.post("/api/chat/stream", json={"question": FIRST}).status_code,
                resident.post("/api/chat", json={"question": FIRST}).status_code,
                resident.post("/v1/chat/completions",
                              json={"model": "xiaoyu", "messages": [{"role": "user", "content": FIRST}]}).status_code]
    limited = resident.post("/api/chat/stream", json={"question": FIRST}, headers={"origin": SHEQU})

    assert statuses == [200, 200, 200]  # all three question endpoints share one budget
    assert limited.status_code == 429
    assert "提问太频繁" in limited.json()["detail"] and "每分钟最多可以提 3 个问题" in limited.json()["detail"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # CORS headers still on the 429, so the widget on the community site can read and show the message.
    assert limited.headers["access-control-allow-origin"] == SHEQU
    assert neighbour.post("/api/chat", json={"question": FIRST}).status_code == 200  # limits are per client
    assert resident.get("/widget.js").status_code == 200  # only questions count


def test_rate_limit_zero_turns_it_off(service):
    client = TestClient(make_app(service, rate_limit_per_minute=0))

    # Empty questions are cheap to send and still pass the limiter (which counts before validation).
    assert {client.post("/api/chat", json={"question": ""}).status_code for _ in range(25)} == {422}
