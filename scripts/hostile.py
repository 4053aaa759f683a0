"""The hardening issue's attacks against a running server, each with its measured effect (status, time, the
server's peak RSS). Prints figures; asserts nothing. Needs the admin API on (XIAOYU_ADMIN_TOKEN) for the uploads.

    XIAOYU_DATA_DIR=/tmp/h XIAOYU_ADMIN_TOKEN=tok .venv/bin/xiaoyu serve --port 8766 &
    .venv/bin/python scripts/hostile.py --url http://127.0.0.1:8766 --token tok --pid $(pgrep -f 'serve --port 8766')
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
import zipfile

import httpx

CONTENT_TYPES = ('<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
                 'content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/'
                 'document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.'
                 'document.main+xml"/></Types>')


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples the server's RSS every 20 ms while a request runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def docx_bomb(inflated_bytes: int) -> bytes:
    """A .docx whose document.xml inflates to `inflated_bytes` (spaces inside a text run compress ~1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", CONTENT_TYPES)
        with z.open("word/document.xml", "w", force_zip64=True) as fh:
            fh.write(b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
                     b'2006/main"><w:body><w:p><w:r><w:t>')
            block = b" " * (1 << 20)
            for _ in range(inflated_bytes >> 20):
                fh.write(block)
            fh.write(b"</w:t></w:r></w:p></w:body></w:document>")
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default="")
    parser.add_argument("--pid", type=int, required=True)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    admin = {"authorization": f"Bearer {args.token}"}
    client = httpx.Client(timeout=600)

    def attack(label, fn):
        started = time.perf_counter()
        with PeakRSS(args.pid) as peak:
            r = fn()
        detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else ""
        print(f"{label:<48} {r.status_code}  {time.perf_counter() - started:6.2f} s  peak RSS {peak.peak:6.0f} MB  "
              f"{str(detail)[:60]}")
        return r

    print(f"server RSS before: {rss_mb(args.pid):.0f} MB")
    attack("8 MiB JSON body to /api/chat", lambda: client.post(
        f"{url}/api/chat", content=b'{"question": "' + b"x" * (8 << 20) + b'"}',
        headers={"content-type": "application/json"}))
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "物业" * 1950} for i in range(40)]
    attack("40 history turns x 3,900 chars", lambda: client.post(
        f"{url}/api/chat", json={"question": "要多久？", "history": history}))
    attack("one 4,000-char history turn", lambda: client.post(
        f"{url}/api/chat", json={"question": "要多久？", "history": [{"role": "user", "content": "调解" * 2000}]}))
    attack("/v1 with a 10,000-char message", lambda: client.post(
        f"{url}/v1/chat/completions", json={"model": "xiaoyu", "messages": [{"role": "user", "content": "物" * 10000}]}))
    attack("lone surrogate in a question", lambda: client.post(
        f"{url}/api/chat", content=json.dumps({"question": "物业费\ud800怎么交"}, ensure_ascii=True),
        headers={"content-type": "application/json"}))
    bomb = docx_bomb(1536 << 20)
    print(f"docx bomb: {len(bomb) / 1e6:.1f} MB on the wire, inflates to 1.5 GB")
    attack("docx inflating to 1.5 GB", lambda: client.post(
        f"{url}/admin/documents", headers=admin, data={"category": "物业"},
        files={"file": ("bomb.docx", bomb, "application/octet-stream")}))
    long_name = "关于进一步加强和改进住宅小区物业管理工作的实施意见" * 4 + ".txt"
    attack(f"upload named with {len(long_name) - 4} Chinese chars", lambda: client.post(
        f"{url}/admin/documents", headers=admin, data={"category": "物业"},
        files={"file": (long_name, "第一条 本意见适用于本市住宅小区物业管理活动。".encode(), "text/plain")}))
    r = attack("20,000 chars without sentence ends", lambda: client.post(
        f"{url}/admin/documents", headers=admin, data={"category": "物业"},
        files={"file": ("无标点.txt", ("物业服务" * 5000).encode(), "text/plain")}))
    if r.status_code == 201:
        source = r.json()["source"]
        docs = client.get(f"{url}/admin/documents", headers=admin).json()
        print(f"   chunks of {source}: {next(d['chunks'] for d in docs if d['source'] == source)}; longest chunk "
              f"checked by tests/test_splitter_cap.py; deleting it: "
              f"{client.delete(f'{url}/admin/documents/{source}', headers=admin).status_code}")
    print(f"server RSS after: {rss_mb(args.pid):.0f} MB; /healthz {client.get(f'{url}/healthz').status_code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
