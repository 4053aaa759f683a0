"""HybridRetriever: BM25 over jieba tokens ∥ dense e5 vectors → weighted reciprocal-rank fusion, plus the evidence
used to decide whether the knowledge base covers a question at all."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from assistant.catalog import Catalog, IndexDir
from assistant.condense import Condenser
from assistant.config import RetrievalSettings
from assistant.embedding import Embedder
from assistant.lexical import JiebaTokenizer, LexicalIndex
from assistant.store import ChromaStore
from assistant.synonyms import QueryExpander
from assistant.types import Chunk, Evidence, Retrieval, ScoredChunk, Turn

Mode = Literal["hybrid", "bm25", "dense"]


@dataclass(frozen=True)
class _Snapshot:
    catalog: Catalog
    lexical: LexicalIndex
    tokens: dict[str, frozenset[str]]  # chunk id → its content words, for the overlap evidence
    idf: dict[str, float]  # word → idf over live chunks; unseen words get the maximum
    max_idf: float


class HybridRetriever:
    def __init__(
        self,
        embedder: Embedder,
        store: ChromaStore,
        index_dir: IndexDir,
        tokenizer: JiebaTokenizer,
        settings: RetrievalSettings,
        expander: QueryExpander,
        condenser: Condenser,
    ):
        self.expander = expander
        self.condenser = condenser
        self.embedder = embedder
        self.store = store
        self.index_dir = index_dir
        self.tokenizer = tokenizer
        self.settings = settings
        self._snap = self._load()

    # ---- index lifecycle ------------------------------------------------------------------------
    def _load(self) -> _Snapshot:
        lexical = LexicalIndex(self.tokenizer)
        catalog = self.index_dir.load(lexical)
        tokens = {cid: frozenset(self.tokenizer.tokens(c.text)) for cid, c in catalog.chunks.items()}
        df = Counter(t for words in tokens.values() for t in words)
        n = len(tokens)
        idf = {t: math.log(1 + n / (1 + d)) for t, d in df.items()}
        return _Snapshot(catalog, lexical, tokens, idf, math.log(1 + n))

    def reload(self) -> None:
        """Pick up a newly committed generation. Requests in flight keep the snapshot they started with: each
        retrieve() reads self._snap once, and rebinding an attribute is atomic."""
        self._snap = self._load()

    @property
    def catalog(self) -> Catalog:
        return self._snap.catalog

    # ---- search ---------------------------------------------------------------------------------
    def condense(self, question: str, history: Sequence[Turn]) -> str:
        return self.condenser.condense(question, history)

    def retrieve(
        self, question: str, history: Sequence[Turn] = (), top_k: int | None = None, mode: Mode = "hybrid"
    ) -> Retrieval:
        snap = self._snap
        query = self.condense(question, history)
        top_k = top_k or self.settings.top_k
        n = max(self.settings.candidates, top_k)
        expanded = self.expander.expand(query)
        lexical = snap.lexical.search(expanded if self.settings.expand_lexical else query, n) if mode != "dense" else []
        dense: list[tuple[str, float]] = []
        if mode != "bm25" and snap.catalog.chunks:
            # Over-fetch: the store may hold vectors of chunks that are no longer live (see catalog.py).
            raw = self.store.query(self.embedder.embed_query(expanded if self.settings.expand_dense else query), n + 10)
            dense = [(cid, s) for cid, s in raw if cid in snap.catalog.chunks][:n]
        fused = self._diversify(self._fuse(snap.catalog.chunks, lexical, dense, mode))
        hits = tuple(fused[:top_k])
        return Retrieval(query, hits, self._evidence(snap, query, lexical, dense, hits))

    def _fuse(
        self,
        chunks: dict[str, Chunk],
        lexical: list[tuple[str, float]],
        dense: list[tuple[str, float]],
        mode: Mode,
    ) -> list[ScoredChunk]:
        k = self.settings.rrf_k
        wl = self.settings.lexical_weight if mode != "dense" else 0.0
        wd = self.settings.dense_weight if mode != "bm25" else 0.0
        table: dict[str, dict] = {}
        for rank, (cid, score) in enumerate(lexical, 1):
            table.setdefault(cid, {})["lexical"] = (rank, score)
        for rank, (cid, score) in enumerate(dense, 1):
            table.setdefault(cid, {})["dense"] = (rank, score)
        out = []
        for cid, parts in table.items():
            lr, ls = parts.get("lexical", (None, 0.0))
            dr, ds = parts.get("dense", (None, 0.0))
            fused = (wl / (k + lr) if lr else 0.0) + (wd / (k + dr) if dr else 0.0)
            out.append(ScoredChunk(chunks[cid], fused, ls, ds, lr, dr))
        out.sort(key=lambda h: (-h.score, -h.dense))
        return out

    def _diversify(self, ranked: list[ScoredChunk]) -> list[ScoredChunk]:
        """At most max_per_source chunks of one document in the top k: a long regulation with many loosely
        related articles must not crowd out the one document that answers the question."""
        cap = self.settings.max_per_source
        if cap <= 0:
            return ranked
        per_source: Counter[str] = Counter()
        head, tail = [], []
        for hit in ranked:
            (head if per_source[hit.chunk.source] < cap else tail).append(hit)
            per_source[hit.chunk.source] += 1
        return head + tail

    def _evidence(
        self,
        snap: _Snapshot,
        query: str,
        lexical: list[tuple[str, float]],
        dense: list[tuple[str, float]],
        hits: Sequence[ScoredChunk],
    ) -> Evidence:
        s = self.settings
        if not hits:
            return Evidence(False, "知识库中没有相关内容")
        words = set(self.tokenizer.tokens(query))
        # Coverage weighted by idf: "红烧肉" (unseen in the corpus) weighs more than "怎么" or "小区".
        near = frozenset().union(*(snap.tokens.get(h.chunk.id, frozenset()) for h in hits[:3]))
        total = sum(snap.idf.get(w, snap.max_idf) for w in words)
        overlap = sum(snap.idf.get(w, snap.max_idf) for w in words & near) / total if total else 0.0
        dense_top = dense[0][1] if dense else 0.0
        agreement = bool({cid for cid, _ in lexical[:3]} & {cid for cid, _ in dense[:3]})
        if dense and dense_top >= s.min_dense and overlap >= s.min_overlap:
            return Evidence(True, "检索证据充分", dense_top, overlap, agreement)
        if not dense and overlap >= s.min_overlap_lexical_only:
            return Evidence(True, "词语匹配（仅词法检索）", dense_top, overlap, agreement)
        reason = f"证据不足：语义相似度 {dense_top:.3f}（阈值 {s.min_dense}），关键词覆盖 {overlap:.0%}"
        return Evidence(False, reason, dense_top, overlap, agreement)
