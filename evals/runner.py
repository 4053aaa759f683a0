"""Run a golden set through the real ChatService and compute retrieval, refusal and answer metrics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from assistant.service import ChatService
from evals import metrics
from evals.golden import GoldenItem


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
    section_rank: int | None
    refused: bool
    covered_reason: str
    fact_recall: float
    answer: str
    citations: list[dict]
    seconds: float
    mode: str = ""  # which path answered: extractive | llm | extractive-fallback | refusal
    citation_precision: float | None = None


@dataclass
class EvalResult:
    metrics: dict[str, float]
    by_category: dict[str, dict[str, float]]
    items: list[ItemResult] = field(default_factory=list)

    @property
    def failures(self) -> list[ItemResult]:
        return [
            r for r in self.items
            if (r.out_of_scope and not r.refused)
            or (not r.out_of_scope and (r.refused or r.section_rank is None or r.section_rank > 5 or r.fact_recall < 1))
        ]

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "by_category": self.by_category, "items": [asdict(i) for i in self.items]}


def _summarise(results: list[ItemResult]) -> dict[str, float]:
    inscope = [r for r in results if not r.out_of_scope]
    oos = [r for r in results if r.out_of_scope]
    doc_ranks = [r.doc_rank for r in inscope]
    sec_ranks = [r.section_rank for r in inscope]
    with_sections = [r for r in inscope if any(r.expected_sections)]
    answered = [r for r in inscope if not r.refused]
    return {
        "questions": len(results),
        "in_scope": len(inscope),
        "out_of_scope": len(oos),
        "hit@1": metrics.hit_at(doc_ranks, 1),
        "hit@3": metrics.hit_at(doc_ranks, 3),
        "hit@5": metrics.hit_at(doc_ranks, 5),
        "mrr": metrics.mrr(doc_ranks),
        "section_hit@1": metrics.hit_at(sec_ranks, 1),
        "section_hit@5": metrics.hit_at(sec_ranks, 5),
        "section_mrr": metrics.mrr(sec_ranks),
        "section_accuracy": metrics.rate([r.section_rank == 1 for r in with_sections]),
        "refusal_accuracy": metrics.rate([r.refused for r in oos]),
        "false_refusal_rate": metrics.rate([r.refused for r in inscope]),
        "fact_recall": metrics.rate([r.fact_recall >= 1.0 for r in answered]) if answered else 0.0,
        "fact_recall_all": sum(r.fact_recall for r in inscope) / len(inscope) if inscope else 0.0,
        "mean_seconds": sum(r.seconds for r in results) / len(results) if results else 0.0,
    }


def run_eval(service: ChatService, items: list[GoldenItem], top_k: int = 5,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    results = []
    for n, item in enumerate(items, 1):
        t0 = time.perf_counter()
        retrieval = service.retrieve(item.question, item.history, top_k)
        answer = service.ask(item.question, item.history, channel="eval")  # kept apart from residents in the log
        seconds = time.perf_counter() - t0
        hits = retrieval.hits
        doc_matches = [metrics.hit_matches(item.expected_sources, item.expected_sections, h.chunk.source,
                                           h.chunk.section, with_section=False) for h in hits]
        sec_matches = [metrics.hit_matches(item.expected_sources, item.expected_sections, h.chunk.source,
                                           h.chunk.section, with_section=True) for h in hits]
        results.append(ItemResult(
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
            citation_precision=None if item.out_of_scope else metrics.citation_precision(
                item.expected_sources, [c.source for c in answer.citations]),
        ))
        if progress:
            progress(n, len(items))
    categories = sorted({r.category for r in results if r.category})
    by_category = {c: _summarise([r for r in results if r.category == c]) for c in categories}
    return EvalResult(_summarise(results), by_category, results)


_ROWS = [
    ("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"),
    ("section_accuracy", "section accuracy (top-1)"), ("section_hit@5", "section hit@5"),
    ("refusal_accuracy", "refusal accuracy (out-of-scope refused)"), ("false_refusal_rate", "false-refusal rate"),
    ("fact_recall", "key facts present (answered)"),
]


def format_table(result: EvalResult) -> str:
    m = result.metrics
    lines = [f"questions: {m['questions']} (in scope {m['in_scope']}, out of scope {m['out_of_scope']})"]
    for key, name in _ROWS:
        lines.append(f"  {name:<42} {m[key]:.3f}")
    lines.append(f"  {'mean seconds per question':<42} {m['mean_seconds']:.3f}")
    return "\n".join(lines)


# ---- answer modes: extractive vs LLM ------------------------------------------------------------------------
def extractive_only(service: ChatService) -> ChatService:
    """The same service answering extractively: an LLM answerer keeps the extractive one as its fallback."""
    fallback = getattr(service.answerer, "fallback", None)
    return dataclasses.replace(service, answerer=fallback, condenser=None) if fallback is not None else service


def answer_mode_summary(result: EvalResult) -> dict[str, float]:
    """Fact recall over in-scope questions, citation precision over answers that cite, fallback rate over answers."""
    inscope = [r for r in result.items if not r.out_of_scope]
    answered = [r for r in inscope if not r.refused]
    precisions = [r.citation_precision for r in answered if r.citation_precision is not None]
    return {
        "answered": len(answered),
        "fact_recall": sum(r.fact_recall for r in inscope) / len(inscope) if inscope else 0.0,
        "citation_precision": sum(precisions) / len(precisions) if precisions else 0.0,
        "fallback_rate": metrics.rate([r.mode == "extractive-fallback" for r in answered]),
    }


def answer_mode_results(service: ChatService, items: list[GoldenItem], top_k: int, answer_mode: str,
                        configured: EvalResult) -> dict[str, EvalResult | None]:
    """Results per answer mode ("extractive", "llm", "both" or "configured"), reusing the run already made with the
    configured service. None for the LLM when no endpoint is configured."""
    has_llm = getattr(service.answerer, "fallback", None) is not None
    wanted = {"both": ["extractive", "llm"], "configured": ["llm" if has_llm else "extractive"]}.get(
        answer_mode, [answer_mode])
    out: dict[str, EvalResult | None] = {}
    for mode in wanted:
        if mode == "llm":
            out[mode] = configured if has_llm else None
        else:
            out[mode] = run_eval(extractive_only(service), items, top_k) if has_llm else configured
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
