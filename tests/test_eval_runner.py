"""The eval runner's scoring: the pure metrics on hand-made inputs, both set formats, and conversations played
through the real ChatService with the real answers as history. Quality itself is the gate's business
(tests/test_quality_gate.py): here only the scoring is asserted, whatever the system answers."""

from __future__ import annotations

import json

import pytest

from assistant.state.questionlog import QuestionQuery
from assistant.types import Answer, AnswerKind, Chunk, Citation, Evidence, Retrieval, ScoredChunk, Turn
from evals import metrics
from evals.conversations import is_conversations_file, load_conversations, run_conversations
from evals.golden import Expect, load_golden, parse_item
from evals.runner import EvalResult, format_table, score_item, summarise

MEDIATION = "调解/中华人民共和国人民调解法.md"
NEWS = "党建/昆山_以高质量党建赋能高效能治理.txt"


def _chunk(source: str, section: str, text: str) -> Chunk:
    return Chunk(id=f"{source}|{section}|{text[:8]}", text=text, source=source, title="", section=section,
                 start=0, end=len(text))


def _retrieval(*chunks: Chunk) -> Retrieval:
    return Retrieval("q", tuple(ScoredChunk(c, 1.0 / n) for n, c in enumerate(chunks, 1)),
                     Evidence(covered=True, reason="test"))


def _answer(text: str, kind: AnswerKind = AnswerKind.ANSWERED, cited: int = 0) -> Answer:
    citations = tuple(Citation(i, MEDIATION, "", "", "") for i in range(1, cited + 1))
    return Answer(text, citations, kind)


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ---- article-level hits -----------------------------------------------------------------------------------------
def test_an_article_hit_is_found_in_the_section_metadata_or_a_heading_opening_a_line():
    by_metadata = metrics.article_matches(["中华人民共和国人民调解法"], ["第三十三条"], MEDIATION,
                                          "第四章 调解协议 > 第三十三条", "人民调解法 第三十三条\n经人民调解委员会调解达成……")
    # A chunk holding several short articles is labelled by the chapter; the article's heading line still counts.
    by_heading = metrics.article_matches(["中华人民共和国人民调解法"], ["第三十三条"], MEDIATION, "第四章 调解协议",
                                         "人民调解法 第四章\n第三十二条 经人民调解……\n第三十三条　经人民调解委员会……")
    assert by_metadata and by_heading


@pytest.mark.parametrize("text", [
    "第三十二条 当事人可以依照第三十三条的规定申请司法确认。",  # mid-line cross-reference
    "第三十二条 当事人可以申请……\n第三十三条规定的情形除外。",  # a line opening with a reference, not a heading
])
def test_a_cross_reference_to_the_article_is_not_a_hit(text):
    assert not metrics.article_matches(["中华人民共和国人民调解法"], ["第三十三条"], MEDIATION,
                                       "第四章 调解协议 > 第三十二条", text)


def test_an_article_heading_matches_only_the_same_number():
    # 第三条 is not a prefix hit for 第三十三条, nor the other way round.
    assert metrics.article_headings("第三十三条 甲\n第三条 乙\n第一百零三条 丙") == {"第三十三条", "第三条", "第一百零三条"}
    assert not metrics.article_matches(["中华人民共和国人民调解法"], ["第三条"], MEDIATION, "第四章",
                                       "第三十三条 经人民调解委员会调解……")


def test_the_right_article_in_the_wrong_document_is_no_hit():
    assert not metrics.article_matches(["人民调解委员会组织条例"], ["第三十三条"], MEDIATION,
                                       "第四章 > 第三十三条", "第三十三条 ……")


def test_a_news_report_needs_only_the_document():
    assert metrics.article_matches(["昆山_以高质量党建赋能高效能治理"], [], NEWS, "优化民生服务", "正文")
    assert metrics.article_matches(["昆山_以高质量党建赋能高效能治理"], [], NEWS, "", "正文")
    # Paired with a law: the news report's empty section still asks only for the document.
    assert metrics.article_matches(["中华人民共和国人民调解法", "昆山_以高质量党建赋能高效能治理"], ["第四条", ""],
                                   NEWS, "", "正文")


def test_sources_match_by_stem_or_by_full_relative_path():
    assert metrics.source_matches("中华人民共和国人民调解法", MEDIATION)
    assert metrics.source_matches(MEDIATION, MEDIATION)
    # 物业管理条例 is a different document from 江苏省物业管理条例: a stem is compared whole.
    assert not metrics.source_matches("物业管理条例", "物业/江苏省物业管理条例.md")


