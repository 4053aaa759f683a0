"""Handlers of the console's staff levers: pinned answers, the answerability threshold (previewed on the dev and test
sets before it is saved), the synonym table, and a logged question in full. Plain functions, as in handlers.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

from assistant.errors import NotFound, XiaoyuError
from assistant.services import Services
from evals.golden import Expect, GoldenItem, load_golden
from ui.console.runs import EVALS_DIR

PIN_HEADERS = ["编号", "匹配方式", "匹配规则", "置顶答复", "出处", "条文", "创建时间"]
PIN_KINDS = (("关键词（都出现才匹配）", "keywords"), ("正则表达式", "regex"))
PREVIEW_SETS = {"dev": EVALS_DIR / "sets" / "dev.jsonl", "test": EVALS_DIR / "sets" / "test.jsonl"}
PREVIEW_HEADERS = ["评测集", "阈值", "应拒答的问题", "其中拒答", "拒答率", "可回答的问题", "其中误拒", "误拒率"]


def ok(text: str) -> str:
    return f"✅ {text}"


def fail(text: str) -> str:
    return f"❌ {text}"


# ---- pinned answers ---------------------------------------------------------------------------------------------
def pin_rows(services: Services) -> list[list]:
    return [[p.id, "正则" if p.kind == "regex" else "关键词", p.pattern, p.text, p.source,
             p.section.rsplit(" > ", 1)[-1], datetime.fromtimestamp(p.created_at).strftime("%Y-%m-%d %H:%M")]
            for p in services.chat.pins()]


def add_pin(services: Services, kind: str, pattern: str, text: str, source: str | None, section: str | None,
            quote: str) -> str:
    try:
        pin = services.chat.pin(kind or "keywords", pattern or "", text or "", source or "", section or "", quote or "")
    except XiaoyuError as exc:
        return fail(f"{exc.user_message}（未保存）")
    return ok(f"已置顶 {pin.id}：匹配“{pin.pattern}”的问题会直接得到这条答复（引用《{pin.title}》"
              f"{pin.section.rsplit(' > ', 1)[-1]}）。可到“命中测试”里验证。")


def delete_pin(services: Services, pin_id: str | None) -> str:
    if not pin_id:
        return fail("请先在表格中点选要删除的置顶答复")
    try:
        services.chat.unpin(pin_id)
    except NotFound as exc:
        return fail(exc.user_message)
    return ok(f"已删除置顶答复 {pin_id}：这类问题恢复由知识库检索作答")


# ---- the answerability threshold ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """One eval question's evidence, measured once: P(answerable) by the model, or the fixed decision of a question
    the model never sees (nothing retrieved, nothing to look up), which no threshold changes."""

    set: str
    question: str
    answerable: bool
    probability: float | None
    covered: bool

    def answered_at(self, threshold: float) -> bool:
        return self.covered if self.probability is None else self.probability >= threshold


def score_items(services: Services, name: str, items: Sequence[GoldenItem],
                progress: Callable[[int, int], None] | None = None) -> list[Scored]:
    """Retrieval and the evidence step for each question (small talk left out: it never reaches the evidence step),
    as evals/answerability.py's rows_from_items measures them for fitting."""
    asked = [i for i in items if i.expect is not Expect.SMALLTALK]
    scored = []
    for n, item in enumerate(asked, 1):
        ev = services.chat.retrieve(item.question, item.history).evidence
        scored.append(Scored(name, item.question, item.expect is Expect.ANSWER, ev.probability, ev.covered))
        if progress:
            progress(n, len(asked))
    return scored


class ThresholdPreview:
    """The dev and test questions' scores, computed once (minutes of retrieval on two cores) and re-thresholded in
    memory as often as staff like. Stale after the knowledge base or the model changes: compute again then."""

    def __init__(self, sets: dict[str, Path] = PREVIEW_SETS, limit: int | None = None):
        self.sets = sets
        self.limit = limit  # questions per set (tests use a few)
        self.scored: list[Scored] = []
        self.computed_at: float | None = None
        self._lock = threading.Lock()

    def compute(self, services: Services, progress: Callable[[int, int], None] | None = None) -> None:
        with self._lock:
            items = {name: load_golden(path)[: self.limit] for name, path in self.sets.items()}
            total, done = sum(len(v) for v in items.values()), 0
            scored: list[Scored] = []
            for name, its in items.items():
                scored += score_items(services, name, its, (lambda n, _t, d=done: progress(d + n, total))
                                      if progress else None)
                done += len(its)
            self.scored, self.computed_at = scored, datetime.now().timestamp()

    def counts(self, threshold: float) -> list[list]:
        """Per set: out-of-scope questions and how many are refused, answerable ones and how many falsely refused."""
        rows = []
        for name in self.sets:
            mine = [s for s in self.scored if s.set == name]
            foreign = [s for s in mine if not s.answerable]
            answerable = [s for s in mine if s.answerable]
            refused = sum(not s.answered_at(threshold) for s in foreign)
            false = sum(not s.answered_at(threshold) for s in answerable)
            rows.append([name, round(threshold, 3), len(foreign), refused, f"{refused / max(1, len(foreign)):.1%}",
                         len(answerable), false, f"{false / max(1, len(answerable)):.1%}"])
        return rows

    def changed(self, current: float, proposed: float, limit: int = 30) -> list[list]:
        """The questions whose decision the proposed threshold changes, with their probability."""
        flips = [s for s in self.scored if s.answered_at(current) != s.answered_at(proposed)]
        return [[s.set, s.question, "可回答" if s.answerable else "应拒答", round(s.probability or 0.0, 3),
                 "作答 → 拒答" if s.answered_at(current) else "拒答 → 作答"] for s in flips[:limit]]


