"""HTTP shapes. Converted to and from domain types here, at the edge; types.py never sees pydantic."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from assistant.state.pins import Pin
from assistant.state.requests import HelpRequest
from assistant.types import DEFAULT_KB, Answer, Citation, ScoredChunk, Turn


class TurnIn(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=4000)

    def to_turn(self) -> Turn:
        return Turn(self.role, self.content)


# The knowledge bases to search (index/kb.py); none: the default scope. An unknown name is a 422 naming the known.
KnowledgeBases = list[Annotated[str, Field(max_length=64)]] | None
_SCOPE = Field(None, max_length=50, description="knowledge bases to search; omitted: the default scope")


class RetrieveRequest(BaseModel):
    query: str
    top_k: int = Field(5, ge=1, le=50)
    history: list[TurnIn] = Field(default_factory=list, max_length=50)
    knowledge_bases: KnowledgeBases = _SCOPE


class HitOut(BaseModel):
    id: str
    source: str
    title: str
    section: str
    text: str
    score: float
    lexical_score: float
    dense_score: float
    category: str
    issuer: str
    date: str
    start: int
    end: int
    knowledge_base: str = ""

    @classmethod
    def of(cls, hit: ScoredChunk) -> HitOut:
        c = hit.chunk
        return cls(
            id=c.id, source=c.source, title=c.title, section=c.section, text=c.text, score=round(hit.score, 6),
            lexical_score=round(hit.lexical, 4), dense_score=round(hit.dense, 4), category=c.category,
            issuer=c.issuer, date=c.date, start=c.start, end=c.end, knowledge_base=c.kb,
        )


class RetrieveResponse(BaseModel):
    query: str
    covered: bool
    reason: str
    hits: list[HitOut]


class ChatRequest(BaseModel):
    question: str
    history: list[TurnIn] = Field(default_factory=list, max_length=50)
    session_id: str | None = Field(None, max_length=128)
    knowledge_bases: KnowledgeBases = _SCOPE


class CitationOut(BaseModel):
    index: int
    source: str
    title: str
    section: str
    quote: str
    chunk_id: str = ""
    issuer: str = ""
    date: str = ""
    knowledge_base: str = ""

    @classmethod
    def of(cls, c: Citation) -> CitationOut:
        return cls(**dataclasses.asdict(c))


class ChatResponse(BaseModel):
    answer: str
    refused: bool
    citations: list[CitationOut]
    query: str = ""
    session_id: str | None = Field(None, description="send it with the next question to continue this conversation")
    kind: Literal["answered", "refused", "smalltalk"] = "answered"
    answer_id: str | None = Field(None, description="names this answer for POST /api/feedback and /api/requests")

    @classmethod
    def of(cls, answer: Answer) -> ChatResponse:
        return cls(answer=answer.text, refused=answer.refused, citations=[CitationOut.of(c) for c in answer.citations],
                   query=answer.query, session_id=answer.session_id, kind=answer.kind.value,
                   answer_id=answer.answer_id)


# ---- feedback and hand-offs (转人工 / 留言) ------------------------------------------------------------------
RequestStatusName = Literal["open", "answered", "closed"]  # RequestStatus values, spelled out for OpenAPI


class FeedbackIn(BaseModel):
    answer_id: str = Field(max_length=64)
    rating: Literal["up", "down"]
    comment: str = Field("", max_length=500)


class FeedbackOut(BaseModel):
    answer_id: str
    rating: Literal["up", "down"]


class RequestIn(BaseModel):
    session_id: str = Field(max_length=128)
    answer_id: str | None = Field(None, max_length=64)
    message: str = Field(min_length=1, max_length=1000)
    contact: str = Field("", max_length=100)


class RequestOpened(BaseModel):
    id: str
    status: RequestStatusName


class RequestStatusOut(BaseModel):
    """What the resident sees of their request."""

    id: str
    status: RequestStatusName
    reply: str | None = None
    updated_at: float

    @classmethod
    def of(cls, r: HelpRequest) -> RequestStatusOut:
        return cls(id=r.id, status=r.status.value, reply=r.reply or None, updated_at=r.updated_at)


class TurnOut(BaseModel):
    role: str
    content: str


class RequestListed(BaseModel):
    """A request in the staff queue: message and contact masked."""

    id: str
    created_at: float
    updated_at: float
    channel: str
    status: RequestStatusName
    message: str
    contact: str
    reply: str
    answer_id: str | None

    @classmethod
    def of(cls, r: HelpRequest) -> RequestListed:
        return cls(id=r.id, created_at=r.created_at, updated_at=r.updated_at, channel=r.channel, status=r.status.value,
                   message=r.message, contact=r.contact, reply=r.reply, answer_id=r.answer_id)


class RequestDetail(RequestListed):
    """One request for staff: contact in full, and the conversation that led to it."""

    history: list[TurnOut]
    question: str | None = None  # the logged question and answer the request was opened from, if any
    answer: str | None = None

    @classmethod
    def of(cls, r: HelpRequest, question: str | None = None, answer: str | None = None) -> RequestDetail:
        return cls(**RequestListed.of(r).model_dump(), history=[TurnOut(role=t.role, content=t.content)
                                                                 for t in r.history],
                   question=question, answer=answer)


class ReplyIn(BaseModel):
    reply: str = Field("", max_length=2000)
    status: Literal["answered", "closed"] = "answered"


# ---- staff pins (POST /admin/pins) ----------------------------------------------------------------------------
class PinIn(BaseModel):
    """A staff answer for questions matching `pattern`: keywords that must all occur, or a regex."""

    kind: Literal["keywords", "regex"] = "keywords"
    pattern: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=1000)
    source: str = Field(min_length=1, max_length=300, description='a document of the catalog, "物业/物业管理条例.md"')
    section: str = Field(min_length=1, max_length=100, description="its article, e.g. 第三十三条")
    quote: str = Field(min_length=1, max_length=300, description="words of the document, checked to occur in it")
    knowledge_base: str = Field(DEFAULT_KB, max_length=64, description="the knowledge base holding the document")


class PinOut(BaseModel):
    id: str
    kind: Literal["keywords", "regex"]
    pattern: str
    text: str
    source: str
    title: str
    section: str
    quote: str
    created_at: float
    knowledge_base: str

    @classmethod
    def of(cls, p: Pin) -> PinOut:
        return cls(id=p.id, kind=p.kind, pattern=p.pattern, text=p.text, source=p.source, title=p.title,
                   section=p.section, quote=p.quote, created_at=p.created_at,
                   knowledge_base=p.knowledge_base or DEFAULT_KB)
