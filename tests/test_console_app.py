"""The console's login, staff accounts, the question-log migration and the eval report (no index needed here)."""

from __future__ import annotations

import json
import re
import sqlite3
import stat

import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import StaffSettings
from assistant.services import build_services
from assistant.state.accounts import AccountError, StaffAccounts, hash_password, parse_accounts, token_matches
from assistant.state.questionlog import QuestionLog, QuestionQuery
from assistant.state.uploads import UploadRejected, safe_filename
from assistant.types import Answer, AnswerKind, Evidence
from tests.conftest import make_settings
from ui.console import report
from ui.console.runs import compare, failed_items


# ---- accounts ---------------------------------------------------------------------------------------------------
def test_staff_passwords_are_checked_against_bcrypt_hashes():
    accounts = StaffAccounts(parse_accounts(f"lin:{hash_password('青松-2024', rounds=4)},"
                                            f" wang:{hash_password('other', rounds=4)}"))
    assert accounts.names == ["lin", "wang"]
    assert accounts.check("lin", "青松-2024")
    assert not accounts.check("lin", "other")
    assert not accounts.check("zhao", "青松-2024")
    assert not accounts.check("lin", "x" * 100)  # over bcrypt's 72 bytes: refused, not truncated


@pytest.mark.parametrize("spec", ["lin", "lin:plaintext", ":$2b$04$abc", "lin:$2b$04$x,wang"])
def test_malformed_account_settings_are_rejected_naming_the_entry(spec):
    with pytest.raises(AccountError, match="用户名:bcrypt哈希"):
        parse_accounts(spec)


def test_hash_password_refuses_empty_and_too_long_passwords():
    with pytest.raises(AccountError, match="不能为空"):
        hash_password("  ")
    with pytest.raises(AccountError, match="72"):
        hash_password("密" * 30)


def test_first_start_generates_a_random_password_once_and_stores_only_its_hash(tmp_path):
    said = []
    first = StaffAccounts.load("", tmp_path, said.append)
    assert len(said) == 1
    password = re.search(r"密码 (\S+)", said[0]).group(1)
    assert len(password) >= 16 and first.check("admin", password)
    stored = (tmp_path / "console-users.txt").read_text(encoding="utf-8")
    assert password not in stored and "admin:$2b$" in stored
    assert stat.S_IMODE((tmp_path / "console-users.txt").stat().st_mode) == 0o600
    # the next start reuses the stored account and prints nothing
    again = StaffAccounts.load("", tmp_path, said.append)
    assert len(said) == 1 and again.check("admin", password)
    # configured accounts win over the file
    configured = StaffAccounts.load(f"lin:{hash_password('pw-lin', rounds=4)}", tmp_path, said.append)
    assert configured.names == ["lin"] and not configured.check("admin", password)


def test_admin_token_comparison():
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd") and not token_matches("abc", None) and not token_matches("", "")


# ---- the mounted console ----------------------------------------------------------------------------------------
@pytest.fixture
def console_client(tmp_path, embedder):
    staff = StaffSettings(console_users=f"lin:{hash_password('s3cret-pw', rounds=4)}")
    settings = make_settings(tmp_path / "data", staff=staff)
    with TestClient(create_app(settings, build_services(settings, embedder))) as client:
        yield client


def test_console_is_mounted_at_console_and_needs_a_staff_login(console_client):
    assert console_client.get("/console/").status_code == 200  # the login page
    denied = console_client.get("/console/config")
    assert denied.status_code == 401
    assert "请用工作人员账号登录" in denied.json()["detail"]["auth_message"]
    assert console_client.post("/console/login", data={"username": "lin", "password": "wrong"}).status_code == 400
    assert console_client.post("/console/login", data={"username": "lin", "password": "s3cret-pw"}).status_code == 200
    config = console_client.get("/console/config")
    assert config.status_code == 200
    labels = {c["props"].get("label") for c in config.json()["components"]}
    assert {"知识库", "命中测试", "评测", "提问记录"} <= labels
    console_client.get("/console/logout")
    assert console_client.get("/console/config").status_code == 401


def test_the_console_can_be_switched_off(tmp_path, embedder):
    settings = make_settings(tmp_path / "data", staff=StaffSettings(console_enabled=False))
    with TestClient(create_app(settings, build_services(settings, embedder))) as client:
        assert client.get("/console/").status_code == 404
    assert not (tmp_path / "data" / "console-users.txt").exists()


# ---- uploads: file names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "safe"), [
    ("../../etc/物业通知.md", "物业通知.md"),
    ("..\\..\\windows\\通知.TXT", "通知.txt"),
    ("  .hidden 文件.docx", "hidden 文件.docx"),
    ('a<b>:c|d?.pdf', "a_b__c_d.pdf"),
    ("物业\x00通知.html", "物业_通知.html"),
])
def test_upload_file_names_are_sanitised(given, safe):
    assert safe_filename(given) == safe


@pytest.mark.parametrize("given", ["../../.md", "passwd", "run.sh", "", "...pdf"])
def test_unusable_upload_file_names_are_refused(given):
    with pytest.raises(UploadRejected):
        safe_filename(given)


