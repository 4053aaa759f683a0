"""Pinned answers: a short staff-written answer, with its citation, given to every question that matches a pattern.

A pin's pattern is either keywords that must all occur in the resident's question ("业委会 备案") or a regex. Both are
checked when the pin is made: keywords are few and short, a regex is compiled, length-limited, must not match an
empty question and may not nest quantifiers or refer back (the shapes that backtrack without end). The question
pipeline asks `PinBoard.answer_for(question)` after small talk and injections are handled and before retrieval.

Storage: data_dir/pins.json, rewritten atomically (a temp file, then os.replace). Workers on one host see each other's
edits (the file's mtime is checked before each match). With several hosts this needs the shared store: implement
`load`/`save`/`version` of PinFile over it (Redis, say) and pass that to PinBoard instead."""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from assistant.errors import BadQuestion
from assistant.types import DEFAULT_KB, Answer, AnswerKind, Citation, ComposeMode

PatternKind = Literal["keywords", "regex"]
MAX_PATTERN = 200
MAX_KEYWORDS = 8
MAX_KEYWORD = 20
MAX_TEXT = 1000
MAX_QUOTE = 300
MAX_PINS = 500
STAFF_NOTE = "工作人员置顶答复"
_KEYWORD_SPLIT = re.compile(r"[\s,，、;；]+")
# A quantified group that itself holds a quantifier ("(a+)+", "(\w*)*", "(a|b+){2,}"), and back-references.
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{?]")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=|\\g<")


@dataclass(frozen=True)
class Pin:
    id: str
    kind: PatternKind
    pattern: str
    text: str  # the staff's answer, shown to residents as written
    source: str  # a document in the catalog, e.g. "物业/物业管理条例.md"
    title: str
    section: str  # the full section path of the cited provision, "… > 第三十三条"
    quote: str  # checked to occur in the document's text when the pin was made
    chunk_id: str = ""
    created_at: float = 0.0
    # The knowledge base of the cited document; "" for pins made before there were several (the default one). A pin
    # answers only questions whose scope holds its knowledge base.
    knowledge_base: str = ""

    def matches(self, question: str) -> bool:
        if self.kind == "keywords":
            folded = question.casefold()
            return all(k.casefold() in folded for k in keywords(self.pattern))
        return compile_regex(self.pattern).search(question) is not None

    def answer(self, query: str = "") -> Answer:
        """The pin as a resident's answer: its text with 【1】, then the cited provision, as composed answers are."""
        leaf = self.section.rsplit(" > ", 1)[-1]
        text = (f"{self.text.rstrip()}【1】\n（以上为工作人员提供的答复）\n\n相关条文：\n"
                f"【1】《{self.title}》{leaf}：{self.quote}")
        citation = Citation(1, self.source, self.title, self.section, self.quote, self.chunk_id,
                            knowledge_base=self.knowledge_base)
        # Not ComposeMode.TEMPLATE: the log reads an answered template as small talk and leaves it out of the 高频诉求
        # report; a pinned question is a resident's question. The note tells staff a pin answered.
        return Answer(text, (citation,), AnswerKind.ANSWERED, query or self.text, ComposeMode.EXTRACTIVE,
                      notes=(f"{STAFF_NOTE}（{self.id}）",))


def keywords(pattern: str) -> tuple[str, ...]:
    """"业委会 备案，期限" → ("业委会", "备案", "期限")."""
    return tuple(k for k in _KEYWORD_SPLIT.split(pattern.strip()) if k)


_cache: dict[str, re.Pattern[str]] = {}


def compile_regex(pattern: str) -> re.Pattern[str]:
    found = _cache.get(pattern)
    if found is None:
        found = _cache[pattern] = re.compile(pattern, re.IGNORECASE)
    return found


