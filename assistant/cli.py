"""`xiaoyu ingest | kb | serve | ask | eval | calibrate | hash-password`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path


def _settings(args):
    # --data-dir wins over XIAOYU_DATA_DIR; both reach the code through the one Settings object.
    from assistant.config import get_settings

    settings = get_settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return settings


def _progress():
    """A tqdm bar per phase (files, then chunks and sentences) on a terminal, with tqdm's own rate and time left
    ("12.3篇/s", "<00:41"); nothing when piped. The pipeline reports (phase, done, total), starting at done=0."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    phases = {"files": ("读取文件", "篇"), "chunks": ("嵌入片段", "段"), "sentences": ("嵌入句子", "句")}
    bars: dict = {}

    def update(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is not None and done < bar.n:  # the phase starts over (the next folder): a bar, and a rate, of its own
            bar.close()
            bar = None
        if bar is None:
            label, unit = phases.get(phase, (phase, "个"))
            bar = bars[phase] = tqdm(total=total, desc=label, unit=unit, leave=True, dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)  # update(), not n=: tqdm's smoothed rate (and so the time left) follows the steps
        if done >= total:
            bar.close()
            del bars[phase]

    return update


def _print_report(report) -> None:
    for source, reason in report.failed:
        print(f"  失败：{source} —— {reason}", file=sys.stderr)
    print(report.summary())


def cmd_ingest(args) -> int:
    from assistant.errors import XiaoyuError
    from assistant.services import build_services

    library = build_services(_settings(args)).library
    try:
        if args.kb not in library.names():
            library.create(args.kb)
            print(f"已新建知识库 {args.kb}", file=sys.stderr)
        knowledge = library.get(args.kb)
    except XiaoyuError as exc:
        print(exc.user_message, file=sys.stderr)
        return 2
    report = knowledge.ingest([Path(p) for p in args.paths], _progress())
    _print_report(report)
    return 1 if report.failed and not (report.added or report.updated or report.unchanged) else 0


def cmd_kb(args) -> int:
    """xiaoyu kb [list] | kb create NAME [--title T] | kb delete NAME"""
    from assistant.errors import XiaoyuError
    from assistant.services import build_services

    library = build_services(_settings(args)).library
    try:
        if args.action == "create":
            info, new = library.create(args.name, args.title or "")
            print(f"{'已新建' if new else '已存在'}知识库 {info.name}")
        elif args.action == "delete":
            library.delete(args.name)
            print(f"已删除知识库 {args.name}")
        else:
            for info in library.list():
                mark = "（默认范围）" if info.default else ""
                print(f"{info.name}\t{info.title}\t{info.documents} 个文档 · {info.chunks} 个片段 · 第 {info.generation} 代"
                      f"{mark}")
    except XiaoyuError as exc:
        print(exc.user_message, file=sys.stderr)
        return 2
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    settings = _settings(args)
    if args.workers > 1:
        return _serve_workers(args, settings)
    from assistant.api import create_app

    services = _ready_services(settings)
    app = create_app(settings, services)
    print(f"小玉已启动：http://{args.host}:{args.port}/  （API 文档 /docs）", file=sys.stderr)
    # proxy_headers off: forwarded headers are believed only from XIAOYU_TRUSTED_PROXIES (see create_app).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False)
    return 0


def _ready_services(settings):
    """The services, with the bundled knowledge base ingested into an empty data dir first."""
    from assistant.services import build_services

    services = build_services(settings)
    if services.knowledge.is_empty:
        print(f"数据目录 {settings.data_dir} 为空，正在导入知识库 {settings.knowledge_base} …", file=sys.stderr)
    report = services.knowledge.ensure_ingested(_progress())
    if report is not None:
        _print_report(report)
    return services


def _serve_workers(args, settings) -> int:
    """N uvicorn worker processes on one port, over one data dir.

    Embedded Chroma is not safe with several processes writing one directory, so without XIAOYU_CHROMA_HOST a
    `chroma run` over data_dir/chroma is started for the workers on loopback. The staff console keeps its login and
    its event queue in process memory, so it runs in one process of its own on --console-port; the workers serve
    the API, the widget and WeChat. Sessions, the question log and requests are the data dir's SQLite files (WAL,
    safe across processes); rate limits and WeChat retries are per worker unless XIAOYU_REDIS_URL is set."""
    import subprocess

    import uvicorn

    children: list[subprocess.Popen] = []
    env = {"XIAOYU_DATA_DIR": str(settings.data_dir.resolve())}
    try:
        if not settings.chroma_host:
            port = _free_port()
            children.append(_start_chroma(settings.data_dir / "chroma", port))
            env |= {"XIAOYU_CHROMA_HOST": "127.0.0.1", "XIAOYU_CHROMA_PORT": str(port)}
            settings = settings.model_copy(update={"chroma_host": "127.0.0.1", "chroma_port": port})
        if not settings.redis_url.get_secret_value():
            print("未设置 XIAOYU_REDIS_URL：限流计数和微信重试状态按进程各自保存", file=sys.stderr)
        _ready_services(settings)  # ingests once, here, before any worker starts; builds the onnx model once too
        os.environ.update(env)
        if settings.staff.console_enabled:
            children.append(subprocess.Popen([sys.executable, "-m", "assistant.cli", "serve", "--host", args.host,
                                              "--port", str(args.console_port)], env=os.environ.copy()))
            print(f"工作台：http://{args.host}:{args.console_port}/console", file=sys.stderr)
        os.environ["XIAOYU_CONSOLE_ENABLED"] = "false"
        # Each worker's embedder gets its share of the cores (unless set): N workers x all cores would oversubscribe.
        os.environ.setdefault("XIAOYU_EMBED_THREADS", str(max(1, (os.cpu_count() or 1) // args.workers)))
        print(f"小玉已启动：http://{args.host}:{args.port}/  （{args.workers} 个工作进程）", file=sys.stderr)
        uvicorn.run("assistant.api.app:create_app", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_level="info", proxy_headers=False)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_chroma(path: Path, port: int):
    from assistant.index.store import start_server

    try:
        return start_server(path, port)
    except RuntimeError as exc:
        raise SystemExit(f"chroma run 启动失败：{exc}") from None


def cmd_ask(args) -> int:
    from assistant.errors import XiaoyuError
    from assistant.services import build_services

    services = build_services(_settings(args))
    services.knowledge.ensure_ingested(_progress())
    try:
        answer = services.chat.ask(args.question, knowledge_bases=args.kb or None)
    except XiaoyuError as exc:
        print(exc.user_message, file=sys.stderr)
        return 2
    if args.json:
        from assistant.api.schemas import ChatResponse

        print(ChatResponse.of(answer).model_dump_json(indent=2))
        return 0
    print(answer.text)
    if answer.citations:
        print("\n出处：")
        for c in answer.citations:
            print(f"  【{c.index}】{c.title} {c.section}（{c.source}）")
    return 0


def cmd_eval(args) -> int:
    from assistant.services import build_services

    settings = _settings(args)
    services = build_services(settings)
    services.knowledge.ensure_ingested(_progress())
    # The same knowledge base answering without the LLM, to compare answer modes (None: there is no LLM).
    extractive = None
    if settings.llm.enabled and args.answer_mode != "llm":
        extractive = build_services(settings.model_copy(update={"llm": settings.llm.model_copy(
            update={"base_url": ""})})).chat
    chat = extractive if args.answer_mode == "extractive" and extractive is not None else services.chat

    def run_file(file: str, several: bool) -> dict:
        """Run one eval file and print its table (unless JSON goes to stdout); returns its JSON document."""
        from evals.conversations import (
            format_conversation_table,
            is_conversations_file,
            load_conversations,
            run_conversations,
        )
        from evals.golden import load_golden
        from evals.runner import answer_mode_results, format_answer_modes, format_table, run_eval

        to_stdout = args.json == "-"
        show = (lambda *a, **k: None) if to_stdout else print  # stdout carries nothing but the JSON then
        if several:
            show(f"== {file} ==")
        conversations = is_conversations_file(Path(file))
        origin = Path(file).name
        with chat.known_questions_without(origin), (extractive.known_questions_without(origin)
                                                    if extractive is not None and extractive is not chat
                                                    else nullcontext()):
            if conversations:
                result = run_conversations(chat, load_conversations(Path(file)), args.top_k)
                show(format_conversation_table(result))
            else:
                items = load_golden(Path(file))
                result = run_eval(chat, items, args.top_k)
                show(format_table(result))
                # Answer modes compare two runs of the same questions; conversations would need their own replay.
                show(format_answer_modes(answer_mode_results(extractive, items, args.top_k, args.answer_mode,
                                                             result)))
        if args.by_category:
            for cat, m in result.by_category.items():
                show(f"[{cat}] hit@5 {m['hit@5']:.3f} MRR {m['mrr']:.3f} section@1 {m['section_accuracy']:.3f} "
                     f"refusal {m['refusal_accuracy']:.3f} false-refusal {m['false_refusal_rate']:.3f}")
        if args.failures:
            for r in result.failures:
                got = "; ".join(f"{h['source'].split('/')[-1]} {h['section'].rsplit(' > ', 1)[-1]}" for h in r.retrieved[:3])
                show(f"- {r.id} {r.question!r} refused={r.refused} doc_rank={r.doc_rank} sec_rank={r.section_rank} "
                     f"facts={r.fact_recall:.2f}\n    expected {r.expected_sources} {r.expected_sections}\n    got {got}"
                     f"\n    {r.covered_reason}\n    expect={r.expected} kind={r.kind} article_rank={r.article_rank} "
                     f"answer {r.answer[:80]!r}")
        if args.report:
            from ui.console.report import standalone_html
            from ui.console.runs import run_record

            out = Path(args.report)
            if several:  # one page per file: out.html → out-dev.html, out-dev_conversations.html
                out = out.with_name(f"{out.stem}-{Path(file).stem}{out.suffix}")
            docs = services.knowledge.documents()
            run = run_record(result, file, args.top_k, len(docs), sum(len(d.chunk_ids) for d in docs))
            out.write_text(standalone_html(run), encoding="utf-8")
            print(f"报告已写入 {out}", file=sys.stderr)
        return {"file": file, "format": "conversations" if conversations else "questions", **result.to_json()}

    several = len(args.files) > 1
    runs = []
    for n, file in enumerate(args.files):
        if n and args.json != "-":
            print()
        try:
            runs.append(run_file(file, several))
        except (OSError, ValueError) as exc:  # a missing or malformed set: say which, without a traceback
            print(f"评测集无法读取：{exc}", file=sys.stderr)
            return 2
    if args.json:
        # One file: its run, as `--json out.json` always wrote it (plus file and format); several: all of them.
        doc = {"runs": runs} if several else runs[0]
        text = json.dumps(doc, ensure_ascii=False, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8")
    return 0


def cmd_hash_password(args) -> int:
    import getpass

    from assistant.state.accounts import AccountError, hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("工作台密码：")
        if getpass.getpass("再输入一次：") != password:
            print("两次输入的密码不一致", file=sys.stderr)
            return 2
    try:
        hashed = hash_password(password)
    except AccountError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"{args.user}:{hashed}")
    return 0


def cmd_calibrate(args) -> int:
    from assistant.services import build_services
    from evals.calibrate import calibrate, evidence_rows
    from evals.golden import load_golden

    settings = _settings(args)
    if args.answerability:
        return _calibrate_answerability(args, settings)
    if args.ranker:
        return _calibrate_ranker(args, settings)
    services = build_services(settings)
    services.knowledge.ensure_ingested(_progress())
    rows = evidence_rows(services.chat, [i for f in args.files for i in load_golden(Path(f))])
    cal = calibrate(rows, args.max_false_refusal)
    print(f"XIAOYU_RETRIEVAL_MIN_DENSE={cal.min_dense:.4f}")
    print(f"XIAOYU_RETRIEVAL_MIN_OVERLAP={cal.min_overlap:.2f}")
    print(f"# refusal accuracy {cal.refusal_accuracy:.3f}, false-refusal rate {cal.false_refusal_rate:.3f}")
    return 0


def _calibrate_answerability(args, settings) -> int:
    """Fit the answerability model on the given dev files (single questions and conversations) and save it."""
    from assistant.services import build_embedder, build_services
    from evals.answerability import fit, report, rows_from_conversations, rows_from_items
    from evals.golden import load_golden

    # The features are measured with the model off, so that an old model cannot shape what the new one learns from.
    off = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"answerability_model": "off"})})
    embedder = build_embedder(off)
    services = build_services(off, embedder)
    services.knowledge.ensure_ingested(_progress())
    rows = []
    for name in args.files:
        lines = [json.loads(line) for line in Path(name).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        with services.chat.known_questions_without(Path(name).name):  # as `xiaoyu eval` scores the set
            if lines and "turns" in lines[0]:
                rows += rows_from_conversations(services.chat, lines)
            else:
                rows += rows_from_items(services.chat, load_golden(Path(name)))
    model = fit(rows, embedder.name, args.max_false_refusal)
    out = Path(args.out) if args.out else settings.data_dir / "answerability.json"
    model.save(out)
    figures = report(model, rows)
    print(f"answerability model written to {out}: {figures['rows']} rows, threshold {figures['threshold']:.3f}, "
          f"refusal accuracy {figures['refusal_accuracy']:.3f}, false-refusal rate {figures['false_refusal_rate']:.3f}")
    return 0


def _calibrate_ranker(args, settings) -> int:
    """Fit the provision ranker on the given dev files (single questions and conversations) and save it."""
    from assistant.services import build_embedder, build_services
    from evals.conversations import is_conversations_file, load_conversations
    from evals.golden import load_golden
    from evals.ranker import Recorder, fit, pools_from_conversations, pools_from_items, report

    embedder = build_embedder(settings)
    services = build_services(settings, embedder)
    services.knowledge.ensure_ingested(_progress())
    recorder = Recorder()
    services.chat.record_pools(recorder)
    pools = []
    for name in map(Path, args.files):
        with services.chat.known_questions_without(name.name):  # as `xiaoyu eval` scores the set
            if is_conversations_file(name):
                pools += pools_from_conversations(services.chat, recorder, load_conversations(name))
            else:
                pools += pools_from_items(services.chat, recorder, load_golden(name))
    ranker = fit(pools, embedder.name)
    out = Path(args.out) if args.out else settings.data_dir / "ranker.json"
    ranker.save(out)
    before, after = report(None, pools), report(ranker, pools)
    print(f"provision ranker written to {out}: {after['pools']} questions, {after['reachable']} with the expected "
          f"provision in the pool; article hit@1 there {before['hit@1']:.3f} -> {after['hit@1']:.3f} (fitted rows)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from assistant.index.kb import DEFAULT_KB

    parser = argparse.ArgumentParser(prog="xiaoyu", description="小玉：党建 · 物业 · 调解政策问答助手")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir(p):
        p.add_argument("--data-dir", help="数据目录（默认 ./data 或 XIAOYU_DATA_DIR）")

    p = sub.add_parser("ingest", help="导入政策文件（目录或文件）")
    p.add_argument("paths", nargs="+")
    p.add_argument("--kb", default=DEFAULT_KB, help=f"导入到哪个知识库（默认 {DEFAULT_KB}；不存在时新建）")
    data_dir(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("kb", help="列出、新建或删除知识库")
    p.add_argument("action", nargs="?", choices=["list", "create", "delete"], default="list")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--title", help="create 时的显示名称")
    data_dir(p)
    p.set_defaults(func=cmd_kb)

    p = sub.add_parser("serve", help="启动 API、网页挂件和工作台")
    data_dir(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="工作进程数（默认 1；多于 1 时工作台另占 --console-port）")
    p.add_argument("--console-port", type=int, default=8001, help="--workers 大于 1 时工作台的端口（默认 8001）")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ask", help="提一个问题，打印回答和出处")
    p.add_argument("question")
    p.add_argument("--kb", action="append", help="只在这个知识库里找（可重复；默认：默认范围）")
    p.add_argument("--json", action="store_true", help="以 JSON 输出")
    data_dir(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("eval", help="在评测集上计算检索、拒答、闲聊和回答指标（单题集或多轮对话集）")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="评测集 JSONL；每行带 turns 的文件按多轮对话评测（用真实回答作为历史）")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--by-category", action="store_true", help="按分类（对话集：按轮次）列出指标")
    p.add_argument("--failures", action="store_true", help="列出失败的题目")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="输出全部指标和逐题结果的 JSON：不带路径时打印到标准输出（不再打印表格），带路径时写入文件")
    p.add_argument("--report", help="把评测报告写成独立的 HTML 文件（图表内嵌，离线可看；多个文件时按文件名加后缀）")
    p.add_argument("--answer-mode", choices=["configured", "extractive", "llm", "both"], default="configured",
                   help="按回答方式（抽取式 / LLM）统计要点召回、引用准确率和回退率；llm 需设置 XIAOYU_LLM_BASE_URL")
    data_dir(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("hash-password", help="为工作台账号生成 bcrypt 哈希（写入 XIAOYU_CONSOLE_USERS）")
    p.add_argument("--user", default="admin", help="用户名（默认 admin）")
    p.add_argument("--stdin", action="store_true", help="从标准输入读一行密码（脚本用）")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("calibrate", help="按评测集校准拒答阈值或可回答性模型（更换嵌入模型后需要）")
    p.add_argument("files", nargs="+", metavar="FILE", help="开发集 JSONL（--answerability 时也可以是多轮对话集）")
    p.add_argument("--max-false-refusal", type=float, default=0.03)
    p.add_argument("--answerability", action="store_true",
                   help="拟合可回答性模型（逻辑回归），写入 数据目录/answerability.json（或 --out）")
    p.add_argument("--ranker", action="store_true",
                   help="拟合条文排序模型（成对逻辑回归），写入 数据目录/ranker.json（或 --out）")
    p.add_argument("--out", help="--answerability / --ranker 时模型的输出路径")
    data_dir(p)
    p.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("XIAOYU_LOG_LEVEL", "WARNING"))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
