"""Fit the answerability model (assistant/qa/evidence.py) on dev sets: `xiaoyu calibrate --answerability FILE…`.

Each dev question gives one row: the evidence features its retrieval produced, and whether it should be answered
(small talk is left out: it never reaches the evidence step). A logistic regression on standardised features gives
the weights; the threshold is then the highest one that keeps false refusals of answerable questions within the
budget on the same rows (default 2%), so the model refuses as much as it can without turning residents away."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from assistant.qa.evidence import FEATURES, AnswerabilityModel, unseen
from assistant.services import ChatService
from assistant.types import Channel, Turn
from evals.golden import GoldenItem


@dataclass(frozen=True)
class Row:
    features: dict[str, float]
    answerable: bool
    question: str


def rows_from_items(chat: ChatService, items: Iterable[GoldenItem]) -> list[Row]:
    rows = []
    for item in items:
        if getattr(item, "expect", "") == "smalltalk" or item.category == "闲聊":
            continue
        evidence = chat.retrieve(item.question, item.history).evidence
        if evidence.features:
            rows.append(Row(dict(evidence.features), not item.out_of_scope, item.question))
    return rows


def rows_from_conversations(chat: ChatService, conversations: Sequence[dict]) -> list[Row]:
    """Each turn with the real earlier answers as its history, as a resident would have had them."""
    rows = []
    for conversation in conversations:
        history: list[Turn] = []
        for turn in conversation["turns"]:
            expect = turn["expect"]
            if expect != "smalltalk":
                evidence = chat.retrieve(turn["question"], history).evidence
                if evidence.features:
                    rows.append(Row(dict(evidence.features), expect != "refuse", turn["question"]))
            answer = chat.ask(turn["question"], history, channel=Channel.EVAL)
            history += [Turn("user", turn["question"]), Turn("assistant", answer.text)]
    return rows


def fit(rows: Sequence[Row], embedder: str, max_false_refusal: float = 0.02, c: float = 1.0) -> AnswerabilityModel:
    from sklearn.linear_model import LogisticRegression

    x = np.array([[np.nan if unseen(r.features, f) else r.features[f] for f in FEATURES] for r in rows], dtype=float)
    y = np.array([r.answerable for r in rows], dtype=int)
    if len(set(y)) < 2:
        raise ValueError("the dev rows need both answerable and out-of-scope questions to fit a decision")
    # A feature unknown for a row (evidence.PRESENCE) takes the mean of the rows that have it: it weighs nothing.
    seen = ~np.isnan(x)
    means = np.array([x[seen[:, j], j].mean() if seen[:, j].any() else 0.0 for j in range(x.shape[1])])
    x = np.where(seen, x, means)
    scales = x.std(axis=0)
    scales[scales == 0] = 1.0
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=1000).fit((x - means) / scales, y)
    model = AnswerabilityModel(
        weights={f: float(w) for f, w in zip(FEATURES, clf.coef_[0])}, bias=float(clf.intercept_[0]),
        means={f: float(m) for f, m in zip(FEATURES, means)}, scales={f: float(s) for f, s in zip(FEATURES, scales)},
        threshold=0.5, embedder=embedder)
    return AnswerabilityModel(model.weights, model.bias, model.means, model.scales,
                              pick_threshold(model, rows, max_false_refusal), embedder)


def pick_threshold(model: AnswerabilityModel, rows: Sequence[Row], max_false_refusal: float) -> float:
    """The highest threshold whose false-refusal rate on the answerable rows stays within the budget."""
    answerable = sorted(model.probability(r.features) for r in rows if r.answerable)
    if not answerable:
        return 0.5
    allowed = int(max_false_refusal * len(answerable))  # this many answerable rows may fall under the threshold
    # Just above the allowed-th lowest probability, so exactly `allowed` answerable rows are refused.
    return float(answerable[allowed] - 1e-6) if allowed < len(answerable) else float(answerable[-1])


def report(model: AnswerabilityModel, rows: Sequence[Row]) -> dict[str, float]:
    answerable = [r for r in rows if r.answerable]
    foreign = [r for r in rows if not r.answerable]
    decided = [model.probability(r.features) >= model.threshold for r in rows]
    by_row = dict(zip(map(id, rows), decided))
    return {
        "rows": len(rows),
        "false_refusal_rate": sum(not by_row[id(r)] for r in answerable) / max(1, len(answerable)),
        "refusal_accuracy": sum(not by_row[id(r)] for r in foreign) / max(1, len(foreign)),
        "threshold": model.threshold,
    }
