"""Shared fixtures. Everything here is real: the bundled e5 embedder, embedded Chroma, jieba BM25, the demo corpus.

The demo knowledge base is ingested once per test session (about 40 s on 2 cores) into a temporary data dir and
shared read-only by the tests that only ask questions. Tests that change the index build their own small one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from assistant.config import BUNDLED_KB, Settings
from assistant.embedding import E5Embedder

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.fixture(scope="session")
def embedder() -> E5Embedder:
    return E5Embedder()


class CountingEmbedder:
    """Wraps the real embedder and counts passages embedded: proves re-ingest does no embedding work."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner = inner
        self.name = inner.name
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
    from assistant.service import build_service

    data_dir = tmp_path_factory.mktemp("kb-data")
    service = build_service(make_settings(data_dir), embedder)
    report = service.ensure_ingested()
    assert report is not None and not report.failed, report and report.failed
    return data_dir


@pytest.fixture
def kb_service(kb_data_dir, embedder, tmp_path):
    """A ChatService over the shared demo index, with its own session store and question log."""
    from assistant.service import build_service

    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    return build_service(make_settings(data_dir), embedder)


@pytest.fixture
def client(kb_service):
    from fastapi.testclient import TestClient

    from assistant.api import create_app

    app = create_app(kb_service.settings, kb_service)
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
