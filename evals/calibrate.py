"""Refusal calibration: pick the evidence thresholds that refuse the most out-of-scope questions while keeping
false refusals of in-scope ones under a budget. Pure functions over (dense_top, overlap, out_of_scope) rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assistant.services import ChatService
from evals.golden import GoldenItem


@dataclass(frozen=True)
class Calibration:
    min_dense: float
    min_overlap: float
    refusal_accuracy: float
    false_refusal_rate: float


def evidence_rows(service: ChatService, items: list[GoldenItem]) -> list[tuple[float, float, bool]]:
    rows = []
    for item in items:
        ev = service.retrieve(item.question, item.history).evidence
        rows.append((ev.dense_top, ev.overlap, item.out_of_scope))
    return rows


def calibrate(rows: list[tuple[float, float, bool]], max_false_refusal: float = 0.03) -> Calibration:
    """Grid search; among thresholds within the false-refusal budget, the highest refusal accuracy wins, then the
    lowest false-refusal rate, then the lowest thresholds (the least surprising for new documents)."""
    if not any(r[2] for r in rows) or all(r[2] for r in rows):
        raise ValueError("calibration needs both in-scope and out-of-scope questions")
    dense = np.array([r[0] for r in rows])
    overlap = np.array([r[1] for r in rows])
    oos = np.array([r[2] for r in rows])
    best: tuple | None = None
    for d in np.unique(np.round(dense, 4)):
        for o in np.arange(0.0, 0.61, 0.05):
            covered = (dense >= d) & (overlap >= o - 1e-9)
            refusal = float(np.mean(~covered[oos]))
            false_refusal = float(np.mean(~covered[~oos]))
            if false_refusal > max_false_refusal:
                continue
            key = (refusal, -false_refusal, -d, -o)
            if best is None or key > best[0]:
                best = (key, Calibration(float(d), round(float(o), 2), refusal, false_refusal))
    if best is None:
        raise ValueError(f"no thresholds keep false refusals under {max_false_refusal:.0%}")
    return best[1]
