"""The committed index: which documents and chunks are live, plus the BM25 index built over exactly those chunks.

Each ingest writes a new generation directory and then swaps the one-line CURRENT pointer with os.replace, which
is atomic. A crash anywhere before that swap leaves the previous generation in charge, so the index is never
half-written. Chroma may hold vectors of a failed run, but retrieval only trusts ids listed here.

With a Chroma server (SharedIndexDir) the server holds the truth, catalog included, and each host's index dir is a
mirror of the server's committed generation: a host that never ingested pulls it, rebuilds BM25 and serves.

Versions: a document whose title another one shares with a later date is superseded (supersede() below). It keeps its
record, text, chunks and vectors, so that deleting the newer version reinstates it without embedding anything, but
it is retired: BM25 is built without its chunks and retrieval drops them from the dense hits.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from assistant.index.lexical import JiebaTokenizer, LexicalIndex
from assistant.index.store import ChromaCatalog, ChromaStore
from assistant.types import Chunk

log = logging.getLogger("xiaoyu")


class IndexMoved(RuntimeError):
    """Another host committed a generation after this catalog was read: the writer syncs and tries again."""


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
    # The source of the newer version of this document ("" while it is the current one). A default, so that records
    # written before versions existed (a data dir's catalog.json, a Chroma server's doc records) still load.
    superseded_by: str = ""


@dataclass
class Catalog:
    embedder: str = ""
    split_signature: str = ""
    docs: dict[str, DocRecord] = field(default_factory=dict)
    chunks: dict[str, Chunk] = field(default_factory=dict)
    generation: int = 0
    commit: str = ""  # a random id per commit: two data dirs' "generation 5" are told apart when mirroring a server

    def retired(self) -> frozenset[str]:
        """Ids of the chunks of superseded documents: kept in the catalog and the store, never retrieved."""
        return frozenset(cid for rec in self.docs.values() if rec.superseded_by for cid in rec.chunk_ids)

    def live_chunks(self) -> list[Chunk]:
        """The chunks retrieval may return, in catalog order (BM25 is built over exactly these)."""
        retired = self.retired()
        return [c for cid, c in self.chunks.items() if cid not in retired]

    def to_json(self) -> dict:
        return {
            "embedder": self.embedder,
            "split_signature": self.split_signature,
            "generation": self.generation,
            "commit": self.commit,
            "docs": [dataclasses.asdict(d) for d in self.docs.values()],
            "chunks": [dataclasses.asdict(c) for c in self.chunks.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> Catalog:
        docs = {d["source"]: DocRecord(**{**d, "chunk_ids": tuple(d["chunk_ids"])}) for d in data["docs"]}
        chunks = {c["id"]: Chunk(**c) for c in data["chunks"]}
        return cls(data["embedder"], data["split_signature"], docs, chunks, data["generation"],
                   data.get("commit", ""))


# "（2020年修正）", "（2017年修改）", "（2019年10月26日修订）": the suffix of one version's title. Not "（1999年）": each
# 宪法修正案 of that form is a document of its own, not a version of the others; nor "（七）" or "（试行）".
_REVISION = re.compile(r"\(\d{4}年(?:\d{1,2}月(?:\d{1,2}日)?)?(?:修正|修订|修改)(?:本|文本)?\)$")


def version_key(title: str) -> str:
    """What the versions of one document share: "《中华人民共和国 刑法》（2020年修正）" → "中华人民共和国刑法"."""
    key = re.sub(r"\s+", "", unicodedata.normalize("NFKC", title or "")).replace("《", "").replace("》", "")
    return _REVISION.sub("", key)


def _date_parts(date: str) -> tuple[int, ...]:
    """"2018-03-19" → (2018, 3, 19); "2024年5月" → (2024, 5); "20180319" → (2018, 3, 19); "" → ()."""
    parts = re.findall(r"\d+", date or "")
    if len(parts) == 1 and len(parts[0]) == 8:
        parts = [parts[0][:4], parts[0][4:6], parts[0][6:]]
    return tuple(int(p) for p in parts[:3])


def _later(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether date `a` is known to come after `b`. A missing date, or one that agrees with the other as far as both
    go ("2024-05" and "2024-05-01"), orders nothing: two such versions both stay live, because retiring either on a
    guess could hide the text in force, while two live versions only cost a duplicate hit."""
    n = min(len(a), len(b))
    return n > 0 and a[:n] > b[:n]


