"""Optional LLM answers through any OpenAI-compatible endpoint (DeepSeek, Qwen, vLLM, Ollama, llama.cpp …).

The model sees the retrieved provisions as numbered sources and must cite 【n】 after each claim. Its text never
reaches a resident unverified: it is cut into sentences as it streams, each sentence is checked by
SupportVerifier, and only supported sentences go out, with their citations renumbered in order of first use.
A timeout, an endpoint error or an answer with nothing verifiable left falls back to the extractive answer.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from assistant.config import LLMSettings
from assistant.qa.compose import ExtractiveAnswerer, answer_events, refusals_before
from assistant.qa.understand import Condenser
from assistant.qa.verify import SentenceBuffer, SupportVerifier, attach, bigrams
from assistant.types import (
    Answer,
    AnswerKind,
    Citation,
    ComposeMode,
    EventType,
    Retrieval,
    StreamEvent,
    Turn,
    TurnPlan,
)

log = logging.getLogger("xiaoyu.llm")

ANSWER_PROMPT = """你是社区政策问答助手“小玉”。请只根据下面的编号资料回答居民的问题。
规则：
1. 只使用资料中的内容，不要使用资料以外的知识，不要编造条文、数字或期限。
2. 每句话末尾用【编号】标注它依据的资料，例如：业主应当按照约定交纳物业服务费用【1】。
3. 尽量沿用资料原文的说法；用简洁的中文回答，不超过五句话，不要使用标题或列表。
4. 如果资料不足以回答问题，只回答：资料中没有找到答案。"""

CONDENSE_PROMPT = """请根据对话历史，把居民的最新问题改写成一个不依赖上下文、可以单独理解的完整问题。
只输出改写后的问题，不要回答问题，不要解释。"""


def chat_model(settings: LLMSettings) -> Any:
    """LangChain's ChatOpenAI for the configured endpoint. Needs the [llm] extra."""
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:  # pragma: no cover - depends on the extra being installed
        raise ImportError("LLM answers need the [llm] extra: pip install 'xiaoyu[llm]'") from exc
    return ChatOpenAI(
        model=settings.model or "default",
        base_url=settings.base_url,
        # Local servers (llama.cpp, vLLM, Ollama) take any key, but the OpenAI client insists on having one.
        api_key=settings.api_key.get_secret_value() or "EMPTY",
        timeout=settings.timeout,
        max_retries=0,  # a retry would spend the time budget; the extractive answer is the retry
        temperature=settings.temperature,
        # As the classic `max_tokens`: LangChain would send `max_completion_tokens`, which llama.cpp and other
        # compatible servers ignore, letting a small model ramble until the context is full.
        extra_body={"max_tokens": settings.max_tokens},
    )


class LLMTimeout(TimeoutError):
    pass


def stream_text(model: Any, messages: list[tuple[str, str]], deadline: float) -> Iterator[str]:
    """The model's reply as text pieces, with a hard deadline.

    The HTTP timeout alone doesn't bound the total: a server that trickles tokens resets it with every byte. So
    the request runs in a worker thread and we stop waiting at the deadline (the worker ends at its next token
    or at its own HTTP timeout)."""
    pieces: queue.Queue = queue.Queue()
    stop = threading.Event()

    def pump() -> None:
        try:
            for chunk in model.stream(messages, timeout=max(0.1, deadline - time.monotonic())):
                if stop.is_set():
                    return
                pieces.put(("text", chunk.text))
            pieces.put(("end", None))
        except Exception as exc:  # handed to the consumer, which decides on the fallback
            pieces.put(("error", exc))

    threading.Thread(target=pump, name="llm-stream", daemon=True).start()
    try:
        while True:
            try:
                kind, value = pieces.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise LLMTimeout("LLM did not finish within the time budget") from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            if value:
                yield value
    finally:
        stop.set()


def describe(exc: BaseException) -> str:
    """Short, log-friendly name of a failure: "LLMTimeout", "InternalServerError: Error code: 500 …"."""
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


