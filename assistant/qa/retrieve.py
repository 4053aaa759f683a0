"""HybridRetriever: BM25 over jieba tokens ∥ dense e5 vectors → weighted reciprocal-rank fusion (a pure function
below), with the index statistics the evidence step needs (how much of the query the top hits cover)."""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from assistant.config import RetrievalSettings
from assistant.index.catalog import Catalog, IndexDir
from assistant.index.embedding import Embedder
from assistant.index.lexical import JiebaTokenizer, LexicalIndex
from assistant.index.sentences import provision_sentences, sentence_id
from assistant.index.store import ChromaStore
from assistant.index.synonyms import QueryExpander
from assistant.qa.understand import INTENT_SIGNS
from assistant.types import Chunk, ScoredChunk

log = logging.getLogger("xiaoyu")
Mode = Literal["hybrid", "bm25", "dense"]
Ranked = tuple[tuple[str, float], ...]  # (chunk id, score), best first
SentenceScores = dict[str, tuple[tuple[str, float], ...]]  # chunk id → (sentence, cosine to the query), in order
RETIRED_OVERFETCH = 500  # at most this many extra dense results to make up for superseded versions' chunks


@dataclass(frozen=True)
class Candidates:
    """What retrieval found for one query, with the raw rankings the evidence step judges."""

    query: str
    hits: tuple[ScoredChunk, ...]
    lexical: Ranked
    dense: Ranked
    coverage: float  # idf-weighted share of the query's content words found in the top 3 hits
    unknown: float  # idf-weighted share of the query's content words that no chunk contains at all
    content_words: int = 1  # the query's content words (stopwords and question words left out)
    sentences: SentenceScores = field(default_factory=dict)  # for the reranked pool; empty without sentence vectors


@dataclass(frozen=True)
class _Snapshot:
    catalog: Catalog
    lexical: LexicalIndex
    retired: frozenset[str]  # chunks of superseded versions (catalog.py supersede): in the store, never returned
    tokens: dict[str, frozenset[str]]  # chunk id → its content words, for the coverage evidence (live chunks only)
    idf: dict[str, float]  # word → idf over live chunks; unseen words get the maximum
    max_idf: float


def fuse(chunks: dict[str, Chunk], lexical: Ranked, dense: Ranked, rrf_k: int, lexical_weight: float,
         dense_weight: float) -> list[ScoredChunk]:
    """Weighted reciprocal-rank fusion: a chunk ranked r by a retriever earns weight / (rrf_k + r) from it."""
    table: dict[str, dict] = {}
    for rank, (cid, score) in enumerate(lexical, 1):
        table.setdefault(cid, {})["lexical"] = (rank, score)
    for rank, (cid, score) in enumerate(dense, 1):
        table.setdefault(cid, {})["dense"] = (rank, score)
    out = []
    for cid, parts in table.items():
        lr, ls = parts.get("lexical", (None, 0.0))
        dr, ds = parts.get("dense", (None, 0.0))
        fused = (lexical_weight / (rrf_k + lr) if lr else 0.0) + (dense_weight / (rrf_k + dr) if dr else 0.0)
        out.append(ScoredChunk(chunks[cid], fused, ls, ds, lr, dr))
    out.sort(key=lambda h: (-h.score, -h.dense))
    return out


def rerank(pool: list[ScoredChunk], sentences: SentenceScores, intent: str, sentence_weight: float,
           intent_weight: float) -> list[ScoredChunk]:
    """Provisions, not only documents: within the pool, an article with one sentence very close to the question
    (max-sim) and one that gives what the intent asks for (a time limit for 多久) moves up. Scores are relative to
    the pool's best fused score, so the weights mean the same for every question."""
    if not pool:
        return pool
    top = pool[0].score or 1.0
    best_sim = max((max((sim for _, sim in sentences.get(h.chunk.id, ())), default=0.0) for h in pool), default=0.0)
    sign = INTENT_SIGNS.get(intent)
    scored = []
    for hit in pool:
        sims = sentences.get(hit.chunk.id, ())
        score = hit.score / top
        if sims:
            score += sentence_weight * (max(sim for _, sim in sims) - best_sim)
        if sign is not None and sign.search(hit.chunk.body):
            score += intent_weight
        scored.append(replace(hit, score=score))
    scored.sort(key=lambda h: (-h.score, -h.dense))
    return scored