def test_paired_sources_and_sections_do_not_cross():
    sources, sections = ["中华人民共和国人民调解法", "人民调解委员会组织条例"], ["第四条", "第十一条"]
    assert metrics.article_matches(sources, sections, MEDIATION, "第一章 > 第四条", "")
    assert not metrics.article_matches(sources, sections, MEDIATION, "第二章 > 第十一条", "")


# ---- answers ----------------------------------------------------------------------------------------------------
def test_a_fact_counts_in_the_lead_only_within_the_first_160_characters():
    early = "调解不收取任何费用。" + "甲" * 200
    late = "甲" * 155 + "不收取任何费用。"
    assert metrics.fact_in(["不收取任何费用"], early, 160) is True
    assert metrics.fact_in(["不收取任何费用"], late) is True
    assert metrics.fact_in(["不收取任何费用"], late, 160) is False  # it starts inside the window, ends outside
    assert metrics.fact_in(["不收取 任何费用", "无关"], "不收取任何费用", 160) is True  # any fact, whitespace-insensitive
    assert metrics.fact_in([], early, 160) is None  # nothing to look for: not counted either way


def test_repeated_openings_flag_a_turn_opening_like_an_earlier_one():
    texts = ["您好，我是小玉。有什么可以帮您？", "根据第四条：不收取任何费用。", "您好，我是小玉！", "您好，我是小玉。再见", ""]
    # "您好，我是小玉！" ends differently from "您好，我是小玉。": not a repeat; an empty answer never repeats.
    assert metrics.repeated_openings(texts) == [False, False, False, True, False]
    assert metrics.first_sentence("第一行没有句号\n第二行") == "第一行没有句号"


def test_median_answer_length_counts_characters_and_is_none_without_answers():
    assert metrics.median_length(["一二三", "一二三四五", "一"]) == 3
    assert metrics.median_length(["一二", "一二三四"]) == 3
    assert metrics.median_length([" 一二 \n"]) == 2
    assert metrics.median_length([]) is None


@pytest.mark.parametrize(("kind", "cited", "text", "handled"), [
    (AnswerKind.SMALLTALK, 0, "不客气，有问题随时问我。", True),
    (AnswerKind.SMALLTALK, 0, "好" * 121, False),  # too long for small talk
    (AnswerKind.SMALLTALK, 1, "不客气。", False),  # small talk cites nothing
    (AnswerKind.REFUSED, 0, "抱歉，我没有找到依据。", False),  # a refusal is not small talk
    (AnswerKind.ANSWERED, 0, "不客气。", False),
])
def test_small_talk_is_handled_only_by_a_short_uncited_small_talk_reply(kind, cited, text, handled):
    assert metrics.smalltalk_handled(kind, cited, text) is handled


# ---- the two set formats ----------------------------------------------------------------------------------------
def test_the_new_format_reads_stems_facts_and_categories():
    answer = parse_item({"id": "d-1", "question": "调解收费吗", "answerable": True, "sources": ["中华人民共和国人民调解法"],
                         "sections": ["第四条"], "facts": ["不收取任何费用", "不收费"], "history": [], "category": "调解"})
    off_topic = parse_item({"question": "明天会下雨吗", "answerable": False, "sources": [], "category": "无关"})
    chat = parse_item({"question": "谢谢", "answerable": False, "sources": [], "category": "闲聊"})
    assert answer.expect is Expect.ANSWER and answer.any_fact and answer.key_facts == ("不收取任何费用", "不收费")
    assert off_topic.expect is Expect.REFUSE and off_topic.out_of_scope
    assert chat.expect is Expect.SMALLTALK and not chat.out_of_scope  # small talk is not a question to refuse


def test_the_golden_format_still_reads_as_before():
    item = parse_item({"id": "g", "category": "物业", "question": "业委会去哪里备案？",
                       "expected_sources": ["物业/物业管理条例.md"], "expected_sections": ["第十六条"],
                       "key_facts": ["备案"], "out_of_scope": False})
    oos = parse_item({"question": "推荐一只股票", "out_of_scope": True})
    assert (item.expect, item.any_fact, item.out_of_scope) == (Expect.ANSWER, False, False)
    assert oos.expect is Expect.REFUSE and oos.out_of_scope
    assert parse_item({"question": "没有出处的问题"}).expect is Expect.REFUSE  # no sources: refuse, as always