def threshold_info(services: Services) -> tuple[str, float | None]:
    model = services.chat.answerability()
    if model is None:
        return ("现在没有启用可回答性模型：拒答由相似度阈值决定（XIAOYU_MIN_DENSE 等），这里无法调整。", None)
    info = (f"当前阈值 **{model.threshold:.3f}**：可回答概率不低于它的问题才作答。"
            "先算出评测集各题的概率，再试不同的阈值，确认后保存到数据目录（answerability.json），立即生效。")
    return info, model.threshold


def preview_threshold(services: Services, preview: ThresholdPreview, threshold: float
                      ) -> tuple[str, list[list], list[list]]:
    model = services.chat.answerability()
    if model is None:
        return fail("没有启用可回答性模型"), [], []
    if not preview.scored:
        return fail("请先点“计算评测集得分”"), [], []
    rows = preview.counts(model.threshold) + preview.counts(float(threshold))
    when = datetime.fromtimestamp(preview.computed_at or 0).strftime("%m-%d %H:%M")
    info = (f"上面两行是当前阈值 {model.threshold:.3f}，下面两行是试用的 {float(threshold):.3f}"
            f"（得分计算于 {when}，之后若改了知识库请重新计算）。尚未保存。")
    return info, rows, preview.changed(model.threshold, float(threshold))


def save_threshold(services: Services, threshold: float) -> str:
    try:
        path = services.chat.save_answerability_threshold(float(threshold))
    except XiaoyuError as exc:
        return fail(exc.user_message)
    return ok(f"已保存阈值 {float(threshold):.3f} 到 {path.name}，从下一个问题起生效（无需重启）")


# ---- synonyms ---------------------------------------------------------------------------------------------------
def synonym_texts(services: Services) -> tuple[str, str]:
    return services.knowledge.synonyms()


def save_synonyms(services: Services, text: str) -> str:
    return _saved(services.knowledge.save_synonyms, text, "补充同义词", "检索")


def _saved(save: Callable[[str], int], text: str, what: str, used_by: str) -> str:
    """A staff table checked and saved by the service, or the line it refused (nothing saved then)."""
    try:
        n = save(text or "")
    except XiaoyuError as exc:
        return fail(f"{exc.user_message}（未保存）")
    return ok(f"已保存 {n} 条{what}，{used_by}立即使用（无需重启）")


# ---- known questions --------------------------------------------------------------------------------------------
def known_texts(services: Services) -> tuple[str, str]:
    return services.chat.known_questions()


def save_known(services: Services, text: str) -> str:
    return _saved(services.chat.save_known_questions, text, "已知问题", "检索和拒答判断")


def try_expansion(services: Services, query: str) -> str:
    query = (query or "").strip()
    if not query:
        return ""
    expanded = services.knowledge.expand(query)
    return (f"检索用的词：{escape(expanded)}" if expanded != query else "这个问题没有用到同义词。")


# ---- a logged question in full ----------------------------------------------------------------------------------
def log_detail(services: Services, log_id: float | None) -> str:
    """The question, the query it was rewritten to, the answer and the evidence's reasons (masked, as the log)."""
    try:
        q = services.staff.question(int(log_id)) if log_id else None
    except NotFound:
        q = None
    if q is None:
        return "<p class='muted'>点选上表中的一个问题，查看它的改写、回答和检索判断。</p>"
    rewritten = q.query and q.query != q.question
    query = (f"<p><b>改写后的检索查询：</b>{escape(q.query)}（追问，结合了之前的对话）</p>" if rewritten else
             f"<p><b>检索查询：</b>{escape(q.query or q.question)}（未改写）</p>")
    turns = "".join(f"<li>{'居民' if t.role == 'user' else '小玉'}：{escape(t.content[:200])}</li>"
                    for t in q.condensed_with)
    history = (f"<p><b>结合的对话上文：</b></p><ul>{turns}</ul>" if turns else
               "<p class='muted'>对话上文未记录（较早的记录）。</p>" if rewritten else "")
    cited = "；".join(f"【{c['index']}】{c['source']} {c['section'].rsplit(' > ', 1)[-1]}" for c in q.citations)
    return (f'<div class="xy-report"><h2>提问 {q.id}（{escape(q.channel)} · '
            f"{datetime.fromtimestamp(q.ts):%Y-%m-%d %H:%M}）</h2>"
            f"<p><b>问题：</b>{escape(q.question)}</p>{query}{history}"
            f"<p><b>检索判断：</b>{escape(q.evidence) or '（无：闲聊或提示注入，未检索）'}</p>"
            f"<p><b>引用：</b>{escape(cited) or '（无）'}</p>"
            + (f"<p><b>备注：</b>{escape(q.notes)}</p>" if q.notes else "")
            + f'<details open><summary>回答（{"拒答" if q.refused else "作答"}）</summary>'
            f'<pre class="chunk">{escape(q.answer)}</pre></details></div>')