def diversify(ranked: list[ScoredChunk], cap: int) -> list[ScoredChunk]:
    """At most `cap` chunks of one document in the top k: a long regulation with many loosely related articles
    must not crowd out the one document that answers the question."""
    if cap <= 0:
        return ranked
    per_source: Counter[str] = Counter()
    head, tail = [], []
    for hit in ranked:
        (head if per_source[hit.chunk.source] < cap else tail).append(hit)
        per_source[hit.chunk.source] += 1
    return head + tail


class HybridRetriever:
    """`poll_seconds`: how often a background thread asks whether another process (a worker on the same data dir, or
    another host of the same Chroma server) committed a generation, and reloads if so; 0: ask before every search
    (tests). The question costs a stat of CURRENT (or one small read from the Chroma server), never the query."""

    def __init__(self, embedder: Embedder, store: ChromaStore, index_dir: IndexDir, tokenizer: JiebaTokenizer,
                 settings: RetrievalSettings, expander: QueryExpander, sentences: ChromaStore | None = None,
                 poll_seconds: float = 0.0):
        self.sentences = sentences  # sentence vectors (ingest/pipeline.py); None: rank by fused chunk scores only
        self.expander = expander
        self.embedder = embedder
        self.store = store
        self.index_dir = index_dir
        self.tokenizer = tokenizer
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._reloading = threading.Lock()  # one reload at a time; searches never wait for it
        self._snap = self._load()
        self._stop = threading.Event()
        if poll_seconds > 0:
            # The thread holds the retriever weakly: services dropped (a test's, a rebuilt app's) stop their watcher.
            threading.Thread(target=_watch, args=(weakref.ref(self), poll_seconds, self._stop),
                             name="index-watch", daemon=True).start()

    # ---- index lifecycle ------------------------------------------------------------------------
    def _load(self) -> _Snapshot:
        lexical = LexicalIndex(self.tokenizer)
        catalog = self.index_dir.load(lexical)
        tokens = {c.id: frozenset(self.tokenizer.tokens(c.text)) for c in catalog.live_chunks()}
        df = Counter(t for words in tokens.values() for t in words)
        n = len(tokens)
        idf = {t: math.log(1 + n / (1 + d)) for t, d in df.items()}
        return _Snapshot(catalog, lexical, catalog.retired(), tokens, idf, math.log(1 + n))

    def reload(self) -> None:
        """Pick up a newly committed generation. Requests in flight keep the snapshot they started with: each
        search() reads self._snap once, and rebinding an attribute is atomic."""
        with self._reloading:
            self._snap = self._load()

    def refresh(self) -> bool:
        """Reload if the committed generation is not the one being served (another process committed); True if it
        reloaded. What the watcher runs every poll_seconds."""
        if self.index_dir.head() == self._snap.catalog.generation:
            return False
        with self._reloading:
            if self.index_dir.head() == self._snap.catalog.generation:
                return False  # another thread reloaded while this one waited
            self._snap = self._load()
        log.info("index: now serving generation %d", self._snap.catalog.generation)
        return True

    def close(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()

    @property
    def catalog(self) -> Catalog:
        return self._snap.catalog

    def knows(self, word: str) -> bool:
        """Whether any live chunk contains this content word (as the tokenizer cuts it)."""
        return word in self._snap.idf

    # ---- search ---------------------------------------------------------------------------------
    def search(self, query: str, top_k: int | None = None, mode: Mode = "hybrid", intent: str = "") -> Candidates:
        if not self.poll_seconds:
            self.refresh()
        snap = self._snap
        s = self.settings
        top_k = top_k or s.top_k
        n = max(s.candidates, top_k)
        expanded = self.expander.expand(query)
        lexical: Ranked = ()
        if mode != "dense":
            # BM25 is built without retired chunks (pipeline._commit, SharedIndexDir.sync); this only double-checks.
            lexical = tuple((cid, sc) for cid, sc in snap.lexical.search(expanded if s.expand_lexical else query, n)
                            if cid not in snap.retired)
        dense: Ranked = ()
        vector = None
        if mode != "bm25" and snap.catalog.chunks:
            vector = self.embedder.embed_query(expanded if s.expand_dense else query)
            # Over-fetch: the store may hold vectors of chunks that are no longer live (see catalog.py), and holds
            # those of superseded versions, which sit right beside their successors' (capped: a few old versions
            # is the usual case; past the cap fewer dense hits may come back, never a retired one).
            raw = self.store.query(vector, n + 10 + min(len(snap.retired), RETIRED_OVERFETCH))
            dense = tuple((cid, sc) for cid, sc in raw
                          if cid in snap.catalog.chunks and cid not in snap.retired)[:n]
        fused = fuse(snap.catalog.chunks, lexical, dense, s.rrf_k,
                     s.lexical_weight if mode != "dense" else 0.0, s.dense_weight if mode != "bm25" else 0.0)
        ranked = diversify(fused, s.max_per_source)
        pool = ranked[: max(top_k, s.rerank_pool)]
        sentences = self._sentence_scores(vector, pool)
        if mode == "hybrid" and s.rerank_pool:
            pool = rerank(pool, sentences, intent, s.sentence_weight, s.intent_weight)
        hits = tuple(pool[:top_k])
        words = set(self.tokenizer.tokens(query))
        return Candidates(query, hits, lexical, dense, *self._coverage(snap, words, hits),
                          content_words=len(words), sentences=sentences)

    def _sentence_scores(self, vector: np.ndarray | None, pool: Sequence[ScoredChunk]) -> SentenceScores:
        """Cosine of the query to each sentence of the pool's chunks, from the stored sentence vectors."""
        if self.sentences is None or vector is None or not pool:
            return {}
        per_chunk = {h.chunk.id: provision_sentences(h.chunk.body) for h in pool}
        ids = {sentence_id(t) for texts in per_chunk.values() for t in texts}
        stored = self.sentences.vectors(sorted(ids))
        q = np.asarray(vector, dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        out: SentenceScores = {}
        for cid, texts in per_chunk.items():
            scored = []
            for t in texts:
                v = stored.get(sentence_id(t))
                if v is not None:
                    scored.append((t, float(v @ q / (np.linalg.norm(v) or 1.0))))
            out[cid] = tuple(scored)
        return out

    @staticmethod
    def _coverage(snap: _Snapshot, words: set[str], hits: Sequence[ScoredChunk]) -> tuple[float, float]:
        """(share found in the top hits, share found nowhere), weighted by idf: "红烧肉" (unseen in the corpus)
        weighs more than "怎么" or "小区"."""
        near = frozenset().union(*(snap.tokens.get(h.chunk.id, frozenset()) for h in hits[:3]))
        total = sum(snap.idf.get(w, snap.max_idf) for w in words)
        if not total:
            return 0.0, 0.0
        found = sum(snap.idf.get(w, snap.max_idf) for w in words & near) / total
        return found, sum(snap.max_idf for w in words if w not in snap.idf) / total


def _watch(ref: weakref.ref, every: float, stop: threading.Event) -> None:
    """Every `every` seconds, refresh the retriever `ref` names, until it is closed or garbage-collected."""
    while not stop.wait(every):
        retriever = ref()
        if retriever is None:
            return
        try:
            retriever.refresh()
        except Exception:  # a Chroma server away for a moment: keep serving the snapshot and ask again later
            log.warning("index: could not check for a new generation", exc_info=True)
        del retriever
