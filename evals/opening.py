"""Fit the opening chooser (assistant/qa/compose.py OpeningChooser) on dev sets: `xiaoyu calibrate --opening FILE…`.

Each answered dev question with key facts (a conversation's turns too, with the real earlier answers as history)
gives the candidate sentences the extractive composer weighed for its opening, labelled by whether the sentence holds
one of the question's key facts within the first LEAD_CHARS characters a resident reads (a fact at the end of a long
sentence is not "in the opening"). The pairwise fit of evals/ranker.py over them gives the weights: what sets the
sentence that says the fact apart from the other sentences of the same close provisions. The answers of the history
are composed with the fixed formula while recording, so an old model cannot shape what the new one learns from.

The second sentence's margin is chosen on the same rows: the one that puts a key fact into the first two sentences
most often while adding a second sentence to no more answers than the fixed formula does (answers stay as short)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from assistant.qa.compose import FIXED_CHOOSER, OPENING_FEATURES, OpeningChooser
from assistant.services import ChatService
from assistant.types import Channel, Turn
from evals.golden import Expect, GoldenItem
from evals.metrics import LEAD_CHARS
from evals.ranker import Pool, fit

MARGINS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def _choice(chat: ChatService, item: GoldenItem, history: Sequence[Turn]) -> Pool | None:
    found = chat.opening_candidates(item.question, list(history))
    if not found:
        return None
    rows = tuple(row for row, _, _ in found)
    labels = tuple(any(fact in text[:LEAD_CHARS] for fact in item.key_facts) for _, _, text in found)
    return Pool(item.question, rows, labels)


def _wanted(item: GoldenItem) -> bool:
    return item.expect == Expect.ANSWER and not item.out_of_scope and bool(item.key_facts)


def choices_from_items(chat: ChatService, items: Iterable[GoldenItem]) -> list[Pool]:
    chat.use_opening_chooser(FIXED_CHOOSER)
    found = [_choice(chat, item, item.history) for item in items if _wanted(item)]
    return [c for c in found if c is not None]


def choices_from_conversations(chat: ChatService, conversations: Iterable) -> list[Pool]:
    chat.use_opening_chooser(FIXED_CHOOSER)
    found = []
    for conversation in conversations:
        history: list[Turn] = []
        for item in conversation.turns:
            if _wanted(item):
                found.append(_choice(chat, item, history))
            answer = chat.ask(item.question, history, channel=Channel.EVAL)
            history += [Turn("user", item.question), Turn("assistant", answer.text)]
    return [c for c in found if c is not None]


def fit_chooser(choices: Sequence[Pool], embedder: str) -> OpeningChooser:
    model = fit(choices, embedder, features=OPENING_FEATURES, model=OpeningChooser)
    return OpeningChooser(model.weights, embedder, best_margin(model, choices))


def best_margin(model: OpeningChooser, choices: Sequence[Pool]) -> float:
    budget = _opening(FIXED_CHOOSER, FIXED_CHOOSER.margin, choices)[1]
    fits = [(_opening(model, m, choices), m) for m in MARGINS]
    allowed = [(r, m) for r, m in fits if r[1] <= budget] or fits[:1]
    return max(allowed, key=lambda t: (t[0][0], -t[1]))[1]


def _opening(model: OpeningChooser, margin: float, choices: Sequence[Pool]) -> tuple[float, float]:
    """(share of answers with a key fact in the opening's one or two sentences, share with two)."""
    lead = seconds = 0
    for c in choices:
        scores = sorted(((model.score(r), y) for r, y in zip(c.rows, c.labels)), key=lambda t: -t[0])
        two = scores[:2] if len(scores) > 1 and scores[1][0] >= scores[0][0] - margin else scores[:1]
        lead += any(y for _, y in two)
        seconds += len(two) == 2
    return lead / max(1, len(choices)), seconds / max(1, len(choices))


def report(model: OpeningChooser, choices: Sequence[Pool]) -> dict[str, float]:
    """How often the best-scored sentence holds a key fact, among the answers where some candidate does."""
    reachable = [c for c in choices if any(c.labels)]
    first = sum(max(zip(c.rows, c.labels), key=lambda t: model.score(t[0]))[1] for c in reachable)
    return {"answers": len(choices), "reachable": len(reachable), "fact_first": first / max(1, len(reachable))}
