"""Prose whose source lost its article numbers is cited by the narrowest honest range of its numbered neighbours
("第五十七条之后、第六十九条之前"), never by an invented number; and that range never scores as a specific article."""

import re
from pathlib import Path

import pytest

from assistant.qa.compose import label
from assistant.types import Answer, AnswerKind, Citation, SourceDoc
from assistant.wechat.format import format_answer
from evals.metrics import article_headings, article_matches, hit_matches, section_matches
from ingest.loaders import discover, load_file, load_manifest
from ingest.splitter import ChineseSplitter

CORPUS = Path("/work/shared/corpus")  # the real files, with their quirks
JIANGSU = "物业/江苏省物业管理条例.md"
CH6 = "第六章 物业的使用和维护"
CH6_RANGE = "第五十七条之后、第六十九条之前"
SPLITTER = ChineseSplitter(360)
_NUM = "零〇一二三四五六七八九十百千"
NUMBERED = re.compile(rf"第[{_NUM}]+条(?:之[{_NUM}]+)?")


def split(text: str, kind: str = "法规"):
    return SPLITTER.split(SourceDoc(source="t.md", title="测试条例", kind=kind, text=text))


def by_body(chunks, start: str):
    [c] = [c for c in chunks if c.body.startswith(start)]
    return c


# ---- synthetic regulations -------------------------------------------------------------------------------------
REG = (
    "# 测试条例\n\n"
    "## 第一章 总则\n\n"
    "第一条 为了规范测试，制定本条例。\n\n"
    "第二条 本条例适用于测试活动。\n\n"
    "## 第二章 管理\n\n"
    "业主应当遵守管理规约。物业服务企业应当履行合同义务。\n\n"
    "第九条 业主委员会应当接受监督。\n\n"
)


def test_prose_between_two_numbered_articles_is_placed_between_them():
    prose = by_body(split(REG), "业主应当遵守管理规约。")
    assert prose.article == "第二条之后、第九条之前"
    assert prose.section == "第二章 管理 > 第二条之后、第九条之前"  # the chapter stays in the section
    # The embedded context line is as before: no article number the text doesn't have is added to it.
    assert prose.text.startswith("测试条例 第二章 管理\n业主应当遵守管理规约。")
    assert label(prose) == "《测试条例》第二条之后、第九条之前"
    # The numbered articles themselves are untouched.
    assert by_body(split(REG), "第九条").section == "第二章 管理 > 第九条"


def test_prose_after_the_last_article_is_placed_after_it():
    chunks = split(REG + "## 附则\n\n本条例自公布之日起施行。\n")
    tail = by_body(chunks, "本条例自公布之日起施行。")
    assert tail.article == "第九条之后"
    assert tail.section == "附则 > 第九条之后"


def test_prose_before_the_first_article_in_a_numbered_chapter_is_placed_before_it():
    text = "## 第一章 总则\n\n为了规范测试活动，制定本条例。\n\n第二条 本条例适用于测试活动。\n"
    head = by_body(split(text), "为了规范测试活动")
    assert head.article == "第二条之前"
    assert head.section == "第一章 总则 > 第二条之前"


def test_neighbours_keep_the_documents_own_numerals():
    text = "第十条 甲。\n\n第十条之一 乙。\n\n## 第三章 使用\n\n丙丁戊。\n\n第十一条 己。\n"
    assert by_body(split(text), "丙丁戊").article == "第十条之一之后、第十一条之前"


def test_front_matter_and_named_parts_before_the_first_article_keep_their_labels():
    text = ("# 测试章程\n\n（2020年1月1日通过）\n\n## 总纲\n\n总纲的文字。\n\n"
            "## 第一章 成员\n\n第一条 成员的条件。\n")
    chunks = split(text)
    assert by_body(chunks, "（2020年1月1日通过）").section == ""
    assert by_body(chunks, "总纲的文字").section == "总纲"


def test_regulation_without_numbered_articles_and_news_are_unaffected():
    no_articles = split("## 第一章 总则\n\n为了规范测试，制定本规定。\n\n## 第二章 附则\n\n本规定自公布之日起施行。\n")
    assert [c.section for c in no_articles] == ["第一章 总则", "第二章 附则"]
    news = split("社区开展活动\n\n第一条 消息称活动很成功。\n\n居民纷纷点赞，表示满意。\n", kind="新闻报道")
    assert not any("之后" in c.section or "之前" in c.section for c in news)


