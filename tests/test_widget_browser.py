"""The widget in a real headless Chromium (Debian's package, driven by Playwright) against real uvicorn servers on
127.0.0.1: the demo page, a narrow phone screen, another site embedding the widget, markup that must stay text, and
the feedback loop (👎, 转人工 / 留言, the staff reply seen on coming back).
Screenshots for the README are written to docs/widget.png and docs/widget-phone.png."""

from __future__ import annotations

import json
import re
import shutil
import textwrap

import httpx
import pytest

from assistant.api import create_app
from assistant.config import PROJECT_ROOT, Settings, StaffSettings, WebSettings
from assistant.services import build_services

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DOCS = PROJECT_ROOT / "docs"
PROPERTY_FEE = "物业费不交会怎么样？"


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (scripts/test installs it: apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _app(service, **web):
    settings = service.settings.model_copy(update={"web": WebSettings(**web),
                                                   "staff": StaffSettings(console_enabled=False)})
    return create_app(settings, service)


@pytest.fixture(scope="module")
def service(kb_data_dir, embedder, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("widget-browser") / "data"
    shutil.copytree(kb_data_dir, data_dir)
    return build_services(Settings(data_dir=data_dir), embedder)


@pytest.fixture(scope="module")
def base_url(service, live_server):
    with live_server(_app(service, rate_limit_per_minute=0)) as url:
        yield url


def _widget(page):
    """Locators for the widget's parts (Playwright's CSS and role locators reach into its open shadow root)."""
    return {
        "bubble": page.locator("#xiaoyu-widget .xy-bubble"),
        "panel": page.locator("#xiaoyu-widget .xy-panel"),
        "input": page.get_by_role("textbox", name="输入您的问题"),
        "answers": page.locator("#xiaoyu-widget .xy-assistant.xy-done"),
        "card": page.locator("#xiaoyu-widget .xy-card"),
    }


def _ask(page, question: str):
    w = _widget(page)
    before = w["answers"].count()
    w["input"].fill(question)
    w["input"].press("Enter")
    expect(w["answers"]).to_have_count(before + 1, timeout=60_000)
    return w["answers"].last


def test_resident_asks_on_the_demo_page_and_opens_the_cited_source(browser, base_url, service):
    expected = service.chat.ask(PROPERTY_FEE)  # what the widget must show, word for word
    first = expected.citations[0]
    page = browser.new_page(viewport={"width": 1280, "height": 820}, locale="zh-CN")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{base_url}/")
    w = _widget(page)

    bubble = page.get_by_role("button", name="打开社区小助手")
    expect(bubble).to_be_visible()
    box = bubble.bounding_box()
    assert box["x"] > 1280 / 2 and box["y"] > 820 / 2  # bottom-right
    bubble.click()
    expect(w["panel"]).to_be_visible()
    expect(page.get_by_role("dialog", name="社区小助手")).to_be_visible()
    expect(w["bubble"]).to_have_attribute("aria-expanded", "true")
    expect(w["input"]).to_be_focused()
    expect(w["panel"]).to_contain_text("您好！我是社区小助手小玉")  # data-welcome from the tag
    examples = page.get_by_role("group", name="示例问题")
    for topic in ("物业", "调解", "党建"):
        expect(examples).to_contain_text(topic)

    with page.expect_response(lambda r: r.url.endswith("/api/chat/stream")) as streamed:
        answer = _ask(page, PROPERTY_FEE)
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    expect(answer.locator(".xy-text")).to_have_text(expected.text)
    assert answer.get_by_role("button", name=re.compile(r"^查看引用\d：")).count() == expected.text.count("【")

    answer.get_by_role("button", name=re.compile(r"^查看引用1：")).first.click()
    card = w["card"]
    expect(card).to_be_visible()
    expect(card).to_contain_text(f"【1】《{first.title}》")
    expect(card).to_contain_text(first.section.rsplit(" > ", 1)[-1])  # 第X条
    assert re.fullmatch(r"第[一二三四五六七八九十百千]+条", first.section.rsplit(" > ", 1)[-1])
    expect(card).to_contain_text(first.issuer)
    expect(card).to_contain_text(first.date)
    expect(card.locator("blockquote")).to_have_text(first.quote)
    link = card.get_by_role("link", name="查看原文")
    assert link.get_attribute("href").endswith(f"/sources/{first.chunk_id}#cited")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "widget.png"))

    with page.context.expect_page() as opened:
        link.click()
    source = opened.value
    source.wait_for_load_state()
    cited = source.locator("mark#cited")
    expect(cited).to_be_visible()
    expect(cited).to_contain_text(first.quote[:40])
    expect(source.locator("h1")).to_have_text(first.title)
    source.close()

    # Keyboard: Escape closes the card (focus back on its marker), then the panel (focus back on the bubble).
    page.keyboard.press("Escape")
    expect(card).to_be_hidden()
    expect(answer.get_by_role("button", name=re.compile(r"^查看引用1：")).first).to_be_focused()
    page.keyboard.press("Escape")
    expect(w["panel"]).to_be_hidden()
    expect(w["bubble"]).to_be_focused()
    expect(w["bubble"]).to_have_attribute("aria-expanded", "false")

    assert requested and all(url.startswith(base_url) for url in requested), requested  # nothing from a CDN
    page.close()


