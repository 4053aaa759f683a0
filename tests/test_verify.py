"""SupportVerifier and SentenceBuffer on hand-written LLM sentences against real provisions of the demo corpus."""

from __future__ import annotations

import pytest

from assistant.config import LLMSettings
from assistant.qa.verify import (
    SentenceBuffer,
    SupportVerifier,
    attach,
    citation_numbers,
    cn_to_number,
    numbers_in,
)

# Chunk texts as retrieval hands them over: a context header line, then the provision.
FEE = ("物业管理条例 第六章 物业的使用与维护 > 第四十一条\n"
       "业主应当根据物业服务合同的约定交纳物业服务费用。业主与物业使用人约定由物业使用人交纳物业服务费用的，"
       "从其约定，业主负连带交纳责任。")
STOP = ("物业管理条例 第五章 物业的使用与维护 > 第四十五条\n"
        "对物业管理区域内违反有关治安、环保、物业装饰装修和使用等方面法律、法规规定的行为，物业服务企业应当制止，"
        "并及时向有关行政管理部门报告。")
FREE = ("最高人民法院关于人民调解协议司法确认程序的若干规定 第十一条\n"
        "人民法院办理人民调解协议司法确认案件，不收取费用。")
SOURCES = [FEE, STOP, FREE]


@pytest.fixture(scope="module")
def verifier() -> SupportVerifier:
    return SupportVerifier(LLMSettings().support_threshold)  # the calibrated default


def test_a_sentence_restating_its_cited_provision_is_kept(verifier):
    v = verifier.check("根据《物业管理条例》第四十一条，业主应当按照物业服务合同的约定交纳物业服务费用【1】。", SOURCES)
    assert v.kept, v.reason
    assert v.cited == (1,)
    assert v.text == "根据《物业管理条例》第四十一条，业主应当按照物业服务合同的约定交纳物业服务费用。"


def test_a_true_sentence_with_the_wrong_citation_is_dropped(verifier):
    v = verifier.check("业主应当根据物业服务合同的约定交纳物业服务费用【2】。", SOURCES)
    assert not v.kept
    assert v.removed == (2,)  # source 2 says nothing of it: its number is not credited


def test_an_uncited_sentence_is_dropped(verifier):
    v = verifier.check("业主应当根据物业服务合同的约定交纳物业服务费用。", SOURCES)
    assert (v.kept, v.reason) == (False, "未标注出处")


def test_a_sentence_citing_only_a_number_outside_the_sources_is_dropped(verifier):
    v = verifier.check("物业服务企业应当制止违法装修【7】。", SOURCES)
    assert not v.kept
    assert v.removed == (7,)
    assert "超出范围" in v.reason


def test_an_out_of_range_number_is_removed_from_an_otherwise_supported_sentence(verifier):
    v = verifier.check("对违反装饰装修规定的行为，物业服务企业应当制止，并及时向有关行政管理部门报告【2】【9】。", SOURCES)
    assert v.kept, v.reason
    assert v.cited == (2,)
    assert 9 in v.removed


def test_a_made_up_deadline_is_dropped_even_when_the_words_match(verifier):
    v = verifier.check("物业服务企业应当制止违法装修，并在三日内向有关行政管理部门报告【2】。", SOURCES)
    assert not v.kept
    assert "3" in v.reason


def test_a_claim_that_drops_the_sources_negation_is_dropped(verifier):
    v = verifier.check("人民法院办理人民调解协议司法确认案件，收取费用【3】。", SOURCES)
    assert not v.kept
    assert "不收取费用" in v.reason


def test_the_same_claim_with_the_negation_is_kept(verifier):
    assert verifier.check("人民法院办理人民调解协议司法确认案件不收取费用【3】。", SOURCES).kept


def test_a_negation_the_source_does_not_have_is_dropped(verifier):
    v = verifier.check("业主无需交纳物业服务费用【1】。", SOURCES)
    assert not v.kept
    assert "无需" in v.reason


def test_a_sentence_too_short_to_check_is_dropped(verifier):
    assert not verifier.check("可以【1】。", SOURCES).kept


def test_markdown_and_bracket_citations_are_accepted_and_cleaned(verifier):
    v = verifier.check("- **业主应当根据物业服务合同的约定交纳物业服务费用** [1]", SOURCES)
    assert v.kept, v.reason
    assert v.text == "业主应当根据物业服务合同的约定交纳物业服务费用"


def test_a_sentence_combining_two_sources_keeps_both_citations(verifier):
    v = verifier.check("业主应当交纳物业服务费用，物业服务企业应当制止违反装饰装修规定的行为【1，2】。", SOURCES)
    assert v.kept, v.reason
    assert v.cited == (1, 2)


def test_the_threshold_must_be_a_share():
    with pytest.raises(ValueError, match="threshold"):
        SupportVerifier(threshold=1.5)


def test_citation_numbers_keep_first_use_order():
    assert citation_numbers("甲【2】乙【1、2】丙[3]【资料4】") == [2, 1, 3, 4]


def test_attach_puts_markers_before_the_final_punctuation():
    assert attach("业主应当交费。", [1, 2]) == "业主应当交费【1】【2】。"
    assert attach("业主应当交费", [1]) == "业主应当交费【1】。"


def test_chinese_numerals_are_read_as_numbers():
    assert cn_to_number("三十") == 30
    assert cn_to_number("一百零五") == 105
    assert cn_to_number("二〇二一") == 2021
    assert numbers_in("百分之二十以上，三十日内，15日，第四十一条") >= {20, 30, 15, 41}
    assert numbers_in("统一管理，一般情况") == set()


def test_sentence_buffer_waits_for_a_citation_that_follows_the_full_stop():
    buf = SentenceBuffer()
    out = []
    for piece in ["业主应当交", "费。", "【", "1", "】业主", "可以。[2", "]\n\n**注意**：", "不得。"]:
        out += buf.feed(piece)
    assert out == ["业主应当交费。【1】", "业主可以。[2]\n\n"]
    assert buf.flush() == ["**注意**：不得。"]


def test_sentence_buffer_emits_a_sentence_as_soon_as_the_next_one_starts():
    buf = SentenceBuffer()
    assert buf.feed("第一句【1】。") == []  # a 【2】 could still follow
    assert buf.feed("第") == ["第一句【1】。"]
    assert buf.flush() == ["第"]


def test_a_sentence_that_only_names_the_provision_is_dropped(verifier):
    v = verifier.check("物业管理条例 第六章 物业的使用与维护 第四十一条【1】。", SOURCES)
    assert (v.kept, v.reason) == (False, "只有条文名称，没有内容")
    # Even when the header's words (物业, 使用, 维护) also occur in the body.
    header_heavy = "物业管理条例 物业的使用与维护 > 第四十六条\n物业的使用与维护应当遵守本条例，物业管理区域内的业主应当配合。"
    assert not verifier.check("物业管理条例 物业的使用与维护 第四十六条【1】。", [header_heavy]).kept
