"""Golden-set JSONL: one question per line with its expected source(s), section(s) and key facts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from assistant.types import Turn


@dataclass(frozen=True)
class GoldenItem:
    id: str
    question: str
    history: tuple[Turn, ...] = ()
    expected_sources: tuple[str, ...] = ()
    expected_sections: tuple[str, ...] = ()
    key_facts: tuple[str, ...] = ()
    out_of_scope: bool = False
    category: str = ""
    extra: dict = field(default_factory=dict, compare=False)


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def parse_item(data: dict, line_no: int = 0) -> GoldenItem:
    """Accept our keys and the obvious variants (source/sources, section/sections, facts, refuse)."""
    question = data.get("question") or data.get("query")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"line {line_no}: 'question' is missing or empty")
    sources = _as_tuple(data.get("expected_sources", data.get("sources", data.get("source"))))
    sections = _as_tuple(data.get("expected_sections", data.get("sections", data.get("section"))))
    facts = _as_tuple(data.get("key_facts", data.get("facts", data.get("key_fact"))))
    oos = data.get("out_of_scope", data.get("refuse", data.get("should_refuse")))
    if oos is None:
        oos = not sources
    history = tuple(Turn(t["role"], t["content"]) for t in data.get("history") or [])
    return GoldenItem(
        id=str(data.get("id") or f"line-{line_no}"), question=question, history=history,
        expected_sources=tuple(s for s in sources if s), expected_sections=tuple(s or "" for s in sections),
        key_facts=tuple(f for f in facts if f), out_of_scope=bool(oos), category=data.get("category", ""), extra=data,
    )


def load_golden(path: Path) -> list[GoldenItem]:
    items = []
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    items.append(parse_item(json.loads(line), n))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from exc
    if not items:
        raise ValueError(f"{path}: no questions")
    return items
