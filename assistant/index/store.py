"""ChromaStore: dense vectors in Chroma, embedded in the data dir or on a Chroma server. The only chromadb import."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from assistant.types import Chunk

_BATCH = 1000  # Chroma caps a single add; stay well under it
# Every Chunk field but id and text (the record's id and document): a host that did not ingest rebuilds the chunks
# from the Chroma server alone (catalog.py SharedIndexDir).
_CHUNK_META = ("source", "title", "section", "start", "end", "category", "issuer", "date")


def _chunk_meta(c: Chunk) -> dict:
    return {name: getattr(c, name) for name in _CHUNK_META}


def _collection_name(embedder_name: str, kind: str = "chunks", kb: str = "") -> str:
    """One collection per embedder: vectors of different models must never be compared. And one per knowledge base
    (`kb`; "" for the default one, whose collections keep the names they had before there were several), so that
    each has its own vectors to collect garbage in, and a query asks only the knowledge bases of its scope."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", embedder_name).strip("-").lower()
    if not kb:
        return f"{kind}-{slug}"[:60].strip("-")
    # A kb name is a slug of at most 32 characters (index/kb.py); "--" keeps "a-b"+"c" apart from "a"+"b-c".
    return f"kb-{kb.lower()}--{kind}-{slug}"[:100].strip("-")


class ChromaStore:
    """`kind` names the collection's content: "chunks" (retrieval) or "sentences" (sentence vectors, by id)."""

    def __init__(self, embedder_name: str, path: Path | None = None, host: str = "", port: int = 8000,
                 kind: str = "chunks", kb: str = ""):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if host:
            self._client = chromadb.HttpClient(host=host, port=port, settings=settings)
        else:
            if path is None:
                raise ValueError("ChromaStore needs a path when no Chroma server host is set")
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(path=str(path), settings=settings)
        self._collection = self._client.get_or_create_collection(
            _collection_name(embedder_name, kind, kb),
            configuration={"hnsw": {"space": "cosine"}},
            embedding_function=None,  # we always pass vectors; Chroma must not download its default model
        )

    def count(self) -> int:
        return self._collection.count()

    def drop(self) -> None:
        """Delete the whole collection (a knowledge base deleted); this object is unusable afterwards."""
        self._client.delete_collection(self._collection.name)

    def ids(self) -> set[str]:
        return set(self._collection.get(include=[])["ids"])

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        for i in range(0, len(chunks), _BATCH):
            part = chunks[i : i + _BATCH]
            self._collection.upsert(
                ids=[c.id for c in part],
                embeddings=vectors[i : i + _BATCH],
                documents=[c.text for c in part],
                metadatas=[_chunk_meta(c) for c in part],
            )

    def update_metadata(self, chunks: Sequence[Chunk]) -> None:
        """Rewrite the stored metadata of chunks already embedded: the id hashes source, section and text only, so a
        manifest edit (title, date) or a shifted offset keeps the vector but changes the metadata."""
        for i in range(0, len(chunks), _BATCH):
            part = chunks[i : i + _BATCH]
            self._collection.update(ids=[c.id for c in part], metadatas=[_chunk_meta(c) for c in part])

    def chunks(self, ids: Sequence[str]) -> dict[str, Chunk]:
        """The stored chunks of these ids, rebuilt from text and metadata (unknown ids, and records written before
        the metadata held every field, are left out)."""
        out: dict[str, Chunk] = {}
        ids = list(ids)
        for i in range(0, len(ids), _BATCH):
            res = self._collection.get(ids=ids[i : i + _BATCH], include=["documents", "metadatas"])
            for cid, text, meta in zip(res["ids"], res["documents"], res["metadatas"]):
                if meta and all(name in meta for name in _CHUNK_META):
                    out[cid] = Chunk(id=cid, text=text, **{name: meta[name] for name in _CHUNK_META})
        return out

    def upsert_texts(self, ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray) -> None:
        for i in range(0, len(ids), _BATCH):
            self._collection.upsert(ids=list(ids[i : i + _BATCH]), embeddings=vectors[i : i + _BATCH],
                                    documents=list(texts[i : i + _BATCH]))

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these ids (unknown ids are left out)."""
        if not ids:
            return {}
        res = self._collection.get(ids=list(ids), include=["embeddings"])
        return {i: np.asarray(v, dtype=np.float32) for i, v in zip(res["ids"], res["embeddings"])}

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), _BATCH):
            self._collection.delete(ids=ids[i : i + _BATCH])

    def query(self, vector: np.ndarray, n: int, excluding: Sequence[str] = ()) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity), best first. Chroma returns fewer when it holds fewer (none when empty), so
        no count() is needed on the query path. `excluding`: no chunks of these categories."""
        where = {"category": {"$nin": list(excluding)}} if excluding else None
        res = self._collection.query(query_embeddings=[vector], n_results=max(1, n), where=where,
                                     include=["distances"])
        ids, distances = (res["ids"] or [[]])[0], (res["distances"] or [[]])[0]
        return [(cid, 1.0 - float(dist)) for cid, dist in zip(ids, distances)]


