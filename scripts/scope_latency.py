"""Retrieve latency of the default knowledge base alone vs every knowledge base, in one process on one data dir:
`python scripts/scope_latency.py DATA_DIR community|all` (which scope goes first). Distinct questions per scope, so
no query vector comes from the cache."""
import json
import statistics
import sys
import time
from pathlib import Path

from assistant.config import Settings
from assistant.services import build_services

d = Path(sys.argv[1]); first = sys.argv[2]
sv = build_services(Settings(data_dir=d))
qs = [json.loads(l)["question"] for l in open("evals/sets/dev.jsonl")]
sv.chat.retrieve("你好，物业费怎么交")
def run(scope, texts):
    out = []
    for q in texts:
        t = time.perf_counter(); sv.chat.retrieve(q, knowledge_bases=scope); out.append((time.perf_counter() - t) * 1000)
    out.sort(); return round(statistics.median(out), 1), round(out[int(len(out) * .95)], 1)
a, b = qs[::2], qs[1::2]  # distinct questions per scope: each query vector is computed once, no cache hits
if first == "community":
    print("community", run(["community"], a), "all", run(None, b))
else:
    print("all", run(None, a), "community", run(["community"], b))
