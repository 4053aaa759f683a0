"""The widget's data-knowledge-bases in a real headless Chromium against a real uvicorn server: a page naming a
knowledge base gets answers from it, a page naming none sends no scope (the server's default), and a page naming an
unknown one shows the server's 422 message. The service is its own (a fresh data dir holding two small documents),
and its default scope is the default knowledge base only, so only the tag's attribute reaches the `solar` one."""

from __future__ import annotations

import re

import pytest

from assistant.config import Settings
from assistant.index.kb import DEFAULT_KB
from assistant.services import build_services
from assistant.state.uploads import DocMeta
from tests import test_widget_browser
from tests.test_widget_browser import _app, _ask, _widget

pytestmark = pytest.mark.browser
browser = test_widget_browser.browser  # that module's Chromium fixture (module-scoped), not a copy of it
expect = pytest.importorskip("playwright.sync_api").expect

SOLAR = (
    "# 青禾小区屋顶光伏板安装管理规定\n\n"
    "第一条 为规范本小区住宅屋顶光伏板的安装，保障房屋结构和消防安全，制定本规定。\n\n"
    "第二条 业主在屋顶安装光伏板，应当事先向物业服务中心登记，并提交房屋结构安全评估报告。\n\n"
    "第三条 光伏板及其支架不得遮挡消防通道和排烟设施，安装高度不得超过女儿墙一点五米。\n"
)
SOLAR_TITLE = "青禾小区屋顶光伏板安装管理规定"
GARBAGE = (
    "# 青禾小区生活垃圾分类投放办法\n\n"
    "第一条 本小区生活垃圾分为厨余垃圾、可回收物、有害垃圾和其他垃圾四类。\n\n"
    "第二条 厨余垃圾应当在每日早七点至九点、晚六点至八点投放到小区东门的定时投放点。\n"
)
QUESTION = "在屋顶安装光伏板要先向谁登记？"


@pytest.fixture(scope="module")
def service(embedder, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("widget-scope") / "data"
    built = build_services(Settings(data_dir=data_dir, default_knowledge_bases=[DEFAULT_KB]), embedder)
    built.knowledge.add_document("垃圾分类投放办法.md", GARBAGE.encode(), DocMeta("", "物业", "青禾小区业主委员会", ""))
    built.library.create("solar", "光伏")
    built.library.get("solar").add_document("光伏板安装规定.md", SOLAR.encode(),
                                            DocMeta("", "物业", "青禾小区业主大会", "2024-06"))
    return built


@pytest.fixture(scope="module")
def base_url(service, live_server):
    with live_server(_app(service, rate_limit_per_minute=0)) as url:
        yield url


def _page_with_tag(browser, base_url: str, attributes: str):
    """A page on Xiaoyu's own origin (Playwright serves its HTML; the widget, its API and the answers are the real
    server's) embedding the widget with `attributes` on the tag."""
    page = browser.new_page(viewport={"width": 1280, "height": 820}, locale="zh-CN")
    html = (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>青禾小区</title></head>'
            f'<body><h1>青禾小区</h1><script src="/widget.js" data-title="青禾小助手" {attributes}></script></body></html>')
    page.route(f"{base_url}/qinghe", lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8",
                                                                 body=html))
    page.goto(f"{base_url}/qinghe")
    page.get_by_role("button", name="打开青禾小助手").click()
    return page


def _asked(page, question: str):
    """Ask through the widget: (the answer element, the JSON body of its /api/chat/stream request, the response)."""
    with page.expect_response(lambda r: r.url.endswith("/api/chat/stream")) as streamed:
        answer = _ask(page, question)
    return answer, streamed.value.request.post_data_json, streamed.value


def test_a_page_naming_a_knowledge_base_gets_answers_from_it_with_their_citation(browser, base_url):
    page = _page_with_tag(browser, base_url, 'data-knowledge-bases=" solar, community ,solar"')

    answer, sent, response = _asked(page, QUESTION)

    assert sent["knowledge_bases"] == ["solar", "community"]  # trimmed, each once, in the tag's order
    assert response.status == 200
    expect(answer).to_contain_text("【1】")
    answer.get_by_role("button", name=re.compile(r"^查看引用1：")).first.click()
    card = _widget(page)["card"]
    expect(card).to_contain_text(f"【1】《{SOLAR_TITLE}》")
    expect(card).to_contain_text("第二条")
    expect(card).to_contain_text("青禾小区业主大会")
    expect(card.locator("dd").last).to_have_text("solar")  # the page searches two: the card says which one
    # The conversation is kept per scope: another page of the site, scoped otherwise, has its own.
    keys = page.evaluate("() => Object.keys(localStorage)")
    assert keys == [f"xiaoyu-widget:{base_url}|solar,community"]
    page.close()


def test_a_page_naming_no_knowledge_base_sends_no_scope_and_the_default_scope_lacks_that_document(
        browser, base_url):
    page = _page_with_tag(browser, base_url, "")

    answer, sent, _ = _asked(page, QUESTION)

    assert "knowledge_bases" not in sent
    expect(answer).not_to_contain_text(SOLAR_TITLE)
    expect(answer).to_have_class(re.compile(r"\bxy-refused\b"))  # the default scope has nothing on it
    page.close()


def test_a_page_naming_an_unknown_knowledge_base_shows_the_servers_message(browser, base_url):
    page = _page_with_tag(browser, base_url, 'data-knowledge-bases="laws"')

    answer, sent, response = _asked(page, QUESTION)

    assert sent["knowledge_bases"] == ["laws"] and response.status == 422
    expect(answer).to_have_class(re.compile(r"\bxy-error\b"))
    expect(answer.locator(".xy-text")).to_have_text("没有这个知识库：laws。现有的知识库：community、solar")
    expect(answer).not_to_contain_text("请求失败")
    page.close()