def source_text(citation: Citation, chunk_text: str) -> str:
    return chunk_text or f"{citation.title} {citation.section}\n{citation.quote}"


def answer_messages(question: str, sources: Sequence[str]) -> list[tuple[str, str]]:
    numbered = "\n\n".join(f"【{i}】{text.strip()}" for i, text in enumerate(sources, 1))
    # One user message, no system role: some chat templates (Gemma's in llama.cpp) silently drop system messages.
    return [("human", f"{ANSWER_PROMPT}\n\n资料：\n{numbered}\n\n问题：{question}")]


class _Draft:
    """The verified part of one answer: kept sentences with citations renumbered in order of first use."""

    def __init__(self, verifier: SupportVerifier, sources: Sequence[str], citations: Sequence[Citation]):
        self.verifier = verifier
        self.sources = sources
        self.citations = citations
        self.shown: dict[int, int] = {}  # number in the prompt → number the resident sees
        self.kept: list[str] = []
        self.dropped: list[str] = []
        self.removed: set[int] = set()  # out-of-range or unsupported citation numbers taken out of sentences

    def add(self, sentence: str) -> str | None:
        verdict = self.verifier.check(sentence, self.sources)
        self.removed.update(verdict.removed)
        if not verdict.kept:
            if verdict.text:
                self.dropped.append(f"{verdict.reason}：{verdict.text[:40]}")
            return None
        for n in verdict.cited:
            self.shown.setdefault(n, len(self.shown) + 1)
        text = attach(verdict.text, [self.shown[n] for n in verdict.cited])
        self.kept.append(text)
        return text

    def used_citations(self) -> tuple[Citation, ...]:
        return tuple(dataclasses.replace(self.citations[old - 1], index=new)
                     for old, new in sorted(self.shown.items(), key=lambda kv: kv[1]))

    def notes(self) -> tuple[str, ...]:
        notes = [f"LLM 句子：保留 {len(self.kept)}，删除 {len(self.dropped)}"]
        if self.removed:
            shown = sorted(self.removed)
            notes.append("删除的引用编号：" + "、".join(f"【{n}】" for n in shown[:10]) + ("…" if len(shown) > 10 else ""))
        return (*notes, *self.dropped[:8])


