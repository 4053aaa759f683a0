"""Pure metric functions over (expected, retrieved) pairs and answer texts. No I/O, no service: easy to test exactly."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from pathlib import PurePosixPath

_WS = re.compile(r"[\s\u3000]+")
# An article's own heading: "第三十三条" opening a line (after indentation or Markdown marks) and followed by a
# space or the end of the line, as in the corpus. "依照第三十三条" or "第三十三条规定的" is a cross-reference, not it.
_ARTICLE_HEADING = re.compile(r"^[ \t\u3000]*(?:#+[ \t]*|\*\*)?(第[零〇一二三四五六七八九十百千两\d]+条)(?:\*\*)?(?=[\s\u3000]|$)",
                              re.MULTILINE)
# Where a first sentence ends. A newline too: the extractive answers put each quoted provision on its own line.
_ARTICLE = re.compile(r"第[零〇一二三四五六七八九十百千两\d]+条(?:之[零〇一二三四五六七八九十百千两\d]+)?")
_SENTENCE_END = re.compile(r"[。！？!?\n]")

LEAD_CHARS = 160  # "in the first sentence", measured as the first 160 characters a resident sees
SMALLTALK_MAX_CHARS = 120  # a small-talk reply is short; a longer one is a lecture the resident didn't ask for


def _norm(s: str) -> str:
    return _WS.sub("", s or "")


# ---- retrieval --------------------------------------------------------------------------------------------------
def source_matches(expected: str, actual: str) -> bool:
    """golden.jsonl names "物业/物业管理条例.md", the newer sets only the stem "物业管理条例": accept both."""
    return expected == actual or expected == PurePosixPath(actual).stem


def section_matches(expected: str, actual: str) -> bool:
    """"第五条" matches "第一章　党员 > 第五条" (its leaf); "第六章" matches any section under 第六章."""
    e = _norm(expected)
    if not e:
        return True
    leaf = _norm(actual.rsplit(">", 1)[-1])
    if _ARTICLE.fullmatch(e):
        # An article is named exactly: 第五十七条 is neither 第五十七条之一 nor "第五十七条之后、第六十九条之前" (the
        # range label of prose whose numbers the source lost).
        return e == leaf
    return e == leaf or any(_norm(part).startswith(e) for part in actual.split(">"))


def article_headings(text: str) -> set[str]:
    """The articles whose heading opens a line of `text`: a chunk holding several short articles names each."""
    return {m.group(1) for m in _ARTICLE_HEADING.finditer(text or "")}


def _expected_pairs(expected_sources: Sequence[str], expected_sections: Sequence[str],
                    source: str) -> list[str] | None:
    """The sections expected of this hit's document; None when the document isn't expected at all. Sources and
    sections pair up when there are as many of each; otherwise (golden.jsonl's 1 source, 2 articles) any section
    counts for any expected source."""
    if not any(source_matches(s, source) for s in expected_sources):
        return None
    if len(expected_sections) == len(expected_sources):
        return [sec for s, sec in zip(expected_sources, expected_sections) if source_matches(s, source)]
    return list(expected_sections)


def hit_matches(expected_sources: Sequence[str], expected_sections: Sequence[str], source: str, section: str,
                with_section: bool) -> bool:
    """Document hit, or (with_section) document and section metadata: the rule golden.jsonl was measured with."""
    wanted = _expected_pairs(expected_sources, expected_sections, source)
    if wanted is None:
        return False
    return not with_section or not any(wanted) or any(section_matches(sec, section) for sec in wanted)


def article_matches(expected_sources: Sequence[str], expected_sections: Sequence[str], source: str, section: str,
                    text: str) -> bool:
    """Article-level hit: the right document, and the expected 第N条 either in the section metadata or as an
    article heading at the start of a line of the text. An empty expected section (a news report) needs only the
    document."""
    wanted = _expected_pairs(expected_sources, expected_sections, source)
    if wanted is None:
        return False
    if not any(wanted):
        return True
    headings = {_norm(h) for h in article_headings(text)}
    return any(not sec or section_matches(sec, section) or _norm(sec) in headings for sec in wanted)


def first_rank(matches: Sequence[bool]) -> int | None:
    """1-based rank of the first relevant hit."""
    return next((i for i, m in enumerate(matches, 1) if m), None)


def hit_at(ranks: Sequence[int | None], k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def mrr(ranks: Sequence[int | None]) -> float:
    return sum(1.0 / r for r in ranks if r) / len(ranks) if ranks else 0.0


# ---- answers ----------------------------------------------------------------------------------------------------
def fact_recall(facts: Sequence[str], answer: str) -> float:
    """Share of expected facts found verbatim (whitespace-insensitive) in the answer."""
    if not facts:
        return 1.0
    a = _norm(answer)
    return sum(1 for f in facts if _norm(f) in a) / len(facts)


def fact_in(facts: Sequence[str], answer: str, limit: int | None = None) -> bool | None:
    """Whether at least one expected fact stands verbatim in the answer (or in its first `limit` characters, as
    written: whitespace is ignored only inside the comparison). None when there is no fact to look for."""
    if not facts:
        return None
    a = _norm(answer if limit is None else (answer or "")[:limit])
    return any(_norm(f) in a for f in facts)


def smalltalk_handled(kind: str, citations: int, text: str) -> bool:
    """A small-talk line got small talk back: that kind, no citation, and short."""
    return kind == "smalltalk" and citations == 0 and len((text or "").strip()) <= SMALLTALK_MAX_CHARS


def median_length(texts: Sequence[str]) -> float | None:
    """Median answer length in characters; None for no answers (0 would read as "very short answers")."""
    return float(statistics.median(len(t.strip()) for t in texts)) if texts else None


def first_sentence(text: str) -> str:
    """The opening sentence, whitespace-insensitive, with its end mark (so "好的。" and "好的！" differ)."""
    t = (text or "").strip()
    m = _SENTENCE_END.search(t)
    return _norm(t[: m.end()] if m else t)


def repeated_openings(texts: Sequence[str]) -> list[bool]:
    """Per turn of one conversation: does it open with the same sentence as an earlier turn? The first never does."""
    seen: set[str] = set()
    out = []
    for text in texts:
        opening = first_sentence(text)
        out.append(bool(opening) and opening in seen)
        seen.add(opening)
    return out


def rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def rate_or_none(flags: Sequence[bool | None]) -> float | None:
    """Share of True among the flags that apply (not None); None when none applies, so a missing figure isn't 0."""
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def citation_precision(expected_sources: Sequence[str], cited_sources: Sequence[str]) -> float | None:
    """Share of cited sources that are among the expected ones; None when nothing is cited."""
    if not cited_sources:
        return None
    return sum(1 for s in cited_sources if any(source_matches(e, s) for e in expected_sources)) / len(cited_sources)
