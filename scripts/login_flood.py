"""Login flood: N clients post wrong console passwords to a running server while one probe times /healthz.

Prints the probe's p50/p95/max beside the same probe with no flood (measured first, in the same run), and the login
statuses seen (400 = wrong password, 429 = locked out). Asserts nothing; exit 0.

    XIAOYU_DATA_DIR=/tmp/flood .venv/bin/xiaoyu serve --port 8765 &
    .venv/bin/python scripts/login_flood.py --url http://127.0.0.1:8765 --clients 6 --seconds 30
"""

from __future__ import annotations

import argparse
import collections
import statistics
import threading
import time

import httpx


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def probe(url: str, seconds: float, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            client.get(f"{url}/healthz")
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)


def flood(url: str, stop: threading.Event, statuses: collections.Counter, index: int, accounts: int) -> None:
    with httpx.Client(timeout=60) as client:
        n = 0
        while not stop.is_set():
            # Several accounts per client, as a guesser would: the per-IP lock has to catch it, not only per account.
            name = f"guess{(index * 97 + n) % accounts}"
            r = client.post(f"{url}/console/login", data={"username": name, "password": f"wrong-{n}"})
            statuses[r.status_code] += 1
            n += 1


def report(label: str, values: list[float]) -> None:
    print(f"{label:<22} n={len(values):<5} p50={statistics.median(values):7.1f} ms  "
          f"p95={percentile(values, 95):7.1f} ms  max={max(values):7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--accounts", type=int, default=50, help="distinct account names the flood tries")
    args = parser.parse_args()
    url = args.url.rstrip("/")

    quiet: list[float] = []
    probe(url, min(10.0, args.seconds), quiet)
    statuses: collections.Counter = collections.Counter()
    stop = threading.Event()
    workers = [threading.Thread(target=flood, args=(url, stop, statuses, i, args.accounts), daemon=True)
               for i in range(args.clients)]
    for w in workers:
        w.start()
    loaded: list[float] = []
    probe(url, args.seconds, loaded)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    report("/healthz, no flood", quiet)
    report(f"/healthz, {args.clients} flooding", loaded)
    print("login statuses:", dict(sorted(statuses.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
