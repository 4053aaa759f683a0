"""A scope of many small knowledge bases vs few, searched in process, with small knowledge bases in memory
(index/exact.py, the default) and with every one asking Chroma (XIAOYU_RETRIEVAL_EXACT_MAX_CHUNKS=0):

    python scripts/scope_width.py WORK_DIR DEMO_DATA_DIR [--files 50] [--questions 80] [--rounds 3]

WORK_DIR gets two data dirs, copies of DEMO_DATA_DIR (a data dir holding the ingested demo corpus) plus every 28th
library file (--files of them) dealt into 10 knowledge bases or into 1: 11 vs 2 in a scope of all. Built once; a
rerun reuses them. Every question is asked once before timing (filling each service's query-vector cache), so
only the search is timed; the four services answer
question by question in turn, so a change in machine load touches all alike. A benchmark, not a test."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import library_sample

from assistant.config import RetrievalSettings, Settings
from assistant.services import build_embedder, build_services

LIBRARY = next((p for p in (ROOT.parent / "shared" / "library", Path("/work/shared/library"))
                if (p / "manifest.json").is_file()), ROOT.parent / "shared" / "library")
LAYOUTS = {"11": [f"lib{i:02d}" for i in range(1, 11)], "2": ["lib-a"]}


def build(work: Path, demo: Path, files: int) -> None:
    library = LIBRARY
    picked = library_sample.every_nth(library_sample.entries(library), 28)[:files]
    for label, names in LAYOUTS.items():
        data = work / f"data{label}"
        if (data / ".built").exists():
            continue
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(demo, data)
        pairs = [f"{name}={library_sample.write_sample(library, items, work / f'kb{label}' / name)}"
                 for name, items in library_sample.round_robin(picked, names).items()]
        subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--ingest-into", str(data), *pairs],
                       cwd=ROOT, check=True)
        (data / ".built").touch()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("work", type=Path)
    p.add_argument("demo", type=Path)
    p.add_argument("--files", type=int, default=50)
    p.add_argument("--questions", type=int, default=80)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    build(args.work, args.demo, args.files)
    lines = (ROOT / "evals/sets/dev.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()][: args.questions]
    embedder = build_embedder(Settings(data_dir=args.work / "data2"))
    services = {(label, limit): build_services(Settings(data_dir=args.work / f"data{label}",
                                                        retrieval=RetrievalSettings(exact_max_chunks=limit)), embedder)
                for label in LAYOUTS for limit in (0, 5000)}
    for s in services.values():  # each service's query-vector cache filled: only the search is timed
        for q in questions:
            s.chat.retrieve(q)
    times: dict = {k: [] for k in services}
    for _ in range(args.rounds):
        for q in questions:
            for key, s in services.items():
                started = time.perf_counter()
                s.chat.retrieve(q)
                times[key].append(time.perf_counter() - started)
    p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
    for limit, name in ((0, "every knowledge base asks Chroma"), (5000, "small knowledge bases in memory")):
        print(f"{name:34s} 11 KBs p50 {p50[('11', limit)]:6.2f} ms   2 KBs p50 {p50[('2', limit)]:6.2f} ms   "
              f"ratio {p50[('11', limit)] / p50[('2', limit)]:.2f}")


if __name__ == "__main__":
    main()
