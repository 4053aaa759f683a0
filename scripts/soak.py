"""Soak test: N clients ask varied questions of a running Xiaoyu for M minutes; watch latency, errors and the server's
memory. A script, not a test: it prints figures, and its exit code says only whether any request failed.

    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8000 --clients 4 --minutes 10 [--interval 1] [--pid PID]

Each client loops: whenever the shared question pace allows, a question (70% to /api/chat: a new question, or a
follow-up in the client's conversation sent with the session_id the server returned; 30% to /api/retrieve),
otherwise /healthz; then it waits --interval seconds. The server limits questions (/api/chat, the stream,
/api/retrieve, /v1) per client IP, XIAOYU_WEB_RATE_LIMIT_PER_MINUTE (default 20), and all clients here share one
IP, so questions are paced to stay under 90% of --rate-limit (default: the server's default) in total. A 429 is
counted on its own, not as an error, and pushes the next question back by its Retry-After. For a heavier soak, start
the server with a higher limit (or 0, off) and pass the same --rate-limit here.

Every --report-every seconds (30): elapsed, req/s, p50/p95 latency, errors by status, 429s, the server's RSS (VmRSS
from /proc/PID/status; PID from --pid, else the local process listening on the URL's port). At the end: a summary with
RSS first/last/max and whether RSS stayed within 10% of its value after the warm-up (the first minute).

Exit code 0 when no request failed (a failure is a non-2xx other than 429, an unreadable body, or an exception), else 1.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

QUESTIONS = [
    # 物业
    "物业费一般怎么收？可以按月交吗？",
    "物业服务不到位，业主可以拒交物业费吗？",
    "物业公司能不能因为欠物业费停水停电？",
    "小区公共收益归谁所有？",
    "物业服务合同到期了怎么办？",
    "前期物业服务合同对业主有约束力吗？",
    "小区电梯广告的收入应该怎么分配？",
    "业主装修房屋需要告知物业吗？",
    "维修资金怎么申请使用？",
    "物业公司退出时要移交哪些资料？",
    "车位应当首先满足业主的需要吗？",
    "楼上漏水到我家，物业管不管？",
    # 业主大会 / 业主委员会
    "业主大会怎么召开？",
    "业主委员会委员需要具备什么条件？",
    "选聘物业服务企业需要多少业主同意？",
    "业主委员会任期是几年？",
    "业主大会的决定对全体业主都有效吗？",
    "筹备首次业主大会需要哪些人参加？",
    # 调解
    "邻里纠纷可以找人民调解委员会吗？",
    "人民调解要收费吗？",
    "调解协议有法律效力吗？",
    "调解协议怎么申请司法确认？",
    "申请司法确认需要提交什么材料？",
    "人民调解员是怎么产生的？",
    "一方不履行调解协议怎么办？",
    # 党建
    "入党需要什么条件？",
    "入党积极分子要培养多长时间？",
    "预备党员的预备期是多久？",
    "党员有哪些权利？",
    "社区党组织在基层治理中发挥什么作用？",
    "党费怎么交？",
    # 小话题和知识库之外的问题（会被礼貌拒答）
    "你好",
    "明天天气怎么样？",
]
FOLLOW_UPS = [
    "那需要多长时间？",
    "需要准备哪些材料？",
    "如果对方不同意怎么办？",
    "具体是哪一条规定的？",
    "有没有例外情况？",
    "这个要去哪里办？",
]
CHAT_SHARE = 0.7  # of the paced requests; the rest go to /api/retrieve (also counted by the server's limit)


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # endpoint -> seconds
    window: list[float] = field(default_factory=list)  # latencies since the last report
    window_count: int = 0
    statuses: Counter = field(default_factory=Counter)  # (endpoint, status) for every response
    errors: Counter = field(default_factory=Counter)  # "500", "bad body", "ConnectError" …
    rate_limited: int = 0
    requests: int = 0
    follow_ups: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # (elapsed s, kB)

    def record(self, endpoint: str, seconds: float, status: int | None, error: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.window_count += 1
            if status is not None:
                self.statuses[(endpoint, status)] += 1
            if status == 429:
                self.rate_limited += 1
            elif error is not None:
                self.errors[error] += 1
            else:
                self.latencies[endpoint].append(seconds)
                self.window.append(seconds)


class QuestionPace:
    """One question every 60 / (rate × safety) seconds across all clients: the moving window on the server then
    never holds more than the limit. A 429 pushes the next slot past its Retry-After."""

    def __init__(self, per_minute: int, safety: float = 0.9):
        self.gap = 60.0 / (per_minute * safety) if per_minute > 0 else 0.0
        self.next_at = time.monotonic()
        self.lock = threading.Lock()

    def try_take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if now < self.next_at:
                return False
            self.next_at = max(self.next_at + self.gap, now)  # no burst of saved-up slots after a slow stretch
            return True

    def back_off(self, seconds: float) -> None:
        with self.lock:
            self.next_at = max(self.next_at, time.monotonic() + seconds)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else float("nan")


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


# ---- the server's memory --------------------------------------------------------------------------------------
def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pid_listening_on(port: int) -> int | None:
    """The local process with a listening TCP socket on `port` (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                    return conn.pid
        except (psutil.AccessDenied, OSError):
            pass
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:
            continue
    return None


# ---- the clients ----------------------------------------------------------------------------------------------
def client_loop(n: int, base: str, args, stats: Stats, pace: QuestionPace, stop: threading.Event) -> None:
    rng = random.Random(args.seed * 1000 + n)
    session_id: str | None = None  # the conversation this client is in, as the server returned it
    with httpx.Client(base_url=base, timeout=args.timeout) as http:
        while not stop.is_set():
            follow_up = False
            if not pace.try_take():
                endpoint, method, payload = "/healthz", "GET", None
            elif rng.random() < CHAT_SHARE:
                follow_up = session_id is not None and rng.random() < 0.5
                if follow_up:
                    payload = {"question": rng.choice(FOLLOW_UPS), "session_id": session_id}
                else:
                    payload = {"question": rng.choice(QUESTIONS)}  # a new conversation: the server names it
                endpoint, method = "/api/chat", "POST"
            else:
                endpoint, method, payload = "/api/retrieve", "POST", {"query": rng.choice(QUESTIONS), "top_k": 5}
            started = time.perf_counter()
            status, error = None, None
            try:
                r = http.request(method, endpoint, json=payload)
                status = r.status_code
                if status == 429:
                    pace.back_off(float(r.headers.get("retry-after", "5") or 5))
                elif not 200 <= status < 300:
                    error = str(status)
                else:
                    data = r.json()
                    if endpoint == "/api/chat":
                        if not isinstance(data, dict) or not isinstance(data.get("answer"), str):
                            error = "bad body"
                        else:
                            if follow_up:
                                with stats.lock:
                                    stats.follow_ups += 1
                            # Keep the conversation going with the id the server returned (none: start afresh).
                            session_id = data.get("session_id") or None
            except ValueError:
                error = "bad body"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            stats.record(endpoint, time.perf_counter() - started, status, error)
            stop.wait(args.interval)


def rss_sampler(pid: int | None, stats: Stats, started: float, stop: threading.Event, every: float = 5.0) -> None:
    while pid is not None:
        value = rss_kb(pid)
        if value is not None:
            with stats.lock:
                stats.rss.append((time.monotonic() - started, value))
        if stop.wait(every):
            break


def report(stats: Stats, elapsed: float, since_last: float) -> None:
    with stats.lock:
        window, count = stats.window, stats.window_count
        stats.window, stats.window_count = [], 0
        errors = dict(stats.errors)
        limited = stats.rate_limited
        rss = stats.rss[-1][1] if stats.rss else None
    print(f"[{elapsed:6.0f} s] {count / since_last:5.2f} req/s  p50 {ms(percentile(window, 50))}  "
          f"p95 {ms(percentile(window, 95))}  errors {errors or 0}  429s {limited}  "
          f"RSS {f'{rss / 1024:.0f} MB' if rss else 'n/a'}", flush=True)


def summary(stats: Stats, elapsed: float, warmup: float) -> bool:
    """Prints the summary; returns whether RSS stayed within 10% of its post-warm-up value (True if unknown)."""
    print("\n==== soak summary ====")
    total_ok = sum(len(v) for v in stats.latencies.values())
    print(f"duration {elapsed:.0f} s · {stats.requests} requests ({stats.requests / elapsed:.2f} req/s) · "
          f"{total_ok} ok · {stats.rate_limited} rate-limited (429) · {sum(stats.errors.values())} errors · "
          f"{stats.follow_ups} follow-ups in a session")
    for endpoint, values in sorted(stats.latencies.items()):
        print(f"  {endpoint:14s} n={len(values):5d}  p50 {ms(percentile(values, 50))}  p95 {ms(percentile(values, 95))}"
              f"  p99 {ms(percentile(values, 99))}  max {ms(max(values))}")
    by_endpoint: dict[str, Counter] = defaultdict(Counter)
    for (endpoint, status), n in stats.statuses.items():
        by_endpoint[endpoint][status] += n
    print("  responses by status: " + " · ".join(f"{e} {dict(sorted(c.items()))}" for e, c in sorted(by_endpoint.items())))
    if stats.errors:
        print(f"  errors: {dict(stats.errors)}")
    if not stats.rss:
        print("  RSS: n/a (no server process found; pass --pid)")
        return True
    values = [kb for _, kb in stats.rss]
    after = [kb for t, kb in stats.rss if t >= warmup]
    baseline = after[0] if after else values[-1]
    within = all(abs(kb - baseline) <= 0.10 * baseline for kb in after)
    print(f"  RSS first {values[0] / 1024:.0f} MB · after warm-up ({warmup:.0f} s) {baseline / 1024:.0f} MB · "
          f"last {values[-1] / 1024:.0f} MB · max {max(values) / 1024:.0f} MB · {len(values)} samples")
    if len(after) < 2:
        print("  RSS stability: not judged (too few samples after the warm-up; run longer)")
        return True
    growth = (max(after) - baseline) / baseline * 100
    print(f"  RSS within 10% of its post-warm-up value: {'yes' if within else 'NO'} "
          f"(max {growth:+.1f}%, last {(after[-1] - baseline) / baseline * 100:+.1f}%)")
    return within


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--interval", type=float, default=1.0, help="seconds each client waits between requests (1)")
    p.add_argument("--rate-limit", type=int, default=20,
                   help="the server's XIAOYU_WEB_RATE_LIMIT_PER_MINUTE (20); questions stay under 90%% of it in "
                        "total; 0 = the server has no limit, don't pace")
    p.add_argument("--pid", type=int, help="the server's process id, for its RSS (default: found by the URL's port)")
    p.add_argument("--report-every", type=float, default=30)
    p.add_argument("--warmup", type=float, default=60, help="seconds before the RSS baseline is taken (60)")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--strict-rss", action="store_true", help="also exit 1 when RSS didn't stay within 10%%")
    args = p.parse_args(argv)

    base = args.url.rstrip("/")
    parts = urlsplit(base)
    pid = args.pid
    if pid is None and parts.hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        pid = pid_listening_on(parts.port or (443 if parts.scheme == "https" else 80))
    try:
        health = httpx.get(base + "/healthz", timeout=args.timeout).json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"{base}/healthz is not answering: {exc}", file=sys.stderr)
        return 1
    duration = args.minutes * 60
    warmup = min(args.warmup, duration / 2)  # a short run still gets a second half to judge RSS on
    paced = f"questions paced to {0.9 * args.rate_limit:.0f}/min in total" if args.rate_limit else "questions unpaced"
    print(f"soak: {args.clients} clients × {args.minutes:g} min against {base} "
          f"({health.get('documents')} documents, {health.get('chunks')} chunks); server pid {pid or 'unknown'}; "
          f"{paced}", flush=True)

    stats, stop = Stats(), threading.Event()
    pace = QuestionPace(args.rate_limit)
    started = time.monotonic()
    threads = [threading.Thread(target=rss_sampler, args=(pid, stats, started, stop), daemon=True)]
    threads += [threading.Thread(target=client_loop, args=(n, base, args, stats, pace, stop), daemon=True)
                for n in range(args.clients)]
    for t in threads:
        t.start()
    last = started
    try:
        while (now := time.monotonic()) - started < duration:
            time.sleep(min(args.report_every - (now - last), duration - (now - started), 1.0))
            now = time.monotonic()
            if now - last >= args.report_every - 0.01:
                report(stats, now - started, now - last)
                last = now
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=args.timeout + 5)
    now = time.monotonic()
    if now - last > 1:
        report(stats, now - started, now - last)
    value = rss_kb(pid) if pid else None
    if value is not None:
        stats.rss.append((now - started, value))
    rss_ok = summary(stats, now - started, warmup)
    failed = sum(stats.errors.values())
    print(f"result: {'OK' if not failed else 'FAILED'} ({failed} errors)")
    return 1 if failed or (args.strict_rss and not rss_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
