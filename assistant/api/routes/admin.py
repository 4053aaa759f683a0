"""Admin API for scripts and CMS hooks: upload, delete, re-index, read the question log. Bearer XIAOYU_ADMIN_TOKEN."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from assistant.api.deps import KnowledgeDep, ServicesDep, StaffDep
from assistant.api.middleware import admin_refusal
from assistant.state.questionlog import QuestionQuery
from assistant.state.uploads import DocMeta
from assistant.types import Channel
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


@router.get("/documents", response_model=list[DocumentOut])
def documents(knowledge: KnowledgeDep) -> list[DocumentOut]:
    return [DocumentOut(source=d.source, title=d.title, category=d.category, issuer=d.issuer, date=d.date,
                        chunks=len(d.chunk_ids), ingested_at=d.ingested_at) for d in knowledge.documents()]


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
                        dense_top=q.dense_top, evidence=q.evidence) for q in rows]