# ---- the real file ---------------------------------------------------------------------------------------------
def corpus_chunks(rel: str):
    doc = load_file(CORPUS / rel, CORPUS, load_manifest(CORPUS))
    return doc, SPLITTER.split(doc)


def test_jiangsu_chapter_six_is_cited_between_articles_57_and_69():
    _, chunks = corpus_chunks(JIANGSU)
    ch6 = [c for c in chunks if c.section.startswith(CH6) and not NUMBERED.fullmatch(c.article)]
    assert len(ch6) == 7
    assert all(c.section == f"{CH6} > {CH6_RANGE}" and c.article == CH6_RANGE for c in ch6)
    assert label(ch6[0]) == f"《江苏省物业管理条例》{CH6_RANGE}"
    # A cross-reference inside the text ("本条例第六十六条") still does not become the article.
    assert not any(c.article == "第六十六条" for c in chunks)


@pytest.mark.parametrize("path", discover(CORPUS), ids=lambda p: p.name)
def test_no_regulation_chunk_between_numbered_articles_lacks_an_article(path: Path):
    doc = load_file(path, CORPUS, load_manifest(CORPUS))
    chunks = SPLITTER.split(doc)
    if doc.kind != "法规":
        assert not any(re.search(r"条之(?:后|前)", c.article) for c in chunks)
        return
    own = [c.article if NUMBERED.fullmatch(c.article) else "" for c in chunks]
    for i, c in enumerate(chunks):
        if own[i]:
            continue
        before = next((a for a in reversed(own[:i]) if a), "")
        after = next((a for a in own[i + 1 :] if a), "")
        if before and after:
            assert c.article == f"{before}之后、{after}之前", (c.section, c.body[:30])
        # Every number a range names is one of the document's own articles.
        for n in NUMBERED.findall(c.article):
            assert n in own, (c.section, n)


# ---- what downstream does with a range label -------------------------------------------------------------------
RANGE_SECTION = f"{CH6} > {CH6_RANGE}"


def test_wechat_names_the_range_in_its_basis_lines_and_keeps_the_quote():
    cite = Citation(1, JIANGSU, "江苏省物业管理条例", RANGE_SECTION, "业主、物业使用人对物业的使用与维护……")
    text = f"答复正文。\n\n相关条文：\n【1】{label(cite)}：物业管理区域内禁止下列行为……"
    out = format_answer(Answer(text=text, citations=(cite,), kind=AnswerKind.ANSWERED))
    assert f"【1】《江苏省物业管理条例》{CH6_RANGE}" in out
    assert "【1】物业管理区域内禁止下列行为……" in out  # the listed excerpt was parsed despite the 、 in the label


def test_range_label_does_not_score_as_the_following_article_or_by_its_text():
    _, chunks = corpus_chunks(JIANGSU)
    for c in (c for c in chunks if c.article == CH6_RANGE):
        # The context line starts with the title, so no article heading is read off a range chunk's text.
        assert not article_headings(c.text) & {"第五十七条", "第六十九条"}
        assert not article_matches(["江苏省物业管理条例"], ["第六十九条"], c.source, c.section, c.text)
    assert not section_matches("第六十九条", RANGE_SECTION)
    assert not section_matches("第五十八条", RANGE_SECTION)


def test_chapter_level_and_exact_range_expectations_still_match():
    assert section_matches("第六章", RANGE_SECTION)  # golden wy-019 expects 第六章 of this file
    assert section_matches(CH6_RANGE, RANGE_SECTION)
    assert hit_matches([JIANGSU], ["第六章"], JIANGSU, RANGE_SECTION, with_section=True)


def test_range_label_does_not_score_as_the_preceding_article():
    assert not section_matches("第五十七条", RANGE_SECTION)
    assert not article_matches(["江苏省物业管理条例"], ["第五十七条"], JIANGSU, RANGE_SECTION, "江苏省物业管理条例 …\n…")
    assert not hit_matches([JIANGSU], ["第五十七条"], JIANGSU, RANGE_SECTION, with_section=True)
