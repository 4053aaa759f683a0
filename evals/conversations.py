"""Conversation sets: several turns played in order, each scored like a single eval item.

A line is {"id", "turns": [{"question", "expect"}]}, where expect is "smalltalk", "refuse" or
{"sources", "sections", "facts"}. The history of a turn is what the assistant really answered before, not a
scripted one: a follow-up is only as good as the answers it follows, and that is what residents get."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assistant.services import ChatService
from assistant.types import Turn
from evals import metrics
from evals.golden import OFF_TOPIC_CATEGORY, SMALLTALK_CATEGORY, Expect, GoldenItem, parse_item, read_jsonl
from evals.runner import EvalResult, ItemResult, chat_service_of, evaluate_item, format_table, summarise


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[GoldenItem, ...]  # no history of their own: the runner builds it while playing


def is_conversations_file(path: Path) -> bool:
    """A conversations file is told apart by its first object having "turns" (single items never do)."""
    with path.open(encoding="utf-8-sig") as fh:
        for line in fh:
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    return False  # load_golden reports the error with its line number
                return isinstance(data, dict) and "turns" in data
    return False


def _turn_item(conv_id: str, n: int, turn: dict, line_no: int) -> GoldenItem:
    if not isinstance(turn, dict):
        # ValueError like every other malformed line: callers (CLI, console) catch that one for a bad set.
        raise ValueError(f"line {line_no}, turn {n}: not an object")  # noqa: TRY004
    expect = turn.get("expect")
    question = turn.get("question")
    turn_id = f"{conv_id}#{n}"
    if isinstance(expect, dict):
        # An answer turn reads like a single item, with the same stems-and-facts keys.
        data = {**expect, "id": turn_id, "question": question, "expect": Expect.ANSWER}
    elif expect in (Expect.SMALLTALK, Expect.REFUSE):
        # Their category is what a single set would say, so per-category figures read the same for both kinds.
        category = SMALLTALK_CATEGORY if expect == Expect.SMALLTALK else OFF_TOPIC_CATEGORY
        data = {"id": turn_id, "question": question, "expect": expect, "category": category}
    else:
        raise ValueError(f"line {line_no}, turn {n}: 'expect' must be \"smalltalk\", \"refuse\" or an object")
    data["history"] = []
    return parse_item(data, line_no)


def load_conversations(path: Path) -> list[Conversation]:
    conversations = []
    for n, data in read_jsonl(path):
        turns = data.get("turns")
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{path}:{n}: 'turns' is missing or empty")
        conv_id = str(data.get("id") or f"line-{n}")
        conversations.append(Conversation(conv_id, tuple(_turn_item(conv_id, i, t, n) for i, t in enumerate(turns, 1))))
    if not conversations:
        raise ValueError(f"{path}: no conversations")
    return conversations


def play(service: ChatService, conversation: Conversation, top_k: int = 5) -> list[ItemResult]:
    """Ask every turn with the real answers so far as history, and score each turn."""
    history: list[Turn] = []
    results = []
    for n, item in enumerate(conversation.turns, 1):
        result, answer = evaluate_item(service, item, top_k, history)
        result.conversation, result.turn = conversation.id, n
        results.append(result)
        history += [Turn("user", item.question), Turn("assistant", answer.text)]
    for result, repeated in zip(results, metrics.repeated_openings([r.answer for r in results])):
        result.repeated_opening = repeated
    return results


def summarise_conversations(results: list[ItemResult]) -> dict[str, float | None]:
    """The single-item figures over all turns, plus what only a conversation shows: repeated openings."""
    m = summarise(results)
    later = [r for r in results if r.turn > 1]  # a first turn has nothing to repeat
    m.update({
        "conversations": len({r.conversation for r in results}),
        "turns": len(results),
        "repeated_openings": sum(r.repeated_opening for r in results),
        "repeated_opening_rate": metrics.rate_or_none([r.repeated_opening for r in later]),
    })
    return m


def run_conversations(service: ChatService, conversations: list[Conversation], top_k: int = 5,
                      progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """One result item per turn. by_category groups the turns by position ("第2轮"): a drop after the first
    turn points at follow-up handling rather than at retrieval."""
    service = chat_service_of(service)
    results: list[ItemResult] = []
    for n, conversation in enumerate(conversations, 1):
        results += play(service, conversation, top_k)
        if progress:
            progress(n, len(conversations))
    positions = sorted({r.turn for r in results})
    by_turn = {f"第{p}轮": summarise_conversations([r for r in results if r.turn == p]) for p in positions}
    return EvalResult(summarise_conversations(results), by_turn, results)


def format_conversation_table(result: EvalResult) -> str:
    """The single-item table over turns, preceded by the conversation counts and followed by repeated openings."""
    m = result.metrics
    rate = m["repeated_opening_rate"]
    shown = "—" if rate is None else f"{rate:.3f}"
    return "\n".join([
        f"conversations: {m['conversations']}, turns: {m['turns']}",
        format_table(result),
        (f"  {'repeated openings (later turns)':<42} {shown:>5}  ({m['repeated_openings']}/"
         f"{m['turns'] - m['conversations']})"),
    ])
