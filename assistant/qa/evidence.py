"""Judge the evidence: does the knowledge base cover this question at all? This is where a refusal is decided
(besides injections and small talk, which never reach retrieval).

The decision is a small logistic model over what retrieval found (dense similarity and its margin, how much of the
question's content the top hits and the whole knowledge base cover, BM25, whether the two retrievers agree) and
what the understanding step saw (topics listed as not covered). It is fitted on the dev set by
`xiaoyu calibrate --answerability` (evals/answerability.py). Without a model (or in BM25-only hit tests) the older
thresholds decide. Every decision carries its features and, in words, the ones that weighed most."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from assistant.config import RetrievalSettings
from assistant.index.known import FLOOR as KNOWN_FLOOR
from assistant.qa.retrieve import Candidates
from assistant.qa.understand import asked_datum, holds_datum
from assistant.types import Evidence, TurnPlan

FEATURES = ("dense_top", "dense_gap", "coverage", "unknown", "lexical_top", "agreement", "off_topic", "sentence_top",
            "missing_datum", "known_margin")
_LABELS = {"dense_top": "语义相似度", "dense_gap": "语义领先幅度", "coverage": "关键词覆盖", "unknown": "知识库未见的词",
           "lexical_top": "词法匹配", "agreement": "两路检索一致", "off_topic": "知识库外的话题",
           "sentence_top": "最接近的句子", "missing_datum": "所问的价格、时间、日期、联系方式或名称依据里没有",
           "known_margin": "更像已知的不回答问题"}


@dataclass(frozen=True)
class AnswerabilityModel:
    """P(answerable) = sigmoid(bias + Σ weight · (feature − mean) / scale); answered when ≥ threshold."""

    weights: dict[str, float]
    bias: float
    means: dict[str, float]
    scales: dict[str, float]
    threshold: float
    embedder: str = ""  # the embedder the dense features were measured with: another one needs a refit

    @classmethod
    def load(cls, path: Path) -> AnswerabilityModel:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["weights"], data["bias"], data["means"], data["scales"], data["threshold"],
                   data.get("embedder", ""))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"weights": self.weights, "bias": self.bias, "means": self.means,
                                    "scales": self.scales, "threshold": self.threshold, "embedder": self.embedder},
                                   ensure_ascii=False, indent=1), encoding="utf-8")

    def contributions(self, features: dict[str, float]) -> dict[str, float]:
        return {f: 0.0 if unseen(features, f) else
                self.weights.get(f, 0.0) * (features[f] - self.means.get(f, 0.0)) / (self.scales.get(f, 1.0) or 1.0)
                for f in FEATURES}

    def probability(self, features: dict[str, float]) -> float:
        z = self.bias + sum(self.contributions(features).values())
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


# A feature that only exists where its flag is set: elsewhere it is unknown, and weighs nothing either way (its mean,
# when fitting: evals/answerability.py). Without this, "no known question near" would read as the typical answerable
# question's margin's opposite, and every question about a document the known questions do not name (a staff upload,
# a law library) would lean toward refusal: measured on the library's dev and test questions, 5 more of 48 refused.
PRESENCE = {"known_margin": "known_seen"}


def unseen(features: dict[str, float], name: str) -> bool:
    flag = PRESENCE.get(name)
    return flag is not None and not features.get(flag, 1.0)


def features(found: Candidates, plan: TurnPlan | None = None) -> dict[str, float]:
    dense = [score for _, score in found.dense]
    return {
        "dense_top": dense[0] if dense else 0.0,
        # A question the corpus covers usually has one clearly closest passage; a foreign one is equally far from all.
        "dense_gap": dense[0] - dense[min(4, len(dense) - 1)] if dense else 0.0,
        "coverage": found.coverage,
        "unknown": found.unknown,
        "lexical_top": math.log1p(found.lexical[0][1]) if found.lexical else 0.0,
        "agreement": float(bool({c for c, _ in found.lexical[:3]} & {c for c, _ in found.dense[:3]})),
        "off_topic": float(len(plan.off_topic)) if plan else 0.0,
        # The closest single sentence of the top hits: a question the sources answer usually has one sentence that
        # says it, while a near-domain one ("燃气公司得提前多久通知") is only generally close to whole provisions.
        # Without sentence vectors, the chunk's own similarity stands in.
        "sentence_top": max((sim for h in found.hits[:3] for _, sim in found.sentences.get(h.chunk.id, ())),
                            default=dense[0] if dense else 0.0),
        # "补办门禁卡要多少钱" asks for a price: provisions on 物业服务收费 are close in meaning and hold none.
        "missing_datum": _missing_datum(found),
        # How much closer to a question known to be out of scope (昆山房价多少) than to any known answerable one
        # (negative: closer to an answerable one). Only where some known question is near and the best hit is of a
        # document the table names (known_seen); elsewhere, as for a question about a newly uploaded file, the
        # model reads it as unknown, not as 0 (AnswerabilityModel.contributions).
        "known_margin": found.known_refused - found.known,
        "known_seen": float(found.known > KNOWN_FLOOR or found.known_refused > KNOWN_FLOOR),
    }


def _missing_datum(found: Candidates) -> float:
    kind = asked_datum(found.query)
    if not kind:
        return 0.0
    return float(not any(holds_datum(kind, h.chunk.body, found.query) for h in found.hits[:3]))


def judge(found: Candidates, settings: RetrievalSettings, model: AnswerabilityModel | None = None,
          plan: TurnPlan | None = None) -> Evidence:
    s = settings
    if not found.hits:
        return Evidence(False, "知识库中没有相关内容")
    if not found.content_words:
        # "要多久？" with no conversation before it: there is nothing to look up, whatever the vectors say.
        return Evidence(False, "问题里没有可检索的内容（缺少上文）")
    x = features(found, plan)
    overlap, dense_top = found.coverage, x["dense_top"]
    agreement = bool(x["agreement"])
    shown = tuple(x.items())
    if model is not None and found.dense:
        p = model.probability(x)
        parts = sorted(model.contributions(x).items(), key=lambda kv: abs(kv[1]), reverse=True)
        reasons = tuple(f"{_LABELS[f]} {x[f]:.2f}（{'+' if c >= 0 else '−'}{abs(c):.2f}）" for f, c in parts[:3]
                        if abs(c) >= 0.05)
        if plan is not None and plan.off_topic:
            reasons = (f"知识库外的话题：{'、'.join(plan.off_topic)}", *reasons)
        covered = p >= model.threshold
        verdict = "检索证据充分" if covered else "证据不足"
        reason = f"{verdict}：可回答概率 {p:.2f}（阈值 {model.threshold:.2f}）；" + "；".join(reasons)
        return Evidence(covered, reason, dense_top, overlap, agreement, p, shown, reasons)
    if found.dense and dense_top >= s.min_dense and overlap >= s.min_overlap:
        return Evidence(True, "检索证据充分", dense_top, overlap, agreement, features=shown)
    if not found.dense and overlap >= s.min_overlap_lexical_only:
        return Evidence(True, "词语匹配（仅词法检索）", dense_top, overlap, agreement, features=shown)
    reason = f"证据不足：语义相似度 {dense_top:.3f}（阈值 {s.min_dense}），关键词覆盖 {overlap:.0%}"
    return Evidence(False, reason, dense_top, overlap, agreement, features=shown)
