"""The console's event handlers: plain functions of (services, inputs) → values for the components.

No Gradio here, so tests call them directly; ui/console/app.py only wires them to Blocks. Messages are returned
(not raised) and start with ✅ or ❌, so a failed action shows its reason right where the staff member clicked."""

from __future__ import annotations

import csv
import re
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from pathlib import Path

import pandas as pd

from assistant.errors import NotFound, XiaoyuError
from assistant.index.kb import DEFAULT_KB
from assistant.services import Services
from assistant.state.pins import STAFF_NOTE
from assistant.state.questionlog import QuestionQuery
from assistant.state.uploads import DocMeta
from assistant.types import Channel, RequestStatus, TurnKind
from evals.golden import load_golden
from evals.runner import run_eval
from ui.console import report
from ui.console.runs import (
    GoldenSetError,
    RunStore,
    add_eval_item,
    compare,
    golden_sets,
    run_record,
    staff_set_path,
)

DOC_HEADERS = ["文档", "标题", "分类", "发文机关", "日期", "片段数", "导入时间", "状态"]
HIT_HEADERS = ["排名", "融合分", "词法分 BM25", "语义分 余弦", "词法名次", "语义名次", "文档", "条文", "知识库"]
KB_HEADERS = ["名称", "标题", "文档数", "片段数", "版本", "默认检索范围", "创建时间"]
LOG_HEADERS = ["编号", "时间", "渠道", "问题", "拒答", "语义相似度", "检索判断", "引用", "评价", "意见"]
LOG_VIEWS = ("全部", "已拒答", "低置信度")
MODES = (("混合 hybrid（与对话相同）", "hybrid"), ("仅词法 bm25", "bm25"), ("仅语义 dense", "dense"))
DEFAULT_STAFF_SET = "staff"  # data_dir/evals/staff.jsonl
TOPIC_HEADERS = ["话题", "提问数", "拒答", "差评 👎", "示例"]
TOPIC_WINDOWS = (("近 7 天", 7), ("近 14 天", 14), ("近 4 周", 28), ("近 12 周", 84))
CHART_TOPICS = 8  # the chart shows the most asked topics; the table and the CSV have them all


def ok(text: str) -> str:
    return f"✅ {text}"


def fail(text: str) -> str:
    return f"❌ {text}"


# ---- knowledge bases (index/kb.py): list, create, delete ---------------------------------------------------------
def kb_rows(services: Services) -> list[list]:
    return [[k.name, k.title, k.documents, k.chunks, k.generation, "是" if k.default else "否",
             _local_time(k.created_at)] for k in services.library.list()]


def kb_choices(services: Services) -> list[tuple[str, str]]:
    """(label, name) for the console's knowledge-base pickers, the default one first."""
    titles = {k.name: k.title for k in services.library.list()}
    return [(f"{n}（{titles[n]}）" if titles.get(n) else n, n) for n in services.library.names()]


def create_kb(services: Services, name: str, title: str) -> str:
    # Stripped: a name pasted with a trailing space is what staff meant, not a bad name.
    name, title = (name or "").strip(), (title or "").strip()
    if not name:
        return fail("请填写知识库名称（字母、数字、- 和 _，如 laws）")
    try:
        info, new = services.library.create(name, title)
    except XiaoyuError as exc:
        return fail(exc.user_message)
    if not new:
        return ok(f"知识库 {name} 已存在" + (f"，标题已改为“{info.title}”" if title else "，未改动"))
    # Outside the default scope, residents only reach it when a page or a client names it: say so now.
    reach = ("它在默认检索范围内，居民提问时会一并检索" if info.default else
             f"它不在默认检索范围内：嵌入代码加 data-knowledge-bases=\"{name}\"（或接口传 knowledge_bases）才会检索它")
    return ok(f"已创建知识库 {name}。在“知识库”页上方选中它即可上传文件；{reach}。")


def delete_kb(services: Services, name: str | None, confirmed: bool) -> str:
    if not name:
        return fail("请先在表格中点选要删除的知识库")
    if not confirmed:
        return fail("删除前请勾选“确认删除知识库”")
    # Counted first: afterwards there is nothing left to count, and staff should see what went.
    info = next((k for k in services.library.list() if k.name == name), None)
    try:
        services.library.delete(name)
    except XiaoyuError as exc:  # NotFound (deleted meanwhile), BadQuestion (the default one)
        return fail(exc.user_message)
    gone = f"（{info.documents} 篇文档、{info.chunks} 个片段及其上传文件）" if info else ""
    return ok(f"已删除知识库 {name}{gone}")


