"""Admin API for scripts and CMS hooks: knowledge bases; upload, delete, re-index (the default knowledge base, or the
one `?kb=` names); read the question log, pin staff answers. Bearer XIAOYU_ADMIN_TOKEN."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from assistant.api.deps import ChatDep, DeskDep, KnowledgeDep, LibraryDep, ServicesDep, StaffDep
from assistant.api.middleware import admin_refusal
from assistant.api.schemas import PinIn, PinOut, ReplyIn, RequestDetail, RequestListed
from assistant.state.questionlog import QuestionQuery
from assistant.state.uploads import DocMeta
from assistant.types import Channel, RequestStatus
from ingest.pipeline import IngestReport

_bearer = HTTPBearer(auto_error=False, description="XIAOYU_ADMIN_TOKEN")


def require_admin(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """The same check as AdminGuard (which runs first, before the body is read); here it puts the bearer scheme into
    the OpenAPI document and guards the routes of an app built without the middleware."""
    token = request.app.state.settings.staff.admin_token.get_secret_value()
    refusal = admin_refusal(token, credentials.credentials if credentials else None)
    if refusal is not None:
        status, message = refusal
        raise HTTPException(status, message, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class ReportOut(BaseModel):
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    removed: list[str]
    failed: list[dict[str, str]]
    embedded: int
    summary: str

    @classmethod
    def of(cls, r: IngestReport) -> ReportOut:
        return cls(added=r.added, updated=r.updated, unchanged=r.unchanged, removed=r.removed,
                   failed=[{"source": s, "reason": why} for s, why in r.failed], embedded=r.embedded,
                   summary=r.summary())


class DocumentOut(BaseModel):
    source: str
    title: str
    category: str
    issuer: str
    date: str
    chunks: int
    ingested_at: str
    superseded_by: str | None = Field(None, description="the source of the newer version of this document, which "
                                      "answers instead of it; null while this one is current")


class UploadOut(BaseModel):
    source: str
    status: str  # added | updated | unchanged
    chunks: int
    report: ReportOut


class QuestionOut(BaseModel):
    id: int
    ts: float
    channel: str
    user_hash: str
    question: str
    answer: str
    refused: bool
    citations: list[dict]
    latency_ms: float
    dense_top: float | None
    evidence: str
    answer_id: str | None = None
    rating: str | None = None  # "up" | "down" | None: the resident's 👍 / 👎
    comment: str = ""


class WeekCountOut(BaseModel):
    week: str  # ISO week, "2025-W14"
    count: int


class TopicOut(BaseModel):
    topic: str
    count: int
    refused: int
    down_votes: int
    examples: list[str]
    weeks: list[WeekCountOut] | None = None  # with weekly=true: every ISO week of the window, oldest first


class KnowledgeBaseIn(BaseModel):
    name: str = Field(max_length=64, description="letters, digits, - and _ (1–32 characters)")
    title: str = Field("", max_length=100)


class KnowledgeBaseOut(BaseModel):
    name: str
    title: str
    documents: int
    chunks: int
    generation: int
    created_at: str
    in_default_scope: bool


def _kb_out(info) -> KnowledgeBaseOut:
    return KnowledgeBaseOut(name=info.name, title=info.title, documents=info.documents, chunks=info.chunks,
                            generation=info.generation, created_at=info.created_at, in_default_scope=info.default)


@router.get("/knowledge-bases", response_model=list[KnowledgeBaseOut])
def knowledge_bases(library: LibraryDep) -> list[KnowledgeBaseOut]:
    return [_kb_out(i) for i in library.list()]


@router.post("/knowledge-bases", response_model=KnowledgeBaseOut, status_code=201,
             responses={200: {"description": "it existed already (its title is updated)"}})
async def create_knowledge_base(library: LibraryDep, body: KnowledgeBaseIn, response: Response) -> KnowledgeBaseOut:
    """Fill it with POST /admin/documents?kb=<name> (uploads) or `xiaoyu ingest --kb <name> PATH…`."""
    info, new = await run_in_threadpool(library.create, body.name, body.title)
    if not new:
        response.status_code = 200
    return _kb_out(info)


@router.delete("/knowledge-bases/{name}", status_code=204)
async def delete_knowledge_base(library: LibraryDep, name: str) -> Response:
    """Its documents, vectors and uploads go with it; the default knowledge base can't be deleted (422)."""
    await run_in_threadpool(library.delete, name[:64])
    return Response(status_code=204)


@router.get("/documents", response_model=list[DocumentOut])
def documents(knowledge: KnowledgeDep) -> list[DocumentOut]:
    return [DocumentOut(source=d.source, title=d.title, category=d.category, issuer=d.issuer, date=d.date,
                        chunks=len(d.chunk_ids), ingested_at=d.ingested_at, superseded_by=d.superseded_by or None)
            for d in knowledge.documents()]


