"""Run an eval set through the real ChatService and compute retrieval, refusal, small-talk and answer metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from assistant.services import ChatService
from assistant.types import Answer, AnswerKind, Channel, ComposeMode, Retrieval, Turn
from evals import metrics
from evals.golden import Expect, GoldenItem


@dataclass
class ItemResult:
    id: str
    category: str
    question: str
    out_of_scope: bool
    expected_sources: list[str]
    expected_sections: list[str]
    query: str
    retrieved: list[dict]  # [{source, title, section, score}]
    doc_rank: int | None
    section_rank: int | None  # the section metadata alone: the rule the golden.jsonl figures were measured with
    refused: bool
    covered_reason: str
    fact_recall: float
    answer: str
    citations: list[dict]
    seconds: float
    mode: str = ""  # which path answered: extractive | llm | extractive-fallback | refusal
    citation_precision: float | None = None
    # Added with evals/sets/; defaulted so that runs stored before them still load (ui/console/runs.py).
    expect: str = ""  # answer | refuse | smalltalk ("" in old runs: read out_of_scope)
    kind: str = ""  # what the assistant gave: answered | refused | smalltalk
    article_rank: int | None = None  # section metadata, or the article's heading opening a line of the hit's text
    any_fact: bool = False  # the set's facts are alternatives (one is enough) rather than all required
    fact_in_answer: bool | None = None  # None: not an answered question with facts to look for
    fact_in_lead: bool | None = None  # a fact within the first metrics.LEAD_CHARS characters
    smalltalk_handled: bool | None = None  # None: not a small-talk item
    conversation: str = ""  # conversations: which one, and the turn's 1-based position in it
    turn: int = 0
    repeated_opening: bool = False  # opens with the same sentence as an earlier turn of its conversation

    @property
    def expected(self) -> str:
        return self.expect or (Expect.REFUSE if self.out_of_scope else Expect.ANSWER)

    @property
    def answered(self) -> bool:
        """An answer from the sources (old runs have no kind: anything not refused was one)."""
        return self.kind == AnswerKind.ANSWERED if self.kind else not self.refused

    @property
    def failed(self) -> bool:
        if self.expected == Expect.REFUSE:
            return not self.refused
        if self.expected == Expect.SMALLTALK:
            return not self.smalltalk_handled
        facts_missing = self.fact_in_answer is False if self.any_fact else self.fact_recall < 1
        # The article rule finds every section-metadata hit and more; runs stored before it have only the latter.
        rank = self.article_rank if self.expect else self.section_rank
        return self.refused or rank is None or rank > 5 or facts_missing


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    by_category: dict[str, dict[str, float | None]]
    items: list[ItemResult] = field(default_factory=list)

    @property
    def failures(self) -> list[ItemResult]:
        return [r for r in self.items if r.failed]

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "by_category": self.by_category, "items": [asdict(i) for i in self.items]}


def summarise(results: list[ItemResult]) -> dict[str, float | None]:
    """Every figure of a run. The keys golden.jsonl always had keep their meaning (and 0.0 for an empty group);
    the newer ones are None where nothing applies, so that "no small-talk items" doesn't print as a 0% rate."""
    inscope = [r for r in results if r.expected == Expect.ANSWER]
    oos = [r for r in results if r.expected == Expect.REFUSE]
    chat = [r for r in results if r.expected == Expect.SMALLTALK]
    doc_ranks = [r.doc_rank for r in inscope]
    sec_ranks = [r.section_rank for r in inscope]
    art_ranks = [r.article_rank for r in inscope]
    with_sections = [r for r in inscope if any(r.expected_sections)]
    answered = [r for r in inscope if not r.refused]
    answers = [r for r in inscope if r.answered]  # the base of the fact figures, as in the outside set's README
    with_facts = [r for r in answers if r.fact_in_answer is not None]
    return {
        "questions": len(results),
        "in_scope": len(inscope),
        "out_of_scope": len(oos),
        "smalltalk": len(chat),
        "hit@1": metrics.hit_at(doc_ranks, 1),
        "hit@3": metrics.hit_at(doc_ranks, 3),
        "hit@5": metrics.hit_at(doc_ranks, 5),
        "mrr": metrics.mrr(doc_ranks),
        "section_hit@1": metrics.hit_at(sec_ranks, 1),
        "section_hit@5": metrics.hit_at(sec_ranks, 5),
        "section_mrr": metrics.mrr(sec_ranks),
        "section_accuracy": metrics.rate([r.section_rank == 1 for r in with_sections]),
        "article_hit@1": metrics.hit_at(art_ranks, 1) if inscope else None,
        "article_hit@5": metrics.hit_at(art_ranks, 5) if inscope else None,
        "article_mrr": metrics.mrr(art_ranks) if inscope else None,
        "refusal_accuracy": metrics.rate([r.refused for r in oos]),
        "refused_out_of_scope": sum(r.refused for r in oos),
        "false_refusal_rate": metrics.rate([r.refused for r in inscope]),
        "false_refusals": sum(r.refused for r in inscope),
        "smalltalk_handled": metrics.rate_or_none([r.smalltalk_handled for r in chat]),
        "smalltalk_handled_count": sum(bool(r.smalltalk_handled) for r in chat),
        "fact_recall": metrics.rate([r.fact_recall >= 1.0 for r in answered]) if answered else 0.0,
        "fact_recall_all": sum(r.fact_recall for r in inscope) / len(inscope) if inscope else 0.0,
        "answers": len(answers),
        "answers_with_facts": len(with_facts),
        "fact_in_answer": metrics.rate_or_none([r.fact_in_answer for r in with_facts]),
        "fact_in_answer_count": sum(bool(r.fact_in_answer) for r in with_facts),
        "fact_in_lead": metrics.rate_or_none([r.fact_in_lead for r in with_facts]),
        "fact_in_lead_count": sum(bool(r.fact_in_lead) for r in with_facts),
        # Over every answer given, a wrongly answered off-topic question included: it is what residents read.
        "median_answer_chars": metrics.median_length([r.answer for r in results if r.answered]),
        "mean_seconds": sum(r.seconds for r in results) / len(results) if results else 0.0,
    }


