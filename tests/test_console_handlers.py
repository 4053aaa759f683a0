"""The console's handlers, called directly over a real service (a copy of the ingested demo index)."""

from __future__ import annotations

import json

import pytest

from evals.golden import load_golden
from ui.console import handlers as h
from ui.console.runs import RunStore

NOTICE = (
    "# 幸福里小区电动自行车充电管理办法\n\n"
    "第一条 为消除电动自行车违规充电带来的火灾隐患，制定本办法。\n\n"
    "第二条 小区内电动自行车应当在集中充电棚内充电，充电费用为每小时零点五元。\n\n"
    "第三条 禁止将电动自行车推入电梯或者在楼道内、住宅内充电。\n"
)


@pytest.fixture
def notice(tmp_path):
    path = tmp_path / "upload" / "充电管理办法.md"
    path.parent.mkdir()
    path.write_text(NOTICE, encoding="utf-8")
    return path


# ---- knowledge base ---------------------------------------------------------------------------------------------
def test_document_rows_list_every_document_with_its_metadata_and_chunk_count(kb_services):
    rows = {r[0]: r for r in h.document_rows(kb_services)}
    assert len(rows) == 13
    source, title, category, issuer, date, chunks, ingested, status = rows["物业/物业管理条例.md"]
    assert status == "现行"
    assert (title, category, issuer, date) == ("物业管理条例", "物业", "国务院", "2018-03-19")
    assert chunks == len(kb_services.knowledge.chunks_of(source)) > 50
    assert ingested[:2] == "20"
    assert "13 篇文档" in h.kb_summary(kb_services)


def test_upload_then_hit_test_answers_from_the_new_document_with_its_article(kb_services, notice):
    status = h.upload_document(kb_services, str(notice), "", "物业", "幸福里业主委员会", "2024-05")
    assert status.startswith("✅") and "物业/充电管理办法.md" in status
    row = next(r for r in h.document_rows(kb_services) if r[0] == "物业/充电管理办法.md")
    assert row[1:5] == ["幸福里小区电动自行车充电管理办法", "物业", "幸福里业主委员会", "2024-05"]

    verdict, rows, cards = h.hit_test(kb_services, "电动车能在楼道里充电吗", "hybrid", 5)
    assert "会<b>作答</b>" in verdict
    assert "《幸福里小区电动自行车充电管理办法》第三条" in verdict  # the answer preview cites it
    assert rows[0][6] == "物业/充电管理办法.md" and rows[0][7].endswith("第三条")
    assert "<mark>充电</mark>" in cards and "<mark>楼道</mark>" in cards


def test_a_broken_upload_shows_its_reason_and_leaves_the_knowledge_base_unchanged(kb_services, tmp_path):
    broken = tmp_path / "扫描件.pdf"
    broken.write_bytes(b"%PDF-1.4 garbage that is not a pdf")
    before = h.document_rows(kb_services)
    status = h.upload_document(kb_services, str(broken), "扫描件", "物业", "", "")
    assert status.startswith("❌") and "PDF" in status and "知识库未改动" in status
    assert h.document_rows(kb_services) == before
    assert not (kb_services.settings.data_dir / "uploads" / "物业" / "扫描件.pdf").exists()


def test_upload_needs_a_file_and_a_category(kb_services, notice):
    assert h.upload_document(kb_services, None, "", "物业", "", "").startswith("❌ 请先选择")
    assert "分类" in h.upload_document(kb_services, str(notice), "", "", "", "")


def test_delete_asks_for_confirmation_then_removes_the_document(kb_services, notice):
    h.upload_document(kb_services, str(notice), "", "物业", "", "")
    assert "确认删除" in h.delete_document(kb_services, "物业/充电管理办法.md", False)
    assert "物业/充电管理办法.md" in [r[0] for r in h.document_rows(kb_services)]
    assert h.delete_document(kb_services, "物业/充电管理办法.md", True).startswith("✅ 已删除")
    assert "物业/充电管理办法.md" not in [r[0] for r in h.document_rows(kb_services)]
    assert h.delete_document(kb_services, "物业/充电管理办法.md", True).startswith("❌ 知识库中没有")


