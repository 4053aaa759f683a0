"""Small knowledge bases searched in memory (index/exact.py, RetrievalSettings.exact_max_chunks): exact cosines over
one generation's live chunk and sentence vectors, read once per generation; a large knowledge base asks Chroma.

Real jieba, real Chroma, the real onnx embedder over the demo corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from assistant.config import RetrievalSettings, Settings
from assistant.index.exact import InMemoryVectors
from assistant.index.store import ChromaStore
from assistant.services import build_services
from evals.golden import load_golden

ROOT = Path(__file__).resolve().parents[1]


class _Store:
    def __init__(self, vectors: dict[str, list[float]]):
        self.data = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
        self.asked: list[list[str]] = []

    def vectors(self, ids):
        self.asked.append(list(ids))
        return {i: self.data[i] for i in ids if i in self.data}


def test_in_memory_vectors_rank_by_cosine_and_bring_the_masked_rows_best_too():
    store = _Store({"a": [1, 0], "b": [0.8, 0.6], "c": [0, 1], "d": [-1, 0]})
    vectors = InMemoryVectors.load(store, ["a", "b", "c", "d", "missing"])
    assert vectors.ids == ["a", "b", "c", "d"]  # an id the store lacks is left out
    got = vectors.query(np.array([2.0, 0.0]), 2)
    assert [i for i, _ in got] == ["a", "b"] and got[0][1] == pytest.approx(1.0) and got[1][1] == pytest.approx(0.8)
    also = np.array([False, False, False, True])
    assert [i for i, _ in vectors.query(np.array([1.0, 0.0]), 2, also)] == ["a", "b", "d"]
    assert np.linalg.norm(vectors.get(["b"])["b"]) == pytest.approx(1.0) and vectors.get(["zz"]) == {}
    assert vectors.query(np.array([1.0, 0.0]), 10)[-1][0] == "d"  # n past the size: all of them, best first


def test_reading_a_generation_asks_the_store_in_bounded_batches():
    store = _Store({f"c{i}": [1.0, float(i)] for i in range(4500)})
    vectors = InMemoryVectors.load(store, [f"c{i}" for i in range(4500)])
    assert len(vectors) == 4500 and max(len(a) for a in store.asked) <= 2000


@pytest.fixture(scope="module")
def both(kb_data_dir, embedder, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("exact") / "data"
    shutil.copytree(kb_data_dir, data_dir)
    in_memory = build_services(Settings(data_dir=data_dir), embedder)
    chroma = build_services(Settings(data_dir=data_dir, retrieval=RetrievalSettings(exact_max_chunks=0)), embedder)
    return in_memory, chroma


def test_the_demo_corpus_is_held_in_memory_live_chunks_only(both):
    in_memory, chroma = both
    snap = in_memory.knowledge.index.snap
    assert snap.vectors is not None and snap.sentence_vectors is not None
    assert set(snap.vectors.ids) == set(snap.catalog.chunks) - snap.retired
    assert len(snap.sentence_vectors) > len(snap.vectors)
    assert chroma.knowledge.index.snap.vectors is None


def test_in_memory_search_ranks_as_chroma_does(both):
    """HNSW is approximate and exact search is not: over the golden set nearly every top 5 is the same list, and the
    closest chunk's cosine the same number."""
    in_memory, chroma = both
    items = [i for i in load_golden(ROOT / "evals" / "golden.jsonl") if not i.history]
    same = 0
    for item in items:
        a, b = in_memory.chat.retrieve(item.question), chroma.chat.retrieve(item.question)
        same += [h.chunk.id for h in a.hits] == [h.chunk.id for h in b.hits]
        assert a.evidence.dense_top == pytest.approx(b.evidence.dense_top, abs=1e-4), item.question
    assert same >= 0.95 * len(items), (same, len(items))


def test_an_in_memory_knowledge_base_never_asks_chroma_on_the_query_path(both, monkeypatch):
    in_memory, chroma = both
    asked: list[str] = []
    for name in ("query", "vectors"):
        real = getattr(ChromaStore, name)
        monkeypatch.setattr(ChromaStore, name, lambda self, *a, _real=real, _name=name, **k: (asked.append(_name),
                                                                                                 _real(self, *a, **k))[1])
    found = in_memory.chat.retrieve("业主大会多久开一次")
    assert found.hits and found.sentences and asked == []
    chroma.chat.retrieve("业主大会多久开一次")
    assert "query" in asked and "vectors" in asked  # the other path, for a large knowledge base


def test_a_new_generation_is_searched_in_memory_with_its_new_document(kb_data_dir, embedder, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    services = build_services(Settings(data_dir=data_dir), embedder)
    rule = tmp_path / "upload" / "小区快递柜管理办法.md"
    rule.parent.mkdir()
    rule.write_text("# 小区快递柜管理办法\n\n第一条 快递柜超时保管费每十二小时五角，由快递公司承担。\n", encoding="utf-8")
    assert services.knowledge.ingest([rule.parent]).added
    snap = services.knowledge.index.snap
    assert snap.vectors is not None and any(snap.catalog.chunks[c].title == "小区快递柜管理办法" for c in snap.vectors.ids)
    assert services.chat.retrieve("快递柜超时保管费谁来出").hits[0].chunk.title == "小区快递柜管理办法"


def test_a_knowledge_base_over_the_limit_stays_in_chroma(kb_data_dir, embedder):
    services = build_services(Settings(data_dir=kb_data_dir, retrieval=RetrievalSettings(exact_max_chunks=10)),
                              embedder)
    assert services.knowledge.index.snap.vectors is None
    assert services.chat.retrieve("业主大会多久开一次").hits
