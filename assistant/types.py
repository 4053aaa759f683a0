"""Domain types shared by every layer. Plain frozen dataclasses: no pydantic here (that lives at the API edge)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class SourceDoc:
    """One loaded policy file: cleaned text plus the manifest metadata."""

    source: str  # path relative to the ingested root, e.g. "物业/物业管理条例.md"
    text: str
    title: str
    category: str = ""
    issuer: str = ""
    date: str = ""
    kind: str = ""  # 法规 | 新闻报道 | "" (unknown): decides how the splitter reads structure
    sha256: str = ""  # of the raw file bytes: an unchanged file is skipped without splitting


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str  # sha256 of (source, section, text): re-ingesting the same text is a no-op
    text: str  # embedded and shown; starts with its context, e.g. "物业管理条例 第四十一条"
    source: str
    title: str
    section: str  # "第五章 物业的使用与维护 > 第四十一条" ("" for untitled prose)
    start: int  # character offsets of the body in SourceDoc.text, for highlighting
    end: int
    category: str = ""
    issuer: str = ""
    date: str = ""

    @property
    def body(self) -> str:
        """The chunk text without its context header line."""
        return self.text.split("\n", 1)[1] if "\n" in self.text else self.text

    @property
    def article(self) -> str:
        """The last section component, e.g. "第四十一条" (or the heading for prose)."""
        return self.section.rsplit(" > ", 1)[-1]


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    chunk: Chunk
    score: float  # fused score used for ranking
    lexical: float = 0.0  # raw BM25 score (0 when not found lexically)
    dense: float = 0.0  # cosine similarity (0 when not in the dense candidates)
    lexical_rank: int | None = None
    dense_rank: int | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Citation:
    index: int  # the n in 【n】
    source: str
    title: str
    section: str
    quote: str
    chunk_id: str = ""
    issuer: str = ""
    date: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why retrieval thinks the knowledge base does (or does not) cover a question."""

    covered: bool
    reason: str
    dense_top: float = 0.0
    overlap: float = 0.0  # share of the query's content words found in the top hit
    agreement: bool = False  # lexical and dense rankings share a top hit


@dataclass(frozen=True, slots=True)
class Retrieval:
    query: str  # the condensed, standalone query actually searched
    hits: tuple[ScoredChunk, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    refused: bool
    query: str = ""  # the standalone query the answer was built for
    mode: str = "extractive"  # which path answered: extractive | llm | refusal
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One step of a streamed answer: citations first, then text deltas, then done (with the whole Answer)."""

    kind: Literal["citations", "delta", "done"]
    text: str = ""
    citations: tuple[Citation, ...] = ()
    answer: Answer | None = None
