"""Golden sets and stored eval runs in the data dir: list and grow golden sets, save runs as JSON, compare two runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

import evals
from evals.golden import load_golden, parse_item
from evals.runner import EvalResult, ItemResult

EVALS_DIR = Path(evals.__file__).resolve().parent  # the shipped sets live beside the eval code
_SET_NAME = re.compile(r"^[\w\u4e00-\u9fff-]{1,60}$")


class GoldenSetError(ValueError):
    """A golden-set edit that can't be made; the message is shown to staff as is."""


# ---- golden sets ------------------------------------------------------------------------------------------------
def golden_sets(data_dir: Path) -> dict[str, Path]:
    """Label → path: the sets shipped in evals/ and evals/sets/ (single questions; the conversation sets run from
    the CLI), then the ones staff grew in data_dir/evals/."""
    sets = {f"evals/{p.name}": p for p in sorted(EVALS_DIR.glob("*.jsonl"))}
    sets.update({f"evals/sets/{p.name}": p for p in sorted((EVALS_DIR / "sets").glob("*.jsonl"))
                 if "conversations" not in p.stem})
    sets.update({f"数据目录/{p.name}": p for p in sorted((data_dir / "evals").glob("*.jsonl"))})
    return sets


def staff_set_path(data_dir: Path, name: str) -> Path:
    """"我的评测" → data_dir/evals/我的评测.jsonl; names that could leave the folder are refused."""
    name = (name or "").strip().removesuffix(".jsonl")
    if not _SET_NAME.match(name):
        raise GoldenSetError("评测集名称只能用汉字、字母、数字、下划线和连字符（最多 60 个字）")
    return data_dir / "evals" / f"{name}.jsonl"


def add_eval_item(path: Path, question: str, source: str = "", section: str = "", category: str = "",
                  facts: tuple[str, ...] = (), answerable: bool = True, from_log: int | None = None,
                  asked: str = "") -> dict:
    """Append one question to a staff eval set in the format of evals/sets/dev.jsonl (`sources` are file stems,
    `facts` any one of which is enough, `answerable`). `source` is what staff chose as the right document, never
    what the answer cited. `asked`: the resident's own words when `question` is the query they were rewritten to."""
    question = (question or "").strip()
    if not question:
        raise GoldenSetError("问题不能为空")
    if answerable and not source:
        raise GoldenSetError("请选择预期出处（文档），或勾选“应当拒答”")
    existing = load_golden(path) if path.is_file() and path.stat().st_size else []
    if any(item.question == question for item in existing):
        raise GoldenSetError(f"评测集 {path.name} 里已经有这个问题了")
    item = {
        "id": f"log-{from_log}" if from_log is not None else f"staff-{len(existing) + 1:03d}",
        "question": question,
        "answerable": answerable,
        "sources": [PurePosixPath(source).stem] if answerable else [],
        "sections": [section] if answerable and section else [],
        "facts": [f for f in facts if f] if answerable else [],
        "history": [],
        "category": category,
    }
    if asked and asked != question:
        item["asked"] = asked
    parse_item(item)  # the same reader the runner uses must accept it
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    return item


# ---- runs -------------------------------------------------------------------------------------------------------
def run_record(result: EvalResult, golden: str, top_k: int, documents: int = 0, chunks: int = 0) -> dict:
    """An EvalResult as the JSON document that is stored, compared and rendered (console and HTML report)."""
    now = datetime.now().astimezone()
    stem = re.sub(r"[^\w-]", "_", Path(golden).stem)
    return {
        "id": f"{now:%Y%m%d-%H%M%S}-{stem}",
        "created": now.isoformat(timespec="seconds"),
        "golden": golden,
        "top_k": top_k,
        "documents": documents,
        "chunks": chunks,
        **result.to_json(),
    }


def failed_items(run: dict) -> list[dict]:
    """The run's failures, by the runner's own rule (EvalResult.failures)."""
    result = EvalResult(run["metrics"], run["by_category"], [ItemResult(**i) for i in run["items"]])
    failed = {id(r) for r in result.failures}
    return [i for i, r in zip(run["items"], result.items) if id(r) in failed]


class RunStore:
    """data_dir/eval-runs/<id>.json, newest first."""

    def __init__(self, root: Path):
        self.root = root

    def save(self, run: dict) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        run_id, n = run["id"], 1
        while (self.root / f"{run_id}.json").exists():  # two runs in the same second
            n += 1
            run_id = f"{run['id']}-{n}"
        run["id"] = run_id
        (self.root / f"{run_id}.json").write_text(json.dumps(run, ensure_ascii=False), encoding="utf-8")
        return run_id

    def ids(self) -> list[str]:
        return sorted((p.stem for p in self.root.glob("*.json")), reverse=True) if self.root.is_dir() else []

    def load(self, run_id: str) -> dict:
        path = self.root / f"{Path(run_id).name}.json"
        if not path.is_file():
            raise KeyError(run_id)
        return json.loads(path.read_text(encoding="utf-8"))

    def label(self, run_id: str) -> str:
        run = self.load(run_id)
        m = run["metrics"]
        return f"{run['created'][:16].replace('T', ' ')} · {run['golden']} · hit@5 {m['hit@5']:.3f}（{run_id}）"


@dataclass(frozen=True)
class Comparison:
    before: dict
    after: dict
    metrics: list[tuple[str, float, float]]  # (key, before, after)
    fixed: list[dict]  # failed before, pass after (items of `after`)
    broken: list[dict]  # passed before, fail after (items of `after`)


COMPARED = ("hit@1", "hit@3", "hit@5", "mrr", "section_accuracy", "section_hit@5", "refusal_accuracy",
            "false_refusal_rate", "fact_recall")


def compare(before: dict, after: dict) -> Comparison:
    """Metric deltas, and which questions a change fixed or broke (matched by question id and text)."""
    key = lambda i: (i["id"], i["question"])
    failed_before = {key(i) for i in failed_items(before)}
    failed_after = {key(i) for i in failed_items(after)}
    common = {key(i) for i in before["items"]} & {key(i) for i in after["items"]}
    fixed = [i for i in after["items"] if key(i) in common and key(i) in failed_before - failed_after]
    broken = [i for i in after["items"] if key(i) in common and key(i) in failed_after - failed_before]
    rows = [(k, before["metrics"].get(k, 0.0), after["metrics"].get(k, 0.0)) for k in COMPARED]
    return Comparison(before, after, rows, fixed, broken)
