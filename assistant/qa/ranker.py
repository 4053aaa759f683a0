"""Rank provisions, not only documents (issue 11 item 4): a small linear model over what each retriever and the
sentence vectors say of every chunk in the pool, fitted on the dev sets by `xiaoyu calibrate --ranker`
(evals/ranker.py). Fused reciprocal ranks know which document; the neighbouring 第三十条 and 第三十一条 of one
regulation share most words and sit at nearly the same cosine, and what tells them apart is spread over several
signals: the one sentence closest to the question, how much of the question's rarer words the article holds, whether
it gives what the intent asks for (a time limit for 多久). Without a model, qa/retrieve.rerank's fixed formula ranks.

Every feature is relative to the pool (its best chunk's score, its closest sentence), so that the weights mean the
same for a question close to the corpus and for one far from it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from assistant.index.known import FLOOR as KNOWN_FLOOR
from assistant.qa.understand import INTENT_SIGNS
from assistant.types import FollowUp, ScoredChunk

RANK_FEATURES = ("fused", "position", "dense", "lexical", "sentence", "coverage", "intent",
                 "cited_doc", "cited_article", "own_fused", "own_sentence", "known")
SentenceSims = Mapping[str, tuple[tuple[str, float], ...]]


def rank_features(pool: Sequence[ScoredChunk], sentences: SentenceSims, intent: str, idf: Mapping[str, float],
                  terms: Callable[[ScoredChunk], frozenset[str]], follow: FollowUp | None = None,
                  own: Mapping[str, float] | None = None, own_sentences: SentenceSims | None = None,
                  known: Mapping[str, float] | None = None, known_titles: frozenset[str] = frozenset()
                  ) -> list[dict[str, float]]:
    """One row of RANK_FEATURES per pool chunk. `idf`: the question's content words and their idf over the scope;
    `terms`: a chunk's BM25 terms (nothing re-tokenized). For a follow-up (else all zero): `follow`, what the
    answer it follows on cited, so that "那要多久？" after 第十三条 can stay with 第十三条 or its
    regulation; `own`, chunk id → fused score of the turn's own words searched alone (relative to their best), and
    `own_sentences`, its sentences' cosines to those words (qa/retrieve.py HybridRetriever._follow). `known`: chunk
    id → cosine of the nearest known question naming it (index/known.py); the feature is how far that falls
    behind the nearest known question of all (0 for the provision it names; all 0 when none is near). A chunk of a
    document no known question names (`known_titles`: those some row does) gets 0 too: the table knows nothing of
    it, and a law library's article must not fall behind the community's rules for that."""
    if not pool:
        return []
    top = pool[0].score or 1.0
    dense_seen = [h.dense for h in pool if h.dense_rank is not None]
    dense_best, dense_floor = (max(dense_seen), min(dense_seen)) if dense_seen else (0.0, 0.0)
    lexical_best = max((h.lexical for h in pool), default=0.0) or 1.0
    sims = {h.chunk.id: sorted((sim for _, sim in sentences.get(h.chunk.id, ())), reverse=True) for h in pool}
    best_sim = max((s[0] for s in sims.values() if s), default=0.0)
    total_idf = sum(idf.values()) or 1.0
    sign = INTENT_SIGNS.get(intent)
    own_scores = own or {}
    own_sims = {cid: max((sim for _, sim in sims), default=0.0) for cid, sims in (own_sentences or {}).items()}
    own_best = max(own_sims.values(), default=0.0)
    near = known or {}
    known_best = max(near.values(), default=KNOWN_FLOOR)
    rows = []
    for i, hit in enumerate(pool):
        own = sims[hit.chunk.id]
        # A chunk only one retriever found: the other's worst in the pool stands in for its missing score.
        dense = hit.dense if hit.dense_rank is not None else dense_floor
        held = terms(hit)
        rows.append({
            "fused": hit.score / top,
            "position": 1.0 / (1 + i),
            "dense": dense - dense_best,
            "lexical": hit.lexical / lexical_best,
            "sentence": (own[0] - best_sim) if own else dense - dense_best,
            "coverage": sum(w for t, w in idf.items() if t in held) / total_idf,
            "intent": float(bool(sign is not None and sign.search(hit.chunk.body))),
            "cited_doc": float(follow is not None and follow.cites_document(hit.chunk.title)),
            "cited_article": float(follow is not None and follow.cites(hit.chunk.title, hit.chunk.section)),
            "own_fused": own_scores.get(hit.chunk.id, 0.0),
            "own_sentence": own_sims.get(hit.chunk.id, own_best) - own_best,
            "known": (max(near.get(hit.chunk.id, KNOWN_FLOOR), KNOWN_FLOOR) - known_best
                      if hit.chunk.title in known_titles else 0.0),
        })
    return rows


@dataclass(frozen=True)
class ArticleRanker:
    """score = Σ weight · feature, fitted on pairs (evals/ranker.py): a chunk that holds the provision asked for
    against one of the same pool that does not, so that only differences within a pool count."""

    weights: dict[str, float]
    embedder: str = ""  # the dense features were measured with this embedder; another needs a refit

    @classmethod
    def load(cls, path: Path) -> ArticleRanker:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["weights"], data.get("embedder", ""))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"weights": self.weights, "embedder": self.embedder}, ensure_ascii=False,
                                   indent=1), encoding="utf-8")

    def score(self, row: Mapping[str, float]) -> float:
        return sum(w * row[f] for f, w in self.weights.items())

    def rerank(self, pool: Sequence[ScoredChunk], rows: Sequence[Mapping[str, float]]) -> list[ScoredChunk]:
        """The pool by the model's score. ScoredChunk.score becomes twice the modelled chance that the chunk beats
        the first one (1.0 for the first), so that the composer's "close to the top" ratio keeps a meaning: 0.6 is
        a chunk the model prefers the first one to at 70:30."""
        if not pool:
            return []
        scored = sorted(((self.score(r), i) for i, r in enumerate(rows)), key=lambda t: (-t[0], t[1]))
        best = scored[0][0]
        return [replace(pool[i], score=2.0 / (1.0 + math.exp(min(30.0, best - z)))) for z, i in scored]
