"""Structure-aware Chinese splitting.

Regulations are cut on 编/章/节/条 first, so an article is never torn in two unless it is long; a long article
is cut on 款 (paragraphs, each keeping its 项 items) and then on sentence ends 。！？；. News and other prose
are cut on headings, then paragraphs, then sentences. jieba is never used here: cutting follows punctuation.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from langchain_text_splitters import RecursiveCharacterTextSplitter

from assistant.types import Chunk, SourceDoc

_NUM = "零〇一二三四五六七八九十百千"
ARTICLE = re.compile(rf"第[{_NUM}]+条(?:之[{_NUM}]+)?")
_ARTICLE_START = re.compile(rf"^(第[{_NUM}]+条(?:之[{_NUM}]+)?)[\s\u3000]*")
# 编 > 分编 > 章 > 节: the level decides which open headings a new heading closes.
_LEVELS = (("分编", 1), ("编", 0), ("章", 2), ("节", 3))
_STRUCT_HEADING = re.compile(rf"^第[{_NUM}]+(分编|编|章|节)(?:[\s\u3000]|$)")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_ITEM = re.compile(rf"^[（(][{_NUM}]+[)）]")
_SENTENCE_PUNCT = "。！？；!?;"


@dataclass
class _Unit:
    """An article (or a run of prose under one heading) before it is cut to size."""

    headings: list[str]
    label: str  # "第四十一条", or "" for prose
    paras: list[tuple[int, int]] = field(default_factory=list)  # (start, end) in the source text
    # Prose in a regulation's article body (the source lost its numbers): where it sits between the numbered
    # articles, "第五十七条之后、第六十九条之前". Only the section (and so the citation) carries it, not the header.
    placed: str = ""


def chunk_id(source: str, section: str, text: str) -> str:
    # surrogatepass: the same bytes as plain UTF-8 for real text, and no crash on a str carrying surrogate pairs.
    return hashlib.sha256(f"{source}\x1f{section}\x1f{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _heading_level(text: str) -> int:
    m = _STRUCT_HEADING.match(text)
    if not m:
        return 2  # 总纲, 附则 and other named parts sit at chapter level
    return dict(_LEVELS)[m.group(1)]


# Fallback cut points for a sentence with no usable punctuation. Neither may fall between the two halves of a
# surrogate pair; the first also keeps ASCII words and numbers ("2023", "GB50016") whole.
_HIGH, _LOW = "\ud800-\udbff", "\udc00-\udfff"
_WORD_EDGE = rf"(?<![0-9A-Za-z{_HIGH}])|(?![0-9A-Za-z{_LOW}])"
_ANY_CHAR = rf"(?<![{_HIGH}])"


def _sentence_splitter(max_chars: int) -> RecursiveCharacterTextSplitter:
    # Zero-width look-behinds keep each separator at the end of its sentence. The comma levels are a last resort
    # for a single sentence longer than max_chars (they never fire on the bundled corpus); the two fallbacks make
    # the cap hold for any text at all, e.g. a table flattened to one line without punctuation.
    return RecursiveCharacterTextSplitter(
        separators=["\n", r"(?<=[。！？!?])", r"(?<=[；;])", r"(?<=[，,：:])", r"(?<=[、])", _WORD_EDGE, _ANY_CHAR],
        is_separator_regex=True,
        keep_separator=True,
        chunk_size=max_chars,
        chunk_overlap=0,
        strip_whitespace=False,
        add_start_index=True,
    )


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, never ending on the first half of a surrogate pair."""
    if len(text) <= limit:
        return text
    cut = limit - 1 if "\ud800" <= text[limit - 1] <= "\udbff" else limit
    return text[:cut]


