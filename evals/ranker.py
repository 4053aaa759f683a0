"""Fit the provision ranker (assistant/qa/ranker.py) on dev sets: `xiaoyu calibrate --ranker FILE…`.

Each answerable dev question (a conversation's turns too, with the real earlier answers as history) gives its
retrieval pool: one feature row per chunk, labelled by whether the chunk holds an expected provision (the eval's
own article_matches). Every (right, wrong) pair of one pool is a training row, its feature difference; a logistic
regression without intercept over them gives the weights (a pairwise ranker: a pool's level does not matter, only
what sets the right chunk apart from its neighbours). The strong regularisation (C 0.1) and the seven features were
chosen by five-fold cross-validation on the dev pools (docs/quality.md). The features are recorded with the
fixed rerank's pool order, never the model's, so an old model cannot shape what the new one learns from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from assistant.qa.ranker import RANK_FEATURES, ArticleRanker
from assistant.services import ChatService
from assistant.types import Channel, ScoredChunk, Turn
from evals.golden import Expect, GoldenItem
from evals.metrics import article_matches


@dataclass(frozen=True)
class Pool:
    question: str
    rows: tuple[Mapping[str, float], ...]
    labels: tuple[bool, ...]


class Recorder:
    """Stands in for the ranker while pools are recorded: keeps each pool's rows, changes no order."""

    def __init__(self):
        self.last: tuple[list[ScoredChunk], list[Mapping[str, float]]] = ([], [])

    def rerank(self, pool: Sequence[ScoredChunk], rows: Sequence[Mapping[str, float]]) -> list[ScoredChunk]:
        self.last = (list(pool), list(rows))
        return list(pool)


def _pool(chat: ChatService, recorder: Recorder, item: GoldenItem, history: Sequence[Turn]) -> Pool | None:
    recorder.last = ([], [])
    chat.retrieve(item.question, list(history))
    hits, rows = recorder.last
    if not hits:
        return None
    labels = tuple(article_matches(item.expected_sources, item.expected_sections, h.chunk.source, h.chunk.section,
                                   h.chunk.body) for h in hits)
    return Pool(item.question, tuple(rows), labels)


def _wanted(item: GoldenItem) -> bool:
    return item.expect == Expect.ANSWER and not item.out_of_scope and bool(item.expected_sources)


def pools_from_items(chat: ChatService, recorder: Recorder, items: Iterable[GoldenItem]) -> list[Pool]:
    pools = [_pool(chat, recorder, item, item.history) for item in items if _wanted(item)]
    return [p for p in pools if p is not None]


def pools_from_conversations(chat: ChatService, recorder: Recorder, conversations: Iterable) -> list[Pool]:
    pools = []
    for conversation in conversations:
        history: list[Turn] = []
        for item in conversation.turns:
            if _wanted(item):
                pools.append(_pool(chat, recorder, item, history))
            answer = chat.ask(item.question, history, channel=Channel.EVAL)
            history += [Turn("user", item.question), Turn("assistant", answer.text)]
    return [p for p in pools if p is not None]


def fit(pools: Sequence[Pool], embedder: str, c: float = 0.1) -> ArticleRanker:
    from sklearn.linear_model import LogisticRegression

    diffs = []
    for pool in pools:
        x = np.array([[r[f] for f in RANK_FEATURES] for r in pool.rows], dtype=float)
        right = [i for i, y in enumerate(pool.labels) if y]
        wrong = [i for i, y in enumerate(pool.labels) if not y]
        diffs += [x[i] - x[j] for i in right for j in wrong]
    if not diffs:
        raise ValueError("the dev pools need chunks that hold the expected provision beside chunks that do not")
    d = np.array(diffs)
    # Both orders of each pair: the classes balance and the fit needs no intercept.
    x, y = np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))]
    scales = x.std(axis=0)
    scales[scales == 0] = 1.0
    clf = LogisticRegression(C=c, fit_intercept=False, max_iter=3000).fit(x / scales, y)
    return ArticleRanker({f: float(w / s) for f, w, s in zip(RANK_FEATURES, clf.coef_[0], scales)}, embedder)


def report(ranker: ArticleRanker | None, pools: Sequence[Pool]) -> dict[str, float]:
    """Article hit@1 and hit@5 among the pools that hold an expected provision at all (what ranking can change),
    by the recorded order (ranker None) or the ranker's."""
    reachable = [p for p in pools if any(p.labels)]
    ranks = []
    for p in reachable:
        order = range(len(p.rows)) if ranker is None else sorted(range(len(p.rows)),
                                                                  key=lambda i: -ranker.score(p.rows[i]))
        ranks.append(next(n for n, i in enumerate(order, 1) if p.labels[i]))
    n = max(1, len(reachable))
    return {"pools": len(pools), "reachable": len(reachable), "hit@1": sum(r == 1 for r in ranks) / n,
            "hit@5": sum(r <= 5 for r in ranks) / n}