# ---- documents of one knowledge base ----------------------------------------------------------------------------
def document_rows(services: Services, kb: str = DEFAULT_KB) -> list[list]:
    try:
        docs = services.library.get(kb or DEFAULT_KB).documents()
    except NotFound:  # deleted from another console or process: an empty table, kb_summary says why
        return []
    return [[d.source, d.title, d.category, d.issuer, d.date, len(d.chunk_ids), _local_time(d.ingested_at),
             doc_status(d.superseded_by)] for d in docs]


def doc_status(superseded_by: str) -> str:
    """The documents table's 状态: a superseded version is kept but no longer answers (index/catalog.py)."""
    return f"旧版本，已由 {superseded_by} 取代，不再检索" if superseded_by else "现行"


def kb_summary(services: Services, kb: str = DEFAULT_KB) -> str:
    kb = kb or DEFAULT_KB
    try:
        docs = services.library.get(kb).documents()
    except NotFound as exc:
        return fail(f"{exc.user_message}（可能刚被删除，请重新选择知识库）")
    old = sum(1 for d in docs if d.superseded_by)
    retired = f"（其中 {old} 篇是已被新版本取代的旧版本，不再检索）" if old else ""
    return (f"知识库 {kb} 共 {len(docs)} 篇文档、{sum(len(d.chunk_ids) for d in docs)} 个片段{retired}。"
            "点选一行查看它的片段。")


def upload_document(services: Services, file_path: str | None, title: str, category: str, issuer: str,
                    date: str, kb: str = DEFAULT_KB) -> str:
    if not file_path:
        return fail("请先选择要上传的文件（txt、md、html、docx、pdf）")
    path = Path(file_path)
    kb = kb or DEFAULT_KB
    try:
        knowledge = services.library.get(kb)
        knowledge.check_upload_size(path.stat().st_size)
        source, rep = knowledge.add_document(path.name, path.read_bytes(),
                                             DocMeta(title, category or "", issuer, date))
    except XiaoyuError as exc:
        return fail(f"{path.name}：{exc.user_message}（知识库未改动）")
    if source in rep.unchanged:
        return ok(f"{source} 与知识库 {kb} 中已导入的内容相同，无需更新")
    verb = "已更新" if source in rep.updated else "已导入"
    # Hit testing searches the default scope unless told otherwise: name what to pick when the upload is outside it.
    where = "" if kb in services.chat.scope() else f"（在“知识库范围”里选上 {kb}）"
    return ok(f"{verb} {source} 到知识库 {kb}：{len(knowledge.chunks_of(source))} 个片段。"
              f"可到“命中测试”里提问验证{where}。")


def delete_document(services: Services, source: str, confirmed: bool, kb: str = DEFAULT_KB) -> str:
    if not source:
        return fail("请先在表格中点选要删除的文档")
    if not confirmed:
        return fail("删除前请勾选“确认删除”")
    try:
        rep = services.library.get(kb or DEFAULT_KB).delete_document(source)
    except NotFound as exc:
        return fail(exc.user_message)
    return ok(f"已删除 {source}（{rep.summary()}）")


def reingest(services: Services, source: str, kb: str = DEFAULT_KB) -> str:
    """Re-read the folder a document came from (all folders of the knowledge base when no document is selected)."""
    try:
        rep = services.library.get(kb or DEFAULT_KB).reindex(source or None)
    except NotFound as exc:
        return fail(exc.user_message)
    failed = "；".join(f"{s}：{why}" for s, why in rep.failed)
    return (fail if rep.failed else ok)(f"重新导入完成：{rep.summary()}" + (f"。失败：{failed}" if failed else ""))


def chunks_html(services: Services, source: str, kb: str = DEFAULT_KB) -> str:
    if not source:
        return ""
    try:
        chunks = services.library.get(kb or DEFAULT_KB).chunks_of(source)
    except NotFound as exc:
        return f"<p>{escape(exc.user_message)}</p>"
    if not chunks:
        return f"<p>知识库中没有这个文档：{escape(source)}</p>"
    items = "".join(
        f'<details><summary><b>{n}.</b> {escape(c.section or "（无标题段落）")} '
        f'<span class="muted">字符 {c.start}–{c.end}</span></summary><pre class="chunk">{escape(c.body)}</pre></details>'
        for n, c in enumerate(chunks, 1)
    )
    return f'<div class="xy-report"><h2>{escape(chunks[0].title)}（{len(chunks)} 个片段）</h2>{items}</div>'