def test_reingest_of_an_unchanged_document_reports_it_unchanged(kb_services):
    status = h.reingest(kb_services, "调解/人民调解委员会组织条例.md")
    assert status.startswith("✅") and "未变 13" in status and "嵌入 0" in status
    assert h.reingest(kb_services, "不存在.md").startswith("❌")


def test_chunks_of_a_document_show_their_section_paths(kb_services):
    html = h.chunks_html(kb_services, "物业/物业管理条例.md")
    assert "第二章 业主及业主大会 &gt; 第十六条" in html
    assert "业主委员会应当自选举产生之日起30日内" in html
    assert "没有这个文档" in h.chunks_html(kb_services, "nope.md")


# ---- hit testing ------------------------------------------------------------------------------------------------
def test_hit_test_shows_lexical_dense_and_fused_scores_and_uses_the_chat_path(kb_services):
    verdict, rows, _ = h.hit_test(kb_services, "业委会选出来以后要去哪里备案？", "hybrid", 5)
    assert len(rows) == 5
    rank, fused, lexical, dense, *_ = rows[0]
    assert rank == 1 and fused > 0 and lexical > 0 and 0.5 < dense <= 1
    # what hit testing shows is what chat retrieves
    chat = kb_services.chat.retrieve("业委会选出来以后要去哪里备案？")
    assert [(r[6], r[7]) for r in rows] == [(x.chunk.source, x.chunk.section) for x in chat.hits]
    assert "会<b>作答</b>" in verdict


def test_hit_test_modes_switch_retrievers_and_top_k_limits_hits(kb_services):
    _, bm25, _ = h.hit_test(kb_services, "维修资金怎么使用", "bm25", 3)
    _, dense, _ = h.hit_test(kb_services, "维修资金怎么使用", "dense", 7)
    assert len(bm25) == 3 and len(dense) == 7
    assert all(r[3] == 0 and r[5] == "—" for r in bm25)  # no dense score in bm25 mode
    assert all(r[2] == 0 and r[4] == "—" for r in dense)


def test_hit_test_shows_that_an_out_of_scope_question_would_be_refused_and_why(kb_services):
    verdict, _, _ = h.hit_test(kb_services, "今天股市行情怎么样，推荐一只股票", "hybrid", 5)
    assert "会<b>拒答</b>" in verdict and "证据不足" in verdict


def test_hit_test_reports_an_empty_question_instead_of_failing(kb_services):
    verdict, rows, cards = h.hit_test(kb_services, "   ", "hybrid", 5)
    assert verdict.startswith("❌") and "不能为空" in verdict and rows == [] and cards == ""


def test_highlight_escapes_html_and_marks_terms_case_insensitively():
    assert h.highlight("物业费由<b>业主</b>交纳", ["物业费", "业主"]) == \
        "<mark>物业费</mark>由&lt;b&gt;<mark>业主</mark>&lt;/b&gt;交纳"
    assert h.highlight("PDF 文件", ["pdf"]) == "<mark>PDF</mark> 文件"


# ---- evals ------------------------------------------------------------------------------------------------------
def _mini_golden(kb_services, lines: list[dict]) -> str:
    path = kb_services.settings.data_dir / "evals" / "mini.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return "数据目录/mini.jsonl"


GOOD = {"id": "g1", "category": "物业", "question": "业委会选出来以后要去哪里备案？",
        "expected_sources": ["物业/物业管理条例.md"], "expected_sections": ["第十六条"]}
WRONG = {"id": "g2", "category": "调解", "question": "业委会选出来以后要去哪里备案？？",
         "expected_sources": ["调解/人民调解委员会组织条例.md"], "expected_sections": ["第一条"]}
