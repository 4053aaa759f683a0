"""ChatService: the one entry point every edge (API, widget, WeChat, console, CLI, evals) calls.
build_service() is the only place concrete classes are constructed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from assistant.answering import ExtractiveAnswerer
from assistant.catalog import IndexDir
from assistant.config import Settings
from assistant.embedding import E5Embedder, Embedder, SentenceTransformerEmbedder
from assistant.guard import is_injection
from assistant.lexical import JiebaTokenizer, LexicalIndex
from assistant.questionlog import QuestionLog
from assistant.retrieval import HybridRetriever, Mode
from assistant.sessions import SessionStore
from assistant.store import ChromaStore
from assistant.types import Answer, Retrieval, StreamEvent, Turn
from ingest.pipeline import IngestPipeline, IngestReport, Progress
from ingest.splitter import ChineseSplitter


_SENTENCE_PIECES = re.compile(r"[^。！？；\n]*[。！？；\n]+|[^。！？；\n]+$")


class QuestionError(ValueError):
    """A question that can't be asked; the message is shown to the resident as is."""


@dataclass
class ChatService:
    settings: Settings
    retriever: HybridRetriever
    answerer: ExtractiveAnswerer
    pipeline: IngestPipeline
    sessions: SessionStore
    questions: QuestionLog

    def check_question(self, question: str) -> str:
        question = (question or "").strip()
        if not question:
            raise QuestionError("问题不能为空，请输入您想咨询的内容。")
        if len(question) > self.settings.max_question_chars:
            raise QuestionError(f"问题太长了（{len(question)} 字），请精简到 {self.settings.max_question_chars} 字以内。")
        return question

    def retrieve(self, question: str, history: Sequence[Turn] = (), top_k: int | None = None,
                 mode: Mode = "hybrid") -> Retrieval:
        question = self.check_question(question)
        return self.retriever.retrieve(question, self._recent(history), top_k, mode)

    def ask(self, question: str, history: Sequence[Turn] = (), session_id: str | None = None,
            channel: str = "api", user: str | None = None) -> Answer:
        """Answer one question. With a session_id the stored conversation is the history, and this turn joins it.
        Every question is logged with its channel (user ids only hashed)."""
        question = self.check_question(question)
        started = time.perf_counter()
        if session_id:
            history = self.sessions.history(session_id)
        if is_injection(question):
            answer = self.answerer.refuse(question, injection=True)
        else:
            answer = self.answerer.answer(self.retriever.retrieve(question, self._recent(history)))
        self._remember(session_id, question, answer)
        self.questions.record(channel, user or session_id, question, answer, (time.perf_counter() - started) * 1000)
        return answer

    def stream(self, question: str, history: Sequence[Turn] = (), session_id: str | None = None,
               channel: str = "api", user: str | None = None) -> Iterator[StreamEvent]:
        """Citations first, then the answer text sentence by sentence, then done."""
        answer = self.ask(question, history, session_id, channel, user)
        yield StreamEvent("citations", citations=answer.citations)
        for piece in _SENTENCE_PIECES.findall(answer.text):
            yield StreamEvent("delta", text=piece)
        yield StreamEvent("done", answer=answer)

    def _remember(self, session_id: str | None, question: str, answer: Answer) -> None:
        if session_id:
            # Only the lead of a long answer is kept: condensation needs the topic, not every quoted provision.
            self.sessions.append(session_id, Turn("user", question), Turn("assistant", answer.text[:300]))

    def reset_session(self, session_id: str) -> None:
        self.sessions.reset(session_id)

    def _recent(self, history: Sequence[Turn]) -> list[Turn]:
        return list(history)[-2 * self.settings.max_history_turns :]

    # ---- knowledge base -----------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return not self.retriever.catalog.docs

    def ingest(self, paths: Sequence[Path], progress: Progress | None = None) -> IngestReport:
        report = self.pipeline.run(list(paths), progress)
        if report.changed or report.embedded:
            self.retriever.reload()
        return report

    def remove(self, sources: Sequence[str]) -> IngestReport:
        report = self.pipeline.remove(list(sources))
        if report.changed:
            self.retriever.reload()
        return report

    def ensure_ingested(self, progress: Progress | None = None) -> IngestReport | None:
        """First start on an empty data dir: load the bundled (or configured) knowledge base."""
        return self.ingest([self.settings.knowledge_base], progress) if self.is_empty else None


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedding.backend == "sentence-transformers":
        return SentenceTransformerEmbedder(settings.embedding.model, settings.embedding.batch_size)
    return E5Embedder()


def build_service(settings: Settings, embedder: Embedder | None = None) -> ChatService:
    """Wire every collaborator. `embedder` lets tests and benchmarks share one loaded model."""
    embedder = embedder or build_embedder(settings)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = ChromaStore(embedder.name, data_dir / "chroma", settings.chroma_host, settings.chroma_port)
    tokenizer = JiebaTokenizer()
    index_dir = IndexDir(data_dir)
    pipeline = IngestPipeline(index_dir, store, embedder, LexicalIndex(tokenizer),
                              ChineseSplitter(settings.split.max_chars), settings.embedding.batch_size)
    retriever = HybridRetriever(embedder, store, index_dir, tokenizer, settings.retrieval, settings.max_history_turns)
    answerer = ExtractiveAnswerer(tokenizer, settings.contact)
    sessions = SessionStore(data_dir / "sessions.sqlite3", 2 * settings.max_history_turns,
                            settings.session_ttl_hours * 3600)
    questions = QuestionLog(data_dir / "questions.sqlite3")
    return ChatService(settings, retriever, answerer, pipeline, sessions, questions)
