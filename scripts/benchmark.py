"""Benchmark: ingest time of the demo corpus and p50/p95 latency of /api/retrieve and /api/chat on a real server.

Prints figures; asserts nothing. Usage: .venv/bin/python scripts/benchmark.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.api import create_app
from assistant.config import Settings
from assistant.services import build_services
from evals.golden import load_golden


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="xiaoyu-bench-"))
    settings = Settings(data_dir=data_dir)
    settings.web.rate_limit_per_minute = 0  # the benchmark is one client sending many questions

    t0 = time.perf_counter()
    services = build_services(settings)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = services.knowledge.ensure_ingested()
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = services.knowledge.ingest([settings.knowledge_base])
    t_reingest = time.perf_counter() - t0

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    questions = [i for i in load_golden(Path(__file__).resolve().parents[1] / "evals" / "golden.jsonl")]
    results: dict[str, list[float]] = {"/api/retrieve": [], "/api/chat": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        client.post("/api/chat", json={"question": "热身"})
        for n in range(args.requests):
            item = questions[n % len(questions)]
            history = [{"role": t.role, "content": t.content} for t in item.history]
            for path, body in (("/api/retrieve", {"query": item.question, "history": history}),
                               ("/api/chat", {"question": item.question, "history": history})):
                t = time.perf_counter()
                res = client.post(path, json=body)
                results[path].append((time.perf_counter() - t) * 1000)
                res.raise_for_status()
    server.should_exit = True
    thread.join(timeout=10)

    out = {
        "cpu_count": os.cpu_count(),
        "chunks": services.chat.stats().chunks,
        "service_build_s": round(t_build, 2),
        "ingest_demo_corpus_s": round(t_ingest, 1),
        "reingest_unchanged_s": round(t_reingest, 2),
        "reingest_embedded": again.embedded,
        "files": len(report.added) if report else None,
    }
    for path, values in results.items():
        out[path] = {"n": len(values), "p50_ms": round(statistics.median(values), 1),
                     "p95_ms": round(percentile(values, 95), 1)}
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
