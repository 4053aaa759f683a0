"""Domain documents before reference ones (RetrievalSettings.reference_categories, reference_weight; qa/retrieve.py
prefer_domain): the demo corpus and five national laws that word much of the same (building quality, lifts, court
mediation), all in ONE knowledge base, as a county would load them. Real jieba, real Chroma, the real onnx embedder.

- a question the community's rules answer is answered from them, where without the preference a law on building
  quality comes first;
- a question only a reference law answers is still answered from that law;
- a knowledge base of domain documents only asks Chroma once per question, a mixed one twice (its domain chunks
  apart), so that the preference costs nothing where there is nothing to prefer (the Chroma path, as a large
  knowledge base is searched; a small one is searched in memory, index/exact.py, with the same tiers)."""

from __future__ import annotations

import shutil

import pytest

from assistant.config import RetrievalSettings, Settings
from assistant.index.store import ChromaStore
from assistant.qa.retrieve import prefer_domain
from assistant.services import build_services
from assistant.types import Chunk, ScoredChunk
from tests.library_sample import require_library, write_sample

DISTRACTORS = (
    "司法解释/最高人民法院关于人民法院民事调解工作若干问题的规定(2020-12-29).md",
    "司法解释/最高人民法院关于人民法院特邀调解的规定(2016-06-28).md",
    "社会法/特种设备安全法(2013-06-29).md",
    "经济法/建筑法(2019-04-23).md",
    "行政法规/建设工程质量管理条例(2019-04-23).md",
)
CRACKED_WALL = "交房才一年墙就裂了，保修期内这个该谁来修"  # the community's rules: 建设单位/保修 (江苏省物业管理条例)
REFERENCE_ONLY = {  # nothing in the demo corpus answers these; the provisions that do (two laws say the second)
    "电梯多久要做一次定期检验": {("中华人民共和国特种设备安全法", "第四十条")},
    "装修想拆一面承重墙改格局，需要什么审批": {("建设工程质量管理条例", "第十五条"), ("中华人民共和国建筑法", "第四十九条")},
}


@pytest.fixture(scope="module")
def mixed_dir(kb_data_dir, embedder, tmp_path_factory):
    require_library()
    base = tmp_path_factory.mktemp("mixed")
    data_dir = base / "data"
    shutil.copytree(kb_data_dir, data_dir)
    report = build_services(Settings(data_dir=data_dir), embedder).knowledge.ingest(
        [write_sample(base / "library", DISTRACTORS)])
    assert len(report.added) == len(DISTRACTORS) and not report.failed
    return data_dir


def _services(data_dir, embedder, **retrieval):
    return build_services(Settings(data_dir=data_dir, retrieval=RetrievalSettings(**retrieval)), embedder)


@pytest.mark.parametrize("exact_max_chunks", [0, 5000], ids=["chroma", "in-memory"])
def test_the_communitys_rule_comes_before_a_law_that_words_the_same(mixed_dir, embedder, exact_max_chunks):
    plain = _services(mixed_dir, embedder, reference_weight=1.0, exact_max_chunks=exact_max_chunks)
    assert plain.chat.retrieve(CRACKED_WALL).hits[0].chunk.category == "法律法规"  # a building law comes first
    preferred = _services(mixed_dir, embedder, exact_max_chunks=exact_max_chunks).chat.retrieve(CRACKED_WALL)
    assert preferred.hits[0].chunk.category == "物业" and preferred.evidence.covered
    assert preferred.hits[0].chunk.title == "江苏省物业管理条例"
    assert any(h.chunk.category == "法律法规" for h in preferred.hits)  # demoted, not removed


@pytest.mark.parametrize("question", sorted(REFERENCE_ONLY))
def test_a_question_only_a_reference_law_answers_is_still_answered_from_it(mixed_dir, embedder, question):
    answer = _services(mixed_dir, embedder).chat.ask(question)
    assert not answer.refused
    assert (answer.citations[0].title, answer.citations[0].section.rsplit(" > ", 1)[-1]) in REFERENCE_ONLY[question]


def _count_queries(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    real = ChromaStore.query

    def counting(self, vector, n, excluding=()):
        calls.append(tuple(excluding))
        return real(self, vector, n, excluding)

    monkeypatch.setattr(ChromaStore, "query", counting)
    return calls


def test_a_mixed_knowledge_base_asks_for_its_domain_chunks_apart(mixed_dir, embedder, monkeypatch):
    services = _services(mixed_dir, embedder, exact_max_chunks=0)
    calls = _count_queries(monkeypatch)
    services.chat.retrieve("小区电梯坏了谁来修")
    assert calls and calls.count(()) == calls.count(("法律法规",)) == len(calls) // 2


def test_domain_documents_alone_cost_one_query_and_rank_as_without_the_preference(kb_data_dir, embedder,
                                                                                 monkeypatch, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    preferred = _services(data_dir, embedder, exact_max_chunks=0)
    plain = _services(data_dir, embedder, reference_weight=1.0, exact_max_chunks=0)
    calls = _count_queries(monkeypatch)
    for question in ("业主大会多久开一次", "调解协议有法律效力吗", "入党要什么条件"):
        calls.clear()
        got = preferred.chat.retrieve(question)
        assert calls and set(calls) == {()}
        assert [h.chunk.id for h in got.hits] == [h.chunk.id for h in plain.chat.retrieve(question).hits]


def _hit(cid: str, category: str, score: float) -> ScoredChunk:
    return ScoredChunk(Chunk(cid, "正文", "a.md", "标题", "第一条", 0, 2, category), score, 0.0, 0.0, None, None)


def test_prefer_domain_scales_only_reference_scores_and_reorders():
    hits = [_hit("law", "法律法规", 1.0), _hit("rule", "物业", 0.8), _hit("other", "", 0.5)]
    got = prefer_domain(hits, ["法律法规"], 0.7)
    assert [(h.chunk.id, round(h.score, 3)) for h in got] == [("rule", 0.8), ("law", 0.7), ("other", 0.5)]
    assert prefer_domain(hits, ["法律法规"], 1.0) == hits and prefer_domain(hits, [], 0.5) == hits


def test_an_unlabelled_policy_file_counts_as_the_communitys_own(kb_data_dir, embedder, monkeypatch, tmp_path):
    """A staff upload without a manifest has no category: it is the community's, not reference material. Beside
    the demo corpus it makes no mixed knowledge base (one Chroma query per question) and is never demoted."""
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    rule = tmp_path / "upload" / "小区电梯管理办法.md"
    rule.parent.mkdir()
    rule.write_text("# 小区电梯管理办法\n\n第一条 小区电梯每年由物业服务人委托特种设备检验机构定期检验一次。\n",
                    encoding="utf-8")
    services = _services(data_dir, embedder, exact_max_chunks=0)
    assert services.knowledge.ingest([rule.parent]).added
    calls = _count_queries(monkeypatch)
    hits = services.chat.retrieve("电梯多久要做一次定期检验").hits
    assert calls and set(calls) == {()}
    assert (hits[0].chunk.title, hits[0].chunk.category) == ("小区电梯管理办法", "")
