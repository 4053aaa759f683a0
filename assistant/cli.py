"""`xiaoyu ingest | serve | ask | eval`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _settings(args):
    # --data-dir wins over XIAOYU_DATA_DIR; both reach the code through the one Settings object.
    from assistant.config import get_settings

    settings = get_settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return settings


def _progress():
    """A tqdm bar per phase (files, then chunks) on a terminal; nothing when piped."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars = {}

    def update(phase: str, done: int, total: int) -> None:
        label = {"files": "读取文件", "chunks": "嵌入片段"}.get(phase, phase)
        bar = bars.get(phase) or bars.setdefault(phase, tqdm(total=total, desc=label, unit="个", leave=True))
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _print_report(report) -> None:
    for source, reason in report.failed:
        print(f"  失败：{source} —— {reason}", file=sys.stderr)
    print(report.summary())


def cmd_ingest(args) -> int:
    from assistant.service import build_service

    service = build_service(_settings(args))
    report = service.ingest([Path(p) for p in args.paths], _progress())
    _print_report(report)
    return 1 if report.failed and not (report.added or report.updated or report.unchanged) else 0


def cmd_serve(args) -> int:
    import uvicorn

    from assistant.api import create_app
    from assistant.service import build_service

    settings = _settings(args)
    service = build_service(settings)
    if service.is_empty:
        print(f"数据目录 {settings.data_dir} 为空，正在导入知识库 {settings.knowledge_base} …", file=sys.stderr)
        _print_report(service.ensure_ingested(_progress()))
    app = create_app(settings, service)
    print(f"小玉已启动：http://{args.host}:{args.port}/  （API 文档 /docs）", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_ask(args) -> int:
    from assistant.service import QuestionError, build_service

    service = build_service(_settings(args))
    service.ensure_ingested(_progress())
    try:
        answer = service.ask(args.question)
    except QuestionError as exc:
        print(str(exc), file=sys.stderr)
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
    from assistant.service import build_service
    from evals.golden import load_golden
    from evals.runner import answer_mode_results, extractive_only, format_answer_modes, format_table, run_eval

    service = build_service(_settings(args))
    service.ensure_ingested(_progress())
    if args.answer_mode == "extractive":
        service = extractive_only(service)
    items = load_golden(Path(args.file))
    result = run_eval(service, items, args.top_k)
    print(format_table(result))
    print(format_answer_modes(answer_mode_results(service, items, args.top_k, args.answer_mode, result)))
    if args.by_category:
        for cat, m in result.by_category.items():
            print(f"[{cat}] hit@5 {m['hit@5']:.3f} MRR {m['mrr']:.3f} section@1 {m['section_accuracy']:.3f} "
                  f"refusal {m['refusal_accuracy']:.3f} false-refusal {m['false_refusal_rate']:.3f}")
    if args.failures:
        for r in result.failures:
            got = "; ".join(f"{h['source'].split('/')[-1]} {h['section'].rsplit(' > ', 1)[-1]}" for h in r.retrieved[:3])
            print(f"- {r.id} {r.question!r} refused={r.refused} doc_rank={r.doc_rank} sec_rank={r.section_rank} "
                  f"facts={r.fact_recall:.2f}\n    expected {r.expected_sources} {r.expected_sections}\n    got {got}"
                  f"\n    {r.covered_reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    if args.report:
        from evals.report import standalone_html
        from evals.runs import run_record

        docs = service.documents()
        run = run_record(result, args.file, args.top_k, len(docs), sum(len(d.chunk_ids) for d in docs))
        Path(args.report).write_text(standalone_html(run), encoding="utf-8")
        print(f"报告已写入 {args.report}", file=sys.stderr)
    return 0


def cmd_hash_password(args) -> int:
    import getpass

    from assistant.accounts import AccountError, hash_password

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
    from assistant.service import build_service
    from evals.calibrate import calibrate, evidence_rows
    from evals.golden import load_golden

    service = build_service(_settings(args))
    service.ensure_ingested(_progress())
    rows = evidence_rows(service, load_golden(Path(args.file)))
    cal = calibrate(rows, args.max_false_refusal)
    print(f"XIAOYU_RETRIEVAL_MIN_DENSE={cal.min_dense:.4f}")
    print(f"XIAOYU_RETRIEVAL_MIN_OVERLAP={cal.min_overlap:.2f}")
    print(f"# refusal accuracy {cal.refusal_accuracy:.3f}, false-refusal rate {cal.false_refusal_rate:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xiaoyu", description="小玉：党建 · 物业 · 调解政策问答助手")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir(p):
        p.add_argument("--data-dir", help="数据目录（默认 ./data 或 XIAOYU_DATA_DIR）")

    p = sub.add_parser("ingest", help="导入政策文件（目录或文件）")
    p.add_argument("paths", nargs="+")
    data_dir(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("serve", help="启动 API、网页挂件和工作台")
    data_dir(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ask", help="提一个问题，打印回答和出处")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="以 JSON 输出")
    data_dir(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("eval", help="在评测集上计算检索和拒答指标")
    p.add_argument("file")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--by-category", action="store_true")
    p.add_argument("--failures", action="store_true", help="列出失败的题目")
    p.add_argument("--json", help="把逐题结果写入 JSON 文件")
    p.add_argument("--report", help="把评测报告写成独立的 HTML 文件（图表内嵌，离线可看）")
    p.add_argument("--answer-mode", choices=["configured", "extractive", "llm", "both"], default="configured",
                   help="按回答方式（抽取式 / LLM）统计要点召回、引用准确率和回退率；llm 需设置 XIAOYU_LLM_BASE_URL")
    data_dir(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("hash-password", help="为工作台账号生成 bcrypt 哈希（写入 XIAOYU_CONSOLE_USERS）")
    p.add_argument("--user", default="admin", help="用户名（默认 admin）")
    p.add_argument("--stdin", action="store_true", help="从标准输入读一行密码（脚本用）")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("calibrate", help="按评测集校准拒答阈值（更换嵌入模型后需要）")
    p.add_argument("file")
    p.add_argument("--max-false-refusal", type=float, default=0.03)
    data_dir(p)
    p.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("XIAOYU_LOG_LEVEL", "WARNING"))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