_summarise = summarise  # the former private name, still imported by tests/test_console_app.py


def score_item(item: GoldenItem, retrieval: Retrieval, answer: Answer, seconds: float) -> ItemResult:
    """One item's result from what the service retrieved and answered: no service call, so tests can feed it."""
    hits = retrieval.hits
    doc_matches = [metrics.hit_matches(item.expected_sources, item.expected_sections, h.chunk.source,
                                       h.chunk.section, with_section=False) for h in hits]
    sec_matches = [metrics.hit_matches(item.expected_sources, item.expected_sections, h.chunk.source,
                                       h.chunk.section, with_section=True) for h in hits]
    art_matches = [metrics.article_matches(item.expected_sources, item.expected_sections, h.chunk.source,
                                           h.chunk.section, h.chunk.text) for h in hits]
    answered = answer.kind is AnswerKind.ANSWERED
    # Fact figures only mean something for a question that should be answered and was.
    scored_facts = item.expect is Expect.ANSWER and answered
    return ItemResult(
        id=item.id, category=item.category, question=item.question, out_of_scope=item.out_of_scope,
        expected_sources=list(item.expected_sources), expected_sections=list(item.expected_sections),
        query=retrieval.query,
        retrieved=[{"source": h.chunk.source, "title": h.chunk.title, "section": h.chunk.section,
                    "score": round(h.score, 5)} for h in hits],
        doc_rank=metrics.first_rank(doc_matches), section_rank=metrics.first_rank(sec_matches),
        refused=answer.refused, covered_reason=retrieval.evidence.reason,
        fact_recall=metrics.fact_recall(item.key_facts, answer.text) if not answer.refused else 0.0,
        answer=answer.text,
        citations=[{"index": c.index, "source": c.source, "section": c.section} for c in answer.citations],
        seconds=seconds,
        mode=answer.mode,
        citation_precision=None if item.expect is not Expect.ANSWER else metrics.citation_precision(
            item.expected_sources, [c.source for c in answer.citations]),
        expect=item.expect, kind=answer.kind, article_rank=metrics.first_rank(art_matches), any_fact=item.any_fact,
        fact_in_answer=metrics.fact_in(item.key_facts, answer.text) if scored_facts else None,
        fact_in_lead=metrics.fact_in(item.key_facts, answer.text, metrics.LEAD_CHARS) if scored_facts else None,
        smalltalk_handled=metrics.smalltalk_handled(answer.kind, len(answer.citations), answer.text)
        if item.expect is Expect.SMALLTALK else None,
    )


def evaluate_item(service: ChatService, item: GoldenItem, top_k: int = 5,
                  history: Sequence[Turn] | None = None) -> tuple[ItemResult, Answer]:
    """Retrieve and answer one item through the service. `history`: the turns so far (conversations); by default
    the item's own. Retrieval runs apart from ask(), which doesn't hand its hits out; the cost is one more search."""
    history = item.history if history is None else tuple(history)
    t0 = time.perf_counter()
    retrieval = service.retrieve(item.question, history, top_k)
    answer = service.ask(item.question, history, channel=Channel.EVAL)  # kept apart from residents in the log
    return score_item(item, retrieval, answer, time.perf_counter() - t0), answer


def chat_service_of(service) -> ChatService:
    """A Services bundle is accepted for its ChatService (tests/test_quality_gate.py passes kb_services)."""
    return getattr(service, "chat", service)


