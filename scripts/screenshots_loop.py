"""Screenshots of the feedback loop (docs/loop-*.png), taken offline with Debian's headless chromium.

    .venv/bin/python scripts/screenshots_loop.py [--data-dir DIR] [--out docs]

DIR is an ingested data dir (it is copied, never changed); without it the bundled knowledge base is ingested into a
temporary one first. The script starts the real app on 127.0.0.1 with the admin API on and a throwaway staff
account, then plays the loop as residents and staff would:

1. residents ask ~20 questions through /api/chat (物业费, 调解, 入党 …), spread over the last four weeks, and rate a
   few of them 👎 (so 高频诉求 has topics and a weekly chart);
2. in the widget demo page a resident asks, rates the answer 👎 with a reason and leaves a 转人工 / 留言 request with
   a made-up phone number                                                      → loop-widget-feedback.png
3. in the console's 转人工 tab staff open the queue and that request with its conversation → loop-console-queue.png
4. staff reply through the admin API (POST /admin/requests/{id}/reply); the resident comes back to the widget and
   sees the reply                                                              → loop-widget-reply.png
5. the console's 高频诉求 tab, report and weekly chart                          → loop-console-topics.png

Only the question log and the requests are dated by a shifted clock (build_services' `clock`) while step 1 runs;
nothing else is faked."""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.screenshots_console import ARGS, CHROMIUM, _free_port

DAY = 86400
VIEWPORT = {"width": 1200, "height": 860}
# (days ago, question, 👎 with this reason or None). More of them in the later weeks, as after a fee notice.
TOPIC_QUESTIONS = [
    (22, "物业费不交会怎么样？", None), (20, "调解协议签了以后反悔怎么办？", None), (19, "入党需要什么条件？", None),
    (15, "物业费可以拒交吗？", None), (14, "人民调解要收费吗？", None), (13, "申请入党要写什么材料？", None),
    (12, "物业服务不到位，能不能少交物业费？", "没说怎么跟物业协商"), (9, "邻里纠纷可以找谁调解？", None),
    (8, "入党积极分子要考察多久？", None), (8, "物业费涨价需要业主同意吗？", None),
    (6, "调解不成还能去法院起诉吗？", None), (5, "拖欠物业费，物业能停水停电吗？", "想知道物业能不能停电"),
    (4, "预备党员的预备期是多长？", None), (3, "物业费的收费标准由谁定？", None),
    (3, "调解协议有法律效力吗？", None), (2, "物业公司催缴物业费可以上门吗？", None),
    (2, "入党申请书交给谁？", None), (1, "物业费一般多久交一次？", None),
    (1, "人民调解委员会怎么申请调解？", None), (0, "入党要交党费吗，交多少？", None),
    (0, "今天股市行情怎么样，推荐一只股票", None),
]
WIDGET_QUESTION = "调解协议怎么申请司法确认？"
WIDGET_REASON = "没说要准备哪些材料"
WIDGET_MESSAGE = "想当面问问司法确认要带什么材料，工作日晚上方便。"
WIDGET_CONTACT = "王女士 13812345678"  # made up; the console's queue shows it as 138****5678
STAFF_REPLY = "王女士您好：请带上调解协议书和双方身份证，到基层人民法院申请司法确认。周三上午社区服务中心也可以帮您核对材料。"
OTHER_QUESTION = "物业费涨价需要业主同意吗？"
OTHER_MESSAGE = "我们小区物业费下月要涨，想问问业委会能不能出面。"
OTHER_CONTACT = "李先生 13900001234"


class ShiftedClock:
    """time.time(), `days` ago: dates the question log rows of step 1 in past weeks."""

    def __init__(self) -> None:
        self.days = 0.0

    def __call__(self) -> float:
        return time.time() - self.days * DAY


def _serve(data_dir: Path, user: str, password: str, admin_token: str, clock: ShiftedClock):
    import uvicorn

    from assistant.api import create_app
    from assistant.config import StaffSettings, WebSettings, get_settings
    from assistant.services import build_services
    from assistant.state.accounts import hash_password

    settings = get_settings().model_copy(update={
        "data_dir": data_dir, "web": WebSettings(rate_limit_per_minute=0),
        "staff": StaffSettings(console_users=f"{user}:{hash_password(password, rounds=4)}", admin_token=admin_token)})
    services = build_services(settings, clock=clock)
    services.knowledge.ensure_ingested()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    return server, thread, f"http://127.0.0.1:{port}"


