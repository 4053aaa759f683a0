"""Domain types shared by every layer. Plain frozen dataclasses and StrEnums: no pydantic here (that lives at the
API edge). The enums are the project's vocabularies; their values are what the HTTP API and the logs show."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

# The knowledge base that holds the bundled corpus and uploads when no other is named (index/kb.py).
DEFAULT_KB = "community"


class AnswerKind(StrEnum):
    """What a resident got: an answer from the sources, a refusal (not covered, or an injection), or small talk."""

    ANSWERED = "answered"
    REFUSED = "refused"
    SMALLTALK = "smalltalk"


class ComposeMode(StrEnum):
    """Which composer wrote the text: kept in the question log so staff can tell LLM answers from the rest."""

    EXTRACTIVE = "extractive"  # sentences copied from the cited provisions (the default)
    LLM = "llm"  # LLM sentences, each verified against its sources
    LLM_FALLBACK = "extractive-fallback"  # the LLM failed or was late; the extractive answer was given instead
    TEMPLATE = "refusal"  # a fixed text of Xiaoyu's own (refusals, small talk); the value predates small talk


class Channel(StrEnum):
    """Where a question came from; the question log and the LLM's time budget are per channel."""

    API = "api"
    WEB = "web"
    OPENAI = "openai"
    WECHAT = "wechat"
    CONSOLE = "console"
    EVAL = "eval"  # evals: kept apart from residents' questions in the log and reports


class TurnKind(StrEnum):
    """How the understanding step reads a turn, before anything is retrieved."""

    QUESTION = "question"  # stands alone: judged without the history
    FOLLOW_UP = "follow-up"  # leans on the history ("那要多久？"): condensed with it
    SMALLTALK = "smalltalk"  # 你好 / 谢谢 / 你能做什么: a short reply, nothing retrieved
    INJECTION = "injection"  # tries to change the rules: refused, nothing retrieved


class Rating(StrEnum):
    """A resident's 👍 / 👎 on one answer (the widget's buttons, WeChat's 有用 / 没用)."""

    UP = "up"
    DOWN = "down"


class RequestStatus(StrEnum):
    """A hand-off to a person (转人工 / 留言): open until staff reply (answered) or close it."""

    OPEN = "open"
    ANSWERED = "answered"
    CLOSED = "closed"


class EventType(StrEnum):
    CITATIONS = "citations"
    DELTA = "delta"
    DONE = "done"


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
    # The knowledge base holding it (index/kb.py), set when its index is loaded; not part of the id, so the same
    # passage in two knowledge bases is one chunk to a scope holding both.
    kb: str = ""

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
    knowledge_base: str = ""  # the name of the knowledge base it was found in


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why retrieval thinks the knowledge base does (or does not) cover a question."""

    covered: bool
    reason: str
    dense_top: float = 0.0
    overlap: float = 0.0  # share of the query's content words found in the top hit
    agreement: bool = False  # lexical and dense rankings share a top hit
    probability: float | None = None  # the answerability model's P(answerable); None when decided by thresholds
    features: tuple[tuple[str, float], ...] = ()  # what the decision was made from, for hit testing and the log
    reasons: tuple[str, ...] = ()  # the features that weighed most, in words: "知识库外的话题：房价"


@dataclass(frozen=True, slots=True)
class Retrieval:
    query: str  # the condensed, standalone query actually searched
    hits: tuple[ScoredChunk, ...]
    evidence: Evidence
    # chunk id → (sentence, cosine to the query) for the top chunks: what the composer picks its opening by
    sentences: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What the understanding step decided about one turn: the plan every caller (chat, hit test, evals) follows."""

    question: str  # normalised
    kind: TurnKind
    query: str  # what is searched: the question itself, or the follow-up condensed with the history
    history: tuple[Turn, ...] = ()  # the recent turns the plan was made with
    condensed_by: str = ""  # "rules" | "llm" | "" (not condensed)
    # What the turn asks for. Small talk: greeting | thanks | goodbye | feedback | identity | free | praise | abilities
    # | ack;
    # questions: duration | where | amount | materials | permission | how | "" (see qa/understand.py)
    intent: str = ""
    off_topic: tuple[str, ...] = ()  # terms naming topics the knowledge base does not cover (房价, 天气 …)
    # The provisions the assistant's last answer cited (provision_label): a follow-up most often stays with them.
    cited_before: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a follow-up continues, for retrieval: the turn's own words ("他们靠什么来调") and the provisions the
    answer it follows on cited (provision_label)."""

    question: str
    cited: tuple[str, ...]

    def cites(self, title: str, section: str) -> bool:
        """Whether the answer cited this provision."""
        return provision_label(title, section) in self.cited

    def cites_document(self, title: str) -> bool:
        """Whether the answer cited a provision of this document: "《人民调解法》第七条" is one of 《人民调解法》."""
        return any(c.startswith(provision_label(title, "")) for c in self.cited)


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    kind: AnswerKind
    query: str = ""  # the standalone query the answer was built for
    mode: ComposeMode = ComposeMode.EXTRACTIVE
    notes: tuple[str, ...] = field(default=())
    session_id: str | None = None  # the server-issued session this turn joined (set by ChatService)
    answer_id: str | None = None  # names this answer in the question log, for feedback and hand-offs (ChatService)

    @property
    def refused(self) -> bool:
        return self.kind is AnswerKind.REFUSED


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One step of a streamed answer: citations first, then text deltas, then done (with the whole Answer)."""

    type: EventType
    text: str = ""
    citations: tuple[Citation, ...] = ()
    answer: Answer | None = None


def provision_label(title: str, section: str) -> str:
    """《物业管理条例》第四十一条: how a provision is named to residents, and found again in an earlier answer."""
    leaf = section.rsplit(" > ", 1)[-1] if section else ""
    return f"《{title}》{leaf}" if leaf else f"《{title}》"
