"""An eval run as HTML: metrics table, hit@k curve and per-category bars as inline SVG, and the failures explained.

The same fragments are shown in the staff console and written by `xiaoyu eval --report out.html` as one standalone
page: no scripts, no fonts or styles from a CDN, so the file opens offline and can be mailed around."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from evals import metrics
from ui.console.runs import Comparison, failed_items

METRIC_NAMES = {
    "hit@1": "hit@1（文档）",
    "hit@3": "hit@3（文档）",
    "hit@5": "hit@5（文档）",
    "mrr": "MRR（文档）",
    "section_accuracy": "条文准确率（top-1）",
    "section_hit@5": "条文 hit@5",
    "refusal_accuracy": "拒答准确率（无关问题被拒答）",
    "false_refusal_rate": "误拒答率（越低越好）",
    "fact_recall": "回答含全部要点（已作答）",
}
LOWER_IS_BETTER = {"false_refusal_rate"}
PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6")

CSS = """
.xy-report { font-family: "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif; color: #1f2937; }
.xy-report h2 { font-size: 1.15rem; margin: 1.2rem 0 .5rem; }
.xy-report table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .9rem; }
.xy-report th, .xy-report td { border: 1px solid #d1d5db; padding: .3rem .6rem; text-align: left; vertical-align: top; }
.xy-report th { background: #f3f4f6; }
.xy-report td.num { text-align: right; font-variant-numeric: tabular-nums; }
.xy-report .up { color: #047857; } .xy-report .down { color: #b91c1c; }
.xy-report .charts { display: flex; flex-wrap: wrap; gap: 1rem; }
.xy-report .reason { color: #b91c1c; }
.xy-report .muted { color: #6b7280; font-size: .85rem; }
"""


# ---- figures ----------------------------------------------------------------------------------------------------
def hit_curve(run: dict) -> dict[str, list[float]]:
    """hit@k for k = 1..top_k over in-scope questions, for documents and for sections."""
    inscope = [i for i in run["items"] if _expects(i) == "answer"]
    ks = range(1, int(run.get("top_k") or 5) + 1)
    return {
        "文档": [metrics.hit_at([i["doc_rank"] for i in inscope], k) for k in ks],
        "条文": [metrics.hit_at([i["section_rank"] for i in inscope], k) for k in ks],
    }


def category_bars(run: dict) -> tuple[list[str], dict[str, list[float | None]]]:
    """Per category: hit@5, MRR and section top-1 where it has in-scope questions, refusal accuracy where it has
    out-of-scope ones (a bar that can't apply is left out rather than drawn as 0)."""
    cats = list(run["by_category"])
    series: dict[str, list[float | None]] = {"hit@5": [], "MRR": [], "条文 top-1": [], "拒答准确率": []}
    for c in cats:
        m = run["by_category"][c]
        inscope, oos = m["in_scope"] > 0, m["out_of_scope"] > 0
        series["hit@5"].append(m["hit@5"] if inscope else None)
        series["MRR"].append(m["mrr"] if inscope else None)
        series["条文 top-1"].append(m["section_accuracy"] if inscope else None)
        series["拒答准确率"].append(m["refusal_accuracy"] if oos else None)
    return cats, {k: v for k, v in series.items() if any(x is not None for x in v)}


def line_chart_svg(title: str, xs: Sequence[int], series: dict[str, Sequence[float]], x_label: str = "k",
                   width: int = 440, height: int = 280) -> str:
    left, right, top, bottom = 46, 110, 34, 40
    pw, ph = width - left - right, height - top - bottom
    x_of = lambda i: left + (pw * i / max(len(xs) - 1, 1))
    y_of = lambda v: top + ph * (1 - v)
    out = [_svg_open(width, height, title), _axes(left, top, pw, ph)]
    for i, x in enumerate(xs):
        out.append(f'<text x="{x_of(i):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11">{x}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="11">{escape(x_label)}</text>')
    for n, (name, values) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(values))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{points}"/>')
        for i, v in enumerate(values):
            out.append(f'<circle cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="3.5" fill="{color}">'
                       f"<title>{escape(name)} k={xs[i]}: {v:.3f}</title></circle>")
        out.append(_legend(left + pw + 12, top + 8 + 18 * n, color, f"{name} {values[-1]:.2f}" if values else name))
    out.append("</svg>")
    return "".join(out)


def bar_chart_svg(title: str, groups: Sequence[str], series: dict[str, Sequence[float | None]],
                  width: int = 520, height: int = 280) -> str:
    left, right, top, bottom = 46, 110, 34, 40
    pw, ph = width - left - right, height - top - bottom
    out = [_svg_open(width, height, title), _axes(left, top, pw, ph)]
    slot = pw / max(len(groups), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        out.append(f'<text x="{left + (g + .5) * slot:.1f}" y="{top + ph + 16}" text-anchor="middle" '
                   f'font-size="12">{escape(group)}</text>')
        for s, (name, values) in enumerate(series.items()):
            v = values[g]
            if v is None:
                continue
            h = ph * v
            out.append(f'<rect x="{x0 + s * bar:.1f}" y="{top + ph - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                       f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(group)} {escape(name)}: {v:.3f}</title></rect>')
    for s, name in enumerate(series):
        out.append(_legend(left + pw + 12, top + 8 + 18 * s, PALETTE[s % len(PALETTE)], name))
    out.append("</svg>")
    return "".join(out)


def _svg_open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(title)}" font-family="Noto Sans CJK SC, PingFang SC, sans-serif">'
            f'<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>')


def _axes(left: float, top: float, pw: float, ph: float) -> str:
    out = []
    for tick in (0, .25, .5, .75, 1):
        y = top + ph * (1 - tick)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{tick:.2f}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#6b7280"/>'
               f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#6b7280"/>')
    return "".join(out)


def _legend(x: float, y: float, color: str, text: str) -> str:
    return (f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 17:.1f}" y="{y + 1:.1f}" font-size="12">{escape(text)}</text>')


# ---- fragments --------------------------------------------------------------------------------------------------
def summary_html(run: dict) -> str:
    m = run["metrics"]
    return (f'<p class="muted">评测集 {escape(run["golden"])} · {m["questions"]:.0f} 题（在范围内 {m["in_scope"]:.0f}，'
            f'无关 {m["out_of_scope"]:.0f}）· top_k {run.get("top_k", 5)} · 知识库 {run.get("documents", 0)} 篇文档 / '
            f'{run.get("chunks", 0)} 个片段 · {escape(run.get("created", ""))} · 运行 {escape(run.get("id", ""))}</p>')


def metrics_table_html(run: dict) -> str:
    m = run["metrics"]
    rows = "".join(f'<tr><td>{escape(name)}</td><td class="num">{m.get(key, 0.0):.3f}</td></tr>'
                   for key, name in METRIC_NAMES.items())
    return f"<table><tr><th>指标</th><th>数值</th></tr>{rows}</table>"


def category_table_html(run: dict) -> str:
    head = "<tr><th>分类</th><th>题数</th><th>hit@5</th><th>MRR</th><th>条文 top-1</th><th>拒答准确率</th><th>误拒答率</th></tr>"
    rows = []
    for cat, m in run["by_category"].items():
        cells = [m["hit@5"], m["mrr"], m["section_accuracy"]] if m["in_scope"] else [None] * 3
        cells += [m["refusal_accuracy"] if m["out_of_scope"] else None, m["false_refusal_rate"] if m["in_scope"] else None]
        rows.append(f'<tr><td>{escape(cat)}</td><td class="num">{m["questions"]:.0f}</td>'
                    + "".join(f'<td class="num">{"—" if v is None else f"{v:.3f}"}</td>' for v in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def charts_html(run: dict) -> str:
    curve = hit_curve(run)
    ks = list(range(1, len(next(iter(curve.values()))) + 1))
    cats, series = category_bars(run)
    return ('<div class="charts">' + line_chart_svg("hit@k 曲线（在范围内的问题）", ks, curve)
            + bar_chart_svg("分类指标", cats, series) + "</div>")


def _expects(item: dict) -> str:
    """answer | refuse | smalltalk; runs stored before small talk was scored only have out_of_scope."""
    return item.get("expect") or ("refuse" if item["out_of_scope"] else "answer")


def explain(item: dict) -> str:
    """Why one golden question failed, in words a content editor can act on."""
    if _expects(item) == "smalltalk":
        return "应当按闲聊简短回复，却当作政策问题处理了"
    if item["out_of_scope"]:
        return f"应当拒答，却作答了（检索判断：{item['covered_reason']}）"
    if item["refused"]:
        return f"误拒答：{item['covered_reason']}"
    if item["doc_rank"] is None:
        return f"前 {len(item['retrieved'])} 个结果里没有预期文档"
    if item["section_rank"] is None or item["section_rank"] > 5:
        return f"找到预期文档（第 {item['doc_rank']} 名），但前 5 名里没有预期条文"
    return f"回答缺少要点（要点覆盖 {item['fact_recall']:.0%}）"


def _expected(item: dict) -> str:
    if _expects(item) == "smalltalk":
        return "（闲聊）"
    if item["out_of_scope"]:
        return "（应拒答）"
    parts = [escape(s) for s in item["expected_sources"]]
    if any(item["expected_sections"]):
        parts.append("条文：" + escape("、".join(s for s in item["expected_sections"] if s)))
    return "<br>".join(parts)


def _retrieved(item: dict, n: int = 3) -> str:
    got = [f"{h['source']} {h['section'].rsplit(' > ', 1)[-1]}".strip() for h in item["retrieved"][:n]]
    return "<br>".join(f"{k}. {escape(g)}" for k, g in enumerate(got, 1)) or "（无结果）"


def failures_html(run: dict, limit: int = 200) -> str:
    failed = failed_items(run)
    if not failed:
        return "<p>没有失败的题目。</p>"
    rows = [f'<tr><td>{escape(i["id"])}</td><td>{escape(i["question"])}</td><td>{_expected(i)}</td>'
            f'<td>{_retrieved(i)}</td><td class="reason">{escape(explain(i))}</td></tr>' for i in failed[:limit]]
    more = f'<p class="muted">另有 {len(failed) - limit} 题未列出。</p>' if len(failed) > limit else ""
    return (f"<p>失败 {len(failed)} 题（共 {len(run['items'])} 题）。</p><table><tr><th>编号</th><th>问题</th>"
            f"<th>预期出处</th><th>实际检索（前 3）</th><th>原因</th></tr>{''.join(rows)}</table>{more}")


def run_html(run: dict) -> str:
    """Everything about one run, as one fragment (wrapped in .xy-report)."""
    return (f'<div class="xy-report">{summary_html(run)}<h2>指标</h2>{metrics_table_html(run)}'
            f"<h2>图表</h2>{charts_html(run)}<h2>分类</h2>{category_table_html(run)}"
            f"<h2>失败题目</h2>{failures_html(run)}</div>")


def compare_html(cmp: Comparison) -> str:
    a, b = cmp.before, cmp.after
    rows = []
    for key, x, y in cmp.metrics:
        delta = y - x
        better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
        cls = "" if abs(delta) < 1e-9 else ("up" if better else "down")
        rows.append(f'<tr><td>{escape(METRIC_NAMES.get(key, key))}</td><td class="num">{x:.3f}</td>'
                    f'<td class="num">{y:.3f}</td><td class="num {cls}">{delta:+.3f}</td></tr>')
    curves = {f"前 {name}": v for name, v in hit_curve(a).items() if name == "文档"}
    curves.update({f"后 {name}": v for name, v in hit_curve(b).items() if name == "文档"})
    n = min(len(v) for v in curves.values())
    chart = line_chart_svg("hit@k 对比（文档）", list(range(1, n + 1)), {k: v[:n] for k, v in curves.items()})

    def items(title: str, found: list[dict], now_failing: bool) -> str:
        if not found:
            return f"<h2>{title}：无</h2>"
        body = "".join(f'<tr><td>{escape(i["id"])}</td><td>{escape(i["question"])}</td><td>{_retrieved(i)}</td>'
                       f'<td class="{"reason" if now_failing else "up"}">{escape(explain(i)) if now_failing else "通过"}</td></tr>'
                       for i in found)
        return (f"<h2>{title}：{len(found)} 题</h2><table><tr><th>编号</th><th>问题</th><th>之后检索（前 3）</th>"
                f"<th>之后</th></tr>{body}</table>")

    return (f'<div class="xy-report"><p class="muted">之前：{escape(a["id"])}（{escape(a["golden"])}）<br>'
            f'之后：{escape(b["id"])}（{escape(b["golden"])}）</p><table><tr><th>指标</th><th>之前</th><th>之后</th>'
            f'<th>变化</th></tr>{"".join(rows)}</table>{chart}'
            f'{items("变好（之前失败，之后通过）", cmp.fixed, False)}{items("变差（之前通过，之后失败）", cmp.broken, True)}</div>')


def standalone_html(run: dict) -> str:
    """The report as one self-contained page (inline CSS and SVG; nothing is fetched)."""
    return ('<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>小玉评测报告 · '
            f'{escape(run["golden"])}</title><style>body {{ margin: 2rem; }}{CSS}</style></head><body>'
            f'<div class="xy-report"><h1>小玉评测报告</h1></div>{run_html(run)}</body></html>')
