"""Compose the answer. ExtractiveAnswerer is the default, LLM-free composer: every sentence it shows is copied from a
cited provision, and its opening (ExtractiveAnswerer.ranked) is the sentence that answers. qa/llm.py is the other composer."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from assistant.index.lexical import JiebaTokenizer
from assistant.index.sentences import MIN_CHARS, provision_text, split_sentences
from assistant.qa.understand import INTENT_SIGNS, REFUSAL_AGAIN, REFUSAL_OPENING, is_refusal
from assistant.types import (
    Answer,
    AnswerKind,
    Citation,
    ComposeMode,
    EventType,
    Retrieval,
    ScoredChunk,
    StreamEvent,
    TurnPlan,
    provision_label,
)

# At most two provisions: the one the opening comes from and the closest other one (issue 11: a short answer with
# its evidence, not five provisions). A runner-up may open the answer when its fused score is at least this share
# of the top one.
MAX_CITATIONS = 2
LEAD_POOL = 3  # provisions whose sentences may open the answer; only MAX_CITATIONS of them are quoted
RUNNER_UP_RATIO = 0.6


def label(hit_or_citation) -> str:
    """《物业管理条例》第四十一条 — how a provision is named to residents."""
    return provision_label(hit_or_citation.title, hit_or_citation.section)


# The extractive answer lists its provisions under this heading, one provision_line each (the WeChat format, a
# session's memory of an answer and understand.cited_before read that list).
PROVISIONS_HEADING = "\n\n相关条文："


def provision_line(citation: Citation, quoted: str) -> str:
    """"【1】《物业管理条例》第四十一条：业主应当……"."""
    return f"【{citation.index}】{label(citation)}：{quoted}"


def refusal_text(contact: str, injection: bool = False, again: int = 0) -> str:
    """`again`: how many refusals the conversation already had. Saying the same 90 characters twice reads like a
    machine stuck in a loop; a later one is short, worded anew, and names the contact (what the resident needs)."""
    if again and not injection:
        return f"{REFUSAL_AGAIN[(again - 1) % len(REFUSAL_AGAIN)]}建议您咨询{contact}，会有工作人员为您解答。"
    opening = (
        "抱歉，这个请求我无法处理。我只根据已收录的政策文件回答问题，不会改变这一规则。"
        if injection
        else f"{REFUSAL_OPENING}为了不误导您，我不作猜测。"
    )
    return (
        f"{opening}\n\n"
        "小玉可以解答：党建（入党条件、党员权利义务、党组织生活等）、物业管理（物业费、维修资金、业主大会和业主委员会等）"
        "和人民调解（调解程序、调解协议、司法确认等）方面的政策问题。\n\n"
        f"这个问题建议您咨询{contact}，会有工作人员为您解答。"
    )


# Small talk gets a short reply of Xiaoyu's own (≤ 120 characters), never a provision: "谢谢" is not a question.
SMALLTALK_REPLIES = {
    "greeting": "您好，我是小玉！可以问我党建、物业管理和人民调解方面的政策问题，比如“业委会怎么成立？”",
    "thanks": "不客气！还有党建、物业或调解方面的问题，随时问我。",
    "goodbye": "再见！有政策问题随时来找小玉。",
    "identity": "我是小玉，社区政策问答助手：根据已收录的政策文件回答党建、物业管理和人民调解方面的问题，每个回答都注明出处。",
    "abilities": "我能解答党建（入党条件、党员权利义务）、物业管理（物业费、维修资金、业委会）和人民调解（调解程序、调解协议、"
                 "司法确认）方面的政策问题，并注明出处。",
    "free": "小玉是免费的：党建、物业和调解方面的政策问题，随时都可以问我。",
    "praise": "谢谢夸奖！有党建、物业或调解方面的政策问题，随时问我。",
    "feedback": "谢谢您的反馈！回答不对或不够清楚时，请说说您的具体情况，我再查一查；也可以请工作人员帮您解答。",
    "ack": "好的。还有其他问题，直接问我就行。",
}


def smalltalk_answer(intent: str, question: str = "") -> Answer:
    text = SMALLTALK_REPLIES.get(intent, SMALLTALK_REPLIES["ack"])
    return Answer(text, (), AnswerKind.SMALLTALK, question, ComposeMode.TEMPLATE)


_STREAM_PIECES = re.compile(r"[^。！？；\n]*[。！？；\n]+|[^。！？；\n]+$")


def answer_events(answer: Answer) -> Iterator[StreamEvent]:
    """A finished answer as a stream: citations first, then the text sentence by sentence, then done."""
    yield StreamEvent(EventType.CITATIONS, citations=answer.citations)
    for piece in _STREAM_PIECES.findall(answer.text):
        yield StreamEvent(EventType.DELTA, text=piece)
    yield StreamEvent(EventType.DONE, answer=answer)


@runtime_checkable
class Answerer(Protocol):
    """ExtractiveAnswerer (default) and llm.LLMAnswerer. `deadline` is a time.monotonic() value: the LLM falls
    back to the extractive answer when it would pass it."""

    def refuse(self, query: str = "", injection: bool = False, again: int = 0) -> Answer: ...

    def answer(self, retrieval: Retrieval, deadline: float | None = None, plan: TurnPlan | None = None) -> Answer: ...

    def stream(self, retrieval: Retrieval, deadline: float | None = None, plan: TurnPlan | None = None
               ) -> Iterator[StreamEvent]: ...


_LIST_LEAD = re.compile(r"[：:]$")
_LIST_ITEM = re.compile(r"^[（(][一二三四五六七八九十]+[)）]")
# A next step the sources themselves name: "可以向人民法院提起诉讼", "向人民调解委员会申请调解".
_NEXT_STEP = re.compile(r"(?:可以|有权)(?:依法)?(?:向|请求)[^，。；：]{2,24}?"
                        r"(?:申请[^，。；：]{0,10}|提起诉讼|起诉|投诉|举报|申诉|提出[^，。；：]{0,10})")
# How the opening is chosen (ExtractiveAnswerer.ranked), tuned on the dev sets: lexical overlap relative to the best
# candidate, plus SENTENCE_WEIGHT per unit of cosine to the query behind the closest sentence; for a question asking
# for a time limit or a number, a sentence without one loses INTENT_BONUS (large: it then opens only if none has one).
SENTENCE_WEIGHT = 20.0
INTENT_BONUS = 2.0
SECOND_MARGIN = 0.3
MAX_OPENING = 240  # characters of the opening, an expanded list included
MAX_EXCERPT = 170  # characters quoted of each provision (the source page has the whole text); 120 until session 7


class ExtractiveAnswerer:
    """The opening sentence answers the intent, verbatim from a provision; then one next step the sources name
    (or the contact); then at most MAX_CITATIONS provisions, quoted in short excerpts with 【n】."""

    def __init__(self, tokenizer: JiebaTokenizer, contact: str):
        self.tokenizer = tokenizer
        self.contact = contact

    def refuse(self, query: str = "", injection: bool = False, again: int = 0) -> Answer:
        return Answer(refusal_text(self.contact, injection, again), (), AnswerKind.REFUSED, query,
                      ComposeMode.TEMPLATE)

    def select(self, retrieval: Retrieval, intent: str = "") -> list[ScoredChunk]:
        """The top provision, plus runners-up that score close to it: where the opening may come from. A question
        asking for a time limit or a number also gets the best-ranked provision that has one, if none of those does
        ("要多久？" is answered by the article with 三日内, even when the articles on the procedure rank higher)."""
        hits = list(retrieval.hits)
        if not hits:
            return []
        pool = [hits[0]] + [h for h in hits[1:] if h.score >= RUNNER_UP_RATIO * hits[0].score][: LEAD_POOL - 1]
        sign = INTENT_SIGNS.get(intent)
        if sign is not None and not any(sign.search(h.chunk.body) for h in pool):
            pool += [h for h in hits if h not in pool and sign.search(h.chunk.body)][:1]
        return pool

    def citations(self, hits: Sequence[ScoredChunk]) -> tuple[Citation, ...]:
        """The whole provision is the citation's quote (the widget's cards, the source page's mark); the answer
        text quotes only an excerpt of it."""
        return tuple(
            Citation(
                index=i,
                source=h.chunk.source,
                title=h.chunk.title,
                section=h.chunk.section,
                quote=provision_text(h.chunk.body),
                chunk_id=h.chunk.id,
                issuer=h.chunk.issuer,
                date=h.chunk.date,
                knowledge_base=h.chunk.kb,
            )
            for i, h in enumerate(hits, 1)
        )

    def ranked(self, query: str, hits: Sequence[ScoredChunk], intent: str = "", avoid: Sequence[str] = (),
               sims: Mapping[str, tuple[tuple[str, float], ...]] | None = None) -> list[tuple[float, int, str]]:
        """(score, index into hits, sentence), best first: the sentences of the close provisions that answer the
        query. A good one shares the query's content words and, where sentence vectors exist, is the closest in
        meaning; one that gives what the intent asks for (a time limit for 多久) is preferred; a list lead-in
        ("具有下列情形之一的：") is expanded with its items or passed over; an opening the conversation already had
        is never repeated."""
        return _scored(self._candidates(query, hits, intent, sims), avoid)

    def _candidates(self, query: str, hits: Sequence[ScoredChunk], intent: str,
                    sims: Mapping[str, tuple[tuple[str, float], ...]] | None) -> list[_Candidate]:
        """Every sentence that may open the answer, with what ranked() scores it by (each tokenized once)."""
        words = set(self.tokenizer.tokens(query))
        sign = INTENT_SIGNS.get(intent)
        sims = sims or {}
        best_sim = max((sim for h in hits for _, sim in sims.get(h.chunk.id, ())), default=0.0)
        top = hits[0].score or 1.0
        candidates = []
        for n, hit in enumerate(hits):
            by_text = dict(sims.get(hit.chunk.id, ()))
            sentences = split_sentences(provision_text(hit.chunk.body))  # short items kept, for list expansion
            for i, sentence in enumerate(sentences):
                if len(sentence) < MIN_CHARS:
                    continue
                text, listed = _expand_list(sentences, i)
                shared = words & set(self.tokenizer.tokens(text))
                # Normalising by length favours a precise sentence over a long one that mentions everything.
                lexical = sum(len(w) for w in shared) / math.sqrt(len(sentence) + 10)
                bonus = 0.2 * (min(1.0, hit.score / top) - 1.0)  # the higher-ranked provision wins a tie
                if sign is not None and not sign.search(text):
                    bonus -= INTENT_BONUS  # "要多久？" is not answered by a sentence without a time limit
                if _LIST_LEAD.search(sentence) and not listed:
                    bonus -= 0.6  # a lead-in whose items could not be attached does not answer anything
                sim = by_text.get(sentence)
                closeness = SENTENCE_WEIGHT * (sim - best_sim) if sim is not None else 0.0
                candidates.append(_Candidate(lexical, bonus, closeness, n, text, _normal(text)))
        return candidates

    def stream(self, retrieval: Retrieval, deadline: float | None = None, plan: TurnPlan | None = None
               ) -> Iterator[StreamEvent]:
        return answer_events(self.answer(retrieval, deadline, plan))

    def answer(self, retrieval: Retrieval, deadline: float | None = None, plan: TurnPlan | None = None) -> Answer:
        if not retrieval.evidence.covered:
            return self.refuse(retrieval.query, again=refusals_before(plan))
        intent = plan.intent if plan else ""
        close = self.select(retrieval, intent)
        avoid = [_opening(t.content) for t in (plan.history if plan else ()) if t.role == "assistant"]
        candidates = self._candidates(retrieval.query, close, intent, retrieval.sentences)
        ranked = _scored(candidates, avoid)
        if not ranked and len(close) < len(retrieval.hits):
            # Every sentence of the close provisions was an earlier opening ("有没有时间限制？" after the question
            # its one article answered): the next hits may say more, and an answer never opens as the last did.
            close = list(retrieval.hits)
            candidates = self._candidates(retrieval.query, close, intent, retrieval.sentences)
            ranked = _scored(candidates, avoid)
        if not ranked:  # every sentence was an earlier opening: say the top provision's first words again
            ranked = [(0.0, 0, provision_text(close[0].chunk.body)[:MAX_OPENING])]
        top_score, at, opening = ranked[0]
        # A second sentence when another one is nearly as good: the answer often needs both (期限 and 起算).
        second = next(((n, t) for score, n, t in ranked[1:] if score >= top_score - SECOND_MARGIN
                       and t not in opening and opening not in t), None)
        if avoid:
            # The best sentence of all may be the one an earlier answer opened with ("那要多久？" after the question
            # its one article answered with 九十日内): it never opens again, but it may follow the new opening.
            best_score, best_at, best = (_scored(candidates, ()) or [(0.0, 0, opening)])[0]
            if best_score > top_score and best not in opening and opening not in best:
                second = (best_at, best)
        # The provision the opening comes from is 【1】; the second sentence's (or the next closest) supports it.
        order = [at] + ([second[0]] if second and second[0] != at else [])
        order += [n for n in range(len(close)) if n not in order]
        chosen = [close[n] for n in order][:MAX_CITATIONS]
        lead_of = {n: t for _, n, t in reversed(ranked)}  # each provision's best sentence
        excerpts = [excerpt(provision_text(h.chunk.body), opening if n == at else lead_of.get(n, ""))
                    for n, h in zip(order, chosen)]
        citations = self.citations(chosen)
        text = f"{_as_sentence(opening)}【1】"
        if second:
            text += f"{_as_sentence(second[1])}【{order.index(second[0]) + 1}】"
        listed = "\n".join(provision_line(c, quoted) for c, quoted in zip(citations, excerpts))
        text = f"{text}\n{self.next_step(opening, chosen)}{PROVISIONS_HEADING}\n{listed}"
        return Answer(text, citations, AnswerKind.ANSWERED, retrieval.query, ComposeMode.EXTRACTIVE)

    def next_step(self, opening: str, hits: Sequence[ScoredChunk]) -> str:
        """Where to go next, in the sources' own words when they name it ("可以向人民法院提起诉讼"), else the contact."""
        for hit in hits:
            for m in _NEXT_STEP.finditer(provision_text(hit.chunk.body)):
                step = m.group(0).strip()
                if step not in opening:
                    return f"下一步：{step}。"
        return f"如需进一步帮助，可以咨询{self.contact}。"