OOS = {"id": "g3", "category": "无关", "question": "今天股市行情怎么样，推荐一只股票", "out_of_scope": True}


def test_golden_choices_include_the_shipped_set_and_the_data_dir_sets(kb_services):
    label = _mini_golden(kb_services, [GOOD])
    choices = h.golden_choices(kb_services)
    assert "evals/golden.jsonl" in choices and label in choices


def test_running_a_golden_set_stores_the_run_and_explains_failures(kb_services):
    runs = RunStore(kb_services.settings.data_dir / "eval-runs")
    label = _mini_golden(kb_services, [GOOD, WRONG, OOS])
    seen = []
    html, run_id = h.run_golden(kb_services, runs, label, 5, lambda n, total: seen.append((n, total)))
    assert seen[-1] == (3, 3)
    assert run_id in runs.ids()
    run = runs.load(run_id)
    assert run["metrics"]["questions"] == 3 and run["metrics"]["refusal_accuracy"] == 1.0
    assert "<svg" in html and "hit@k 曲线" in html
    assert "失败 1 题" in html and "前 5 个结果里没有预期文档" in html  # WRONG, explained
    assert h.show_run(runs, run_id) == html
    assert "找不到" in h.show_run(runs, "no-such-run")
    # eval questions don't show up as resident questions
    assert h.log_rows(kb_services, "全部", 0.86) == []


def test_comparing_two_runs_lists_what_a_document_change_fixed(kb_services, notice):
    runs = RunStore(kb_services.settings.data_dir / "eval-runs")
    item = {"id": "c1", "category": "物业", "question": "电动自行车可以推进电梯吗",
            "expected_sources": ["物业/充电管理办法.md"], "expected_sections": ["第三条"]}
    label = _mini_golden(kb_services, [GOOD, item])
    _, before = h.run_golden(kb_services, runs, label, 5)
    h.upload_document(kb_services, str(notice), "", "物业", "", "")
    _, after = h.run_golden(kb_services, runs, label, 5)
    html = h.compare_runs(runs, before, after)
    assert "变好（之前失败，之后通过）：1 题" in html and "电动自行车可以推进电梯吗" in html
    assert "变差（之前通过，之后失败）：无" in html
    assert "请选择两次评测" in h.compare_runs(runs, before, None)


def test_run_golden_without_a_set_says_so(kb_services):
    html, run_id = h.run_golden(kb_services, RunStore(kb_services.settings.data_dir / "r"), "", 5)
    assert run_id is None and "请选择一个评测集" in html


# ---- question log -----------------------------------------------------------------------------------------------
def test_log_filters_show_refused_and_low_confidence_questions(kb_services):
    kb_services.chat.ask("业委会选出来以后要去哪里备案？", channel="web")
    kb_services.chat.ask("今天股市行情怎么样，推荐一只股票", channel="wechat")
    every = h.log_rows(kb_services, "全部", 0.86)
    assert [r[3] for r in every] == ["今天股市行情怎么样，推荐一只股票", "业委会选出来以后要去哪里备案？"]
    assert [r[2] for r in every] == ["wechat", "web"]
    assert [r[3] for r in h.log_rows(kb_services, "已拒答", 0.86)] == ["今天股市行情怎么样，推荐一只股票"]
    answered_similarity = every[1][5]
    assert h.log_rows(kb_services, "低置信度", answered_similarity - 0.01) == []
    assert [r[3] for r in h.log_rows(kb_services, "低置信度", answered_similarity + 0.01)] == ["业委会选出来以后要去哪里备案？"]
    assert [r[3] for r in h.log_rows(kb_services, "全部", 0.86, contains="股市")] == ["今天股市行情怎么样，推荐一只股票"]


