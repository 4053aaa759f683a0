"""The staff console as Gradio Blocks, mounted at /console behind a staff login. Wiring only: handlers.py decides."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import gradio as gr
from fastapi import FastAPI

from assistant.config import Settings
from assistant.index.kb import DEFAULT_KB
from assistant.services import Services
from assistant.state.accounts import StaffAccounts
from ingest.loaders import CATEGORIES, SUPPORTED
from ui.console import handlers as h
from ui.console import levers as lv
from ui.console import report
from ui.console.runs import RunStore

PATH = "/console"
CSS = report.CSS + """
.xy-report pre.chunk, pre.chunk { white-space: pre-wrap; font-family: inherit; margin: .3rem 0 .8rem; }
.xy-report mark { background: #fde68a; padding: 0 1px; }
.xy-report .hit { border-bottom: 1px solid #e5e7eb; margin-bottom: .5rem; }
.verdict { font-size: 1.05rem; margin: .2rem 0; }
.verdict.refuse { color: #b91c1c; } .verdict.answer { color: #047857; }
"""
# Local fonts only: the default theme pulls web fonts from a CDN, and the console must work offline.
THEME = gr.themes.Soft(primary_hue="red", font=["Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "sans-serif"],
                       font_mono=["Noto Sans Mono CJK SC", "monospace"])


def build_console(get_services: Callable[[], Services], settings: Settings) -> gr.Blocks:
    """`get_services` is called per event: the app builds its services in its lifespan, after this runs."""
    runs = RunStore(settings.data_dir / "eval-runs")
    # CSV exports: under the system temp dir, which Gradio serves files from; not the data dir (nothing to keep).
    exports = Path(tempfile.gettempdir()) / "xiaoyu-exports"
    preview = lv.ThresholdPreview()  # the dev and test questions' scores, shared by the console's sessions

    def docs_update(kb: str | None = DEFAULT_KB):
        services = get_services()
        return h.kb_summary(services, kb or DEFAULT_KB), h.document_rows(services, kb or DEFAULT_KB)

    def kb_pickers(picked: str | None = DEFAULT_KB, scope: list[str] | None = None):
        """The knowledge-base table and both pickers after a create or delete: a vanished pick falls back to the
        default knowledge base, a vanished scope entry is dropped."""
        services = get_services()
        choices = h.kb_choices(services)
        names = [n for _, n in choices]
        return (h.kb_rows(services), gr.Dropdown(choices=choices, value=picked if picked in names else DEFAULT_KB),
                gr.Dropdown(choices=choices, value=[n for n in scope or () if n in names], multiselect=True))

    def run_dropdowns(selected: str | None = None):
        choices = h.run_choices(runs)
        latest = choices[0][1] if choices else None
        previous = choices[1][1] if len(choices) > 1 else latest
        return (gr.Dropdown(choices=choices, value=selected or latest), gr.Dropdown(choices=choices, value=previous),
                gr.Dropdown(choices=choices, value=latest))

    with gr.Blocks(title="小玉 · 内容工作台", analytics_enabled=False) as console:
        gr.Markdown(f"# 小玉 · 内容工作台\n管理知识库、测试检索、运行评测、查看居民提问。[退出登录]({PATH}/logout)")
        with gr.Tabs():
            # ---- knowledge base --------------------------------------------------------------------------------
            with gr.Tab("知识库", id="kb"):
                with gr.Row():
                    kb_pick = gr.Dropdown(label="知识库", choices=[DEFAULT_KB], value=DEFAULT_KB, scale=1,
                                          info="下面的文档表、上传、删除和重新导入都作用于这个知识库")
                    kb_info = gr.Markdown()
                docs = gr.Dataframe(headers=h.DOC_HEADERS, interactive=False, wrap=True, max_height=380,
                                    column_widths=["18%", "20%", "6%", "14%", "9%", "6%", "11%", "16%"])
                with gr.Row():
                    with gr.Column(scale=3):
                        selected = gr.Textbox(label="选中的文档", interactive=False)
                        with gr.Row():
                            confirm = gr.Checkbox(label="确认删除", scale=1)
                            delete_btn = gr.Button("删除文档", variant="stop", scale=1)
                            reingest_btn = gr.Button("重新导入（选中文档所在目录；未选则全部）", scale=2)
                        kb_status = gr.Markdown()
                        chunks = gr.HTML()
                    with gr.Column(scale=2):
                        gr.Markdown("### 上传新文件")
                        upload = gr.File(label=f"文件（{' '.join(SUPPORTED)}）", file_types=list(SUPPORTED),
                                         type="filepath")
                        title = gr.Textbox(label="标题", placeholder="留空则取文件中的标题")
                        category = gr.Dropdown(list(CATEGORIES), label="分类", value=None)
                        issuer = gr.Textbox(label="发文机关", placeholder="如：国务院")
                        date = gr.Textbox(label="日期", placeholder="2024-05-01")
                        upload_btn = gr.Button("上传并导入", variant="primary")
                        upload_status = gr.Markdown()

            # ---- knowledge bases: list, create, delete ---------------------------------------------------------
            with gr.Tab("知识库管理", id="kbs"):
                gr.Markdown("每个知识库有自己的文档和索引。居民提问默认检索“默认检索范围”为“是”的知识库；"
                            "网页小玉用 data-knowledge-bases、接口用 knowledge_bases 指定其他范围。")
                kb_table = gr.Dataframe(headers=h.KB_HEADERS, interactive=False, wrap=True, max_height=300)
                with gr.Row():
                    with gr.Column(scale=1):
                        gr.Markdown("### 新建知识库")
                        new_kb_name = gr.Textbox(label="名称", placeholder="字母、数字、- 和 _，如 laws")
                        new_kb_title = gr.Textbox(label="标题", placeholder="如：法律法规")
                        create_kb_btn = gr.Button("新建", variant="primary")
                    with gr.Column(scale=1):
                        gr.Markdown("### 删除知识库\n连同其中的文档、索引和上传的文件一起删除；默认知识库不能删除。")
                        kb_selected = gr.Textbox(label="选中的知识库", interactive=False)
                        with gr.Row():
                            confirm_kb = gr.Checkbox(label="确认删除知识库", scale=1)
                            delete_kb_btn = gr.Button("删除知识库", variant="stop", scale=1)
                kbs_status = gr.Markdown()

            # ---- hit testing -----------------------------------------------------------------------------------
            with gr.Tab("命中测试", id="hits"):
                gr.Markdown("输入居民会问的问题，看检索命中哪些条文、各路得分，以及小玉会作答还是拒答。"
                            "走的是对话的同一条代码路径（默认混合模式和 top_k 与对话相同）。")
                with gr.Row():
                    query = gr.Textbox(label="问题", placeholder="例如：业委会选出来以后要去哪里备案？", scale=4)
                    mode = gr.Radio(list(h.MODES), value="hybrid", label="检索模式", scale=2)
                    top_k = gr.Slider(1, 20, value=settings.retrieval.top_k, step=1, label="top_k", scale=1)
                hit_scope = gr.Dropdown(label="知识库范围（不选 = 默认范围，与居民提问相同）", choices=[], value=[],
                                        multiselect=True)
                hit_btn = gr.Button("测试", variant="primary")
                verdict = gr.HTML()
                hit_table = gr.Dataframe(headers=h.HIT_HEADERS, interactive=False, wrap=True)
                hit_cards = gr.HTML()

            # ---- evals -----------------------------------------------------------------------------------------
            with gr.Tab("评测", id="evals"):
                with gr.Row():
                    golden = gr.Dropdown(label="评测集", choices=[], scale=3)
                    eval_k = gr.Slider(1, 20, value=5, step=1, label="top_k", scale=1)
                    run_btn = gr.Button("运行评测", variant="primary", scale=1)
                with gr.Row():
                    shown_run = gr.Dropdown(label="查看已保存的评测", choices=[], scale=4)
                run_view = gr.HTML()
                gr.Markdown("### 对比两次评测（例如修改文档之前和之后）")
                with gr.Row():
                    before = gr.Dropdown(label="之前", choices=[])
                    after = gr.Dropdown(label="之后", choices=[])
                    compare_btn = gr.Button("对比")
                compare_view = gr.HTML()

            # ---- question log ----------------------------------------------------------------------------------
            with gr.Tab("提问记录", id="log"):
                with gr.Row():
                    view = gr.Radio(list(h.LOG_VIEWS), value="全部", label="筛选", scale=2)
                    threshold = gr.Slider(0.5, 1.0, value=settings.staff.low_confidence_below, step=0.005,
                                          label="低置信度：语义相似度低于", scale=2)
                    contains = gr.Textbox(label="问题包含", scale=2)
                    refresh_log = gr.Button("刷新", scale=1)
                log = gr.Dataframe(headers=h.LOG_HEADERS, interactive=False, wrap=True, max_height=420,
                                   column_widths=["5%", "8%", "6%", "26%", "5%", "7%", "16%", "13%", "5%", "9%"])
                log_detail = gr.HTML(lv.log_detail(None, None))
                gr.Markdown("### 加入评测集\n点选上表中的一个问题，选出**正确的**出处并填写条文（不是回答引用的那条，"
                            "除非它就是对的；或标记为应当拒答），加入数据目录里的评测集（默认 staff.jsonl）。")
                with gr.Row():
                    log_id = gr.Number(label="提问编号", precision=0, interactive=False, scale=1)
                    log_question = gr.Textbox(label="问题", interactive=False, scale=4)
                with gr.Row():
                    expected_source = gr.Dropdown(label="预期出处（文档）", choices=[], scale=3)
                    expected_section = gr.Dropdown(label="预期条文", choices=[], allow_custom_value=True, scale=2)
                    out_of_scope = gr.Checkbox(label="应当拒答", scale=1)
                with gr.Row():
                    key_facts = gr.Textbox(label="要点（可选，逗号分隔，应出现在回答中）", scale=3)
                    set_name = gr.Dropdown(label="评测集", choices=[h.DEFAULT_STAFF_SET], value=h.DEFAULT_STAFF_SET,
                                           allow_custom_value=True, scale=2)
                    add_btn = gr.Button("加入评测集", variant="primary", scale=1)
                add_status = gr.Markdown()

            # ---- staff levers: pinned answers, the refusal threshold, synonyms ---------------------------------------
            with gr.Tab("调优", id="levers"):
                gr.Markdown("### 置顶答复\n匹配规则命中的居民问题直接得到工作人员写的答复和引用（网页、接口、公众号都生效），"
                            "不再检索。闲聊和提示注入仍先处理。引用的原文会与文档核对。")
                pins_table = gr.Dataframe(headers=lv.PIN_HEADERS, interactive=False, wrap=True, max_height=300,
                                          column_widths=["10%", "8%", "16%", "34%", "16%", "8%", "8%"])
                with gr.Row():
                    pin_id = gr.Textbox(label="选中的置顶答复", interactive=False, scale=3)
                    unpin_btn = gr.Button("删除置顶答复", variant="stop", scale=1)
                with gr.Row():
                    pin_kind = gr.Radio(list(lv.PIN_KINDS), value="keywords", label="匹配方式", scale=2)
                    pin_pattern = gr.Textbox(label="匹配规则", placeholder="关键词用空格隔开，如：业委会 备案", scale=3)
                pin_text = gr.Textbox(label="置顶答复（居民看到的文字）", lines=3)
                with gr.Row():
                    pin_source = gr.Dropdown(label="引用的文档", choices=[], scale=3)
                    pin_section = gr.Dropdown(label="条文", choices=[], allow_custom_value=True, scale=2)
                pin_quote = gr.Textbox(label="引用原文（从文档中原样复制）", lines=2)
                pin_btn = gr.Button("添加置顶答复", variant="primary")
                pin_status = gr.Markdown()

                gr.Markdown("### 拒答阈值")
                threshold_md = gr.Markdown()
                with gr.Row():
                    score_btn = gr.Button("计算评测集得分（dev + test，约几分钟）", scale=2)
                    proposed = gr.Slider(0.01, 0.99, value=0.5, step=0.005, label="试用阈值", scale=3)
                    preview_btn = gr.Button("预览", scale=1)
                preview_md = gr.Markdown()
                preview_table = gr.Dataframe(headers=lv.PREVIEW_HEADERS, interactive=False)
                changed_table = gr.Dataframe(headers=["评测集", "问题", "应当", "可回答概率", "变化"], interactive=False,
                                             wrap=True, max_height=300)
                save_threshold_btn = gr.Button("保存这个阈值（立即生效）", variant="primary")
                threshold_status = gr.Markdown()

                gr.Markdown("### 同义词\n左边是知识库自带的表（只读）；右边是补充表，保存在数据目录里，叠加在它上面："
                            "每行“居民用语 规范用语…”，同一个词以补充表为准，写“词 -”去掉知识库里的这一条。")
                with gr.Row():
                    bundled_synonyms = gr.Textbox(label="知识库自带（synonyms.tsv）", lines=10, max_lines=20,
                                                  interactive=False)
                    override_synonyms = gr.Textbox(label="补充同义词（数据目录 synonyms.tsv）", lines=10, max_lines=20)
                with gr.Row():
                    synonyms_btn = gr.Button("检查并保存", variant="primary", scale=1)
                    synonyms_status = gr.Markdown()
                with gr.Row():
                    expand_query = gr.Textbox(label="试一个问题", placeholder="维修基金能修屋顶吗", scale=3)
                    expand_result = gr.Markdown()

                gr.Markdown("### 已知问题\n居民问过、出处已知的问题：新问题与其中一条很接近时，检索优先它的条文。"
                            "每行“问题<TAB>文件标题<TAB>第N条<TAB>来源”；标题写 - 表示不回答这类问题，"
                            "写 ~ 并在第三栏写 thanks、greeting 等表示闲聊。右边的补充表保存在数据目录里。")
                with gr.Row():
                    bundled_known = gr.Textbox(label="知识库自带（known_questions.tsv）", lines=10, max_lines=20,
                                               interactive=False)
                    override_known = gr.Textbox(label="补充已知问题（数据目录 known_questions.tsv）", lines=10,
                                                max_lines=20)
                with gr.Row():
                    known_btn = gr.Button("检查并保存", variant="primary", scale=1)
                    known_status = gr.Markdown()

            # ---- 高频诉求 ---------------------------------------------------------------------------------------
            with gr.Tab("高频诉求", id="topics"):
                gr.Markdown("居民最常问的事：按意思归类的提问（语义向量 + 关键词），每类以它的特征词命名，"
                            "附拒答数和差评（👎）数。评测提问不计。")
                with gr.Row():
                    topic_days = gr.Radio(list(h.TOPIC_WINDOWS), value=28, label="时间范围", scale=3)
                    topic_btn = gr.Button("生成报告", variant="primary", scale=1)
                    topic_csv = gr.DownloadButton("导出 CSV", visible=False, scale=1)
                topic_info = gr.Markdown()
                topic_table = gr.Dataframe(headers=h.TOPIC_HEADERS, interactive=False, wrap=True, max_height=420,
                                           column_widths=["22%", "8%", "7%", "7%", "56%"])
                topic_chart = gr.BarPlot(x="周", y="提问数", color="话题", title=f"各周提问数（前 {h.CHART_TOPICS} 个话题）",
                                         x_title="ISO 周", y_title="提问数", height=320)

            # ---- hand-off requests (转人工 / 留言) --------------------------------------------------------------------
            with gr.Tab("转人工", id="requests"):
                gr.Markdown("居民在网页小玉或公众号里“转人工 / 留言”的请求。列表中的电话、证件号已打码；"
                            "点选一行查看完整联系方式和之前的对话，然后答复或关闭。")
                with gr.Row():
                    request_view = gr.Radio(list(h.REQUEST_VIEWS), value="待处理", label="状态", scale=3)
                    refresh_requests = gr.Button("刷新", scale=1)
                requests_table = gr.Dataframe(headers=h.REQUEST_HEADERS, interactive=False, wrap=True, max_height=360,
                                              column_widths=["11%", "9%", "7%", "7%", "30%", "14%", "22%"])
                request_id = gr.Textbox(label="选中的留言", interactive=False)
                request_view_html = gr.HTML()
                with gr.Row():
                    reply_text = gr.Textbox(label="答复（居民会看到）", lines=3, scale=4)
                    reply_status = gr.Radio(list(h.REPLY_STATUSES), value="已答复", label="答复后", scale=1)
                reply_btn = gr.Button("发送答复", variant="primary")
                reply_result = gr.Markdown()

        # ---- wiring -------------------------------------------------------------------------------------------
        def on_load():
            services = get_services()
            sets = h.golden_choices(services)
            return (*docs_update(), gr.Dropdown(choices=sets, value=sets[0] if sets else None),
                    *run_dropdowns(), h.log_rows(services, "全部", settings.staff.low_confidence_below),
                    gr.Dropdown(choices=h.source_choices(services)),
                    gr.Dropdown(choices=h.staff_set_choices(services), value=h.DEFAULT_STAFF_SET))

        console.load(on_load, outputs=[kb_info, docs, golden, shown_run, before, after, log, expected_source,
                                       set_name])

        def on_load_levers():
            services = get_services()
            info, current = lv.threshold_info(services)
            return (lv.pin_rows(services), gr.Dropdown(choices=h.source_choices(services)), info,
                    gr.Slider(value=current if current is not None else 0.5, interactive=current is not None),
                    *lv.synonym_texts(services), *lv.known_texts(services))

        console.load(on_load_levers, outputs=[pins_table, pin_source, threshold_md, proposed, bundled_synonyms,
                                              override_synonyms, bundled_known, override_known])

        def on_doc_select(kb, evt: gr.SelectData):
            source = evt.row_value[0] if evt.row_value else ""
            return source, h.chunks_html(get_services(), source, kb)

        docs.select(on_doc_select, inputs=kb_pick, outputs=[selected, chunks])
        # Another knowledge base: its documents, and nothing selected of the previous one's.
        kb_pick.change(lambda kb: (*docs_update(kb), "", "", False), kb_pick,
                       [kb_info, docs, selected, chunks, confirm])
        upload_btn.click(lambda *a: h.upload_document(get_services(), *a),
                         [upload, title, category, issuer, date, kb_pick], upload_status).then(
            docs_update, kb_pick, [kb_info, docs])
        delete_btn.click(lambda s, c, kb: h.delete_document(get_services(), s, c, kb), [selected, confirm, kb_pick],
                         kb_status).then(lambda kb: (*docs_update(kb), "", "", False), kb_pick,
                                         [kb_info, docs, selected, chunks, confirm])
        reingest_btn.click(lambda s, kb: h.reingest(get_services(), s, kb), [selected, kb_pick], kb_status).then(
            docs_update, kb_pick, [kb_info, docs])

        # Knowledge bases: the table and the pickers on the other tabs follow each create and delete.
        console.load(kb_pickers, outputs=[kb_table, kb_pick, hit_scope])

        def on_kb_select(evt: gr.SelectData):
            return evt.row_value[0] if evt.row_value else ""

        kb_table.select(on_kb_select, outputs=kb_selected)
        create_kb_btn.click(lambda n, t: h.create_kb(get_services(), n, t), [new_kb_name, new_kb_title],
                            kbs_status).then(kb_pickers, [kb_pick, hit_scope], [kb_table, kb_pick, hit_scope])
        delete_kb_btn.click(lambda n, c: h.delete_kb(get_services(), n, c), [kb_selected, confirm_kb],
                            kbs_status).then(lambda *a: (*kb_pickers(*a), "", False), [kb_pick, hit_scope],
                                             [kb_table, kb_pick, hit_scope, kb_selected, confirm_kb])

        hit_inputs = [query, mode, top_k, hit_scope]
        hit_btn.click(lambda *a: h.hit_test(get_services(), *a), hit_inputs, [verdict, hit_table, hit_cards])
        query.submit(lambda *a: h.hit_test(get_services(), *a), hit_inputs, [verdict, hit_table, hit_cards])

        def on_run(golden_label, k, progress=gr.Progress()):  # noqa: B008  (Gradio's documented way to get progress)
            html, run_id = h.run_golden(get_services(), runs, golden_label, k,
                                        lambda n, total: progress((n, total), desc="评测中", unit="题"))
            return html, *run_dropdowns(run_id)

        run_btn.click(on_run, [golden, eval_k], [run_view, shown_run, before, after])
        shown_run.change(lambda r: h.show_run(runs, r), shown_run, run_view)
        compare_btn.click(lambda a, b: h.compare_runs(runs, a, b), [before, after], compare_view)

        log_inputs = [view, threshold]
        for trigger in (refresh_log.click, view.change, contains.submit):
            trigger(lambda v, t, c: h.log_rows(get_services(), v, t, contains=c), [*log_inputs, contains], log)

        def on_log_select(evt: gr.SelectData):
            services = get_services()
            question_id = evt.row_value[0] if evt.row_value else None
            # The expected source starts empty: staff choose it; it is never taken from the answer's citation.
            return (question_id, h.pick_logged(services, question_id), lv.log_detail(services, question_id),
                    gr.Dropdown(choices=h.source_choices(services), value=None), gr.Dropdown(choices=[], value=None),
                    False)

        log.select(on_log_select,
                   outputs=[log_id, log_question, log_detail, expected_source, expected_section, out_of_scope])
        # .input, not .change: picking a logged question sets the source and its article together.
        expected_source.input(
            lambda s: gr.Dropdown(choices=h.section_choices(get_services(), s), value=None), expected_source,
            expected_section)
        add_btn.click(lambda *a: h.add_to_golden(get_services(), *a),
                      [log_id, set_name, expected_source, expected_section, key_facts, out_of_scope], add_status).then(
            lambda: gr.Dropdown(choices=h.golden_choices(get_services())), outputs=golden)

        # Staff levers: pins, the threshold preview, synonyms.
        def on_pin_select(evt: gr.SelectData):
            return evt.row_value[0] if evt.row_value else ""

        pins_table.select(on_pin_select, outputs=pin_id)
        pin_source.input(lambda s: gr.Dropdown(choices=h.section_choices(get_services(), s), value=None), pin_source,
                         pin_section)
        pin_btn.click(lambda *a: lv.add_pin(get_services(), *a),
                      [pin_kind, pin_pattern, pin_text, pin_source, pin_section, pin_quote], pin_status).then(
            lambda: lv.pin_rows(get_services()), outputs=pins_table)
        unpin_btn.click(lambda p: lv.delete_pin(get_services(), p), pin_id, pin_status).then(
            lambda: (lv.pin_rows(get_services()), ""), outputs=[pins_table, pin_id])

        def on_score(t, progress=gr.Progress()):  # noqa: B008
            preview.compute(get_services(), lambda n, total: progress((n, total), desc="计算中", unit="题"))
            return lv.preview_threshold(get_services(), preview, t)

        score_btn.click(on_score, proposed, [preview_md, preview_table, changed_table])
        preview_btn.click(lambda t: lv.preview_threshold(get_services(), preview, t), proposed,
                          [preview_md, preview_table, changed_table])
        save_threshold_btn.click(lambda t: lv.save_threshold(get_services(), t), proposed, threshold_status).then(
            lambda: lv.threshold_info(get_services())[0], outputs=threshold_md)
        synonyms_btn.click(lambda t: lv.save_synonyms(get_services(), t), override_synonyms, synonyms_status)
        expand_query.submit(lambda q: lv.try_expansion(get_services(), q), expand_query, expand_result)
        known_btn.click(lambda t: lv.save_known(get_services(), t), override_known, known_status)

        def on_topics(days):
            info, rows, chart, path = h.topics_report(get_services(), days, exports)
            return info, rows, chart, gr.DownloadButton(value=path, visible=path is not None)

        topic_btn.click(on_topics, topic_days, [topic_info, topic_table, topic_chart, topic_csv])
        # Hand-off requests: the queue, a request in full, reply or close.
        console.load(lambda: h.request_rows(get_services(), "待处理"), outputs=requests_table)
        for trigger in (refresh_requests.click, request_view.change):
            trigger(lambda v: h.request_rows(get_services(), v), request_view, requests_table)

        def on_request_select(evt: gr.SelectData):
            rid = evt.row_value[0] if evt.row_value else ""
            return rid, h.request_detail(get_services(), rid)

        requests_table.select(on_request_select, outputs=[request_id, request_view_html])
        reply_btn.click(lambda r, t, st: h.reply_request(get_services(), r, t, st), [request_id, reply_text, reply_status],
                        reply_result).then(
            lambda r, v: (h.request_detail(get_services(), r), h.request_rows(get_services(), v)),
            [request_id, request_view], [request_view_html, requests_table])
    return console


def _announce(message: str) -> None:
    print(f"\n{'=' * 72}\n{message}\n{'=' * 72}\n", file=sys.stderr, flush=True)


def mount_console(app: FastAPI, settings: Settings) -> None:
    """Mount the console at /console with the staff login (see assistant/accounts.py)."""
    if not settings.staff.console_enabled:
        return
    accounts = StaffAccounts.load(settings.staff.console_users.get_secret_value(), settings.data_dir, _announce)
    # bcrypt takes ~0.25 s of CPU by design. Run on the event loop, six clients guessing passwords stalled every
    # request; in one worker thread of its own, a flood of logins queues there and leaves a core for residents.
    hashing = anyio.CapacityLimiter(1)

    async def check(name: str, password: str) -> bool:
        return await anyio.to_thread.run_sync(accounts.check, name, password, limiter=hashing)

    gr.mount_gradio_app(
        app, build_console(lambda: app.state.services, settings), PATH,
        auth=check, auth_message="小玉内容工作台：请用工作人员账号登录",
        footer_links=[], ssr_mode=False, theme=THEME, css=CSS, show_error=True,
        max_file_size=int(settings.staff.max_upload_mb * 1_000_000),
    )