class ChromaCatalog:
    """The committed catalog on a Chroma server, beside the vectors, so that any host can serve the index without
    ingesting: document records, source texts and the generation pointer, as records of one small collection.

    Chroma stores nothing without an embedding, and nobody searches these records by similarity: each gets the same
    1-dim dummy vector (1.0; a zero vector has no cosine). Records are content-addressed ("doc:<hash>",
    "text:<sha256>") and written before the one "generation" record that names them, so a reader that follows the
    pointer never meets a half-written generation; each upsert of a single record is atomic in Chroma."""

    HEAD = "generation"

    def __init__(self, embedder_name: str, host: str, port: int = 8000, kb: str = ""):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self._client = chromadb.HttpClient(host=host, port=port,
                                           settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))
        self._collection = self._client.get_or_create_collection(_collection_name(embedder_name, "catalog", kb),
                                                                 embedding_function=None)

    def drop(self) -> None:
        """Delete the whole collection (a knowledge base deleted); this object is unusable afterwards."""
        self._client.delete_collection(self._collection.name)

    def head(self) -> dict | None:
        """The committed generation record ({"generation", "embedder", "split_signature", "docs": [record ids]}),
        None when nothing was ever committed to this server."""
        res = self._collection.get(ids=[self.HEAD], include=["documents"])
        return json.loads(res["documents"][0]) if res["ids"] else None

    def head_key(self) -> tuple[int, str] | None:
        """(generation, commit id) from the record's metadata, not the whole record: what a poll reads."""
        res = self._collection.get(ids=[self.HEAD], include=["metadatas"])
        if not res["ids"]:
            return None
        meta = res["metadatas"][0]
        return int(meta["generation"]), str(meta["commit"])

    def set_head(self, record: dict) -> None:
        self._put([self.HEAD], [json.dumps(record, ensure_ascii=False)],
                  [{"kind": "head", "generation": record["generation"], "commit": record["commit"]}])

    def has(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        for i in range(0, len(ids), _BATCH):
            found.update(self._collection.get(ids=ids[i : i + _BATCH], include=[])["ids"])
        return found

    def read(self, ids: Iterable[str]) -> dict[str, str]:
        """Record id → its document (a JSON doc record or a source text); unknown ids are left out."""
        ids = list(ids)
        out: dict[str, str] = {}
        for i in range(0, len(ids), _BATCH):
            res = self._collection.get(ids=ids[i : i + _BATCH], include=["documents"])
            out.update(zip(res["ids"], res["documents"]))
        return out

    def put(self, records: dict[str, str], kind: str) -> None:
        items = list(records.items())
        for i in range(0, len(items), _BATCH):
            part = items[i : i + _BATCH]
            self._put([k for k, _ in part], [v for _, v in part], [{"kind": kind}] * len(part))

    def ids(self, kind: str) -> set[str]:
        return set(self._collection.get(where={"kind": kind}, include=[])["ids"])

    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), _BATCH):
            self._collection.delete(ids=ids[i : i + _BATCH])

    def _put(self, ids: list[str], documents: list[str], metadatas: list[dict]) -> None:
        # Texts of large regulations are big: a few per request keeps each HTTP body small.
        step = 16
        for i in range(0, len(ids), step):
            n = len(ids[i : i + step])
            self._collection.upsert(ids=ids[i : i + step], documents=documents[i : i + step],
                                    metadatas=metadatas[i : i + step], embeddings=[[1.0]] * n)


class ChromaDocument:
    """One JSON document on a Chroma server under a fixed id, with a version number in its metadata: the list of
    knowledge bases (index/kb.py Registry), which every host of a deployment reads. A poll reads the metadata
    only. Chroma has no conditional write, so two hosts writing in the same instant keep the later one's list."""

    def __init__(self, host: str, port: int = 8000, name: str = "xiaoyu-knowledge-bases", key: str = "registry"):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self._client = chromadb.HttpClient(host=host, port=port,
                                           settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))
        self._collection = self._client.get_or_create_collection(name, embedding_function=None)
        self._key = key

    def version(self) -> int | None:
        res = self._collection.get(ids=[self._key], include=["metadatas"])
        return int(res["metadatas"][0]["version"]) if res["ids"] else None

    def read(self) -> tuple[int, str] | None:
        res = self._collection.get(ids=[self._key], include=["documents", "metadatas"])
        return (int(res["metadatas"][0]["version"]), res["documents"][0]) if res["ids"] else None

    def write(self, text: str, version: int) -> None:
        # Nobody searches it by similarity; Chroma stores nothing without an embedding (as in ChromaCatalog).
        self._collection.upsert(ids=[self._key], documents=[text], metadatas=[{"version": version}],
                                embeddings=[[1.0]])


def chroma_cli() -> str | None:
    """The `chroma` command that ships with chromadb (on PATH, or beside this interpreter); None if missing."""
    beside = Path(sys.executable).with_name("chroma")
    return shutil.which("chroma") or (str(beside) if beside.exists() else None)


def start_server(path: Path, port: int, timeout: float = 60.0) -> subprocess.Popen:
    """`chroma run` over `path` on 127.0.0.1:`port`, returned once it listens: the server `xiaoyu serve --workers N`
    starts for its workers, and the tests' real Chroma server. RuntimeError if it is missing, exits or never listens
    (the process is stopped then); the caller terminates it when done."""
    exe = chroma_cli()
    if exe is None:
        raise RuntimeError("the chroma command (part of chromadb) is not installed")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma run exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(f"chroma run did not listen on port {port} within {timeout:.0f} s") from None
            time.sleep(0.1)
