"""Checks on the hand-written evaluation sets in evals/sets/.

Every expected source must be a real file in knowledge_base/, every expected article (第N条) must be a
heading at the start of a line in that file, and at least one key fact must stand verbatim in that
article's text (or anywhere in a news report). Standard library only.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KB = ROOT / "knowledge_base"
SETS = ROOT / "evals" / "sets"

SINGLE_FILES = ("dev.jsonl", "test.jsonl", "dev_more.jsonl", "test_more.jsonl")
CONV_FILES = ("dev_conversations.jsonl", "test_conversations.jsonl", "dev_conversations_more.jsonl",
              "test_conversations_more.jsonl")
CATEGORIES = {"党建", "物业", "调解", "无关", "闲聊"}
ANSWERABLE_CATEGORIES = {"党建", "物业", "调解"}

_NUM = "零〇一二三四五六七八九十百千"
ARTICLE_LINE = re.compile(rf"^\s*(第[{_NUM}]+条)")
HEADING_LINE = re.compile(r"^\s*#{1,6}\s")


def _load(name: str) -> list[dict]:
    path = SETS / name
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=None)
def _doc_paths() -> dict[str, Path]:
    return {p.stem: p for p in KB.rglob("*") if p.suffix in {".md", ".txt"}}


@lru_cache(maxsize=None)
def _text(stem: str) -> str:
    return _doc_paths()[stem].read_text(encoding="utf-8")


def _is_news(stem: str) -> bool:
    return _doc_paths()[stem].suffix == ".txt"


@lru_cache(maxsize=None)
def _articles(stem: str) -> dict[str, str]:
    """第N条 → its text: from the heading line up to the next article line or ## heading."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in _text(stem).splitlines():
        m = ARTICLE_LINE.match(line)
        if m:
            current = m.group(1)
            out.setdefault(current, []).append(line)
        elif HEADING_LINE.match(line):
            current = None
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _singles() -> list[dict]:
    return [item for name in SINGLE_FILES for item in _load(name)]


def _conversations() -> list[dict]:
    return [conv for name in CONV_FILES for conv in _load(name)]


def _expectations() -> list[tuple[str, dict]]:
    """(label, {sources, sections, facts}) for every answerable single and every dict expect."""
    out = []
    for item in _singles():
        if item["answerable"]:
            out.append((item["id"], item))
    for conv in _conversations():
        for n, turn in enumerate(conv["turns"], 1):
            if isinstance(turn["expect"], dict):
                out.append((f'{conv["id"]}#{n}', turn["expect"]))
    return out


def _pairs(exp: dict) -> list[tuple[str, str]]:
    sources, sections = exp["sources"], exp["sections"]
    return list(zip(sources, sections)) if sections else [(s, "") for s in sources]


EXPECTATIONS = _expectations()
IDS = [label for label, _ in EXPECTATIONS]


# ---------------------------------------------------------------- file shape

@pytest.mark.parametrize("name", SINGLE_FILES)
def test_single_question_lines_have_the_documented_fields(name):
    keys = {"id", "question", "answerable", "sources", "sections", "facts", "history", "category"}
    for item in _load(name):
        assert set(item) == keys, item.get("id")
        assert item["category"] in CATEGORIES, item["id"]
        assert isinstance(item["question"], str) and item["question"].strip(), item["id"]
        for turn in item["history"]:
            assert turn["role"] in {"user", "assistant"} and turn["content"].strip(), item["id"]


@pytest.mark.parametrize("name", CONV_FILES)
def test_conversations_have_three_to_six_turns_with_known_expectations(name):
    for conv in _load(name):
        assert set(conv) == {"id", "turns"}, conv.get("id")
        assert 3 <= len(conv["turns"]) <= 6, conv["id"]
        for turn in conv["turns"]:
            assert turn["question"].strip(), conv["id"]
            exp = turn["expect"]
            assert exp in ("smalltalk", "refuse") or (isinstance(exp, dict) and set(exp) == {"sources", "sections", "facts"}), conv["id"]


def test_answerability_matches_category():
    for item in _singles():
        if item["category"] in ANSWERABLE_CATEGORIES:
            assert item["answerable"] and item["sources"] and item["facts"], item["id"]
        else:
            assert not item["answerable"], item["id"]
            assert item["sources"] == item["sections"] == item["facts"] == [], item["id"]


def test_ids_carry_their_file_prefix_and_never_repeat():
    prefixes = {"dev.jsonl": "d-", "test.jsonl": "t-", "dev_conversations.jsonl": "dc-", "test_conversations.jsonl": "tc-",
                "dev_more.jsonl": "dm-", "test_more.jsonl": "tm-", "dev_conversations_more.jsonl": "dcm-",
                "test_conversations_more.jsonl": "tcm-"}
    seen = Counter()
    for name, prefix in prefixes.items():
        for row in _load(name):
            assert row["id"].startswith(prefix), row["id"]
            seen[row["id"]] += 1
    assert [i for i, n in seen.items() if n > 1] == []


