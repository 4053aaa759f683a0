"""Rule-based follow-up condensation: "要多久？" after a question on 司法确认 becomes a standalone query, while
"入党需要什么条件？" after a 调解 question stays as it is, because it names its own topic."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from assistant.types import Turn

# Openers and pronouns that lean on the previous turn ("那党龄从什么时候算？", "这个要多久？").
_LEANS_ON_CONTEXT = re.compile(
    r"^(那|那么|那如果|那要是|还有|另外|然后|此外|如果|要是|假如|万一|这个|那个|这种|那种|这样|它|他们|她们|其|该|上述|同样|也)"
    r"|这个|那个|这种|那种|上面|刚才|前面|它|他们|她们|这些|那些|该条|这条|那条|^(呢|吗)"
)
_SHORT = 12  # characters: a short question without a topic of its own ("要多久？", "去哪申请？") leans on context


class Condenser:
    def __init__(self, topic_terms: Iterable[str] = (), max_turns: int = 6):
        # Longest first so that a containment check is cheap to reason about; only 2+ character terms count.
        self.topic_terms = tuple(sorted({t for t in topic_terms if len(t) >= 2}, key=len, reverse=True))
        self.max_turns = max_turns

    def has_topic(self, question: str) -> bool:
        return any(t in question for t in self.topic_terms)

    def needs_context(self, question: str) -> bool:
        q = question.strip()
        if _LEANS_ON_CONTEXT.search(q):
            return True
        return len(q) <= _SHORT and not self.has_topic(q)

    def condense(self, question: str, history: Sequence[Turn]) -> str:
        """Prefix the resident's earlier question(s) when the new one leans on them; otherwise keep it as is."""
        question = question.strip()
        if not history or not self.needs_context(question):
            return question
        recent = history[-2 * self.max_turns :]
        earlier = [t.content.strip() for t in recent if t.role == "user" and t.content.strip()]
        if not earlier:
            # Only an assistant turn (e.g. a WeChat welcome): its first sentence still names the topic.
            earlier = [re.split(r"[。！？\n]", recent[-1].content.strip(), maxsplit=1)[0][:60]]
        # The latest user question carries the topic; one more earlier question helps a chain of follow-ups.
        context = earlier[-1]
        if self.needs_context(context) and len(earlier) > 1:
            context = f"{earlier[-2]} {context}"
        return f"{context} {question}"