def run_eval(service: ChatService, items: list[GoldenItem], top_k: int = 5,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    service = chat_service_of(service)
    results = []
    for n, item in enumerate(items, 1):
        results.append(evaluate_item(service, item, top_k)[0])
        if progress:
            progress(n, len(items))
    categories = sorted({r.category for r in results if r.category})
    by_category = {c: summarise([r for r in results if r.category == c]) for c in categories}
    return EvalResult(summarise(results), by_category, results)


_ROWS = [
    ("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"),
    ("section_accuracy", "section accuracy (top-1)"), ("section_hit@5", "section hit@5"),
    ("refusal_accuracy", "refusal accuracy (out-of-scope refused)"), ("false_refusal_rate", "false-refusal rate"),
    ("fact_recall", "key facts present (answered)"),
]
# (key, label, count key, base key): the rows added with evals/sets/, printed after the historical ones.
_MORE_ROWS = [
    ("article_hit@1", "article hit@1", None, None), ("article_hit@5", "article hit@5", None, None),
    ("article_mrr", "article MRR", None, None),
    ("refusal_accuracy", "off-topic refused", "refused_out_of_scope", "out_of_scope"),
    ("false_refusal_rate", "false refusals (answerable refused)", "false_refusals", "in_scope"),
    ("smalltalk_handled", "small talk handled", "smalltalk_handled_count", "smalltalk"),
    ("fact_in_answer", "a key fact in the answer", "fact_in_answer_count", "answers_with_facts"),
    ("fact_in_lead", f"a key fact in the first {metrics.LEAD_CHARS} chars", "fact_in_lead_count",
     "answers_with_facts"),
]


def _row(name: str, value: float | None, counts: str = "") -> str:
    shown = "—" if value is None else f"{value:.3f}"
    return f"  {name:<42} {shown:>5}{counts}"


def format_table(result: EvalResult) -> str:
    """The historical lines first, unchanged (scripts and the quality-gate notes quote them), then the rest."""
    m = result.metrics
    head = f"questions: {m['questions']} (in scope {m['in_scope']}, out of scope {m['out_of_scope']}"
    lines = [head + (f", small talk {m['smalltalk']})" if m.get("smalltalk") else ")")]
    for key, name in _ROWS:
        lines.append(f"  {name:<42} {m[key]:.3f}")
    lines.append(f"  {'mean seconds per question':<42} {m['mean_seconds']:.3f}")
    for key, name, count, base in _MORE_ROWS:
        if base is not None and not m.get(base):
            continue  # nothing of that kind in the set: no line rather than a misleading 0
        lines.append(_row(name, m.get(key), f"  ({m[count]}/{m[base]})" if count else ""))
    median = m.get("median_answer_chars")
    lines.append(f"  {'median answer length (chars)':<42} {'—' if median is None else f'{median:.0f}':>5}")
    return "\n".join(lines)


# ---- answer modes: extractive vs LLM ------------------------------------------------------------------------
def answer_mode_summary(result: EvalResult) -> dict[str, float]:
    """Fact recall over in-scope questions, citation precision over answers that cite, fallback rate over answers."""
    inscope = [r for r in result.items if r.expected == Expect.ANSWER]
    answered = [r for r in inscope if not r.refused]
    precisions = [r.citation_precision for r in answered if r.citation_precision is not None]
    return {
        "answered": len(answered),
        "fact_recall": sum(r.fact_recall for r in inscope) / len(inscope) if inscope else 0.0,
        "citation_precision": sum(precisions) / len(precisions) if precisions else 0.0,
        "fallback_rate": metrics.rate([r.mode == ComposeMode.LLM_FALLBACK for r in answered]),
    }


def answer_mode_results(extractive: ChatService | None, items: list[GoldenItem], top_k: int, answer_mode: str,
                        configured: EvalResult) -> dict[str, EvalResult | None]:
    """Results per answer mode ("extractive", "llm", "both" or "configured"), reusing the run already made with the
    configured service. `extractive`: the same knowledge base answering without the LLM, None when the configured
    service has no LLM (its run is then the extractive one). None for the LLM when no endpoint is configured."""
    has_llm = extractive is not None
    wanted = {"both": ["extractive", "llm"], "configured": ["llm" if has_llm else "extractive"]}.get(
        answer_mode, [answer_mode])
    out: dict[str, EvalResult | None] = {}
    for mode in wanted:
        if mode == "llm":
            out[mode] = configured if has_llm else None
        else:
            out[mode] = run_eval(extractive, items, top_k) if extractive is not None else configured
    return out


def format_answer_modes(results: dict[str, EvalResult | None]) -> str:
    lines = [f"  {'answer mode':<22} {'answers':>7} {'fact recall':>11} {'citation precision':>18} {'fallback rate':>13}"]
    for mode, result in results.items():
        if result is None:
            lines.append(f"  {mode:<22} 未配置 LLM：设置 XIAOYU_LLM_BASE_URL（及 XIAOYU_LLM_MODEL）后再评测")
            continue
        m = answer_mode_summary(result)
        lines.append(f"  {mode:<22} {m['answered']:>7} {m['fact_recall']:>11.3f} {m['citation_precision']:>18.3f}"
                     f" {m['fallback_rate']:>13.3f}")
    return "\n".join(lines)