def test_a_conversations_file_is_told_apart_from_a_single_questions_file(tmp_path):
    single, conv = tmp_path / "s.jsonl", tmp_path / "c.jsonl"
    _write_jsonl(single, [{"question": "谢谢", "category": "闲聊"}])
    _write_jsonl(conv, [{"id": "c", "turns": [{"question": "谢谢", "expect": "smalltalk"}]}])
    assert not is_conversations_file(single) and is_conversations_file(conv)
    assert load_golden(single)[0].expect is Expect.SMALLTALK
    assert load_conversations(conv)[0].turns[0].expect is Expect.SMALLTALK


def test_a_turn_with_an_unknown_expectation_is_rejected(tmp_path):
    conv = tmp_path / "c.jsonl"
    _write_jsonl(conv, [{"id": "c", "turns": [{"question": "谢谢", "expect": "maybe"}]}])
    with pytest.raises(ValueError, match="expect"):
        load_conversations(conv)


# ---- scoring one item -------------------------------------------------------------------------------------------
def test_scoring_ranks_articles_by_the_heading_rule_and_facts_only_for_answers():
    item = parse_item({"id": "x", "question": "调解协议怎么确认", "sources": ["中华人民共和国人民调解法"],
                       "sections": ["第三十三条"], "facts": ["司法确认"], "category": "调解"})
    retrieval = _retrieval(
        _chunk(MEDIATION, "第四章 调解协议 > 第三十二条", "人民调解法 第三十二条\n第三十二条 依照第三十三条申请司法确认。"),
        _chunk(MEDIATION, "第四章 调解协议", "人民调解法 第四章\n第三十三条 经人民调解委员会调解达成调解协议后……"),
    )
    answer_text = "可以申请司法确认。" + "甲" * 200
    r = score_item(item, retrieval, _answer(answer_text, cited=1), 0.1)
    assert (r.doc_rank, r.section_rank, r.article_rank) == (1, None, 2)
    assert r.fact_in_answer and r.fact_in_lead and r.smalltalk_handled is None and not r.failed
    refused = score_item(item, retrieval, _answer("抱歉。", AnswerKind.REFUSED), 0.1)
    assert refused.fact_in_answer is None and refused.failed  # a false refusal fails, without a fact figure


def test_the_summary_counts_each_expectation_against_its_own_rule():
    answer = parse_item({"id": "a", "question": "q", "sources": ["中华人民共和国人民调解法"], "sections": ["第四条"],
                         "facts": ["不收取任何费用"]})
    chat = parse_item({"id": "s", "question": "谢谢", "category": "闲聊"})
    off = parse_item({"id": "o", "question": "明天会下雨吗", "category": "无关", "answerable": False})
    hit = _retrieval(_chunk(MEDIATION, "第一章 总则 > 第四条", "第四条 人民调解委员会调解民间纠纷，不收取任何费用。"))
    results = [
        score_item(answer, hit, _answer("人民调解不收取任何费用。", cited=1), 0.2),
        score_item(chat, _retrieval(), _answer("不客气！", AnswerKind.SMALLTALK), 0.0),
        score_item(off, _retrieval(), _answer("抱歉，没有找到依据，我不作猜测。", AnswerKind.REFUSED), 0.0),
    ]
    m = summarise(results)
    assert (m["in_scope"], m["out_of_scope"], m["smalltalk"]) == (1, 1, 1)
    assert m["article_hit@1"] == 1.0 and m["refusal_accuracy"] == 1.0 and m["false_refusals"] == 0
    assert m["smalltalk_handled"] == 1.0 and m["fact_in_lead"] == 1.0
    assert m["median_answer_chars"] == len("人民调解不收取任何费用。")  # refusals and small talk are not answers
    table = format_table(EvalResult(m, {}, results))
    assert table.startswith("questions: 3 (in scope 1, out of scope 1, small talk 1)")
    assert "small talk handled" in table and "(1/1)" in table


def test_a_set_without_small_talk_keeps_the_historical_table_head():
    item = parse_item({"id": "g", "question": "q", "expected_sources": [MEDIATION], "expected_sections": ["第四条"]})
    result = score_item(item, _retrieval(_chunk(MEDIATION, "第一章 > 第四条", "第四条 ……")), _answer("……"), 0.0)
    lines = format_table(EvalResult(summarise([result]), {}, [result])).splitlines()
    assert lines[0] == "questions: 1 (in scope 1, out of scope 0)"
    assert lines[1].startswith("  hit@1") and lines[10].startswith("  mean seconds per question")
    assert not any("small talk" in line or "off-topic" in line for line in lines)  # no such items: no such rows


