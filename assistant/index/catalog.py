"""The committed index: which documents and chunks are live, plus the BM25 index built over exactly those chunks.

Each ingest writes a new generation directory and then swaps the one-line CURRENT pointer with os.replace, which
is atomic. A crash anywhere before that swap leaves the previous generation in charge, so the index is never
half-written. Chroma may hold vectors of a failed run, but retrieval only trusts ids listed here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from assistant.index.lexical import LexicalIndex
from assistant.types import Chunk


@dataclass(frozen=True, slots=True)
class DocRecord:
    source: str
    root: str  # the folder it was ingested from: a later ingest of that folder prunes files gone from it
    title: str
    category: str
    issuer: str
    date: str
    kind: str
    sha256: str
    chunk_ids: tuple[str, ...]
    chars: int
    ingested_at: str


@dataclass
class Catalog:
    embedder: str = ""
    split_signature: str = ""
    docs: dict[str, DocRecord] = field(default_factory=dict)
    chunks: dict[str, Chunk] = field(default_factory=dict)
    generation: int = 0

    def to_json(self) -> dict:
        return {
            "embedder": self.embedder,
            "split_signature": self.split_signature,
            "generation": self.generation,
            "docs": [dataclasses.asdict(d) for d in self.docs.values()],
            "chunks": [dataclasses.asdict(c) for c in self.chunks.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> Catalog:
        docs = {d["source"]: DocRecord(**{**d, "chunk_ids": tuple(d["chunk_ids"])}) for d in data["docs"]}
        chunks = {c["id"]: Chunk(**c) for c in data["chunks"]}
        return cls(data["embedder"], data["split_signature"], docs, chunks, data["generation"])


class IndexDir:
    """Layout of data_dir/index: CURRENT → gen-N/{catalog.json, lexical/}; texts/<sha256>.txt for source pages."""

    def __init__(self, data_dir: Path):
        self.root = data_dir / "index"
        self.texts = self.root / "texts"

    @property
    def lock_path(self) -> Path:
        return self.root / ".ingest.lock"

    def current(self) -> Path | None:
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            return None
        gen = self.root / pointer.read_text(encoding="utf-8").strip()
        return gen if (gen / "catalog.json").is_file() else None

    def load(self, lexical: LexicalIndex) -> Catalog:
        gen = self.current()
        if gen is None:
            lexical.build([], [])
            return Catalog()
        catalog = Catalog.from_json(json.loads((gen / "catalog.json").read_text(encoding="utf-8")))
        lexical.load(gen / "lexical")
        return catalog

    def save_text(self, sha256: str, text: str) -> None:
        self.texts.mkdir(parents=True, exist_ok=True)
        path = self.texts / f"{sha256}.txt"
        if not path.exists():
            _atomic_write(path, text)

    def read_text(self, sha256: str) -> str:
        return (self.texts / f"{sha256}.txt").read_text(encoding="utf-8")

    def commit(self, catalog: Catalog, lexical: LexicalIndex) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.current()
        catalog.generation = (catalog.generation or 0) + 1
        name = f"gen-{catalog.generation:06d}"
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        (staging / "catalog.json").write_text(json.dumps(catalog.to_json(), ensure_ascii=False), encoding="utf-8")
        lexical.save(staging / "lexical")
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _atomic_write(self.root / "CURRENT", name)  # the commit point
        for old in self.root.glob("gen-*"):
            if old.name not in (name, previous.name if previous else ""):
                shutil.rmtree(old, ignore_errors=True)
        referenced = {f"{d.sha256}.txt" for d in catalog.docs.values()}
        for text_file in self.texts.glob("*.txt") if self.texts.is_dir() else ():
            if text_file.name not in referenced:
                text_file.unlink(missing_ok=True)


def _atomic_write(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