def test_no_question_repeats_and_dev_and_test_share_no_question_text():
    dev = [i["question"].strip() for name in ("dev.jsonl", "dev_more.jsonl") for i in _load(name)]
    test = [i["question"].strip() for name in ("test.jsonl", "test_more.jsonl") for i in _load(name)]
    assert len(set(dev)) == len(dev)
    assert len(set(test)) == len(test)
    assert set(dev) & set(test) == set()


# ---------------------------------------------------------------- counts

def test_sets_are_large_enough():
    singles = _singles()
    cats = Counter(i["category"] for i in singles)
    assert len(singles) >= 320
    assert sum(i["answerable"] for i in singles) >= 200
    assert cats["无关"] >= 70
    assert cats["闲聊"] >= 34
    assert sum(bool(i["history"]) for i in singles) >= 24
    assert len(_conversations()) >= 44


@pytest.mark.parametrize("dev_name,test_name,test_share", [("dev.jsonl", "test.jsonl", 0.5),
                                                          ("dev_more.jsonl", "test_more.jsonl", 0.4)])
def test_dev_and_test_have_a_similar_mix_of_categories(dev_name, test_name, test_share):
    """The *_more sets were written as one pool and split 60/40 within each category."""
    dev = Counter(i["category"] for i in _load(dev_name))
    test = Counter(i["category"] for i in _load(test_name))
    for cat in CATEGORIES:
        both = dev[cat] + test[cat]
        assert abs(test[cat] - test_share * both) <= max(2, both // 10), cat


def test_answerable_questions_cover_every_document():
    used = {s for _, exp in EXPECTATIONS for s in exp["sources"]}
    assert set(_doc_paths()) - used == set()


# ---------------------------------------------------------------- grounding

@pytest.mark.parametrize("label,exp", EXPECTATIONS, ids=IDS)
def test_every_source_names_an_existing_document(label, exp):
    assert exp["sources"], label
    for stem in exp["sources"]:
        assert stem in _doc_paths(), f"{label}: no file {stem}"


@pytest.mark.parametrize("label,exp", EXPECTATIONS, ids=IDS)
def test_sections_pair_with_sources_and_are_empty_only_for_news(label, exp):
    if not exp["sections"]:
        assert all(_is_news(s) for s in exp["sources"]), f"{label}: a law needs its 第N条"
        return
    assert len(exp["sections"]) == len(exp["sources"]), label
    for stem, section in zip(exp["sources"], exp["sections"]):
        if _is_news(stem):
            assert section == "", f"{label}: news {stem} has no articles"
        else:
            assert ARTICLE_LINE.match(section) and section == ARTICLE_LINE.match(section).group(1), f"{label}: {section!r}"


@pytest.mark.parametrize("label,exp", EXPECTATIONS, ids=IDS)
def test_every_named_article_is_a_heading_in_its_document(label, exp):
    for stem, section in _pairs(exp):
        if section:
            assert section in _articles(stem), f"{label}: {section} is not a line-start heading in {stem}"


@pytest.mark.parametrize("label,exp", EXPECTATIONS, ids=IDS)
def test_facts_are_short_strings(label, exp):
    """A key phrase, never a whole provision: the first sets keep to 12 characters, the *_more ones (a list of
    penalties, a court and its tribunal) to 24."""
    assert exp["facts"], label
    for fact in exp["facts"]:
        assert 2 <= len(fact) <= (24 if label.startswith(("dm-", "tm-")) else 12), f"{label}: {fact!r}"


@pytest.mark.parametrize("label,exp", EXPECTATIONS, ids=IDS)
def test_every_fact_stands_verbatim_in_its_article(label, exp):
    """Each expected (source, section) pair must hold at least one of the facts verbatim."""
    for stem, section in _pairs(exp):
        text = _articles(stem).get(section, "") if section else _text(stem)
        assert any(f in text for f in exp["facts"]), f"{label}: none of {exp['facts']} in {stem} {section}"


def test_every_fact_is_found_in_at_least_one_expected_article():
    """Flags a fact that stands in none of its item's articles (a typo that another fact hides)."""
    stray = []
    for label, exp in EXPECTATIONS:
        texts = [(_articles(s).get(sec, "") if sec else _text(s)) for s, sec in _pairs(exp)]
        stray += [(label, f) for f in exp["facts"] if not any(f in t for t in texts)]
    assert stray == []
