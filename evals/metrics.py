"""Pure metric functions over (expected, retrieved) pairs. No I/O, no service: easy to test exactly."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WS = re.compile(r"[\s\u3000]+")


def _norm(s: str) -> str:
    return _WS.sub("", s or "")


def section_matches(expected: str, actual: str) -> bool:
    """"第五条" matches "第一章　党员 > 第五条" (its leaf); "第六章" matches any section under 第六章."""
    e = _norm(expected)
    if not e:
        return True
    leaf = _norm(actual.rsplit(">", 1)[-1])
    return e == leaf or any(_norm(part).startswith(e) for part in actual.split(">"))


def hit_matches(expected_sources: Sequence[str], expected_sections: Sequence[str], source: str, section: str,
                with_section: bool) -> bool:
    if source not in expected_sources:
        return False
    if not with_section:
        return True
    pairs = list(zip(expected_sources, expected_sections)) if len(expected_sections) == len(expected_sources) else []
    if pairs:
        return any(s == source and section_matches(sec, section) for s, sec in pairs)
    return not expected_sections or any(section_matches(sec, section) for sec in expected_sections)


def first_rank(matches: Sequence[bool]) -> int | None:
    """1-based rank of the first relevant hit."""
    return next((i for i, m in enumerate(matches, 1) if m), None)


def hit_at(ranks: Sequence[int | None], k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def mrr(ranks: Sequence[int | None]) -> float:
    return sum(1.0 / r for r in ranks if r) / len(ranks) if ranks else 0.0


def fact_recall(facts: Sequence[str], answer: str) -> float:
    """Share of expected facts found verbatim (whitespace-insensitive) in the answer."""
    if not facts:
        return 1.0
    a = _norm(answer)
    return sum(1 for f in facts if _norm(f) in a) / len(facts)


def rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def citation_precision(expected_sources: Sequence[str], cited_sources: Sequence[str]) -> float | None:
    """Share of cited sources that are among the expected ones; None when nothing is cited."""
    if not cited_sources:
        return None
    return sum(1 for s in cited_sources if s in expected_sources) / len(cited_sources)