class _Candidate(NamedTuple):
    lexical: float  # query words shared, by length; scored relative to the best candidate of the answer
    bonus: float  # the rank of its provision, the intent and list-lead penalties
    closeness: float  # SENTENCE_WEIGHT per unit of cosine behind the closest sentence (0 without sentence vectors)
    at: int  # index of its provision in the hits
    text: str
    key: str  # _normal(text): how an earlier opening is recognised


def _scored(candidates: Sequence[_Candidate], avoid: Sequence[str]) -> list[tuple[float, int, str]]:
    """ExtractiveAnswerer.ranked's order of the candidates that are not an earlier opening."""
    seen = {_normal(a) for a in avoid}
    kept = [c for c in candidates if c.key not in seen]
    top_lexical = max((c.lexical for c in kept), default=0.0) or 1.0
    out = [(c.lexical / top_lexical + c.bonus + c.closeness, c.at, c.text) for c in kept]
    out.sort(key=lambda c: -c[0])
    return out


def refusals_before(plan: TurnPlan | None) -> int:
    """How many earlier answers of this conversation refused (any refusal's opening)."""
    return sum(t.role == "assistant" and is_refusal(t.content) for t in (plan.history if plan else ()))


def _expand_list(sentences: list[str], i: int) -> tuple[str, bool]:
    """"有下列情形之一的：" + its items (（一）…；（二）…), up to MAX_OPENING characters: (text, expanded?)."""
    sentence = sentences[i]
    if not _LIST_LEAD.search(sentence):
        return sentence, False
    items = []
    for nxt in sentences[i + 1:]:
        if not _LIST_ITEM.match(nxt) or len(sentence) + sum(map(len, items)) + len(nxt) > MAX_OPENING:
            break
        items.append(nxt)
    return (sentence + "".join(items), True) if items else (sentence, False)


def excerpt(text: str, around: str) -> str:
    """At most MAX_EXCERPT characters of a provision, starting at the sentence `around` when it is in it."""
    text = text.replace("\n", "")
    if len(text) <= MAX_EXCERPT:
        return text
    start = text.find(around[:20]) if around else -1
    start = max(0, start)
    piece = text[start: start + MAX_EXCERPT]
    return ("…" if start else "") + piece + ("…" if start + MAX_EXCERPT < len(text) else "")


def _as_sentence(text: str) -> str:
    text = text.strip()
    return text[:-1] + "。" if text.endswith(("；", "：", ":", "，")) else text if text.endswith(("。", "！", "？")) else text + "。"


def _opening(answer_text: str) -> str:
    return re.split(r"【\d+】|\n", answer_text.strip(), maxsplit=1)[0]


def _normal(text: str) -> str:
    return re.sub(r"[\s。；，：！？、]+", "", text)[:60]