def test_conversation_survives_a_reload_and_new_conversation_resets_it(browser, base_url):
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    page.goto(f"{base_url}/")
    w = _widget(page)
    w["bubble"].focus()
    page.keyboard.press("Enter")  # the bubble opens from the keyboard
    expect(w["panel"]).to_be_visible()
    _ask(page, "调解协议怎么申请司法确认？")
    session_id = page.evaluate("() => JSON.parse(Object.entries(localStorage)[0][1]).sessionId")
    assert isinstance(session_id, str) and len(session_id) >= 22  # issued by the server with the first answer

    page.reload()
    w["bubble"].click()
    expect(w["answers"]).to_have_count(1)
    expect(page.locator("#xiaoyu-widget .xy-user .xy-text")).to_have_text(["调解协议怎么申请司法确认？"])
    # The server kept the history too: the follow-up is understood.
    follow = _ask(page, "要多久？")
    expect(follow).to_contain_text("司法确认")

    page.get_by_role("button", name=re.compile("^新对话")).click()
    expect(page.locator("#xiaoyu-widget .xy-user")).to_have_count(0)
    expect(w["input"]).to_be_focused()
    new_id = page.evaluate("() => JSON.parse(Object.entries(localStorage)[0][1]).sessionId")
    assert new_id is None  # the next answer brings a new server-issued id
    page.close()


def test_markup_in_a_question_stays_text(browser, base_url):
    page = browser.new_page()
    page.goto(f"{base_url}/")
    _widget(page)["bubble"].click()
    hostile = "<script>window.__pwned='script'</script><img src=x onerror=\"window.__pwned='img'\">物业费不交会怎么样？"

    _ask(page, hostile)

    expect(page.locator("#xiaoyu-widget .xy-user .xy-text").last).to_have_text(hostile)
    assert page.locator("#xiaoyu-widget img, #xiaoyu-widget .xy-log script").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    page.close()


HOSTILE_DOC = textwrap.dedent("""\
    # 春晖小区管理规约

    第一条 业主应当在小区划定的停车位内停放机动车辆。<script>window.__pwned = "doc"</script>
    第二条 业主饲养宠物应当遵守养犬管理规定，<img src=x onerror="window.__pwned='img'">不得干扰他人正常生活。
    第三条 业主装修房屋，应当事先告知物业服务企业。
    """)