def check_pattern(kind: str, pattern: str) -> str:
    """The pattern as stored; raises BadQuestion (422) naming what is wrong with it."""
    pattern = (pattern or "").strip()
    if not pattern:
        raise BadQuestion("请填写匹配规则（关键词或正则表达式）。")
    if len(pattern) > MAX_PATTERN:
        raise BadQuestion(f"匹配规则太长了：最多 {MAX_PATTERN} 个字符。")
    if kind == "keywords":
        words = keywords(pattern)
        if len(words) > MAX_KEYWORDS:
            raise BadQuestion(f"关键词太多了：最多 {MAX_KEYWORDS} 个。")
        if any(len(w) > MAX_KEYWORD for w in words):
            raise BadQuestion(f"每个关键词最多 {MAX_KEYWORD} 个字。")
        return " ".join(words)
    if kind != "regex":
        raise BadQuestion(f"匹配方式只能是 keywords（关键词）或 regex（正则表达式），不是 {kind[:20]}。")
    if _NESTED.search(pattern) or _BACKREF.search(pattern):
        raise BadQuestion("正则表达式不能嵌套重复（如 (a+)+）或引用分组：这类写法匹配起来可能极慢。")
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise BadQuestion(f"正则表达式有误：{exc}") from exc
    if compiled.search("") is not None:
        raise BadQuestion("正则表达式会匹配空问题（也就匹配所有问题），请写得更具体。")
    return pattern


class PinFile:
    """The seam to storage: a JSON list in one file, replaced atomically. A shared store implements the same three."""

    def __init__(self, path: Path):
        self.path = path

    def version(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def load(self) -> list[Pin]:
        if not self.path.is_file():
            return []
        return [Pin(**p) for p in json.loads(self.path.read_text(encoding="utf-8"))]

    def save(self, pins: list[Pin]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pins-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump([asdict(p) for p in pins], fh, ensure_ascii=False, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class PinBoard:
    """The pins in memory, oldest first: the first that matches a question answers it."""

    def __init__(self, store: PinFile):
        self._store = store
        self._lock = threading.Lock()
        self._version = store.version()
        self._pins = store.load()

    def _fresh(self) -> list[Pin]:
        version = self._store.version()
        if version != self._version:  # another worker saved: one stat per question, a read only after a change
            with self._lock:
                self._pins, self._version = self._store.load(), version
        return self._pins

    def all(self) -> list[Pin]:
        return list(self._fresh())

    def match(self, question: str, scope: Sequence[str] | None = None) -> Pin | None:
        return next((p for p in self._fresh() if (scope is None or (p.knowledge_base or DEFAULT_KB) in scope)
                     and p.matches(question)), None)

    def answer_for(self, question: str, scope: Sequence[str] | None = None) -> Answer | None:
        """The pinned answer for a resident's (normalised) question, if a pin of a knowledge base in `scope` (None:
        any) matches it: a page scoped to the law library never gets a pin citing the community's rules."""
        pin = self.match(question, scope)
        return pin.answer(question) if pin else None

    def add(self, kind: str, pattern: str, text: str, source: str, title: str, section: str, quote: str,
            chunk_id: str = "", knowledge_base: str = "") -> Pin:
        """Checks the pattern and the text; the citation is checked by the caller, which knows the documents."""
        pattern = check_pattern(kind, pattern)
        text = (text or "").strip()
        if not text:
            raise BadQuestion("请填写置顶答复的内容。")
        if len(text) > MAX_TEXT:
            raise BadQuestion(f"置顶答复太长了：最多 {MAX_TEXT} 字。")
        pin = Pin(secrets.token_hex(6), kind, pattern, text, source, title, section, quote, chunk_id,  # type: ignore[arg-type]
                  time.time(), knowledge_base)
        with self._lock:
            pins = self._store.load()
            if len(pins) >= MAX_PINS:
                raise BadQuestion(f"置顶答复最多 {MAX_PINS} 条：请先删除不再需要的。")
            pins.append(pin)
            self._store.save(pins)
            self._pins, self._version = pins, self._store.version()
        return pin

    def remove(self, pin_id: str) -> bool:
        with self._lock:
            pins = self._store.load()
            kept = [p for p in pins if p.id != pin_id]
            if len(kept) == len(pins):
                return False
            self._store.save(kept)
            self._pins, self._version = kept, self._store.version()
        return True