# ---- hit testing ------------------------------------------------------------------------------------------------
def highlight(text: str, terms: list[str]) -> str:
    """Escape text and wrap each matched term in <mark>: ("物业费由业主交纳", ["物业费"]) → "<mark>物业费</mark>由业主交纳"."""
    html = escape(text)
    found = sorted({t for t in terms if t and t.lower() in text.lower()}, key=len, reverse=True)
    if not found:
        return html
    pattern = re.compile("|".join(re.escape(escape(t)) for t in found), re.IGNORECASE)
    return pattern.sub(lambda m: f"<mark>{m.group(0)}</mark>", html)


def hit_test(services: Services, query: str, mode: str, top_k: float,
             knowledge_bases: Sequence[str] | None = ()) -> tuple[str, list[list], str]:
    """(verdict, score table, highlighted hits) for one query, through ChatService.explain: the chat path itself.
    `knowledge_bases`: the scope to search; none chosen: the default scope, what a resident's question searches."""
    try:
        scope = services.chat.scope(list(knowledge_bases or ()))  # a deleted one: its 422 message, before any work
        found = services.chat.explain(query, (), int(top_k), mode, knowledge_bases=scope)  # type: ignore[arg-type]
    except XiaoyuError as exc:
        return fail(exc.user_message), [], ""
    retrieval, answer = found.retrieval, found.answer
    ev = retrieval.evidence
    figures = f"语义相似度 {ev.dense_top:.3f} · 关键词覆盖 {ev.overlap:.0%} · 两路检索{'一致' if ev.agreement else '不一致'}"
    if answer.refused:
        why = "疑似提示注入（要求改变规则的指令），按规则拒答" if found.plan.kind is TurnKind.INJECTION else ev.reason
        verdict = f'<p class="verdict refuse">⛔ 小玉会<b>拒答</b>：{escape(why)}</p>'
    elif any(n.startswith(STAFF_NOTE) for n in answer.notes):
        verdict = (f'<p class="verdict answer">📌 小玉会用<b>{STAFF_NOTE}</b>作答（{escape(answer.notes[0])}），'
                   f"不用下面的检索结果；检索本身的判断：{escape(ev.reason)}</p>")
    else:
        verdict = f'<p class="verdict answer">✅ 小玉会<b>作答</b>：{escape(ev.reason)}</p>'
    verdict += (f'<p class="muted">{figures} · 检索用的查询：{escape(retrieval.query)} · 模式 {escape(mode)} · '
                f'知识库范围 {escape("、".join(scope))}{"" if knowledge_bases else "（默认）"}</p>'
                f'<details open><summary>回答预览</summary><pre class="chunk">{escape(answer.text)}</pre></details>')
    rows = [[n, round(h.score, 4), round(h.lexical, 3), round(h.dense, 3), h.lexical_rank or "—", h.dense_rank or "—",
             h.chunk.source, h.chunk.section, h.chunk.kb] for n, h in enumerate(retrieval.hits, 1)]
    terms = found.terms
    cards = []
    for n, h in enumerate(retrieval.hits, 1):
        matched = [t for t in dict.fromkeys(terms) if t.lower() in h.chunk.text.lower()]
        cards.append(
            f'<div class="hit"><p><b>{n}. {escape(h.chunk.title)}</b> {escape(h.chunk.section)} '
            f'<span class="muted">{escape(h.chunk.kb)}/{escape(h.chunk.source)} · 融合 {h.score:.4f} · '
            f'BM25 {h.lexical:.2f} · '
            f'余弦 {h.dense:.3f}</span></p><p class="muted">命中词：{escape("、".join(matched)) or "（无）"}</p>'
            f'<pre class="chunk">{highlight(h.chunk.body, matched)}</pre></div>')
    return verdict, rows, '<div class="xy-report">' + "".join(cards) + "</div>" if cards else "<p>没有检索到任何片段。</p>"


# ---- evals ------------------------------------------------------------------------------------------------------
def golden_choices(services: Services) -> list[str]:
    return list(golden_sets(services.settings.data_dir))


def run_choices(runs: RunStore) -> list[tuple[str, str]]:
    return [(runs.label(i), i) for i in runs.ids()]


def run_golden(services: Services, runs: RunStore, golden: str, top_k: float,
               progress: Callable[[int, int], None] | None = None) -> tuple[str, str | None]:
    """Run a golden set through the live service, store the run, and return (report html, run id)."""
    path = golden_sets(services.settings.data_dir).get(golden or "")
    if path is None:
        return f"<p>{fail('请选择一个评测集')}</p>", None
    try:
        items = load_golden(path)
    except ValueError as exc:
        return f"<p>{fail(f'评测集无法读取：{exc}')}</p>", None
    with services.chat.known_questions_without(path.name):  # its own known questions would make it a memory test
        result = run_eval(services.chat, items, int(top_k), progress)
    docs = services.knowledge.documents()
    run = run_record(result, golden, int(top_k), len(docs), sum(len(d.chunk_ids) for d in docs))
    run_id = runs.save(run)
    return report.run_html(run), run_id


