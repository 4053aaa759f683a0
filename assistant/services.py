"""ChatService: the one entry point every edge (API, widget, WeChat, console, CLI, evals) calls.
build_service() is the only place concrete classes are constructed."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.answering import Answerer, ExtractiveAnswerer, answer_events
from assistant.catalog import DocRecord, IndexDir
from assistant.condense import Condenser
from assistant.config import Settings
from assistant.embedding import E5Embedder, Embedder, SentenceTransformerEmbedder
from assistant.guard import is_injection
from assistant.lexical import JiebaTokenizer, LexicalIndex
from assistant.questionlog import QuestionLog
from assistant.retrieval import HybridRetriever, Mode
from assistant.sessions import SessionStore
from assistant.store import ChromaStore
from assistant.synonyms import QueryExpander
from assistant.types import Answer, Chunk, Retrieval, StreamEvent, Turn
from assistant.uploads import DocMeta, UploadDir, UploadError
from ingest.pipeline import IngestPipeline, IngestReport, Progress
from ingest.splitter import ChineseSplitter

if TYPE_CHECKING:
    from assistant.llm import LLMCondenser


class QuestionError(ValueError):
    """A question that can't be asked; the message is shown to the resident as is."""


@dataclass
class ChatService:
    settings: Settings
    retriever: HybridRetriever
    answerer: Answerer
    pipeline: IngestPipeline
    sessions: SessionStore
    questions: QuestionLog
    uploads: UploadDir = field(default=None)  # type: ignore[assignment]  # build_service always sets it
    condenser: LLMCondenser | None = None  # LLM follow-up rewriting; None = the retriever's rule-based one

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
            channel: str = "api", user: str | None = None, budget: float | None = None) -> Answer:
        """Answer one question. With a session_id the stored conversation is the history, and this turn joins it.
        Every question is logged with its channel (user ids only hashed). `budget`: seconds the LLM may take
        (default per channel from settings.llm); ignored by the extractive answerer."""
        answer = None
        for event in self.stream(question, history, session_id, channel, user, budget=budget):
            answer = event.answer or answer
        assert answer is not None  # every stream ends with done
        return answer

    def preview(self, question: str, top_k: int | None = None, mode: Mode = "hybrid") -> tuple[Retrieval, Answer]:
        """What ask() would retrieve and answer, without logging or a session: the console's hit testing."""
        question = self.check_question(question)
        retrieval = self.retriever.retrieve(question, (), top_k, mode)
        if is_injection(question):
            return retrieval, self.answerer.refuse(question, injection=True)
        return retrieval, self.answerer.answer(retrieval)

    def query_terms(self, text: str) -> list[str]:
        """The content words retrieval matches on: "业委会怎么成立？" → ["业委会", "成立"]."""
        return self.retriever.tokenizer.tokens(text)

    def stream(self, question: str, history: Sequence[Turn] = (), session_id: str | None = None,
               channel: str = "api", user: str | None = None, budget: float | None = None) -> Iterator[StreamEvent]:
        """Citations first, then the answer text sentence by sentence, then done. With an LLM, sentences go out as
        they are verified, and a citations event (the whole list so far) precedes each sentence citing a new source."""
        question = self.check_question(question)
        started = time.perf_counter()
        if session_id:
            history = self.sessions.history(session_id)
        deadline = time.monotonic() + (budget if budget is not None else self.settings.llm.budget(channel))
        retrieval = None
        if is_injection(question):
            events = answer_events(self.answerer.refuse(question, injection=True))
        else:
            retrieval = self._retrieve_for(question, history, deadline)
            events = self.answerer.stream(retrieval, deadline)
        for event in events:
            if event.kind == "done" and event.answer is not None:
                answer = event.answer
                self._remember(session_id, question, answer)
                self.questions.record(channel, user or session_id, question, answer,
                                      (time.perf_counter() - started) * 1000, retrieval.evidence if retrieval else None)
            yield event

    def _retrieve_for(self, question: str, history: Sequence[Turn], deadline: float) -> Retrieval:
        recent = self._recent(history)
        if self.condenser is not None and recent:
            # The LLM rewrites the follow-up into a standalone query, which the retriever then searches as is.
            return self.retriever.retrieve(self.condenser.condense(question, recent, deadline))
        return self.retriever.retrieve(question, recent)

    def _remember(self, session_id: str | None, question: str, answer: Answer) -> None:
        if session_id:
            # Only the lead of a long answer is kept: condensation needs the topic, not every quoted provision.
            self.sessions.append(session_id, Turn("user", question), Turn("assistant", answer.text[:300]))

    def reset_session(self, session_id: str) -> None:
        self.sessions.reset(session_id)

    def source_passage(self, chunk_id: str) -> tuple[Chunk, str] | None:
        """A cited chunk and the full text of its document (chunk.start:chunk.end is the passage); None if unknown."""
        catalog = self.retriever.catalog
        chunk = catalog.chunks.get(chunk_id)
        doc = catalog.docs.get(chunk.source) if chunk else None
        if doc is None:
            return None
        try:
            return chunk, self.pipeline.index_dir.read_text(doc.sha256)
        except FileNotFoundError:  # a concurrent ingest replaced the document
            return None

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

    # ---- staff console and admin API --------------------------------------------------------------
    def documents(self) -> list[DocRecord]:
        return sorted(self.retriever.catalog.docs.values(), key=lambda d: (d.category, d.source))

    def chunks_of(self, source: str) -> list[Chunk]:
        catalog = self.retriever.catalog
        doc = catalog.docs.get(source)
        return [catalog.chunks[cid] for cid in doc.chunk_ids if cid in catalog.chunks] if doc else []

    def add_document(self, filename: str, data: bytes, meta: DocMeta) -> tuple[str, IngestReport]:
        """Store an upload under data_dir/uploads and ingest it. Raises UploadError with the reason when the file
        can't be used; the knowledge base is then exactly as before."""
        with self.uploads.lock:
            staged = self.uploads.stage(filename, data, meta, self._foreign_sources())
            try:
                report = self.ingest([self.uploads.root])
            except Exception:
                self.uploads.undo(staged)
                raise
            reason = dict(report.failed).get(staged.source)
            if reason:
                self.uploads.undo(staged)
                raise UploadError(f"文件无法导入：{reason}")
            return staged.source, report

    def delete_document(self, source: str) -> IngestReport:
        """Remove a document from the index. An uploaded file is deleted too, so a re-index won't bring it back."""
        doc = self.retriever.catalog.docs.get(source)
        if doc is None:
            raise KeyError(source)
        with self.uploads.lock:
            if doc.root == self.uploads.resolved:
                self.uploads.discard(source)
            return self.remove([source])

    def reindex(self, source: str | None = None) -> IngestReport:
        """Re-read the folder(s) the index came from: changed files are re-ingested, unchanged ones cost nothing."""
        docs = self.retriever.catalog.docs
        if source is not None and source not in docs:
            raise KeyError(source)
        roots = {docs[source].root} if source else {d.root for d in docs.values()}
        with self.uploads.lock:
            return self.ingest([Path(r) for r in sorted(roots)])

    def _foreign_sources(self) -> set[str]:
        """Sources ingested from elsewhere (the bundled corpus): an upload must not take over their name."""
        return {s for s, d in self.retriever.catalog.docs.items() if d.root != self.uploads.resolved}

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
    expander = QueryExpander()
    rules = Condenser(tokenizer.user_terms | expander.terms, settings.max_history_turns)
    retriever = HybridRetriever(embedder, store, index_dir, tokenizer, settings.retrieval, expander, rules)
    answerer: Answerer = ExtractiveAnswerer(tokenizer, settings.contact)
    condenser = None
    if settings.llm.enabled:
        from assistant.llm import LLMAnswerer, LLMCondenser, chat_model  # lazy: langchain is the [llm] extra
        from assistant.verify import SupportVerifier

        model = chat_model(settings.llm)
        answerer = LLMAnswerer(model, answerer, SupportVerifier(settings.llm.support_threshold), settings.llm)
        condenser = LLMCondenser(model, settings.llm, rules) if settings.llm.condense else None
    sessions = SessionStore(data_dir / "sessions.sqlite3", 2 * settings.max_history_turns,
                            settings.session_ttl_hours * 3600)
    questions = QuestionLog(data_dir / "questions.sqlite3")
    uploads = UploadDir(data_dir / "uploads", int(settings.staff.max_upload_mb * 1_000_000))
    return ChatService(settings, retriever, answerer, pipeline, sessions, questions, uploads, condenser)
