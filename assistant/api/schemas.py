"""HTTP shapes. Converted to and from domain types here, at the edge; types.py never sees pydantic."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, Field

from assistant.types import Answer, Citation, ScoredChunk, Turn


class TurnIn(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=4000)

    def to_turn(self) -> Turn:
        return Turn(self.role, self.content)


class RetrieveRequest(BaseModel):
    query: str
    top_k: int = Field(5, ge=1, le=50)
    history: list[TurnIn] = Field(default_factory=list, max_length=50)


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

    @classmethod
    def of(cls, hit: ScoredChunk) -> HitOut:
        c = hit.chunk
        return cls(
            id=c.id, source=c.source, title=c.title, section=c.section, text=c.text, score=round(hit.score, 6),
            lexical_score=round(hit.lexical, 4), dense_score=round(hit.dense, 4), category=c.category,
            issuer=c.issuer, date=c.date, start=c.start, end=c.end,
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


class CitationOut(BaseModel):
    index: int
    source: str
    title: str
    section: str
    quote: str
    chunk_id: str = ""
    issuer: str = ""
    date: str = ""

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

    @classmethod
    def of(cls, answer: Answer) -> ChatResponse:
        return cls(answer=answer.text, refused=answer.refused, citations=[CitationOut.of(c) for c in answer.citations],
                   query=answer.query, session_id=answer.session_id, kind=answer.kind.value)