def show_run(runs: RunStore, run_id: str | None) -> str:
    if not run_id:
        return ""
    try:
        return report.run_html(runs.load(run_id))
    except KeyError:
        return f"<p>{fail(f'找不到评测记录 {run_id}')}</p>"


def compare_runs(runs: RunStore, before: str | None, after: str | None) -> str:
    if not before or not after:
        return f"<p>{fail('请选择两次评测：之前和之后')}</p>"
    try:
        return report.compare_html(compare(runs.load(before), runs.load(after)))
    except KeyError as exc:
        return f"<p>{fail(f'找不到评测记录 {exc.args[0]}')}</p>"


# ---- question log -----------------------------------------------------------------------------------------------
def log_rows(services: Services, view: str, threshold: float, limit: float = 200, contains: str = "") -> list[list]:
    """Resident questions, newest first ("eval" runs left out). 低置信度: answered with top similarity < threshold."""
    refused = True if view == "已拒答" else None
    below = float(threshold) if view == "低置信度" else None
    rows = services.staff.questions(QuestionQuery(int(limit), refused, None, below, (Channel.EVAL,),
                                                  (contains or "").strip()))
    return [[q.id, datetime.fromtimestamp(q.ts).strftime("%m-%d %H:%M"), q.channel, q.question, "是" if q.refused else "否",
             "—" if q.dense_top is None else round(q.dense_top, 3), q.evidence,
             "；".join(f"{c['source']} {c['section'].rsplit(' > ', 1)[-1]}" for c in q.citations),
             _RATINGS.get(q.rating or "", ""), q.comment] for q in rows]


# ---- 高频诉求 ------------------------------------------------------------------------------------------------------
def topics_report(services: Services, days: float, directory: Path) -> tuple[str, list[list], pd.DataFrame, str | None]:
    """(summary, topic table, weekly chart data, CSV path) of the last `days` days, from one StaffViews.topics call.
    The CSV (UTF-8 with BOM, so Excel reads the Chinese) goes to a fresh folder under `directory`."""
    days = int(days)
    topics = services.staff.topics(days)
    rows = [[t.label, t.count, t.refused, t.down_votes, " / ".join(t.examples)] for t in topics]
    chart = pd.DataFrame([{"周": week, "话题": t.label, "提问数": n} for t in topics[:CHART_TOPICS] for week, n in t.weeks],
                         columns=["周", "话题", "提问数"])
    if not topics:
        return f"近 {days} 天没有居民提问。", rows, chart, None
    directory.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=directory)) / f"高频诉求-近{days}天-{datetime.now():%Y%m%d}.csv"
    weeks = [w for w, _ in topics[0].weeks]
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*TOPIC_HEADERS, *weeks])
        for t, row in zip(topics, rows, strict=True):
            out.writerow([*row, *(n for _, n in t.weeks)])
    asked = sum(t.count for t in topics)
    return (f"近 {days} 天居民提问 {asked} 条，归为 {len(topics)} 个话题（评测提问不计；示例中的电话、证件号和车牌已打码）。",
            rows, chart, str(path))


def source_choices(services: Services) -> list[tuple[str, str]]:
    return [(f"{d.title}（{d.source}）", d.source) for d in services.knowledge.documents()]


def section_choices(services: Services, source: str | None) -> list[str]:
    """The articles of a document as golden sets name them: "第四十五条" (section_matches compares the leaf)."""
    return list(dict.fromkeys(c.article for c in services.knowledge.chunks_of(source or "") if c.section))


def staff_set_choices(services: Services) -> list[str]:
    sets = [p.stem for label, p in golden_sets(services.settings.data_dir).items() if not label.startswith("evals/")]
    return sets if DEFAULT_STAFF_SET in sets else [DEFAULT_STAFF_SET, *sets]


def pick_logged(services: Services, log_id: float | None) -> str:
    """A logged question, to be given its expected source. Deliberately not pre-filled from what the answer cited:
    an eval item that repeats the answer's own citation can only ever pass; staff choose the right document."""
    q = _logged(services, log_id)
    return q.question if q else ""


