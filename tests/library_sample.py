"""Small samples of the national law library (../shared/library, see LIBRARY.md) for the knowledge-base tests, and a
way to give a data dir the onnx model the session already built (so a `xiaoyu` process does not build it again).

A sample is a folder with the chosen files at their library paths and a manifest.json holding just their entries, so
that `xiaoyu ingest` reads it exactly as it reads the library (same sources, titles, categories, dates)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "shared" / "library"
if not (LIBRARY / "manifest.json").is_file():  # the checkout may sit elsewhere: the one documented place
    LIBRARY = Path("/work/shared/library")

# Ten short national laws (about 140 chunks): taxes, the anthem, nationality, holidays, blood donation. None of them
# is in the demo corpus, which is about party building, property management and mediation.
LAWS = (
    "经济法/烟叶税法(2017-12-27).md",
    "经济法/车船税法(2019-04-23).md",
    "宪法相关法/国歌法(2017-09-01).md",
    "经济法/城市维护建设税法(2020-08-11).md",
    "经济法/契税法(2020-08-11).md",
    "宪法相关法/国籍法(1980-09-10).md",
    "行政法规/全国年节及纪念日放假办法(2024-11-10).md",
    "宪法相关法/反分裂国家法(2005-03-14).md",
    "刑法/刑法修正案（十）.md",
    "行政法/献血法(1997-12-29).md",
)
# Questions each answered by one law of LAWS (title, article), and by nothing in the demo corpus.
LAW_QUESTIONS = {
    "烟叶税的税率是多少？": ("中华人民共和国烟叶税法", "第四条"),
    "奏唱国歌的时候应该怎么做？": ("中华人民共和国国歌法", "第四条"),
    "献血者两次献血的间隔不少于多久？": ("中华人民共和国献血法", "第九条"),
    "春节放假几天？": ("全国年节及纪念日放假办法", "第二条"),
}
TOBACCO = "烟叶税的税率是多少？"
TOBACCO_LAW = "中华人民共和国烟叶税法"

# For the interrupted ingest: a small first generation, then ten longer laws (565 chunks) added to it. Ingest embeds
# and stores groups of 256 chunks (ingest.pipeline.EMBED_GROUP), so the ten hold two groups and a bit: a kill after
# the first group is stored leaves more to embed.
FIRST = (
    "经济法/烟叶税法(2017-12-27).md",
    "宪法相关法/国歌法(2017-09-01).md",
    "经济法/城市维护建设税法(2020-08-11).md",
)
SECOND = (
    "宪法相关法/国家安全法(2015-07-01).md",
    "行政法/国家情报法(2018-04-27).md",
    "宪法相关法/陆地国界法(2021-10-23).md",
    "民法商法/拍卖法(2015-04-24).md",
    "民法商法/涉外民事关系法律适用法(2010-10-28).md",
    "民法商法/电子商务法(2018-08-31).md",
    "宪法相关法/国防法(2020-12-26).md",
    "行政法/献血法(1997-12-29).md",
    "行政法规/促进个体工商户发展条例(2022-10-01).md",
    "行政法规/城市民族工作条例(1993-09-15).md",
)


def require_library() -> None:
    if not (LIBRARY / "manifest.json").is_file():
        pytest.skip(f"the national law library is not at {LIBRARY} (see LIBRARY.md)")


def entries(files: Sequence[str]) -> list[dict]:
    """The library's manifest entries of `files`, in that order."""
    require_library()
    by_file = {e["file"]: e for e in json.loads((LIBRARY / "manifest.json").read_text(encoding="utf-8"))}
    return [by_file[f] for f in files]


def write_sample(dest: Path, files: Sequence[str]) -> Path:
    """A folder `dest` with `files` copied from the library (relative paths kept) and a manifest of just those."""
    items = entries(files)
    for item in items:
        target = dest / item["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(LIBRARY / item["file"], target)
    (dest / "manifest.json").write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return dest


def share_model(embedder, data_dir: Path) -> None:
    """Put the onnx model the session's `embedder` fixture built into data_dir/models, where a `xiaoyu` command on
    that data dir looks for it (OnnxE5Embedder's cache), hard-linked: otherwise each command builds it (~20 s)."""
    dest = data_dir / "models" / "onnx-e5" / embedder.model_dir.name
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(embedder.model_dir, dest, copy_function=link)
