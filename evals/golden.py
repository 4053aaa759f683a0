"""Eval-set JSONL: one question per line with its expected source(s), section(s) and key facts.

Two formats are read. evals/golden.jsonl names full relative paths (`expected_sources`: "物业/物业管理条例.md"),
`key_facts` (all of them expected) and `out_of_scope`. evals/sets/ and the outside sets name file stems
(`sources`: "物业管理条例"), `facts` (any one of them is enough), `answerable` and a `category` where 无关 must be
refused and 闲聊 is small talk. Both become a GoldenItem whose `expect` says what a right reply is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from assistant.types import Turn


class Expect(StrEnum):
    """What a right reply to an item is: an answer from the sources, a refusal, or a short small-talk reply."""

    ANSWER = "answer"
    REFUSE = "refuse"
    SMALLTALK = "smalltalk"


OFF_TOPIC_CATEGORY = "无关"
SMALLTALK_CATEGORY = "闲聊"


@dataclass(frozen=True)
class GoldenItem:
    id: str
    question: str
    history: tuple[Turn, ...] = ()
    expected_sources: tuple[str, ...] = ()
    expected_sections: tuple[str, ...] = ()
    key_facts: tuple[str, ...] = ()
    out_of_scope: bool = False  # True exactly when expect is REFUSE (kept: the console and the gate read it)
    category: str = ""
    extra: dict = field(default_factory=dict, compare=False)
    expect: Expect = Expect.ANSWER
    any_fact: bool = False  # `facts` (new sets): one fact is enough; `key_facts` (golden.jsonl): all are expected


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _expect_of(data: dict, sources: tuple, category: str) -> Expect:
    """The explicit `expect` wins; then the category (闲聊 before any refusal flag: small talk has no sources, yet
    must not be scored as a question to refuse); then the old flags; then, as before, no sources means refuse."""
    explicit = data.get("expect")
    if isinstance(explicit, str):
        return Expect(explicit)
    if category == SMALLTALK_CATEGORY:
        return Expect.SMALLTALK
    oos = data.get("out_of_scope", data.get("refuse", data.get("should_refuse")))
    if oos is None and "answerable" in data:
        oos = not data["answerable"]
    if oos is None:
        oos = category == OFF_TOPIC_CATEGORY or not sources
    return Expect.REFUSE if oos else Expect.ANSWER


def parse_item(data: dict, line_no: int = 0) -> GoldenItem:
    """Accept our keys and the obvious variants (source/sources, section/sections, facts, refuse, answerable)."""
    question = data.get("question") or data.get("query")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"line {line_no}: 'question' is missing or empty")
    sources = tuple(s for s in _as_tuple(data.get("expected_sources", data.get("sources", data.get("source")))) if s)
    sections = _as_tuple(data.get("expected_sections", data.get("sections", data.get("section"))))
    any_fact = "key_facts" not in data and ("facts" in data or "key_fact" in data)
    facts = _as_tuple(data.get("key_facts", data.get("facts", data.get("key_fact"))))
    category = data.get("category", "") or ""
    try:
        expect = _expect_of(data, sources, category)
    except ValueError as exc:
        raise ValueError(f"line {line_no}: 'expect' must be answer, refuse or smalltalk") from exc
    history = tuple(Turn(t["role"], t["content"]) for t in data.get("history") or [])
    return GoldenItem(
        id=str(data.get("id") or f"line-{line_no}"), question=question, history=history,
        expected_sources=sources, expected_sections=tuple(s or "" for s in sections),
        key_facts=tuple(f for f in facts if f), out_of_scope=expect is Expect.REFUSE, category=category, extra=data,
        expect=expect, any_fact=any_fact,
    )


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an error naming it."""
    rows = []
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from exc
                if not isinstance(data, dict):
                    raise ValueError(f"{path}:{n}: not a JSON object")
                rows.append((n, data))
    return rows


def load_golden(path: Path) -> list[GoldenItem]:
    items = [parse_item(data, n) for n, data in read_jsonl(path)]
    if not items:
        raise ValueError(f"{path}: no questions")
    return items
