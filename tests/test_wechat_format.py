"""WeChat text: short citation lines, and pages of at most 2048 bytes that lose nothing."""

from __future__ import annotations

import re

import pytest

from assistant.types import Answer, AnswerKind, Citation, ComposeMode
from assistant.wechat.format import MORE_HINT, format_answer, paginate


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _article_answer() -> Answer:
    quote = "物业服务企业应当按照物业服务合同的约定，提供相应的服务。物业服务企业未能履行约定，导致业主人身、财产安全受到损害的，应当依法承担相应的法律责任。"
    citations = (
        Citation(1, "物业/物业管理条例.md", "物业管理条例", "第三章 前期物业管理 > 第三十五条", quote),
        Citation(
            2,
            "物业/江苏省物业管理条例.md",
            "江苏省物业管理条例",
            "第七章 法律责任 > 第八十五条",
            "业主未按约定支付物业费的，可以催告。",
        ),
    )
    text = (
        "根据《物业管理条例》第三十五条：物业服务企业应当按照物业服务合同的约定，提供相应的服务。【1】\n\n相关条文：\n"
        f"【1】《物业管理条例》第三十五条：{quote}\n【2】《江苏省物业管理条例》第八十五条：业主未按约定支付物业费的，可以催告。"
    )
    return Answer(text, citations, AnswerKind.ANSWERED, "物业公司不履行合同怎么办", ComposeMode.EXTRACTIVE)


def test_citations_become_short_title_and_article_lines():
    text = format_answer(_article_answer())
    assert text.startswith(
        "根据《物业管理条例》第三十五条：物业服务企业应当按照物业服务合同的约定，提供相应的服务。【1】\n\n依据：\n"
    )
    assert "【1】《物业管理条例》第三十五条\n【2】《江苏省物业管理条例》第八十五条\n" in text
    # The long "相关条文" list is replaced: each provision's wording appears once, under 条文原文, without its label.
    assert "相关条文" not in text
    assert "\n\n条文原文：\n【1】物业服务企业应当按照物业服务合同的约定" in text
    assert text.endswith("【2】业主未按约定支付物业费的，可以催告。")


def test_a_refusal_is_its_text_without_a_basis_section():
    answer = Answer(
        "抱歉，我在已收录的政策文件中没有找到能回答这个问题的依据。\n\n建议您咨询社区居委会。",
        (),
        AnswerKind.REFUSED,
        "",
        ComposeMode.TEMPLATE,
    )
    assert format_answer(answer) == answer.text


def test_markdown_from_an_llm_answer_is_shown_as_plain_text():
    answer = Answer(
        "## 结论\n**业主**应当按约定交纳物业费【1】。",
        (Citation(1, "a.md", "物业管理条例", "第四十一条", ""),),
        AnswerKind.ANSWERED,
        "",
        ComposeMode.LLM,
    )
    assert (
        format_answer(answer)
        == "结论\n业主应当按约定交纳物业费【1】。\n\n依据：\n【1】《物业管理条例》第四十一条"
    )


def test_short_text_is_one_page_without_the_hint():
    assert paginate("物业费由业主交纳。", 2048) == ["物业费由业主交纳。"]


@pytest.mark.parametrize("max_bytes", [2048, 300, 100])
def test_pages_fit_the_byte_limit_and_together_are_the_whole_text(max_bytes):
    text = format_answer(_article_answer()) * 6
    pages = paginate(text, max_bytes)
    assert len(pages) > 1
    assert all(len(p.encode("utf-8")) <= max_bytes for p in pages)
    assert all(p.endswith("\n\n" + MORE_HINT) for p in pages[:-1])
    assert MORE_HINT not in pages[-1]
    body = "".join(p.removesuffix("\n\n" + MORE_HINT) for p in pages)
    assert _no_space(body) == _no_space(text)


def test_pages_break_between_sentences():
    sentence = "业主大会应当依法履行职责。"  # 13 characters, 39 bytes
    pages = paginate(sentence * 20, 200)
    for page in pages:
        assert page.removesuffix("\n\n" + MORE_HINT).endswith("。")


def test_a_sentence_longer_than_a_page_is_cut_between_characters():
    text = "维" * 1000  # 3000 bytes, no punctuation at all
    pages = paginate(text, 2048)
    # 2048 bytes less the hint line ("\n\n" + 10 characters of 3 bytes = 32) leave room for 672 characters.
    assert [p.removesuffix("\n\n" + MORE_HINT) for p in pages] == ["维" * 672, "维" * 328]
    assert len(pages[0].encode("utf-8")) <= 2048


def test_a_limit_too_small_for_the_hint_is_refused_with_the_value():
    with pytest.raises(ValueError, match="reply_max_bytes \\(30\\)"):
        paginate("物业" * 100, 30)