def supersede(docs: dict[str, DocRecord]) -> dict[str, DocRecord]:
    """`docs` with each record's superseded_by set: the newest of the documents that share its version_key() and
    carry a later date, or "" when there is none. Derived from the records alone, at every commit, so that a newer
    version retires an older one whatever order they arrive in, and deleting the newer reinstates the older."""
    versions: dict[str, list[tuple[tuple[int, ...], str]]] = defaultdict(list)
    for source, rec in docs.items():
        key = version_key(rec.title)
        if key:
            versions[key].append((_date_parts(rec.date), source))
    out = {}
    for source, rec in docs.items():
        mine = _date_parts(rec.date)
        newer = sorted((d, s) for d, s in versions.get(version_key(rec.title), ()) if _later(d, mine))
        # The newest; of two newest with the same date (both live), the first source, so the choice is stable.
        by = max(newer, key=lambda pair: pair[0])[1] if newer else ""
        out[source] = rec if rec.superseded_by == by else dataclasses.replace(rec, superseded_by=by)
    return out


class IndexDir:
    """Layout of data_dir/index: CURRENT → gen-N/{catalog.json, lexical/}; texts/<sha256>.txt for source pages."""

    def __init__(self, data_dir: Path):
        """`data_dir`: the data dir for the default knowledge base, data_dir/kb/<name> for another (index/kb.py)."""
        self.root = data_dir / "index"
        self.texts = self.root / "texts"
        self._thread_lock = threading.RLock()
        self._lock_file = None
        self._depth = 0
        self._head_key: tuple | None = None
        self._head = 0

    @property
    def lock_path(self) -> Path:
        return self.root / ".ingest.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time: a second ingest (CLI beside a running server) waits instead of interleaving.
        Re-entrant within a process (an ingest syncs from the server under the lock it already holds); other
        threads of the process wait on the RLock, other processes on the flock."""
        with self._thread_lock:
            if self._depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_file = open(self.lock_path, "w")  # noqa: SIM115 - held across the yield
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                    self._lock_file.close()
                    self._lock_file = None

    def current(self) -> Path | None:
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            return None
        gen = self.root / pointer.read_text(encoding="utf-8").strip()
        return gen if (gen / "catalog.json").is_file() else None

    def head(self) -> int:
        """The committed generation number (0: none), at the cost of one stat while CURRENT is unchanged: what
        every process's poll reads to learn that another one committed (qa/retrieve.py). CURRENT is rewritten by
        os.replace at each commit, so its inode and mtime change, and only then is it read again."""
        try:
            st = os.stat(self.root / "CURRENT")
        except FileNotFoundError:
            return 0
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._head_key:
            gen = self.current()
            self._head_key, self._head = key, int(gen.name.rsplit("-", 1)[1]) if gen is not None else 0
        return self._head

    def needs_publish(self, catalog: Catalog) -> bool:
        """Whether a commit is due although nothing changed (a server that has not seen this catalog yet)."""
        return False

    def load(self, lexical: LexicalIndex) -> Catalog:
        gen = self.current()
        if gen is None:
            lexical.build([], [])
            return Catalog()
        catalog = Catalog.from_json(json.loads((gen / "catalog.json").read_text(encoding="utf-8")))
        if not lexical.load(gen / "lexical"):
            # A generation written before BM25 kept term counts: rebuilt here once; the next commit writes it anew.
            ordered = catalog.live_chunks()
            lexical.build([c.id for c in ordered], [c.text for c in ordered])
        return catalog

    def save_text(self, sha256: str, text: str) -> None:
        self.texts.mkdir(parents=True, exist_ok=True)
        path = self.texts / f"{sha256}.txt"
        if not path.exists():
            _atomic_write(path, text)

    def read_text(self, sha256: str) -> str:
        return (self.texts / f"{sha256}.txt").read_text(encoding="utf-8")

    def commit(self, catalog: Catalog, lexical: LexicalIndex) -> None:
        catalog.generation = (catalog.generation or 0) + 1
        catalog.commit = uuid.uuid4().hex
        self._write(catalog, lexical)

    def _write(self, catalog: Catalog, lexical: LexicalIndex) -> None:
        """Commit `catalog` (its generation number already set) as the local generation."""
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.current()
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



def _doc_record_id(rec: DocRecord) -> str:
    """Content-addressed, with the text's hash inside, so that a collector knows which texts a record needs."""
    body = json.dumps(dataclasses.asdict(rec), ensure_ascii=False, sort_keys=True)
    return f"doc:{rec.sha256}:{hashlib.sha256(body.encode('utf-8', 'surrogatepass')).hexdigest()[:24]}"


