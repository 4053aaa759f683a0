"""The chunk cap holds for any text: no sentence ends, only commas, long ASCII runs, surrogate pairs."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.types import SourceDoc
from ingest.splitter import ChineseSplitter

CAP = 120  # small, so short test strings reach every fallback level
SPLITTER = ChineseSplitter(CAP)
PAIR = "\ud842\udfb7"  # 𠮷 as a UTF-16 surrogate pair, the form text takes when it went through UTF-16 code units


def prose(text: str, kind: str = "") -> SourceDoc:
    return SourceDoc(source="t.txt", text=text, title="测试", kind=kind)


def has_lone_surrogate(text: str) -> bool:
    i = 0
    while i < len(text):
        ch = text[i]
        if "\ud800" <= ch <= "\udbff":
            if i + 1 >= len(text) or not "\udc00" <= text[i + 1] <= "\udfff":
                return True
            i += 2
            continue
        if "\udc00" <= ch <= "\udfff":
            return True
        i += 1
    return False


def test_20000_characters_without_sentence_ends_are_cut_to_the_cap_and_lose_nothing():
    text = ("业主委员会物业服务企业共有部分维修资金" * 1100)[:20_000]
    assert len(text) == 20_000 and not any(p in text for p in "。！？；，")
    chunks = ChineseSplitter(360).split(prose(text))
    assert len(chunks) >= 20_000 // 360
    assert max(len(c.body) for c in chunks) <= 360
    assert "".join(c.body for c in chunks) == text
    assert all(text[c.start : c.end] == c.body for c in chunks)


def test_regulation_article_without_sentence_ends_is_capped_too():
    text = "## 第一章 总则\n\n第一条 " + "业主大会决定物业管理区域内的重大事项" * 300 + "\n"
    chunks = SPLITTER.split(prose(text, kind="法规"))
    assert len(chunks) > 1
    assert all(len(c.body) <= CAP for c in chunks)
    assert all(c.section == "第一章 总则 > 第一条" for c in chunks)


def test_text_with_only_commas_is_cut_after_a_comma():
    text = "业主委员会应当履行职责，" * 500
    chunks = SPLITTER.split(prose(text))
    assert all(len(c.body) <= CAP for c in chunks)
    assert all(c.body.endswith("，") for c in chunks)  # the comma stays with its clause
    assert "".join(c.body for c in chunks) == text


def test_enumeration_commas_are_used_before_cutting_blind():
    text = "、".join(["电梯水泵消防设施"] * 400)  # no ，at all: 、 is the last punctuation to cut on
    chunks = SPLITTER.split(prose(text))
    assert all(len(c.body) <= CAP for c in chunks)
    assert all(c.body.endswith("、") for c in chunks[:-1])


def test_long_ascii_run_without_spaces_is_cut_at_the_cap():
    text = "GB50016" * 3000  # one 21,000-character "word": cutting inside it is the only way
    chunks = SPLITTER.split(prose(text))
    assert all(len(c.body) <= CAP for c in chunks)
    assert "".join(c.body for c in chunks) == text


def test_ascii_words_and_numbers_are_not_torn_when_there_is_room_to_cut_between_them():
    words = ["Property", "management", "GB50016-2014", "2023", "regulation"]
    text = " ".join(words[i % len(words)] for i in range(2000))
    chunks = SPLITTER.split(prose(text))
    assert all(len(c.body) <= CAP for c in chunks)
    for c in chunks:
        assert set(re.findall(r"[0-9A-Za-z]+", c.body)) <= {"Property", "management", "GB50016", "2014", "2023", "regulation"}


def test_a_run_of_surrogate_pairs_is_never_cut_between_the_halves():
    text = "业主" + PAIR * 500
    chunks = SPLITTER.split(prose(text))
    assert all(len(c.body) <= CAP for c in chunks)
    assert not any(has_lone_surrogate(c.body) for c in chunks)
    assert "".join(c.body for c in chunks) == text


def test_a_runaway_heading_does_not_become_a_second_body_in_the_context_line():
    text = "## " + "标题" * 2000 + "\n\n正文第一段，业主大会依法成立。\n"
    [chunk] = SPLITTER.split(prose(text))
    assert len(chunk.text.split("\n", 1)[0]) <= CAP
    assert chunk.body == "正文第一段，业主大会依法成立。"


TOKENS = st.one_of(
    st.text(alphabet="业主委员会物业服务企业维修资金小区居民调解纠纷党建", min_size=1, max_size=40),
    st.text(alphabet="abcXYZ0123456789", min_size=1, max_size=300),
    st.sampled_from(["。", "！", "？", "；", "，", "、", "：", " ", "\n", "\n\n", PAIR, "𠮷", "第一条 ", "## 第一章 总则\n"]),
)


@settings(max_examples=80, deadline=None)
@given(tokens=st.lists(TOKENS, max_size=120), kind=st.sampled_from(["", "法规"]), cap=st.sampled_from([80, 120, 360]))
def test_every_chunk_is_within_the_cap_and_no_chunk_holds_a_lone_surrogate(tokens, kind, cap):
    doc = prose("".join(tokens), kind)
    for c in ChineseSplitter(cap).split(doc):
        assert len(c.body) <= cap
        assert len(c.text.split("\n", 1)[0]) <= cap + 81  # the context line: a clipped header plus a 款 lead-in
        assert not has_lone_surrogate(c.text)
        assert doc.text[c.start : c.end] == c.body