@router.post("/documents", response_model=UploadOut, status_code=201)
async def upload(knowledge: KnowledgeDep, file: Annotated[UploadFile, File()],
                 category: Annotated[str, Form()], title: Annotated[str, Form()] = "",
                 issuer: Annotated[str, Form()] = "", date: Annotated[str, Form()] = "") -> UploadOut:
    if file.size is not None:
        knowledge.check_upload_size(file.size)
    # Starlette has spooled the body to a temp file; the service copies it into staging in chunks, so the upload
    # is never one bytes object here; the loaders read the staged copy (to check it, then to ingest it).
    source, report = await run_in_threadpool(knowledge.add_document, file.filename or "", file.file,
                                             DocMeta(title, category, issuer, date))
    status = "added" if source in report.added else "updated" if source in report.updated else "unchanged"
    return UploadOut(source=source, status=status, chunks=len(knowledge.chunks_of(source)),
                     report=ReportOut.of(report))


@router.delete("/documents/{source:path}", response_model=ReportOut)
async def delete(source: str, knowledge: KnowledgeDep) -> ReportOut:
    return ReportOut.of(await run_in_threadpool(knowledge.delete_document, source))


@router.post("/reindex", response_model=ReportOut)
async def reindex(knowledge: KnowledgeDep) -> ReportOut:
    return ReportOut.of(await run_in_threadpool(knowledge.reindex))


@router.get("/questions", response_model=list[QuestionOut])
def questions(services: ServicesDep, staff: StaffDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              refused: bool | None = None, low_confidence: bool = False, channel: str | None = None,
              include_evals: bool = False) -> list[QuestionOut]:
    """Newest first. low_confidence: answered, but with top dense similarity under XIAOYU_LOW_CONFIDENCE_BELOW."""
    threshold = services.settings.staff.low_confidence_below if low_confidence else None
    rows = staff.questions(QuestionQuery(limit, refused, channel, threshold,
                                         () if include_evals else (Channel.EVAL,)))
    return [QuestionOut(id=q.id, ts=q.ts, channel=q.channel, user_hash=q.user_hash, question=q.question,
                        answer=q.answer, refused=q.refused, citations=q.citations, latency_ms=q.latency_ms,
                        dense_top=q.dense_top, evidence=q.evidence, answer_id=q.answer_id, rating=q.rating,
                        comment=q.comment) for q in rows]


@router.get("/reports/topics", response_model=list[TopicOut], response_model_exclude_none=True)
async def topics(staff: StaffDep, days: Annotated[int, Query(ge=1, le=366)] = 7,
                 weekly: bool = False, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[TopicOut]:
    """高频诉求: residents' questions of the last `days` days (evals left out) grouped by meaning, most asked first.
    Examples are masked (phone, ID-card and plate numbers). weekly=true adds each topic's count per ISO week."""
    found = await run_in_threadpool(staff.topics, days)  # embedding and clustering: seconds, off the event loop
    return [TopicOut(topic=t.label, count=t.count, refused=t.refused, down_votes=t.down_votes,
                     examples=list(t.examples),
                     weeks=[WeekCountOut(week=w, count=n) for w, n in t.weeks] if weekly else None)
            for t in found[:limit]]


# ---- hand-off requests (转人工 / 留言) ----------------------------------------------------------------------------
@router.get("/requests", response_model=list[RequestListed])
def requests(desk: DeskDep, status: RequestStatus | None = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[RequestListed]:
    """The queue, oldest first; message and contact masked (the full contact is in GET /admin/requests/{id})."""
    return [RequestListed.of(r) for r in desk.queue(status, limit)]


@router.get("/requests/{request_id}", response_model=RequestDetail)
def request_detail(desk: DeskDep, request_id: str) -> RequestDetail:
    found = desk.detail(request_id)
    logged = desk.answer_of(found)
    return RequestDetail.of(found, logged.question if logged else None, logged.answer if logged else None)


@router.post("/requests/{request_id}/reply", response_model=RequestDetail)
async def reply(desk: DeskDep, request_id: str, body: ReplyIn) -> RequestDetail:
    """Answer (status answered) or close a request; the resident sees the reply in the widget or on WeChat."""
    return RequestDetail.of(await run_in_threadpool(desk.reply, request_id, body.reply, body.status))


# ---- pinned answers (assistant/state/pins.py) ----------------------------------------------------------------------
@router.get("/pins", response_model=list[PinOut])
def pins(chat: ChatDep) -> list[PinOut]:
    """Staff answers pinned to question patterns, oldest first (the first that matches a question answers it)."""
    return [PinOut.of(p) for p in chat.pins()]


@router.post("/pins", response_model=PinOut, status_code=201)
def add_pin(chat: ChatDep, body: PinIn) -> PinOut:
    """422 for a pattern that can't be used (bad regex, too long) and for a citation the knowledge base doesn't
    hold: an unknown document or section, or a quote that is not in the document's text."""
    return PinOut.of(chat.pin(body.kind, body.pattern, body.text, body.source, body.section, body.quote,
                               body.knowledge_base))


@router.delete("/pins/{pin_id}", status_code=204)
def delete_pin(chat: ChatDep, pin_id: str) -> Response:
    chat.unpin(pin_id)
    return Response(status_code=204)