def _text_id(sha256: str) -> str:
    return f"text:{sha256}"


class SharedIndexDir(IndexDir):
    """The index on a Chroma server, shared by every worker and host; data_dir/index mirrors its committed generation.

    On the server: the vectors, chunk texts and all chunk metadata (ChromaStore), and the catalog (ChromaCatalog):
    content-addressed document records and source texts, then the generation record naming them, written last. A
    host pulls a generation it lacks (records, chunks and texts, no embedding), builds BM25 from the chunk texts and
    commits that as its local generation. A writer pulls first (under the local lock), so it builds on the server's
    generation; if another host commits in the meantime, commit() raises IndexMoved and the writer starts over."""

    PULL_ATTEMPTS = 5

    def __init__(self, data_dir: Path, remote: ChromaCatalog, chunks: ChromaStore):
        super().__init__(data_dir)
        self.remote = remote
        self.chunk_store = chunks
        self._commit_key: tuple | None = None
        self._commit = ""

    def head(self) -> int:
        """The server's committed generation (one small read); the local one when the server has none yet."""
        remote = self.remote.head_key()
        return super().head() if remote is None else remote[0]

    def needs_publish(self, catalog: Catalog) -> bool:
        # A data dir indexed before its host used this server (or before the server held catalogs): its catalog is
        # published at the next ingest, even one that changes nothing, so that other hosts can serve it.
        return bool(catalog.docs) and self.remote.head_key() is None

    def load(self, lexical: LexicalIndex) -> Catalog:
        self.sync(lexical.tokenizer)
        return super().load(lexical)

    def sync(self, tokenizer: JiebaTokenizer) -> bool:
        """Mirror the server's committed generation here when the local one is another; True when it pulled one."""
        remote = self.remote.head_key()
        if remote is None or remote == self._local_key():
            return False
        with self.locked():
            for _ in range(self.PULL_ATTEMPTS):
                head = self.remote.head()
                if head is None or (head["generation"], head["commit"]) == self._local_key():
                    return False  # another worker on this data dir pulled it while we waited for the lock
                catalog = self._pull(head)
                if catalog is not None:
                    break
                if self.remote.head_key() == (head["generation"], head["commit"]):
                    raise RuntimeError(f"Chroma server: generation {head['generation']} names documents, chunks or "
                                       "texts it does not hold; re-ingest the knowledge base from one host")
                # else a newer commit collected what this one named: read the new pointer
            else:
                raise RuntimeError(f"Chroma server: the index kept changing during {self.PULL_ATTEMPTS} pulls")
            # Chunks the local generation holds keep their BM25 rows: only the pulled documents are tokenized.
            local = LexicalIndex(tokenizer)
            IndexDir.load(self, local)
            lexical = LexicalIndex(tokenizer)
            ordered = catalog.live_chunks()
            lexical.build([c.id for c in ordered], [c.text for c in ordered], reuse=local)
            self._write(catalog, lexical)
        log.info("index: pulled generation %d from the Chroma server (%d documents, %d chunks)",
                 catalog.generation, len(catalog.docs), len(catalog.chunks))
        return True

    def _local_key(self) -> tuple[int, str]:
        generation = IndexDir.head(self)
        if self._commit_key != self._head_key:  # CURRENT changed: read the commit id of the generation it names
            gen = self.current()
            try:
                self._commit = json.loads((gen / "catalog.json").read_text(encoding="utf-8")).get("commit", "") \
                    if gen is not None else ""
            except OSError:
                self._commit = ""
            self._commit_key = self._head_key
        return generation, self._commit

    def _pull(self, head: dict) -> Catalog | None:
        """The catalog of the generation `head` names, its texts saved here; None when the server lacks part of it
        (a newer commit collected it)."""
        records = self.remote.read(head["docs"])
        if len(records) < len(set(head["docs"])):
            return None
        docs: dict[str, DocRecord] = {}
        for rid in head["docs"]:
            d = json.loads(records[rid])
            docs[d["source"]] = DocRecord(**{**d, "chunk_ids": tuple(d["chunk_ids"])})
        order = [s for s in head.get("chunk_order", ()) if s in docs]  # the writer's order: BM25 ties break alike
        order += [s for s in docs if s not in set(order)]
        wanted = [cid for source in order for cid in docs[source].chunk_ids]
        stored = self.chunk_store.chunks(wanted)
        if len(stored) < len(set(wanted)):
            return None
        need = {rec.sha256 for rec in docs.values() if not (self.texts / f"{rec.sha256}.txt").is_file()}
        texts = self.remote.read(_text_id(sha) for sha in need)
        if len(texts) < len(need):
            return None
        for sha in need:
            self.save_text(sha, texts[_text_id(sha)])
        return Catalog(head["embedder"], head["split_signature"], docs, {cid: stored[cid] for cid in wanted},
                       head["generation"], head["commit"])

    def commit(self, catalog: Catalog, lexical: LexicalIndex) -> None:
        head = self.remote.head()
        if head is not None and head["generation"] != (catalog.generation or 0):
            raise IndexMoved(f"the index moved to generation {head['generation']} while generation "
                             f"{catalog.generation} was being changed")
        previous = set(head["docs"]) if head else set()
        rids = {source: _doc_record_id(rec) for source, rec in catalog.docs.items()}
        # 1. Source texts and document records new to this generation (content-addressed: nobody reads them yet)
        texts = {_text_id(rec.sha256): rec.sha256 for rec in catalog.docs.values()}
        held = self.remote.has(texts)
        self.remote.put({tid: self.read_text(sha) for tid, sha in texts.items() if tid not in held}, "text")
        new = {source: rid for source, rid in rids.items() if rid not in previous}
        held = self.remote.has(new.values())
        self.remote.put({rid: json.dumps(dataclasses.asdict(catalog.docs[source]), ensure_ascii=False)
                         for source, rid in new.items() if rid not in held}, "doc")
        # The chunks of a changed document may keep their ids (and vectors) with new metadata (a title, offsets).
        # A host still pulling the previous generation may read that metadata early; it is never less right.
        self.chunk_store.update_metadata([catalog.chunks[cid] for source in new
                                          for cid in catalog.docs[source].chunk_ids])
        # 2. The generation record: the commit point for every host
        catalog.generation = (catalog.generation or 0) + 1
        catalog.commit = uuid.uuid4().hex
        self.remote.set_head({
            "generation": catalog.generation, "commit": catalog.commit, "embedder": catalog.embedder,
            "split_signature": catalog.split_signature, "docs": [rids[s] for s in catalog.docs],
            "chunk_order": list(dict.fromkeys(c.source for c in catalog.chunks.values())),
        })
        # 3. This host's mirror, then the records neither this generation nor the one it replaced names
        self._write(catalog, lexical)
        keep = set(rids.values()) | previous
        keep_texts = {_text_id(rid.split(":")[1]) for rid in keep}
        stale = (self.remote.ids("doc") - keep) | (self.remote.ids("text") - keep_texts)
        if stale:
            self.remote.delete(stale)


def _atomic_write(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
