"""Write the bundled knowledge base's known questions (assistant/index/known.py) from an eval run of the dev sets.

    xiaoyu eval evals/golden.jsonl evals/sets/dev*.jsonl --data-dir D --json run.json
    python scripts/known_questions.py run.json > knowledge_base/known_questions.tsv

Each answerable question gives one row per expected provision, each out-of-scope one a row titled "-", with the
query the retriever searched (a follow-up's condensed form) and the set it came from; each small-talk turn a row
titled "~" naming its reply, as the rules read it. Test sets and the outside set are refused: a question of theirs in the
table would turn their figures into a memory test."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.index.known import NOT_COVERED, SMALL_TALK  # noqa: E402
from assistant.qa.understand import smalltalk_cue, smalltalk_intent  # noqa: E402
HEADER = """# 已知问题：居民问过、答案出处已知的问题。每行：问题<TAB>文件标题<TAB>条款（新闻等无条款的留空）<TAB>来源；标题为 - 的是不在本知识库范围内的问题，~ 为闲聊
# Known questions (assistant/index/known.py): a question, the title of the document and the article that answer it,
# and the set it came from; a title "-" marks a question the knowledge base does not answer, "~" small talk (the
# third column names the reply).
# Written by scripts/known_questions.py from the dev sets; staff may add their own rows.
"""


def documents(manifest: Path) -> dict[str, tuple[str, str]]:
    """An eval set's source name (a file path or its stem) → the document's title and text."""
    out = {}
    for entry in json.loads(manifest.read_text(encoding="utf-8")):
        text = (manifest.parent / entry["file"]).read_text(encoding="utf-8")
        out[entry["file"]] = out[PurePosixPath(entry["file"]).stem] = (entry["title"], text)
    return out


def holds(text: str, article: str) -> bool:
    """Whether the document has this article (or chapter) as a heading: golden.jsonl's "one source, two
    articles" pairs every article with every source, and 《组织条例》 has no 第二十六条."""
    return not article or re.search(rf"^[ \t\u3000#*]*{re.escape(article)}(?![零〇一二三四五六七八九十百千])", text,
                                    re.MULTILINE) is not None


def pairs(sources: list[str], sections: list[str]) -> list[tuple[str, str]]:
    """The expected provisions, paired as evals/metrics.py pairs them."""
    if len(sources) == len(sections):
        return list(zip(sources, sections))
    return [(s, sec) for s in sources for sec in (sections or [""])]


def rows(run: dict, docs: dict[str, tuple[str, str]]) -> list[tuple[str, str, str, str]]:
    out: dict[tuple[str, str, str], str] = {}
    for result in run["runs"]:
        origin = Path(result["file"]).name
        if origin.startswith("test") or "shared" in result["file"]:
            raise SystemExit(f"{result['file']}: only dev sets may become known questions")
        for item in result["items"]:
            if item.get("expect") == "smalltalk":
                said = " ".join(item["question"].split())
                out.setdefault((said, SMALL_TALK, smalltalk_intent(said) or smalltalk_cue(said) or "ack"), origin)
            question = " ".join(item["query"].split())
            if item.get("expect") == "refuse":
                out.setdefault((question, NOT_COVERED, ""), origin)
            if item.get("expect") != "answer" or not item.get("expected_sources"):
                continue
            for source, section in pairs(item["expected_sources"], item["expected_sections"]):
                if source not in docs:
                    print(f"{item['id']}: no document {source!r} in the manifest", file=sys.stderr)
                    continue
                title, text = docs[source]
                if holds(text, section):
                    out.setdefault((question, title, section), origin)
    return [(q, t, a, o) for (q, t, a), o in out.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="xiaoyu eval --json output of dev sets")
    parser.add_argument("--manifest", type=Path, default=ROOT / "knowledge_base" / "manifest.json")
    args = parser.parse_args()
    docs = documents(args.manifest)
    lines = [row for run in args.runs for row in rows(json.loads(run.read_text(encoding="utf-8")), docs)]
    sys.stdout.write(HEADER + "".join("\t".join(row) + "\n" for row in lines))


if __name__ == "__main__":
    main()