def test_a_logged_question_is_added_to_a_staff_eval_set_with_the_source_staff_chose(kb_services):
    answer = kb_services.chat.ask("业委会选出来以后要去哪里备案？")
    log_id = h.log_rows(kb_services, "全部", 0.86)[0][0]
    # Only the question is picked: the expected source is the staff's choice, not the answer's citation.
    assert h.pick_logged(kb_services, log_id) == "业委会选出来以后要去哪里备案？"
    assert answer.citations and "第十六条" in h.section_choices(kb_services, "物业/物业管理条例.md")

    status = h.add_to_golden(kb_services, log_id, "回访", "物业/物业管理条例.md", "第十六条", "30日内，备案", False)
    assert status.startswith("✅") and "回访.jsonl" in status
    path = kb_services.settings.data_dir / "evals" / "回访.jsonl"
    line = json.loads(path.read_text(encoding="utf-8"))
    # The format of evals/sets/dev.jsonl: file stems, facts (any one), answerable.
    assert (line["sources"], line["sections"], line["facts"], line["answerable"]) == \
        (["物业管理条例"], ["第十六条"], ["30日内", "备案"], True)
    item, = load_golden(path)
    assert (item.question, item.expected_sources, item.expected_sections) == \
        ("业委会选出来以后要去哪里备案？", ("物业管理条例",), ("第十六条",))
    assert item.any_fact and item.category == "物业" and not item.out_of_scope
    assert "数据目录/回访.jsonl" in h.golden_choices(kb_services)
    # the same question twice is refused
    assert "已经有这个问题" in h.add_to_golden(kb_services, log_id, "回访", "物业/物业管理条例.md", "", "", False)


def test_a_logged_question_can_be_added_as_one_that_must_be_refused(kb_services):
    kb_services.chat.ask("今天股市行情怎么样，推荐一只股票")
    log_id = h.log_rows(kb_services, "全部", 0.86)[0][0]
    assert h.add_to_golden(kb_services, log_id, h.DEFAULT_STAFF_SET, None, None, "", True).startswith("✅")
    item = load_golden(kb_services.settings.data_dir / "evals" / "staff.jsonl")[0]
    assert item.out_of_scope and item.expected_sources == () and item.category == "无关"


@pytest.mark.parametrize(("log_id", "set_name", "source", "expected"), [
    (None, "回访", "物业/物业管理条例.md", "请先在上面的表格里点选"),
    (1, "回访", None, "请选择预期出处"),
    (1, "../../etc/passwd", "物业/物业管理条例.md", "评测集名称只能用"),
])
def test_add_to_golden_refuses_incomplete_or_unsafe_input(kb_services, log_id, set_name, source, expected):
    kb_services.chat.ask("业委会选出来以后要去哪里备案？")
    status = h.add_to_golden(kb_services, log_id, set_name, source, "", "", False)
    assert status.startswith("❌") and expected in status
    assert not list((kb_services.settings.data_dir).rglob("passwd*"))


# ---- command line -----------------------------------------------------------------------------------------------
def test_eval_report_flag_writes_a_standalone_html_report(kb_services, tmp_path, capsys):
    from assistant.cli import main

    golden = tmp_path / "g.jsonl"
    golden.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in (GOOD, WRONG, OOS)), encoding="utf-8")
    out = tmp_path / "report.html"
    assert main(["eval", str(golden), "--data-dir", str(kb_services.settings.data_dir), "--report", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 2 and "<script" not in html
    assert "失败 1 题（共 3 题）" in html and "前 5 个结果里没有预期文档" in html


def test_hash_password_command_prints_a_hash_the_console_accepts(monkeypatch, capsys):
    import io

    from assistant.cli import main
    from assistant.state.accounts import StaffAccounts, parse_accounts

    monkeypatch.setattr("sys.stdin", io.StringIO("青松-2024\n"))
    assert main(["hash-password", "--user", "lin", "--stdin"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("lin:$2b$")
    assert StaffAccounts(parse_accounts(line)).check("lin", "青松-2024")