# ---- question log migration -------------------------------------------------------------------------------------
def test_question_log_from_before_the_evidence_columns_is_migrated_in_place(tmp_path):
    path = tmp_path / "questions.sqlite3"
    with sqlite3.connect(path) as db:  # the schema as first released
        db.executescript("""CREATE TABLE questions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
            channel TEXT NOT NULL, user_hash TEXT NOT NULL DEFAULT '', question TEXT NOT NULL,
            query TEXT NOT NULL DEFAULT '', answer TEXT NOT NULL, refused INTEGER NOT NULL, mode TEXT NOT NULL DEFAULT '',
            citations TEXT NOT NULL DEFAULT '[]', latency_ms REAL NOT NULL, notes TEXT NOT NULL DEFAULT '');
            INSERT INTO questions (ts, channel, question, answer, refused, latency_ms)
            VALUES (1.0, 'web', '旧问题', '旧回答', 0, 5.0);""")
    log = QuestionLog(path, "salt")
    QuestionLog(path, "salt")  # opening twice must not try to add the columns again
    log.record("api", "u1", "新问题", Answer("回答", (), AnswerKind.ANSWERED), 3.0, Evidence(True, "语义高度相关", 0.91, 0.5, True))
    new, old = log.recent()
    assert (old.question, old.dense_top, old.evidence) == ("旧问题", None, "")
    assert (new.question, new.dense_top, new.overlap, new.evidence) == ("新问题", 0.91, 0.5, "语义高度相关")
    assert [q.question for q in log.recent(QuestionQuery(below_confidence=0.95))] == ["新问题"]
    assert log.recent(QuestionQuery(below_confidence=0.9)) == []
    assert log.get(new.id) == new and log.get(999) is None


# ---- report -----------------------------------------------------------------------------------------------------
def _item(id, category, rank, section_rank=None, refused=False, oos=False, facts=1.0):
    return {"id": id, "category": category, "question": f"问题{id}", "out_of_scope": oos,
            "expected_sources": [] if oos else ["物业/a.md"], "expected_sections": [] if oos else ["第一条"],
            "query": "", "retrieved": [{"source": "物业/b.md", "title": "b", "section": "第二章 > 第九条", "score": .1}],
            "doc_rank": rank, "section_rank": section_rank, "refused": refused, "covered_reason": "证据不足：示例",
            "fact_recall": facts, "answer": "", "citations": [], "seconds": 0.1}


def _run(items, run_id="r1"):
    from evals.runner import ItemResult, _summarise

    results = [ItemResult(**i) for i in items]
    cats = sorted({i["category"] for i in items})
    return {"id": run_id, "created": "2024-05-01T10:00:00+08:00", "golden": "evals/x.jsonl", "top_k": 5,
            "documents": 2, "chunks": 9, "metrics": _summarise(results),
            "by_category": {c: _summarise([r for r in results if r.category == c]) for c in cats}, "items": items}


RUN = _run([_item("a", "物业", 1, 1), _item("b", "物业", 3, 3), _item("c", "调解", None), _item("d", "无关", None, oos=True,
                                                                                              refused=True)])


def test_hit_curve_counts_in_scope_questions_found_by_rank_k():
    curve = report.hit_curve(RUN)
    assert curve["文档"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert curve["条文"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_category_bars_leave_out_metrics_that_do_not_apply():
    cats, series = report.category_bars(RUN)
    assert cats == ["无关", "物业", "调解"]
    assert series["hit@5"] == [None, 1.0, 0.0]
    assert series["拒答准确率"] == [1.0, None, None]


def test_charts_are_inline_svg_with_one_bar_per_applicable_metric():
    cats, series = report.category_bars(RUN)
    svg = report.bar_chart_svg("分类指标", cats, series)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    drawn = sum(v is not None for values in series.values() for v in values)
    assert svg.count("<rect") - 1 - len(series) == drawn  # minus the background and the legend swatches


@pytest.mark.parametrize(("item", "words"), [
    (_item("x", "无关", None, oos=True), "应当拒答，却作答了（检索判断：证据不足：示例）"),
    (_item("x", "物业", None, refused=True), "误拒答：证据不足：示例"),
    (_item("x", "物业", None), "前 1 个结果里没有预期文档"),
    (_item("x", "物业", 2, None), "找到预期文档（第 2 名），但前 5 名里没有预期条文"),
    (_item("x", "物业", 1, 1, facts=0.5), "回答缺少要点（要点覆盖 50%）"),
])
def test_failures_are_explained_in_words_staff_can_act_on(item, words):
    assert report.explain(item) == words


def test_standalone_report_fetches_nothing_from_the_network():
    html = report.standalone_html(RUN)
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 2
    assert "<script" not in html and "<link" not in html
    assert set(re.findall(r"https?://[^\"' )]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "失败 1 题" in html and "问题c" in html


def test_comparison_lists_fixed_and_broken_questions():
    after = _run([_item("a", "物业", 1, 1), _item("b", "物业", None), _item("c", "调解", 1, 1),
                  _item("d", "无关", None, oos=True, refused=True)], "r2")
    cmp = compare(RUN, after)
    assert [i["id"] for i in cmp.fixed] == ["c"] and [i["id"] for i in cmp.broken] == ["b"]
    assert [i["id"] for i in failed_items(after)] == ["b"]
    html = report.compare_html(cmp)
    assert "变好（之前失败，之后通过）：1 题" in html and "变差（之前通过，之后失败）：1 题" in html
    assert json.dumps(cmp.metrics)  # plain numbers
