"""ChromaStore: dense vectors in Chroma, embedded in the data dir or on a Chroma server. The only chromadb import."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from assistant.types import Chunk

_BATCH = 1000  # Chroma caps a single add; stay well under it


def _collection_name(embedder_name: str, kind: str = "chunks") -> str:
    # One collection per embedder: vectors of different models must never be compared.
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", embedder_name).strip("-").lower()
    return f"{kind}-{slug}"[:60].strip("-")


class ChromaStore:
    """`kind` names the collection's content: "chunks" (retrieval) or "sentences" (sentence vectors, by id)."""

    def __init__(self, embedder_name: str, path: Path | None = None, host: str = "", port: int = 8000,
                 kind: str = "chunks"):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if host:
            self._client = chromadb.HttpClient(host=host, port=port, settings=settings)
        else:
            if path is None:
                raise ValueError("ChromaStore needs a path when no Chroma server host is set")
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(path=str(path), settings=settings)
        self._collection = self._client.get_or_create_collection(
            _collection_name(embedder_name, kind),
            configuration={"hnsw": {"space": "cosine"}},
            embedding_function=None,  # we always pass vectors; Chroma must not download its default model
        )

    def count(self) -> int:
        return self._collection.count()

    def ids(self) -> set[str]:
        return set(self._collection.get(include=[])["ids"])

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        for i in range(0, len(chunks), _BATCH):
            part = chunks[i : i + _BATCH]
            self._collection.upsert(
                ids=[c.id for c in part],
                embeddings=vectors[i : i + _BATCH],
                documents=[c.text for c in part],
                metadatas=[{"source": c.source, "section": c.section} for c in part],
            )

    def upsert_texts(self, ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray) -> None:
        for i in range(0, len(ids), _BATCH):
            self._collection.upsert(ids=list(ids[i : i + _BATCH]), embeddings=vectors[i : i + _BATCH],
                                    documents=list(texts[i : i + _BATCH]))

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these ids (unknown ids are left out)."""
        if not ids:
            return {}
        res = self._collection.get(ids=list(ids), include=["embeddings"])
        return {i: np.asarray(v, dtype=np.float32) for i, v in zip(res["ids"], res["embeddings"])}

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), _BATCH):
            self._collection.delete(ids=ids[i : i + _BATCH])

    def query(self, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity), best first. Chroma returns fewer when it holds fewer (none when empty), so
        no count() is needed on the query path."""
        res = self._collection.query(query_embeddings=[vector], n_results=max(1, n), include=["distances"])
        ids, distances = (res["ids"] or [[]])[0], (res["distances"] or [[]])[0]
        return [(cid, 1.0 - float(dist)) for cid, dist in zip(ids, distances)]