def _residents_ask(base: str, clock: ShiftedClock) -> None:
    """Step 1: questions over four weeks through the public API, a few rated 👎; one more request in the queue."""
    with httpx.Client(base_url=base, timeout=120) as api:
        for days, question, reason in TOPIC_QUESTIONS:
            clock.days = days + 0.3
            r = api.post("/api/chat", json={"question": question})
            r.raise_for_status()
            if reason:
                api.post("/api/feedback", json={"answer_id": r.json()["answer_id"], "rating": "down",
                                                "comment": reason}).raise_for_status()
        clock.days = 0.05  # a request from another resident, an hour before the widget's
        answer = api.post("/api/chat", json={"question": OTHER_QUESTION}).json()
        api.post("/api/requests", json={"session_id": answer["session_id"], "answer_id": answer["answer_id"],
                                        "message": OTHER_MESSAGE, "contact": OTHER_CONTACT}).raise_for_status()
        clock.days = 0
    print(f"asked {len(TOPIC_QUESTIONS) + 1} questions through /api/chat", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="xiaoyu-loop-shots-"))
    data_dir = work / "data"
    if args.data_dir:
        shutil.copytree(args.data_dir, data_dir, ignore=shutil.ignore_patterns(
            "questions.sqlite3*", "requests.sqlite3*", "sessions.sqlite3*", "eval-runs", "evals", "console-users.txt"))
    user, password, token = "staff", secrets.token_urlsafe(12), secrets.token_urlsafe(24)
    clock = ShiftedClock()
    server, thread, base = _serve(data_dir, user, password, token, clock)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        _residents_ask(base, clock)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            resident = browser.new_page(viewport=VIEWPORT, locale="zh-CN")
            staff = browser.new_page(viewport=VIEWPORT, locale="zh-CN")
            current = resident
            try:
                request_id = _widget_feedback(resident, base, args.out)
                current = staff
                _login(staff, f"{base}/console/", user, password)
                _console_queue(staff, request_id, args.out)
                _staff_reply(base, token, request_id)
                current = resident
                _widget_reply(resident, request_id, args.out)
                current = staff
                _console_topics(staff, args.out)
            except Exception:
                error = work.parent / "xiaoyu-loop-shots-error.png"
                current.screenshot(path=str(error), full_page=True)
                print(f"failed; the page is in {error}", file=sys.stderr)
                raise
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ---- the widget -----------------------------------------------------------------------------------------------------
def _widget_feedback(page, base: str, out: Path) -> str:
    page.goto(f"{base}/")
    page.get_by_role("button", name="打开社区小助手").click()
    answers = page.locator("#xiaoyu-widget .xy-assistant.xy-done")
    box = page.get_by_role("textbox", name="输入您的问题")
    box.fill(WIDGET_QUESTION)
    box.press("Enter")
    answers.first.wait_for(timeout=120_000)
    answer = answers.last
    with page.expect_response(lambda r: r.url.endswith("/api/feedback")):
        answer.get_by_role("button", name="没帮助").click()
    answer.get_by_role("textbox", name="哪里不满意（选填）").fill(WIDGET_REASON)
    with page.expect_response(lambda r: r.url.endswith("/api/feedback")):
        answer.get_by_role("button", name="提交意见").click()
    answer.get_by_text("已收到，我们会改进。").wait_for()
    answer.get_by_role("button", name="转人工 / 留言").click()
    page.get_by_role("textbox", name="留言内容").fill(WIDGET_MESSAGE)
    page.get_by_role("textbox", name="联系方式（选填）").fill(WIDGET_CONTACT)
    # the answer's 👎 and reason above, the filled-in form below: the shot is taken just before sending it
    page.locator("#xiaoyu-widget .xy-log").evaluate("""log => {  // the answer's 👍 / 👎 bar at the top of the log
        const bar = [...log.querySelectorAll('.xy-feedback')].pop();
        log.scrollTop += bar.getBoundingClientRect().top - log.getBoundingClientRect().top - 6; }""")
    shot(page, out / "loop-widget-feedback.png", full_page=False)
    with page.expect_response(lambda r: r.url.endswith("/api/requests")) as opened:
        page.get_by_role("button", name="提交留言").click()
    if opened.value.status != 201:
        raise RuntimeError(f"POST /api/requests: {opened.value.status} {opened.value.text()}")
    request_id = opened.value.json()["id"]
    page.locator("#xiaoyu-widget .xy-request").get_by_text(f"编号 {request_id}").wait_for()
    return request_id


def _widget_reply(page, request_id: str, out: Path) -> None:
    page.reload()  # the resident comes back later, in the same browser
    with page.expect_response(lambda r: f"/api/requests/{request_id}?session_id=" in r.url):
        page.get_by_role("button", name="打开社区小助手").click()
    card = page.locator(f"#xiaoyu-widget .xy-request[data-request='{request_id}']")
    card.get_by_text("工作人员答复：").wait_for()
    card.scroll_into_view_if_needed()
    shot(page, out / "loop-widget-reply.png", full_page=False)


def _staff_reply(base: str, token: str, request_id: str) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as admin:
        r = admin.post(f"/admin/requests/{request_id}/reply", json={"reply": STAFF_REPLY, "status": "answered"})
        r.raise_for_status()
    print(f"replied to {request_id} through the admin API", file=sys.stderr)


# ---- the console ----------------------------------------------------------------------------------------------------
def _login(page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user) if page.get_by_label("username").count() else \
        page.locator("input[type=text]").first.fill(user)
    page.locator("input[type=password]").fill(password)
    page.locator("button", has_text="Login").or_(page.locator("button", has_text="登录")).first.click()
    page.get_by_role("tab", name="知识库").wait_for()


def _console_queue(page, request_id: str, out: Path) -> None:
    page.get_by_role("tab", name="转人工").click()
    page.get_by_role("button", name="刷新").last.click()
    cell = page.get_by_text(request_id, exact=True).first
    cell.wait_for()
    time.sleep(0.5)
    cell.click()
    page.get_by_text(f"留言 {request_id}（待处理）").wait_for()
    page.get_by_label("答复（居民会看到）").fill(STAFF_REPLY)  # typed, not sent: the reply goes through the admin API
    shot(page, out / "loop-console-queue.png")


def _console_topics(page, out: Path) -> None:
    page.get_by_role("tab", name="高频诉求").click()
    page.get_by_role("button", name="生成报告").click()
    page.get_by_text("归为").first.wait_for(timeout=120_000)
    page.locator("canvas, svg.marks").first.wait_for(timeout=60_000)
    time.sleep(1.5)  # the chart draws after the table
    shot(page, out / "loop-console-topics.png")


def shot(page, path: Path, full_page: bool = True) -> None:
    time.sleep(0.5)  # let the last render settle
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