@pytest.fixture(scope="module")
def hostile_url(embedder, tmp_path_factory, live_server):
    """A knowledge base whose document and title carry markup, as a careless upload might."""
    root = tmp_path_factory.mktemp("hostile-kb")
    (root / "物业").mkdir()
    (root / "物业" / "管理规约.md").write_text(HOSTILE_DOC, encoding="utf-8")
    manifest = [{"file": "物业/管理规约.md", "title": "<i>春晖</i>小区管理规约", "category": "物业",
                 "issuer": "春晖小区<b>业主大会</b>", "date": "2024-01-01", "kind": "法规"}]
    (root / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    service = build_services(Settings(data_dir=root.parent / "hostile-data", knowledge_base=root), embedder)
    assert not service.knowledge.ingest([root]).failed
    with live_server(_app(service)) as url:
        yield url


def test_markup_in_a_document_stays_text_in_answer_card_and_source_page(browser, hostile_url):
    page = browser.new_page()
    page.goto(f"{hostile_url}/")
    w = _widget(page)
    w["bubble"].click()

    answer = _ask(page, "业主应当在哪里停放机动车辆？")
    expect(answer).to_contain_text('<script>window.__pwned = "doc"</script>')
    answer.get_by_role("button", name=re.compile(r"^查看引用1：")).first.click()
    expect(w["card"]).to_contain_text("《<i>春晖</i>小区管理规约》")
    expect(w["card"]).to_contain_text("春晖小区<b>业主大会</b>")
    assert page.locator("#xiaoyu-widget img, #xiaoyu-widget i, #xiaoyu-widget b, #xiaoyu-widget .xy-log script").count() == 0

    with page.context.expect_page() as opened:
        w["card"].get_by_role("link", name="查看原文").click()
    source = opened.value
    source.wait_for_load_state()
    expect(source.locator("mark#cited")).to_contain_text('<script>window.__pwned = "doc"</script>')
    expect(source.locator("main")).to_contain_text("<img src=x onerror=")
    assert source.locator("main img, main script, h1 i").count() == 0
    assert source.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => window.__pwned") is None
    page.close()


def test_phone_width_panel_fills_the_screen(browser, base_url):
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, locale="zh-CN", reduced_motion="reduce")  # no opening animation
    page = context.new_page()
    page.goto(f"{base_url}/")
    w = _widget(page)
    w["bubble"].tap()

    box = w["panel"].bounding_box()
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 375, 740)
    expect(w["bubble"]).to_be_hidden()  # it would cover the send button
    page.get_by_role("button", name=re.compile("调解协议怎么申请司法确认")).tap()
    expect(w["answers"]).to_have_count(1, timeout=60_000)
    expect(w["answers"].last).to_contain_text("司法确认")
    send = page.get_by_role("button", name="发送")
    send_box = send.bounding_box()
    assert send_box["x"] + send_box["width"] <= 375 and send_box["y"] + send_box["height"] <= 740
    no_sideways_scroll = page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert no_sideways_scroll
    page.screenshot(path=str(DOCS / "widget-phone.png"))

    page.get_by_role("button", name="关闭对话窗口").tap()
    expect(w["panel"]).to_be_hidden()
    expect(w["bubble"]).to_be_visible()
    context.close()


# ---- feedback and hand-off ---------------------------------------------------------------------------------------
ADMIN_TOKEN = "browser-admin-token-0123456789"


@pytest.fixture(scope="module")
def staff_url(service, live_server):
    """The demo page on a server whose admin API is on: staff answer through it while the resident is away."""
    settings = service.settings.model_copy(update={"web": WebSettings(rate_limit_per_minute=0),
                                                   "staff": StaffSettings(console_enabled=False,
                                                                          admin_token=ADMIN_TOKEN)})
    with live_server(create_app(settings, service)) as url:
        yield url


