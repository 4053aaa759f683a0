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
from assistant.index.embedding import Embedder
from assistant.index.kb import KbIndex, Shelf, Snapshot
from assistant.index.known import FLOOR as KNOWN_FLOOR
from assistant.index.known import NOT_COVERED, SMALL_TALK, KnownQuestion, KnownQuestions
from assistant.index.lexical import JiebaTokenizer, search_together
from assistant.index.sentences import provision_sentences, sentence_id
from assistant.index.synonyms import QueryExpander
from assistant.qa.ranker import ArticleRanker, rank_features
from assistant.qa.understand import INTENT_SIGNS
from assistant.types import Chunk, FollowUp, ScoredChunk

log = logging.getLogger("xiaoyu")
Mode = Literal["hybrid", "bm25", "dense"]
Ranked = tuple[tuple[str, float], ...]  # (chunk id, score), best first
SentenceScores = dict[str, tuple[tuple[str, float], ...]]  # chunk id → (sentence, cosine to the query), in order
RETIRED_OVERFETCH = 500  # at most this many extra dense results to make up for superseded versions' chunks
FOLLOW_EXTRA = 3  # a follow-up's own best provisions in the documents the last answer cited, added to the pool
KNOWN_EXTRA = 2  # provisions named by the nearest known questions (index/known.py), added to the pool
# How much nearer a known small-talk turn than any known question a turn must be to be small talk: on the dev sets,
# each file judged by the others' rows, 0.02 took 62 of 70 small-talk turns for it and 1 of 680 questions.
SMALL_TALK_MARGIN = 0.02
_REFUSED, _SMALL_TALK = frozenset({NOT_COVERED}), frozenset({SMALL_TALK})


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
    # Cosine of the nearest known question (index/known.py) naming a provision of the scope, and of the nearest
    # known unanswerable one; KNOWN_FLOOR when none is that near.
    known: float = KNOWN_FLOOR
    known_refused: float = KNOWN_FLOOR


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


