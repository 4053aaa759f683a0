"""The one question pipeline. Chat (ask and stream), retrieval previews, the console's hit test and the evals all
go through it, so a hit test shows exactly what a resident would get:

    understand (understand.py) → [a staff pin] → retrieve (retrieve.py) → judge the evidence (evidence.py)
      → compose (compose.py | llm.py)

A question matching a staff pin (state/pins.py) is answered with the pinned text and its citation, before retrieval;
small talk and injections are handled first all the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from assistant.config import RetrievalSettings
from assistant.qa.compose import Answerer, answer_events, smalltalk_answer
from assistant.qa.evidence import AnswerabilityModel, judge
from assistant.qa.retrieve import HybridRetriever, Mode
from assistant.qa.understand import Understander, asked_datum, short_turn
from assistant.types import (Answer, EventType, Evidence, FollowUp, Retrieval, StreamEvent, Turn, TurnKind,
                             TurnPlan)

if TYPE_CHECKING:
    from assistant.qa.llm import LLMCondenser


_NO_EVIDENCE = (TurnKind.SMALLTALK, TurnKind.INJECTION)
MAX_LEANING_CHARS = 12  # a turn judged alone gets a second chance with the history up to this length (resolve)


class PinnedAnswers(Protocol):
    """Staff-written answers for question patterns (assistant/state/pins.py PinBoard)."""

    def answer_for(self, question: str, scope: Sequence[str] | None = None) -> Answer | None: ...


@dataclass(frozen=True)
class Explanation:
    """Everything the pipeline decided for one turn: the plan, what was retrieved and judged, and the answer."""

    plan: TurnPlan
    retrieval: Retrieval
    answer: Answer
    terms: tuple[str, ...]  # the query's content words retrieval matched on: "业委会怎么成立？" → ("业委会", "成立")


class QuestionPipeline:
    def __init__(self, understander: Understander, retriever: HybridRetriever, answerer: Answerer,
                 settings: RetrievalSettings, llm_condenser: LLMCondenser | None = None,
                 answerability: AnswerabilityModel | None = None, pins: PinnedAnswers | None = None):
        self.understander = understander
        self.retriever = retriever
        self.answerer = answerer
        self.settings = settings
        self.llm_condenser = llm_condenser  # None: follow-ups are condensed by the rules alone
        # None: the dense/overlap thresholds of settings decide. Replaced while running when staff save a threshold.
        self.answerability = answerability
        self.pins = pins

    def plan(self, question: str, history: Sequence[Turn] = (), deadline: float | None = None) -> TurnPlan:
        """Raises BadQuestion for an empty or over-long question."""
        plan = self.understander.plan(question, history)
        if plan.kind in (TurnKind.QUESTION, TurnKind.FOLLOW_UP) and not plan.off_topic and short_turn(plan.question):
            # "多谢啦，回头有事再来问" or "早上好呀小玉": small talk in words no rule lists, told by the known turns.
            intent = self.retriever.small_talk(plan.question)
            if intent:
                return TurnPlan(plan.question, TurnKind.SMALLTALK, plan.question, plan.history, intent=intent)
        if self.llm_condenser is not None and plan.kind is TurnKind.FOLLOW_UP:
            # The LLM rewrites a follow-up into a standalone query; it falls back to the rules on its own.
            query = self.llm_condenser.condense(plan.question, plan.history, deadline)
            if query != plan.query:
                plan = dataclasses.replace(plan, query=query, condensed_by="llm")
        return plan

    def retrieve(self, plan: TurnPlan, top_k: int | None = None, mode: Mode = "hybrid",
                 scope: Sequence[str] | None = None) -> Retrieval:
        """`scope`: the knowledge bases to search (index/kb.py Shelf.scope; None: the configured default). Evidence
        is judged within it: what another knowledge base would answer is refused here."""
        found = self.retriever.search(plan.query, top_k, mode, plan.intent, scope, _follow_up(plan))
        return Retrieval(plan.query, found.hits, judge(found, self.settings, self.answerability, plan),
                         found.sentences)

    def resolve(self, plan: TurnPlan, top_k: int | None = None, mode: Mode = "hybrid",
                scope: Sequence[str] | None = None) -> tuple[TurnPlan, Retrieval]:
        """retrieve(), and a second chance with the history for a short turn judged alone that the scope does not
        cover: "签完去哪里备案？" or "张罗开会的钱谁掏" name a word of their own (备案, 开会), so the rules judge them
        alone, but alone they are not answerable and the conversation says what they are about. The retry is kept
        only when it is covered and its top hits hold one of the turn's own words; a turn naming an uncovered topic
        or asking for a price, time or phone number (明天下雨吗, 超市几点关门) is never glued onto the history."""
        retrieval = self.retrieve(plan, top_k, mode, scope)
        if retrieval.evidence.covered or not self._may_lean(plan):
            return plan, retrieval
        query = self.understander.condenser.condense(plan.question, plan.history, force=True)
        if query == plan.query:
            return plan, retrieval
        leaning = dataclasses.replace(plan, kind=TurnKind.FOLLOW_UP, query=query, condensed_by="rules-retry")
        second = self.retrieve(leaning, top_k, mode, scope)
        own = [w for w in self.retriever.tokenizer.tokens(plan.question) if len(w) >= 2]
        follow = _follow_up(leaning)
        if second.evidence.covered and (any(w in h.chunk.body for h in second.hits[:3] for w in own)
                                        or (follow is not None and follow.cites_document(second.hits[0].chunk.title))):
            return leaning, second
        return plan, retrieval

    @staticmethod
    def _may_lean(plan: TurnPlan) -> bool:
        return (plan.kind is TurnKind.QUESTION and bool(plan.history) and not plan.off_topic
                and len(plan.question) <= MAX_LEANING_CHARS and not asked_datum(plan.question))

    def pinned(self, plan: TurnPlan, scope: Sequence[str] | None = None) -> Answer | None:
        """A staff pin's answer for this turn: matched on the resident's own words, not on a condensed query (a
        follow-up "那要多久？" must not inherit the pin its topic would match), and only a pin citing a knowledge base
        of the scope (None: the default scope)."""
        if self.pins is None or plan.kind in _NO_EVIDENCE:
            return None
        return self.pins.answer_for(plan.question, self.retriever.scope(scope))

    def compose(self, plan: TurnPlan, retrieval: Retrieval | None, deadline: float | None = None
                ) -> Iterator[StreamEvent]:
        """Citations, then text deltas, then done with the whole Answer."""
        if plan.kind is TurnKind.SMALLTALK:
            return answer_events(smalltalk_answer(plan.intent, plan.question))
        if plan.kind is TurnKind.INJECTION or retrieval is None:
            return answer_events(self.answerer.refuse(plan.question, injection=True))
        return self.answerer.stream(retrieval, deadline, plan)

    def stream(self, question: str, history: Sequence[Turn] = (), deadline: float | None = None,
               scope: Sequence[str] | None = None) -> tuple[TurnPlan, Retrieval | None, Iterator[StreamEvent]]:
        """The chat path: nothing is retrieved for a turn that needs no evidence (small talk, an injection)."""
        plan = self.plan(question, history, deadline)
        pinned = self.pinned(plan, scope)
        if pinned is not None:
            # Nothing retrieved; the log's evidence says that a staff pin answered.
            evidence = Evidence(True, "；".join(pinned.notes))
            return plan, Retrieval(plan.query, (), evidence), answer_events(pinned)
        retrieval = None
        if plan.kind not in _NO_EVIDENCE:
            plan, retrieval = self.resolve(plan, scope=scope)
        return plan, retrieval, self.compose(plan, retrieval, deadline)

    def explain(self, question: str, history: Sequence[Turn] = (), top_k: int | None = None,
                mode: Mode = "hybrid", scope: Sequence[str] | None = None) -> Explanation:
        """The hit test: the same plan and answer as chat, plus what retrieval found even where chat needs none."""
        plan = self.plan(question, history)
        plan, retrieval = self.resolve(plan, top_k, mode, scope)
        pinned = self.pinned(plan, scope)
        events = answer_events(pinned) if pinned else self.compose(plan, None if plan.kind in _NO_EVIDENCE else retrieval)
        answer = next(e.answer for e in events if e.type is EventType.DONE)
        return Explanation(plan, retrieval, answer, tuple(self.retriever.tokenizer.tokens(plan.query)))


def _follow_up(plan: TurnPlan) -> FollowUp | None:
    """What a follow-up continues: it most often stays with what the last answer cited. A turn with a topic of its
    own is judged alone."""
    if plan.kind is TurnKind.FOLLOW_UP and plan.cited_before:
        return FollowUp(plan.question, plan.cited_before)
    return None