# ---- conversations through the real service ---------------------------------------------------------------------
class SpyChat:
    """Forwards to the real ChatService and records the history each call was given, and each answer."""

    def __init__(self, inner):
        self.inner = inner
        self.retrieved: list[tuple[str, tuple[Turn, ...]]] = []
        self.asked: list[tuple[str, tuple[Turn, ...], Answer]] = []

    def retrieve(self, question, history=(), top_k=None):
        self.retrieved.append((question, tuple(history)))
        return self.inner.retrieve(question, history, top_k)

    def ask(self, question, history=(), **kwargs):
        answer = self.inner.ask(question, history, **kwargs)
        self.asked.append((question, tuple(history), answer))
        return answer


THREE_TURNS = {"id": "c1", "turns": [
    {"question": "人民调解委员会调解邻里纠纷要收费吗？",
     "expect": {"sources": ["中华人民共和国人民调解法"], "sections": ["第四条"], "facts": ["不收取任何费用"]}},
    {"question": "谢谢", "expect": "smalltalk"},
    {"question": "明天会下雨吗", "expect": "refuse"},
]}


def test_a_conversation_is_played_with_the_real_answers_as_history_and_every_turn_is_scored(module_services,
                                                                                           tmp_path):
    path = tmp_path / "conv.jsonl"
    _write_jsonl(path, [THREE_TURNS])
    eval_log = QuestionQuery(channel="eval", contains="明天会下雨吗")
    logged_before = len(module_services.staff.questions(eval_log))
    spy = SpyChat(module_services.chat)
    result = run_conversations(spy, load_conversations(path))

    assert [(r.conversation, r.turn, r.expected) for r in result.items] == \
        [("c1", 1, "answer"), ("c1", 2, "smalltalk"), ("c1", 3, "refuse")]
    first_answer = spy.asked[0][2]
    expected_history = (Turn("user", THREE_TURNS["turns"][0]["question"]), Turn("assistant", first_answer.text))
    # Turn 2 gets the real first answer, in retrieval and in chat alike; turn 3 gets both earlier turns.
    assert spy.asked[1][1] == expected_history and spy.retrieved[1][1] == expected_history
    assert spy.asked[2][1][:2] == expected_history and spy.asked[2][1][3] == Turn("assistant", spy.asked[1][2].text)
    assert spy.asked[0][1] == () and result.items[0].answer == first_answer.text

    # Each turn is scored by its own rule from what the service really said (whatever that was).
    chat_answer, off_answer = spy.asked[1][2], spy.asked[2][2]
    assert result.items[1].smalltalk_handled is metrics.smalltalk_handled(
        chat_answer.kind, len(chat_answer.citations), chat_answer.text)
    assert result.items[2].refused is off_answer.refused and result.items[2].smalltalk_handled is None
    assert [r.repeated_opening for r in result.items] == metrics.repeated_openings([a.text for _, _, a in spy.asked])
    m = result.metrics
    assert (m["conversations"], m["turns"], m["in_scope"], m["smalltalk"], m["out_of_scope"]) == (1, 3, 1, 1, 1)
    assert m["repeated_openings"] == sum(r.repeated_opening for r in result.items)
    assert set(result.by_category) == {"第1轮", "第2轮", "第3轮"}
    # Asked on the eval channel: kept apart from residents' questions in the log.
    assert len(module_services.staff.questions(eval_log)) == logged_before + 1


def test_eval_command_scores_a_questions_file_and_a_conversations_file_into_one_json(module_services, tmp_path,
                                                                                      capsys):
    from assistant.cli import main

    single, conv, out = tmp_path / "single.jsonl", tmp_path / "conv.jsonl", tmp_path / "out.json"
    _write_jsonl(single, [{"id": "s1", "question": "谢谢你", "answerable": False, "sources": [], "category": "闲聊"}])
    _write_jsonl(conv, [THREE_TURNS])
    data_dir = str(module_services.settings.data_dir)
    assert main(["eval", str(single), str(conv), "--data-dir", data_dir, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"== {single} ==" in printed and "conversations: 1, turns: 3" in printed
    runs = json.loads(out.read_text(encoding="utf-8"))["runs"]
    assert [(r["format"], len(r["items"])) for r in runs] == [("questions", 1), ("conversations", 3)]
    for key in ("article_hit@5", "smalltalk_handled", "fact_in_lead", "median_answer_chars", "false_refusals"):
        assert key in runs[0]["metrics"] and key in runs[1]["metrics"]
    assert "repeated_openings" in runs[1]["metrics"]


def test_eval_command_reports_an_unreadable_set_without_a_traceback(module_services, tmp_path, capsys):
    from assistant.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    assert main(["eval", str(bad), "--data-dir", str(module_services.settings.data_dir)]) == 2
    assert "评测集无法读取" in capsys.readouterr().err
