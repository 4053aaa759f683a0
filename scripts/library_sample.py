"""Samples of the national law library (../shared/library, see LIBRARY.md) for benchmarks.

A sample is a folder with the chosen files at their relative paths and a manifest.json holding just their entries,
so that `xiaoyu ingest` reads it exactly as it reads the library (same sources, same metadata).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path


def entries(library: Path) -> list[dict]:
    """The library's manifest entries, sorted by file."""
    items = json.loads((library / "manifest.json").read_text(encoding="utf-8"))
    return sorted(items, key=lambda e: e["file"])


def every_nth(items: Sequence[dict], n: int) -> list[dict]:
    """Every nth entry of the sorted manifest (n = 1: all of them)."""
    return list(items[::max(1, n)])


def round_robin(items: Sequence[dict], names: Sequence[str]) -> dict[str, list[dict]]:
    """The entries dealt out to `names` in turn: the first to names[0], the second to names[1], …"""
    out: dict[str, list[dict]] = {name: [] for name in names}
    for i, item in enumerate(items):
        out[names[i % len(names)]].append(item)
    return out


def write_sample(library: Path, items: Sequence[dict], dest: Path) -> Path:
    """A folder `dest` with the files of `items` (relative paths kept) and a manifest.json of just those entries.
    Files are hard-linked when the file system allows it (they are read, never written), copied otherwise."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in items:
        src, dst = library / item["file"], dest / item["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst.hardlink_to(src)
        except OSError:
            shutil.copy2(src, dst)
    (dest / "manifest.json").write_text(json.dumps(list(items), ensure_ascii=False, indent=1), encoding="utf-8")
    return dest


# A law that is in neither the library nor the demo corpus (a benchmark's own text), for the one-file add.
NEW_LAW_FILE = "基准测试/社区议事协商规则.md"
NEW_LAW_TITLE = "社区议事协商规则（基准测试样例）"


def write_new_law(dest: Path, tag: str = "") -> Path:
    """A folder `dest` holding one small law-like markdown file and its manifest entry. `tag` makes its text (and
    so its content hash) differ between runs that share a data dir."""
    articles = [
        "为规范社区议事协商活动，保障居民依法参与社区公共事务，制定本规则。",
        "本规则所称议事协商，是指社区居民委员会组织居民、业主委员会、物业服务人和驻区单位，就社区公共事务进行协商的活动。",
        "议事协商应当遵循依法、公开、平等、协商一致的原则。",
        "涉及居民切身利益的公共事务，居民委员会应当在作出决定前组织议事协商。",
        "议事协商的议题可以由居民委员会提出，也可以由十名以上居民联名提出。",
        "居民委员会应当在协商会议召开五日前公布议题、时间和地点。",
        "协商会议应当有利益相关方代表参加，参加人数一般不少于九人。",
        "协商形成的意见应当记录在案，由参加人签字确认，并在社区公示栏公示不少于七日。",
        "对协商意见有异议的，居民可以在公示期内向居民委员会书面提出。",
        "本规则自公布之日起施行。" + (f"（{tag}）" if tag else ""),
    ]
    numbers = "一二三四五六七八九十"
    body = "\n\n".join(f"第{numbers[i]}条 {text}" for i, text in enumerate(articles))
    text = f"# {NEW_LAW_TITLE}\n\n2026年12月1日 基准测试发布\n\n<!-- INFO END -->\n\n## 第一章 总则\n\n{body}\n"
    path = dest / NEW_LAW_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    entry = {"file": NEW_LAW_FILE, "title": NEW_LAW_TITLE, "category": "法律法规", "issuer": "基准测试",
             "date": "2026-12-01", "kind": "法规", "provenance": "scripts/library_sample.py"}
    (dest / "manifest.json").write_text(json.dumps([entry], ensure_ascii=False, indent=1), encoding="utf-8")
    return dest
