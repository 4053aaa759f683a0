"""Screenshots of the staff console's tabs (docs/console-*.png), taken with Debian's headless chromium.

    .venv/bin/python scripts/screenshots_console.py [--data-dir DIR] [--out docs]

DIR is an ingested data dir (it is copied, never changed); without it the bundled knowledge base is ingested into a
temporary one first. The script starts the real app on 127.0.0.1, logs in as a throwaway staff account, uses each tab
as a staff member would (open a document, test a query, run a small golden set, filter the question log) and
screenshots it."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
QUESTIONS = [("业委会选出来以后要去哪里备案？", "web"), ("物业费不交会怎么样？", "wechat"),
             ("今天股市行情怎么样，推荐一只股票", "web"), ("调解协议签了以后反悔怎么办？", "api"),
             ("小区停车位归谁所有？", "wechat"), ("我想办护照，去哪里办？", "web")]


NOTICE = ("# 幸福里小区电动自行车充电管理办法\n\n第一条 为消除电动自行车违规充电带来的火灾隐患，制定本办法。\n\n"
          "第二条 小区内电动自行车应当在集中充电棚内充电，充电费用为每小时零点五元。\n\n"
          "第三条 禁止将电动自行车推入电梯或者在楼道内、住宅内充电。\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, user: str, password: str):
    import uvicorn

    from assistant.api import create_app
    from assistant.config import StaffSettings, get_settings
    from assistant.services import build_services
    from assistant.state.accounts import hash_password

    settings = get_settings().model_copy(update={
        "data_dir": data_dir, "staff": StaffSettings(console_users=f"{user}:{hash_password(password, rounds=4)}")})
    services = build_services(settings)
    services.knowledge.ensure_ingested()
    for question, channel in QUESTIONS:  # a question log to look at
        services.chat.ask(question, channel=channel, user=f"resident-{channel}")
    golden = data_dir / "evals" / "示例.jsonl"
    golden.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.loads(x) for x in (ROOT / "evals" / "golden.jsonl").read_text(encoding="utf-8").splitlines()]
    sample = [x for x in lines if x["category"] == "物业"][:8] + [x for x in lines if x["category"] == "调解"][:6] \
        + [x for x in lines if x["category"] == "党建"][:6] + [x for x in lines if x["category"] == "无关"][:5]
    golden.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in sample), encoding="utf-8")

    # A stored "before" run without one regulation, so the Evals tab can show what adding it back fixed.
    from evals.golden import load_golden
    from evals.runner import run_eval
    from ui.console.runs import RunStore, run_record

    services.knowledge.remove(["党建/中国共产党章程.md"])
    before = run_eval(services.chat, load_golden(golden), 5)
    docs = services.knowledge.documents()
    RunStore(data_dir / "eval-runs").save(run_record(before, "数据目录/示例.jsonl", 5, len(docs),
                                                     sum(len(d.chunk_ids) for d in docs)))
    services.knowledge.reindex()

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    return server, thread, f"http://127.0.0.1:{port}/console/"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="xiaoyu-shots-"))
    data_dir = work / "data"
    if args.data_dir:
        shutil.copytree(args.data_dir, data_dir, ignore=shutil.ignore_patterns("questions.sqlite3*", "eval-runs",
                                                                              "evals", "console-users.txt"))
    user, password = "staff", secrets.token_urlsafe(12)
    server, thread, url = _serve(data_dir, user, password)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
            try:
                _use_console(page, url, user, password, args.out)
            except Exception:
                page.screenshot(path=str(work.parent / "xiaoyu-shots-error.png"), full_page=True)
                print(f"failed; the page is in {work.parent / 'xiaoyu-shots-error.png'}", file=sys.stderr)
                raise
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _use_console(page, url: str, user: str, password: str, out: Path) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user) if page.get_by_label("username").count() else \
        page.locator("input[type=text]").first.fill(user)
    page.locator("input[type=password]").fill(password)
    page.locator("button", has_text="Login").or_(page.locator("button", has_text="登录")).first.click()
    page.get_by_role("tab", name="知识库").wait_for()

    # knowledge base: upload a notice with its metadata, then open it to see its chunks
    notice = Path(tempfile.mkdtemp()) / "电动自行车充电管理办法.md"
    notice.write_text(NOTICE, encoding="utf-8")
    page.locator("input[type=file][accept*='.docx']").set_input_files(str(notice))
    page.get_by_label("标题").fill("幸福里小区电动自行车充电管理办法")
    page.get_by_label("分类").click()
    page.get_by_role("option", name="物业").click()
    page.get_by_label("发文机关").fill("幸福里小区业主委员会")
    page.get_by_label("日期").fill("2024-05-01")
    page.get_by_role("button", name="上传并导入").click()
    page.get_by_text("已导入 物业/电动自行车充电管理办法.md").wait_for(timeout=120_000)
    page.get_by_text("物业/电动自行车充电管理办法.md", exact=True).first.click()
    page.locator("details summary", has_text="第三条").first.wait_for()
    shot(page, out / "console-knowledge-base.png")

    page.get_by_role("tab", name="命中测试").click()
    page.get_by_label("问题").fill("电动车能推进电梯里充电吗？")
    page.get_by_role("button", name="测试", exact=True).click()
    page.get_by_text("回答预览").wait_for()
    shot(page, out / "console-hit-testing.png")

    page.get_by_role("tab", name="评测").click()
    page.get_by_label("评测集").click()
    page.get_by_role("option", name="数据目录/示例.jsonl").click()
    page.get_by_role("button", name="运行评测").click()
    page.get_by_text("评测中").first.wait_for()
    page.get_by_text("评测中").first.wait_for(state="detached", timeout=600_000)
    page.get_by_role("button", name="对比", exact=True).click()
    page.get_by_text("变好（之前失败").wait_for(timeout=300_000)
    shot(page, out / "console-evals.png")

    page.get_by_role("tab", name="提问记录").click()
    page.get_by_text("调解协议签了以后反悔怎么办？").first.click()
    page.get_by_label("要点（可选").fill("调解协议")
    page.get_by_role("button", name="加入评测集").click()
    page.get_by_text("已加入评测集").wait_for()
    shot(page, out / "console-question-log.png")


def shot(page, path: Path) -> None:
    time.sleep(0.5)  # let the last render settle
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