class LLMAnswerer:
    """Answers from the LLM with verified citations; the extractive answerer refuses and is the fallback."""

    def __init__(self, model: Any, fallback: ExtractiveAnswerer, verifier: SupportVerifier, settings: LLMSettings):
        self.model = model
        self.fallback = fallback
        self.verifier = verifier
        self.settings = settings

    def refuse(self, query: str = "", injection: bool = False, again: int = 0) -> Answer:
        return self.fallback.refuse(query, injection, again)

    def answer(self, retrieval: Retrieval, deadline: float | None = None, plan: TurnPlan | None = None) -> Answer:
        answer = None
        for event in self.stream(retrieval, deadline, plan):
            if event.type is EventType.DONE:
                answer = event.answer
        assert answer is not None  # stream() always ends with done
        return answer

    def stream(self, retrieval: Retrieval, deadline: float | None = None, plan: TurnPlan | None = None
               ) -> Iterator[StreamEvent]:
        """Verified sentences as they complete: a citations event whenever a sentence brings a new source (the
        list so far, final numbering), then that sentence as a delta; done at the end."""
        if not retrieval.evidence.covered:
            # Retrieval found nothing to ground an answer in: refusing needs no model.
            yield from answer_events(self.fallback.refuse(retrieval.query, again=refusals_before(plan)))
            return
        deadline = deadline if deadline is not None else time.monotonic() + self.settings.timeout
        hits = retrieval.hits[: self.settings.max_sources]
        citations = self.fallback.citations(hits)
        sources = [source_text(c, h.chunk.text) for c, h in zip(citations, hits)]
        draft = _Draft(self.verifier, sources, citations)
        held: list[str] = []  # verified sentences kept back until there are enough to be an answer
        announced = 0
        failure = ""
        buffer = SentenceBuffer()
        try:
            pieces = stream_text(self.model, answer_messages(retrieval.query, sources), deadline)
            for sentence in self._sentences(pieces, buffer):
                text = draft.add(sentence)
                if text is None:
                    continue
                held.append(text)
                if len(draft.kept) < self.settings.min_sentences:
                    continue
                if len(draft.shown) > announced:
                    announced = len(draft.shown)
                    yield StreamEvent(EventType.CITATIONS, citations=draft.used_citations())
                for piece in held:
                    yield StreamEvent(EventType.DELTA, text=piece)
                held.clear()
        except Exception as exc:  # timeout, connection refused, HTTP 5xx, malformed stream: all mean "fall back"
            failure = describe(exc)
        if len(draft.kept) >= self.settings.min_sentences:
            notes = draft.notes() + ((f"LLM 中断：{failure}",) if failure else ())
            answer = Answer("".join(draft.kept), draft.used_citations(), AnswerKind.ANSWERED, retrieval.query, ComposeMode.LLM,
                            notes)
            log.info("answer mode=llm %s", "; ".join(notes))
            yield StreamEvent(EventType.DONE, answer=answer)
            return
        reason = f"LLM 失败：{failure}" if failure else "LLM 回答中没有可核实的句子"
        fallback = self.fallback.answer(retrieval, plan=plan)
        notes = (reason, *(draft.notes() if not failure else ()))
        answer = dataclasses.replace(fallback, mode=ComposeMode.LLM_FALLBACK, notes=(*fallback.notes, *notes))
        log.warning("answer mode=extractive-fallback %s", "; ".join(notes))
        yield from answer_events(answer)

    @staticmethod
    def _sentences(pieces: Iterator[str], buffer: SentenceBuffer) -> Iterator[str]:
        for piece in pieces:
            yield from buffer.feed(piece)
        yield from buffer.flush()


_ANSWER_PREFIX = re.compile(r"^(?:改写后的问题|问题|完整问题|改写)\s*[:：]\s*")


class LLMCondenser:
    """Rewrites a follow-up ("要多久？") into a standalone question with the LLM; the rule-based condensation is
    used for questions that stand alone, and whenever the LLM fails, is late or returns something unusable."""

    def __init__(self, model: Any, settings: LLMSettings, rules: Condenser, share: float = 0.3):
        self.model = model
        self.settings = settings
        self.rules = rules
        self.max_turns = rules.max_turns
        self.share = share  # of the remaining time budget: the answer itself needs the rest

    def condense(self, question: str, history: Sequence[Turn], deadline: float | None = None) -> str:
        fallback = self.rules.condense(question, history)
        if not history or not self.rules.needs_context(question):
            return fallback  # a standalone question costs no model call
        now = time.monotonic()
        remaining = (deadline - now) if deadline is not None else self.settings.timeout
        turns = "\n".join(f"{'居民' if t.role == 'user' else '小玉'}：{t.content.strip()[:200]}"
                          for t in history[-self.max_turns:])
        messages = [("human", f"{CONDENSE_PROMPT}\n\n对话历史：\n{turns}\n\n最新问题：{question}")]
        try:
            text = "".join(stream_text(self.model, messages, now + self.share * max(0.0, remaining)))
        except Exception as exc:  # the rule-based condensation is always available
            log.warning("condense fallback: %s", describe(exc))
            return fallback
        rewritten = _ANSWER_PREFIX.sub("", text.strip().split("\n", 1)[0].strip()).strip("“”\"' ")
        context = bigrams(question + "".join(t.content for t in history if t.role == "user"))
        if not 4 <= len(rewritten) <= 200 or not bigrams(rewritten) & context:
            log.warning("condense fallback: unusable rewrite %r", rewritten[:80])
            return fallback
        return rewritten
