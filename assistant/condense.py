"""Rule-based follow-up condensation: "要多久？" after a question on 司法确认 becomes a standalone query."""

from __future__ import annotations

import re
from typing import Sequence

from assistant.types import Turn

# Openers and pronouns that lean on the previous turn ("那党龄从什么时候算？", "这个要多久？").
_LEANS_ON_CONTEXT = re.compile(
    r"^(那|那么|那如果|那要是|还有|另外|然后|此外|如果|要是|假如|万一|这个|那个|这种|那种|这样|它|他们|她们|其|该|上述|同样|也)"
    r"|这个|那个|这种|那种|上面|刚才|前面|它|他们|她们|这些|那些|该条|这条|那条|^(呢|吗)"
)
_SHORT = 12  # characters: shorter questions ("要多久？", "去哪申请？") rarely stand alone


def needs_context(question: str) -> bool:
    q = question.strip()
    return len(q) <= _SHORT or bool(_LEANS_ON_CONTEXT.search(q))


def condense(question: str, history: Sequence[Turn], max_turns: int = 6) -> str:
    """Prefix the resident's earlier question(s) when the new one leans on them; otherwise keep it as is."""
    question = question.strip()
    if not history or not needs_context(question):
        return question
    earlier = [t.content.strip() for t in history[-max_turns:] if t.role == "user" and t.content.strip()]
    if not earlier:
        # Only an assistant turn (e.g. a WeChat welcome): its first sentence still names the topic.
        earlier = [re.split(r"[。！？\n]", history[-1].content.strip(), maxsplit=1)[0][:60]]
    # The latest user question carries the topic; one more earlier question helps a chain of follow-ups.
    context = earlier[-1]
    if needs_context(context) and len(earlier) > 1:
        context = f"{earlier[-2]} {context}"
    return f"{context} {question}"
