"""The Chroma store against a real embedded Chroma: the query path asks no count() and copes with small indexes."""

import numpy as np

from assistant.index.store import ChromaStore
from assistant.types import Chunk


def _chunk(cid: str) -> Chunk:
    return Chunk(cid, f"条例 第一条\n内容{cid}", "调解/条例.md", "条例", "第一条", 0, 3)


def test_querying_an_empty_store_returns_nothing(tmp_path):
    assert ChromaStore("test-embedder", tmp_path).query(np.ones(4, dtype=np.float32), 10) == []


def test_asking_for_more_results_than_stored_returns_them_all_best_first(tmp_path):
    store = ChromaStore("test-embedder", tmp_path)
    vectors = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
    store.upsert([_chunk("a"), _chunk("b"), _chunk("c")], vectors)
    found = store.query(np.array([1, 0, 0, 0], dtype=np.float32), 30)
    assert [cid for cid, _ in found] == ["a", "b", "c"]
    assert found[0][1] > found[1][1] > found[2][1] and abs(found[0][1] - 1.0) < 1e-5


def test_sentence_vectors_are_read_back_by_id_and_unknown_ids_are_left_out(tmp_path):
    store = ChromaStore("test-embedder", tmp_path, kind="sentences")
    store.upsert_texts(["s1", "s2"], ["一句。", "二句。"], np.eye(2, 4, dtype=np.float32))
    got = store.vectors(["s2", "missing"])
    assert set(got) == {"s2"} and np.allclose(got["s2"], [0, 1, 0, 0])
