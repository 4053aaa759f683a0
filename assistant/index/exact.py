"""A small knowledge base's vectors held in memory and searched exactly (issue 16 item 3).

A scope of many knowledge bases asked Chroma once per knowledge base, and once more for each one's sentence vectors:
about 1.3 ms of fixed cost each, whatever its size, so eleven small knowledge bases cost 1.7x two holding the same
documents. Below RetrievalSettings.exact_max_chunks live chunks, a knowledge base's chunk and sentence vectors are
read once per generation into one matrix each, and a query is a matrix product over a few thousand rows (well under
a millisecond): exact cosines, the same as Chroma's up to its HNSW approximation. A large knowledge base (the law
library) stays in Chroma, whose index does not scan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

_READ = 2000  # ids per read from the store


class _Store(Protocol):
    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...


class InMemoryVectors:
    """Row-normalised vectors of a fixed set of ids (one generation's live chunks, or their sentences)."""

    def __init__(self, ids: Sequence[str], matrix: np.ndarray):
        self.ids = list(ids)
        self.rows = {cid: i for i, cid in enumerate(self.ids)}
        norms = np.linalg.norm(matrix, axis=1, keepdims=True) if len(matrix) else np.ones((0, 1))
        norms[norms == 0] = 1.0
        self.matrix = (matrix / norms).astype(np.float32) if len(matrix) else np.zeros((0, 1), np.float32)

    @classmethod
    def load(cls, store: _Store, ids: Sequence[str]) -> InMemoryVectors:
        """The stored vectors of these ids; an id the store lacks is left out, as Chroma would never return it."""
        found: dict[str, np.ndarray] = {}
        ids = list(ids)
        for i in range(0, len(ids), _READ):
            found.update(store.vectors(ids[i : i + _READ]))
        kept = [cid for cid in ids if cid in found]
        return cls(kept, np.stack([found[cid] for cid in kept]) if kept else np.zeros((0, 1), np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def query(self, vector: np.ndarray, n: int, also: np.ndarray | None = None) -> list[tuple[str, float]]:
        """(id, cosine), best first: the best n, and with a row mask `also` the best n of those rows too (the
        domain's chunks in a knowledge base mixing them with reference ones, qa/retrieve.py)."""
        if not self.ids or n <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        scores = self.matrix @ q
        picked = _best(scores, n)
        if also is not None and also.any():
            masked = np.where(also, scores, -np.inf)
            picked = np.union1d(picked, _best(masked, min(n, int(also.sum()))))
        picked = picked[np.argsort(-scores[picked], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in picked]

    def get(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The (normalised) vectors of these ids; unknown ids are left out."""
        return {cid: self.matrix[self.rows[cid]] for cid in ids if cid in self.rows}


def _best(scores: np.ndarray, n: int) -> np.ndarray:
    if n >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, n - 1)[:n]