def add_to_golden(services: Services, log_id: float | None, set_name: str, source: str | None, section: str | None,
                  key_facts: str, out_of_scope: bool) -> str:
    q = _logged(services, log_id)
    if q is None:
        return fail("请先在上面的表格里点选一个问题")
    doc = next((d for d in services.knowledge.documents() if d.source == source), None)
    if not out_of_scope and doc is None:
        return fail("请选择预期出处（知识库中的文档），或勾选“应当拒答”")
    # A follow-up is kept as the standalone query it was rewritten to: the log has not the turns before it.
    question = q.query if q.query and q.query != q.question else q.question
    try:
        path = staff_set_path(services.settings.data_dir, set_name or DEFAULT_STAFF_SET)
        item = add_eval_item(path, question, "" if out_of_scope else source or "", (section or "").strip(),
                             "无关" if out_of_scope else doc.category if doc else "",
                             tuple(f.strip() for f in re.split(r"[,，;；\n]", key_facts or "") if f.strip()),
                             not out_of_scope, from_log=q.id, asked=q.question)
    except GoldenSetError as exc:
        return fail(str(exc))
    where = "应当拒答" if out_of_scope else f"{item['sources'][0]} {section or ''}".strip()
    return ok(f"已加入评测集 数据目录/{path.name}（{where}），可在“评测”里运行")


def _logged(services: Services, log_id: float | None):
    try:
        return services.staff.question(int(log_id)) if log_id else None
    except NotFound:
        return None


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


# ---- hand-off requests (转人工 / 留言) ------------------------------------------------------------------------------
REQUEST_HEADERS = ["编号", "提交时间", "渠道", "状态", "留言", "联系方式", "答复"]
REQUEST_VIEWS = {"待处理": RequestStatus.OPEN, "已答复": RequestStatus.ANSWERED, "已关闭": RequestStatus.CLOSED,
                 "全部": None}
REPLY_STATUSES = {"已答复": RequestStatus.ANSWERED, "已关闭": RequestStatus.CLOSED}
_STATUS_NAMES = {RequestStatus.OPEN: "待处理", RequestStatus.ANSWERED: "已答复", RequestStatus.CLOSED: "已关闭"}
_RATINGS = {"up": "👍", "down": "👎"}


def request_rows(services: Services, view: str) -> list[list]:
    """The queue, oldest first, personal numbers masked (the full contact is in the request's own view)."""
    return [[r.id, datetime.fromtimestamp(r.created_at).strftime("%m-%d %H:%M"), r.channel, _STATUS_NAMES[r.status],
             r.message, r.contact, r.reply] for r in services.desk.queue(REQUEST_VIEWS.get(view))]


def request_detail(services: Services, request_id: str | None) -> str:
    """One request: message and contact in full, the answer it was opened from, and the conversation before it."""
    if not request_id:
        return "<p>点选上表中的一条留言，查看详情并答复。</p>"
    try:
        r = services.desk.detail(request_id)
    except NotFound as exc:
        return f"<p>{fail(exc.user_message)}</p>"
    logged = services.desk.answer_of(r)
    turns = "".join(f'<p><b>{"居民" if t.role == "user" else "小玉"}：</b></p><pre class="chunk">{escape(t.content)}</pre>'
                    for t in r.history) or "<p class='muted'>（没有对话记录）</p>"
    rated = (f"<p><b>针对的回答：</b>{escape(logged.question)}</p><pre class='chunk'>{escape(logged.answer)}</pre>"
             if logged else "")
    return (f'<div class="xy-report"><h2>留言 {escape(r.id)}（{_STATUS_NAMES[r.status]}）</h2>'
            f"<p><b>提交时间：</b>{datetime.fromtimestamp(r.created_at):%Y-%m-%d %H:%M} · <b>渠道：</b>{escape(r.channel)}</p>"
            f"<p><b>联系方式：</b>{escape(r.contact) or '（未填写）'}</p>"
            f'<p><b>留言：</b></p><pre class="chunk">{escape(r.message)}</pre>{rated}'
            f"<details open><summary>之前的对话（{len(r.history) // 2} 轮）</summary>{turns}</details>"
            + (f'<p><b>已答复：</b></p><pre class="chunk">{escape(r.reply)}</pre>' if r.reply else "") + "</div>")


def reply_request(services: Services, request_id: str | None, reply: str, status: str) -> str:
    if not request_id:
        return fail("请先在上面的表格里点选一条留言")
    try:
        r = services.desk.reply(request_id, reply, REPLY_STATUSES.get(status, RequestStatus.ANSWERED))
    except XiaoyuError as exc:
        return fail(exc.user_message)
    where = "微信居民下次发消息时会收到" if r.channel == Channel.WECHAT else "居民再次打开小玉时会看到"
    return ok(f"留言 {r.id} 已{_STATUS_NAMES[r.status][1:]}" + (f"：{where}答复" if r.reply else ""))