class ChineseSplitter:
    def __init__(self, max_chars: int = 360):
        if max_chars < 80:
            raise ValueError(f"max_chars ({max_chars}) must be >= 80: shorter cuts tear sentences apart")
        self.max_chars = max_chars
        self._sentences = _sentence_splitter(max_chars)

    # ---- public -------------------------------------------------------------------------------
    def split(self, doc: SourceDoc) -> list[Chunk]:
        units = self._place_prose(self._regulation_units(doc)) if doc.kind == "法规" else self._prose_units(doc)
        chunks: list[Chunk] = []
        for unit in units:
            chunks.extend(self._cut(doc, unit))
        return chunks

    # ---- structure ----------------------------------------------------------------------------
    @staticmethod
    def _lines(text: str):
        pos = 0
        for line in text.split("\n"):
            stripped = line.strip()
            yield stripped, pos + (len(line) - len(line.lstrip()))
            pos += len(line) + 1

    def _regulation_units(self, doc: SourceDoc) -> list[_Unit]:
        text = doc.text
        open_headings: dict[int, str] = {}
        units: list[_Unit] = []
        current: _Unit | None = None

        def start_unit(label: str) -> _Unit:
            unit = _Unit([open_headings[k] for k in sorted(open_headings)], label)
            units.append(unit)
            return unit

        for line, start in self._lines(text):
            if not line:
                continue
            md = _MD_HEADING.match(line)
            heading = md.group(2).strip() if md else None
            if md and len(md.group(1)) == 1:
                continue  # the document title
            if heading is None and _STRUCT_HEADING.match(line) and len(line) <= 40 and "。" not in line:
                heading = line
            if heading is not None:
                body_offset = start + line.index(heading)
                title, rest = self._unglue_heading(heading, text)
                level = _heading_level(title)
                open_headings = {k: v for k, v in open_headings.items() if k < level}
                open_headings[level] = re.sub(r"[\s\u3000]+", " ", title)
                current = None
                if rest:
                    # Heading glued to its text ("## 第一章 总则第一条 为了…"): the rest is an article or prose.
                    rest_start = body_offset + heading.index(rest)
                    m = _ARTICLE_START.match(rest)
                    current = start_unit(m.group(1) if m else "")
                    current.paras.append((rest_start, rest_start + len(rest)))
                continue
            m = _ARTICLE_START.match(line)
            if m:
                current = start_unit(m.group(1))
            elif current is None:
                current = start_unit("")
            current.paras.append((start, start + len(line)))
        return units

    @staticmethod
    def _place_prose(units: list[_Unit]) -> list[_Unit]:
        """Give un-numbered prose in the article body the narrowest honest range: the last numbered article before
        it and the first after it, in the document's own numerals. Never an invented number. Prose before the
        first article is placed ("第一条之前") only under a numbered 编/章/节 heading: a 题注 or a named part such
        as 总纲 is front matter, not an article that lost its number, and keeps its heading as its label."""
        labels = [u.label for u in units]
        for i, unit in enumerate(units):
            if unit.label:
                continue
            before = next((x for x in reversed(labels[:i]) if x), "")
            after = next((x for x in labels[i + 1 :] if x), "")
            if before and after:
                unit.placed = f"{before}之后、{after}之前"
            elif before:
                unit.placed = f"{before}之后"
            elif after and any(_STRUCT_HEADING.match(h) for h in unit.headings):
                unit.placed = f"{after}之前"
        return units

    @staticmethod
    def _unglue_heading(heading: str, text: str) -> tuple[str, str]:
        """'第一章 总则第一条 为了…' → ('第一章 总则', '第一条 为了…'); a heading that swallowed its chapter's
        un-numbered text ('第六章 物业的使用和维护业主、物业使用人…') is cut after the longest prefix that the
        document repeats elsewhere (its table of contents), else at the first punctuation."""
        m = ARTICLE.search(heading)
        # Only near the start: later "第六十六条" in a swallowed paragraph is a cross-reference, not an article.
        if m and 0 < m.start() <= 30:
            return heading[: m.start()].rstrip(), heading[m.start() :]
        if len(heading) <= 30 and not any(p in heading for p in "，。；："):
            return heading, ""
        sm = _STRUCT_HEADING.match(heading)
        head = sm.group(0) if sm else ""
        tail = heading[len(head) :]
        others = text.replace(heading, "")
        for n in range(min(24, len(tail) - 1), 1, -1):
            if tail[:n] in others:
                return (head + tail[:n]).strip(), tail[n:]
        cut = re.search(r"[，。；：、]", tail)
        n = cut.start() if cut else min(len(tail), 20)
        return (head + tail[:n]).strip(), tail[n:]

    def _prose_units(self, doc: SourceDoc) -> list[_Unit]:
        units: list[_Unit] = []
        pending: list[str] = []  # short lines seen since the last paragraph: a sub-heading (or a caption)
        current: _Unit | None = None
        for line, start in self._lines(doc.text):
            if not line:
                continue
            md = _MD_HEADING.match(line)
            if md and len(md.group(1)) == 1 and not units:
                continue  # the document title
            if md or self._is_subheading(line):
                pending.append(md.group(2).strip() if md else line)
                current = None
                continue
            if current is None:
                current = _Unit([" ".join(pending[-2:])] if pending else [], "")
                pending = []
                units.append(current)
            current.paras.append((start, start + len(line)))
        return units

    @staticmethod
    def _is_subheading(line: str) -> bool:
        """News sub-headings are short lines with no sentence punctuation, e.g. "突出实干实效"."""
        return len(line) <= 24 and not any(p in line for p in "。！？；，,：:")

    # ---- cutting to size -----------------------------------------------------------------------
    def _cut(self, doc: SourceDoc, unit: _Unit) -> list[Chunk]:
        leaf = unit.label or unit.placed
        section = " > ".join([*unit.headings, leaf] if leaf else unit.headings)
        header = " ".join(x for x in (doc.title, unit.headings[-1] if unit.headings else "", unit.label) if x)
        # A runaway "heading" (a long markdown # line) must not turn the context line into a second body.
        header = _clip(header, self.max_chars)
        pieces = self._pack(doc.text, unit.paras, self.max_chars - len(header) - 1)
        chunks = []
        for start, end in pieces:
            body = doc.text[start:end]
            context = header
            first = doc.text[start : start + 8]
            # A chunk that starts with 项 items gets its 款's lead-in ("业主享有下列权利：") as context.
            if _ITEM.match(first) and unit.paras and start > unit.paras[0][0]:
                lead = self._lead_in(doc.text, unit.paras, start)
                if lead:
                    context = f"{header} {lead}"
            text = f"{context}\n{body}"
            chunks.append(
                Chunk(
                    id=chunk_id(doc.source, section, text),
                    text=text,
                    source=doc.source,
                    title=doc.title,
                    section=section,
                    start=start,
                    end=end,
                    category=doc.category,
                    issuer=doc.issuer,
                    date=doc.date,
                )
            )
        return chunks

    @staticmethod
    def _lead_in(text: str, paras: list[tuple[int, int]], before: int) -> str:
        for s, e in reversed([p for p in paras if p[0] < before]):
            para = text[s:e]
            if not _ITEM.match(para):
                return para if para.endswith(("：", ":")) and len(para) <= 80 else ""
        return ""

    def _pack(self, text: str, paras: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
        """Greedy packing of whole paragraphs; a paragraph over budget is cut on sentence ends."""
        budget = max(budget, 60)
        pieces: list[tuple[int, int]] = []
        spans: list[tuple[int, int]] = []
        for s, e in paras:
            if e - s <= budget:
                spans.append((s, e))
            else:
                para = text[s:e]
                for d in self._sentences.create_documents([para]):
                    off = s + d.metadata["start_index"]
                    spans.append((off, off + len(d.page_content)))
        cur: tuple[int, int] | None = None
        for s, e in spans:
            if cur is not None and e - cur[0] <= budget:
                cur = (cur[0], e)
            else:
                if cur is not None:
                    pieces.append(cur)
                cur = (s, e)
        if cur is not None:
            pieces.append(cur)
        return [(s, e) for s, e in pieces if text[s:e].strip()]