def prefer_domain(fused: list[ScoredChunk], reference: Sequence[str], reference_weight: float) -> list[ScoredChunk]:
    """Scale the fused score of reference chunks (RetrievalSettings.reference_categories): among a thousand national
    laws, one on building quality or criminal procedure often words a sentence much like the community's own rule
    does, and the resident asked about the community's."""
    if reference_weight >= 1.0 or not reference:
        return fused
    demoted = set(reference)
    out = [replace(h, score=h.score * reference_weight) if h.chunk.category in demoted else h for h in fused]
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
    """Searches a scope: one or more knowledge bases of the shelf (index/kb.py), as if they were one index. BM25 is
    scored with the union's statistics; dense hits of each knowledge base's collection are merged by cosine; the
    fused, diversified and reranked pool is the same as one knowledge base holding those documents would give.

    `poll_seconds`: how often a background thread asks whether another process (a worker on the same data dir, or
    another host of the same Chroma server) committed a generation or created a knowledge base, and reloads if so;
    0: ask before every search (tests). The question costs a stat per knowledge base, never the query."""

    def __init__(self, embedder: Embedder, shelf: Shelf, tokenizer: JiebaTokenizer, settings: RetrievalSettings,
                 expander: QueryExpander, poll_seconds: float = 0.0, ranker: ArticleRanker | None = None,
                 known: KnownQuestions | None = None):
        self.expander = expander
        self.ranker = ranker  # fitted provision ranking; None: rerank()'s fixed formula
        # Questions whose provision (or refusal, or small-talk reply) is known: the fitted ranker's known feature,
        # the answerability model's known_margin and small_talk() read them.
        self.known = known
        self.embedder = embedder
        self.shelf = shelf
        self.tokenizer = tokenizer
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        if poll_seconds > 0:
            # The thread holds the retriever weakly: services dropped (a test's, a rebuilt app's) stop their watcher.
            threading.Thread(target=_watch, args=(weakref.ref(self), poll_seconds, self._stop),
                             name="index-watch", daemon=True).start()

    def scope(self, names: Sequence[str] | None = None) -> tuple[str, ...]:
        """The knowledge bases a search of `names` covers (None: the default scope); UnknownKnowledgeBase."""
        return self.shelf.scope(names)

    def refresh(self) -> bool:
        """What the watcher runs every poll_seconds: knowledge bases created or deleted elsewhere, new generations."""
        return self.shelf.refresh()

    def close(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()

    def knows(self, word: str) -> bool:
        """Whether any live chunk of any knowledge base contains this content word (as the tokenizer cuts it)."""
        return any(ix.snap.lexical.doc_freq(word) for ix in self.shelf.indexes(self.shelf.names()))

    def find(self, chunk_id: str) -> tuple[KbIndex, Chunk] | None:
        """The knowledge base holding a chunk (the first, in shelf order, of those that do), and the chunk."""
        for ix in self.shelf.indexes(self.shelf.names()):
            chunk = ix.snap.catalog.chunks.get(chunk_id)
            if chunk is not None:
                return ix, chunk
        return None

    # ---- search ---------------------------------------------------------------------------------
    def search(self, query: str, top_k: int | None = None, mode: Mode = "hybrid", intent: str = "",
               scope: Sequence[str] | None = None, follow: FollowUp | None = None) -> Candidates:
        """`scope`: the names of the knowledge bases to search; None: the default scope (Shelf.scope).
        UnknownKnowledgeBase for a name not on the shelf. `follow`: for a follow-up condensed into `query`, the
        turn's own words and what the answer it follows on cited (qa/ranker.py's cited and own features)."""
        if not self.poll_seconds:
            self.refresh()
        indexes = self.shelf.indexes(self.scope(scope))
        snaps = [ix.snap for ix in indexes]  # each read once: a reload mid-search changes nothing
        s = self.settings
        top_k = top_k or s.top_k
        n = max(s.candidates, top_k)
        fused, lexical, dense, vector = self._fused(query, mode, n, indexes, snaps)
        ranked = diversify(fused, s.max_per_source)
        pool = ranked[: max(top_k, s.rerank_pool)]
        by_kb = {snap.kb: snap for snap in snaps}
        kbs = {ix.name: ix for ix in indexes}
        own: dict[str, float] = {}
        own_sentences: SentenceScores = {}
        if follow is not None and follow.cited and mode == "hybrid" and self.ranker is not None:
            pool, own, own_sentences = self._follow(follow, pool, n, indexes, snaps, kbs, by_kb)
        known: dict[str, float] = {}
        refused = KNOWN_FLOOR
        known_titles: frozenset[str] = frozenset()
        if self.known is not None and vector is not None and mode == "hybrid" and self.ranker is not None:
            pool, known, refused = self._known(vector, pool, snaps)
            known_titles = self.known.titles()
        sentences = self._sentence_scores(vector, pool, kbs, by_kb)
        words = set(self.tokenizer.tokens(query))
        idf, unseen = _idf(snaps, words)
        if mode == "hybrid" and s.rerank_pool:
            if self.ranker is not None:
                rows = rank_features(pool, sentences, intent, idf, lambda h: _terms(by_kb, h),
                                     follow, own, own_sentences, known, known_titles)
                # The model was fitted on the community's documents alone: the domain preference applies to its
                # scores too, or a law with one close sentence outranks the community's rule again.
                pool = prefer_domain(self.ranker.rerank(pool, rows), s.reference_categories, s.reference_weight)
            else:
                pool = rerank(pool, sentences, intent, s.sentence_weight, s.intent_weight)
        hits = tuple(pool[:top_k])
        nearest = max(known.values(), default=KNOWN_FLOOR)
        if not hits or hits[0].chunk.title not in known_titles:
            nearest = refused = KNOWN_FLOOR  # the table's verdicts speak for the documents it names, no others
        return Candidates(query, hits, lexical, dense, *_coverage(by_kb, idf, unseen, hits),
                          content_words=len(words), sentences=sentences, known=nearest, known_refused=refused)

    def _follow(self, follow: FollowUp, pool: list[ScoredChunk], n: int, indexes: Sequence[KbIndex],
                snaps: Sequence[Snapshot], kbs: dict[str, KbIndex], by_kb: dict[str, Snapshot]
                ) -> tuple[list[ScoredChunk], dict[str, float], SentenceScores]:
        """A follow-up's own words searched alone, within the documents the last answer cited: the condensed query
        leans on the earlier question and brings back its provisions, while "他们靠什么来调" after 人民调解是谁在调
        asks for another article of the same law. The best FOLLOW_EXTRA of those join the pool; every pool chunk
        gets its fused score in that search (relative to its best) and its sentences' cosines to the words alone."""
        own_fused, _, _, own_vector = self._fused(follow.question, "hybrid", n, indexes, snaps)
        mine = [h for h in own_fused if follow.cites_document(h.chunk.title)]
        if not mine:
            return pool, {}, {}
        present = {h.chunk.id for h in pool}
        extra = [replace(h, score=0.0, lexical=0.0, dense=0.0, lexical_rank=None, dense_rank=None)
                 for h in mine[:FOLLOW_EXTRA] if h.chunk.id not in present]
        pool = pool + extra
        top = mine[0].score or 1.0
        own = {h.chunk.id: h.score / top for h in mine}
        return pool, own, self._sentence_scores(own_vector, pool, kbs, by_kb)

    def _known(self, vector: np.ndarray, pool: list[ScoredChunk], snaps: Sequence[Snapshot]
               ) -> tuple[list[ScoredChunk], dict[str, float], float]:
        """The known questions near this one (index/known.py) and the provisions they name in the scope: chunk id →
        cosine of the nearest row naming it; and the cosine of the nearest known unanswerable question. The
        provisions of the nearest rows join the pool (KNOWN_EXTRA), scored as found by neither retriever, so that
        only the ranker's known feature can lift them."""
        assert self.known is not None
        tables = [snap.provisions() for snap in snaps]
        near = self._nearest(vector, frozenset().union(*(snap.titles() for snap in snaps)))
        refused = self._nearest(vector, _REFUSED)
        closest: dict[str, float] = {}
        where: dict[str, Snapshot] = {}
        for sim, row in near:
            for snap, table in zip(snaps, tables):
                for cid in table.get((row.title, row.article), ()):
                    if cid not in closest:
                        closest[cid], where[cid] = sim, snap
        present = {h.chunk.id for h in pool}
        extra = [ScoredChunk(where[cid].catalog.chunks[cid], 0.0) for cid in closest if cid not in present]
        return pool + extra[:KNOWN_EXTRA], closest, refused[0][0] if refused else KNOWN_FLOOR

    def small_talk(self, question: str) -> str:
        """The reply's name (thanks, greeting …) of the known small-talk turn this one is clearly nearest
        (SMALL_TALK_MARGIN over every known question, answerable or not); "" when it is not. Costs the query's
        embedding, which a question the retriever then searches as it is reads back from the cache."""
        if self.known is None:
            return ""
        vector = self.embedder.embed_query(self.dense_text(question))
        chat = self._nearest(vector, _SMALL_TALK)
        if not chat:
            return ""
        other = self._nearest(vector, self._questions_with_content())
        if chat[0][0] - max(other[0][0] if other else KNOWN_FLOOR, KNOWN_FLOOR) <= SMALL_TALK_MARGIN:
            return ""
        return chat[0][1].article

    def _questions_with_content(self) -> frozenset[str]:
        """The titles of small_talk()'s "every known question": the default scope's documents, and the refusals."""
        snaps = [ix.snap for ix in self.shelf.indexes(self.scope())]
        return frozenset().union(_REFUSED, *(snap.titles() for snap in snaps))

    def _nearest(self, vector: np.ndarray, titles: frozenset[str]) -> list[tuple[float, KnownQuestion]]:
        """KnownQuestions.nearest, with the rows embedded as this retriever embeds a query."""
        assert self.known is not None
        return self.known.nearest(vector, titles, self.dense_text, self.embedder.embed_query, self.expander.version)

    def dense_text(self, query: str) -> str:
        """What the dense retriever embeds for a query: with its synonyms, when so configured."""
        return self.expander.expand(query) if self.settings.expand_dense else query

    def warm(self, scope: Sequence[str] | None = None) -> None:
        """Embed the known questions a scope needs now, at start-up, rather than at its first question: those the
        ranker and the answerability model read, and small_talk()'s."""
        if self.known is None:
            return
        zero = np.zeros(self.embedder.dim, dtype=np.float32)  # near nothing: only the rows' matrices are built
        if self.ranker is not None:
            self._known(zero, [], [ix.snap for ix in self.shelf.indexes(self.scope(scope))])
        self._nearest(zero, _SMALL_TALK)
        self._nearest(zero, self._questions_with_content())

    def _fused(self, query: str, mode: Mode, n: int, indexes: Sequence[KbIndex], snaps: Sequence[Snapshot]
               ) -> tuple[list[ScoredChunk], Ranked, Ranked, np.ndarray | None]:
        """BM25 and dense search of the scope, fused and with the domain preferred; and the query's vector."""
        s = self.settings
        expanded = self.expander.expand(query)
        chunks: dict[str, Chunk] = {}  # the hits' chunks: fuse() looks up only these
        # Domain chunks beside reference ones (prefer_domain): each retriever also brings the best n domain chunks,
        # which among a thousand laws can rank far behind the overall best n and would never reach the fusion.
        reference = s.reference_categories if s.reference_weight < 1.0 else ()
        holds = [snap.holds(reference) for snap in snaps] if reference else []  # (domain, reference) chunks?
        tiered = any(d for d, _ in holds) and any(r for _, r in holds)
        lexical: Ranked = ()
        if mode != "dense":
            tokens = self.tokenizer.tokens(expanded if s.expand_lexical else query)
            found = []
            also = [snap.domain_rows(reference) for snap in snaps] if tiered else None
            for k, cid, score in search_together([snap.lexical for snap in snaps], tokens, n, also):
                # BM25 is built without retired chunks (pipeline._commit, SharedIndexDir.sync); this only double-checks.
                if cid not in snaps[k].retired and cid not in chunks:
                    chunks[cid] = snaps[k].catalog.chunks[cid]
                    found.append((cid, score))
            lexical = tuple(found)
        dense: Ranked = ()
        vector = None
        if mode != "bm25" and any(snap.catalog.chunks for snap in snaps):
            vector = self.embedder.embed_query(self.dense_text(query))
            merged: list[tuple[float, str, Chunk]] = []
            for k, (ix, snap) in enumerate(zip(indexes, snaps)):
                if not snap.catalog.chunks:
                    continue
                if snap.vectors is not None:  # a small knowledge base, in memory: exact, and only live chunks
                    raw = snap.vectors.query(vector, n, snap.vector_domain_rows(reference)
                                             if tiered and all(holds[k]) else None)
                else:
                    # Over-fetch: the store may hold vectors of chunks that are no longer live (see catalog.py), and
                    # holds those of superseded versions, which sit right beside their successors' (capped: a few
                    # old versions is the usual case; past the cap fewer dense hits may come back, never a retired).
                    fetch = n + 10 + min(len(snap.retired), RETIRED_OVERFETCH)
                    raw = ix.store.query(vector, fetch)
                    if tiered and all(holds[k]):  # a knowledge base mixing both: its domain chunks asked for apart
                        raw += ix.store.query(vector, fetch, excluding=reference)
                merged += [(sc, cid, snap.catalog.chunks[cid]) for cid, sc in raw
                           if cid in snap.catalog.chunks and cid not in snap.retired]
            merged.sort(key=lambda t: -t[0])  # stable: equal cosines keep the scope's order
            picked: dict[str, float] = {}
            in_domain = 0
            demoted = set(reference)
            for sc, cid, chunk in merged:  # the same passage in two knowledge bases is one hit (types.Chunk.kb)
                if len(picked) >= n and not (tiered and in_domain < n):
                    break
                if cid in picked:
                    continue
                ours = chunk.category not in demoted
                if len(picked) >= n and not ours:
                    continue  # past the best n, only the domain's best n still come in
                picked[cid] = sc
                in_domain += ours
                chunks.setdefault(cid, chunk)
            dense = tuple(picked.items())
        fused = fuse(chunks, lexical, dense, s.rrf_k,
                     s.lexical_weight if mode != "dense" else 0.0, s.dense_weight if mode != "bm25" else 0.0)
        fused = prefer_domain(fused, s.reference_categories, s.reference_weight)
        return fused, lexical, dense, vector

    def _sentence_scores(self, vector: np.ndarray | None, pool: Sequence[ScoredChunk],
                         indexes: dict[str, KbIndex], snaps: dict[str, Snapshot]) -> SentenceScores:
        """Cosine of the query to each sentence of the pool's chunks, from each knowledge base's sentence vectors:
        in memory for a small one, from Chroma for a large one (a knowledge base without them ranks by fused chunk
        scores only)."""
        if vector is None or not pool:
            return {}
        per_chunk = {h.chunk.id: provision_sentences(h.chunk.body) for h in pool}
        stored: dict[str, np.ndarray] = {}
        for name in dict.fromkeys(h.chunk.kb for h in pool):
            index = indexes.get(name)
            if index is None:
                continue
            ids = {sentence_id(t) for h in pool if h.chunk.kb == name for t in per_chunk[h.chunk.id]}
            in_memory = snaps[name].sentence_vectors
            if in_memory is not None:
                stored.update(in_memory.get(ids))
            elif index.sentences is not None:
                stored.update(index.sentences.vectors(sorted(ids)))
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

def _coverage(by_kb: dict[str, Snapshot], idf: dict[str, float], unseen: frozenset[str],
              hits: Sequence[ScoredChunk]) -> tuple[float, float]:
    """(share found in the top hits, share found nowhere in the scope), weighted by idf (_idf)."""
    near: frozenset[str] = frozenset()
    for h in hits[:3]:
        near |= _terms(by_kb, h)
    total = sum(idf.values())
    if not total:
        return 0.0, 0.0
    found = sum(w for t, w in idf.items() if t in near) / total
    return found, sum(idf[w] for w in unseen) / total


def _idf(snaps: Sequence[Snapshot], words: set[str]) -> tuple[dict[str, float], frozenset[str]]:
    """Each query word's idf over the scope's live chunks, and the words no chunk holds, which get the largest idf:
    "红烧肉" (unseen) weighs more than "怎么" or "小区". Read from BM25's postings, nothing re-tokenized."""
    n = sum(snap.lexical.n for snap in snaps)
    max_idf = math.log(1 + n)
    idf, unseen = {}, set()
    for w in words:
        df = sum(snap.lexical.doc_freq(w) for snap in snaps)
        idf[w] = math.log(1 + n / (1 + df)) if df else max_idf
        if not df:
            unseen.add(w)
    return idf, frozenset(unseen)


def _terms(by_kb: dict[str, Snapshot], hit: ScoredChunk) -> frozenset[str]:
    snap = by_kb.get(hit.chunk.kb)
    return snap.lexical.terms_of(hit.chunk.id) if snap is not None else frozenset()


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