def test_resident_rates_an_answer_down_hands_off_and_sees_the_staff_reply_on_coming_back(browser, staff_url):
    question = "调解协议怎么申请司法确认？"
    page = browser.new_page(viewport={"width": 1280, "height": 820}, locale="zh-CN")
    page.goto(f"{staff_url}/")
    w = _widget(page)
    w["bubble"].click()
    answer = _ask(page, question)

    down = answer.get_by_role("button", name="没帮助")
    with page.expect_response(lambda r: r.url.endswith("/api/feedback")) as rated:
        down.click()
    assert rated.value.status == 201
    expect(down).to_have_attribute("aria-pressed", "true")
    answer.get_by_role("textbox", name="哪里不满意（选填）").fill("没说要准备哪些材料")
    with page.expect_response(lambda r: r.url.endswith("/api/feedback")):
        answer.get_by_role("button", name="提交意见").click()
    expect(answer.get_by_role("status")).to_have_text("已收到，我们会改进。")

    answer.get_by_role("button", name="转人工 / 留言").click()  # offered with the 👎
    expect(page.locator("#xiaoyu-widget .xy-handoff")).to_be_visible()
    expect(page.get_by_role("textbox", name="留言内容")).to_be_focused()
    page.get_by_role("textbox", name="留言内容").fill("想当面问问司法确认要带什么")
    page.get_by_role("textbox", name="联系方式（选填）").fill("王女士 13812345678")
    with page.expect_response(lambda r: r.url.endswith("/api/requests")) as opened:
        page.get_by_role("button", name="提交留言").click()
    assert opened.value.status == 201
    request_id = opened.value.json()["id"]
    card = page.locator("#xiaoyu-widget .xy-request")
    expect(card).to_contain_text(f"您的留言（编号 {request_id}）：已提交，等待工作人员处理")
    expect(page.locator("#xiaoyu-widget .xy-handoff")).to_be_hidden()

    # Staff, through the admin API: the queue masks the phone, the request itself has it, and the conversation.
    with httpx.Client(base_url=staff_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as staff:
        listed = next(r for r in staff.get("/admin/requests", params={"status": "open"}).json() if r["id"] == request_id)
        assert listed["contact"] == "王女士 138****5678"
        detail = staff.get(f"/admin/requests/{request_id}").json()
        assert detail["contact"] == "王女士 13812345678" and detail["question"] == question
        assert detail["history"][0] == {"role": "user", "content": question}
        logged = next(q for q in staff.get("/admin/questions").json() if q["answer_id"] == detail["answer_id"])
        assert (logged["rating"], logged["comment"]) == ("down", "没说要准备哪些材料")
        r = staff.post(f"/admin/requests/{request_id}/reply",
                       json={"reply": "请带上调解协议书和双方身份证，到基层人民法院申请。", "status": "answered"})
        assert r.status_code == 200

    page.reload()  # the resident comes back later, in the same browser
    with page.expect_response(lambda r: f"/api/requests/{request_id}?session_id=" in r.url):
        w["bubble"].click()
    expect(card).to_contain_text("工作人员已答复")
    expect(card).to_contain_text("工作人员答复：请带上调解协议书和双方身份证，到基层人民法院申请。")
    expect(w["answers"].last.get_by_role("button", name="没帮助")).to_have_attribute("aria-pressed", "true")

    refused = _ask(page, "今天股市行情怎么样，推荐一只股票")  # a refusal offers 转人工 too
    expect(refused.get_by_role("button", name="转人工 / 留言")).to_be_visible()
    page.close()


# ---- embedded on another site ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def community_site(service, live_server):
    """A second real server on another port (so another origin) serving a community page with the one tag.
    Xiaoyu allows that origin only; the same page reached as http://localhost:… is a different, unlisted origin."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    xiaoyu: dict[str, str] = {}

    def home(request):
        return HTMLResponse(f"""<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>社区</title>
            </head><body><h1>春晖社区</h1>
            <script src="{xiaoyu['url']}/widget.js" data-title="春晖社区小助手"></script></body></html>""")

    with (live_server(Starlette(routes=[Route("/", home)])) as site,
          live_server(_app(service, cors_origins=[site], rate_limit_per_minute=1)) as url):
        xiaoyu["url"] = url
        yield site


def test_widget_works_embedded_on_an_allowed_site_and_shows_the_limit_message(browser, community_site, service):
    expected = service.chat.ask(PROPERTY_FEE)
    page = browser.new_page()
    page.goto(community_site)
    page.get_by_role("button", name="打开春晖社区小助手").click()

    answer = _ask(page, PROPERTY_FEE)  # a cross-origin call to the widget's own server
    expect(answer).to_contain_text("【1】")
    answer.get_by_role("button", name=re.compile(r"^查看引用1：")).first.click()
    expect(_widget(page)["card"]).to_contain_text(expected.citations[0].title)

    limited = _ask(page, PROPERTY_FEE)  # this server allows one question a minute
    expect(limited).to_contain_text("提问太频繁了：每分钟最多可以提 1 个问题")
    page.close()


def test_widget_on_a_site_not_on_the_allowlist_cannot_ask(browser, community_site):
    page = browser.new_page()
    page.goto(community_site.replace("127.0.0.1", "localhost"))
    page.get_by_role("button", name="打开春晖社区小助手").click()

    answer = _ask(page, PROPERTY_FEE)

    expect(answer).to_contain_text("暂时无法连接小玉")
    expect(answer).not_to_contain_text("【1】")
    page.close()
