"""Named knowledge bases: each its own documents, generation, BM25 and Chroma collections (KbIndex), listed in a
registry file in the data dir (Registry), and the shelf of those a process serves (Shelf), searched together for a
scope by qa/retrieve.py.

Why one index each, not one index with a knowledge-base field: a knowledge base is ingested, re-indexed, collected
and deleted on its own (adding a file to `community` never touches the 20,000 chunks of `laws`), and a query asks
only the knowledge bases of its scope, with no filter over chunks it can't return. What would be lost, comparable
scores, is kept: dense similarities are cosines of one embedder, and BM25 scores the union with its statistics
(lexical.search_together), so a scope ranks exactly as one knowledge base holding the same documents.

Layout: the default knowledge base (DEFAULT_KB) keeps data_dir/index and the collections it had before there were
several, so an existing data dir needs no migration; another lives in data_dir/kb/<name>/."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from assistant.errors import BadQuestion, NotFound
from assistant.index.catalog import Catalog, IndexDir
from assistant.index.exact import InMemoryVectors
from assistant.index.lexical import JiebaTokenizer, LexicalIndex
from assistant.index.sentences import provision_sentences, sentence_id
from assistant.index.store import ChromaDocument, ChromaStore
from assistant.types import DEFAULT_KB

log = logging.getLogger("xiaoyu")
NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


class UnknownKnowledgeBase(BadQuestion):
    """A scope names a knowledge base that does not exist: a 422 naming the ones that do."""

    def __init__(self, unknown: Sequence[str], known: Sequence[str]):
        self.unknown, self.known = tuple(unknown), tuple(known)
        names = "、".join(n[:40] for n in unknown[:5])
        super().__init__(f"没有这个知识库：{names}。现有的知识库：{'、'.join(known) or '（无）'}")


def check_name(name: str) -> str:
    """A knowledge base's name as given, or BadQuestion: letters, digits, '-' and '_', 1–32 characters."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadQuestion(f"知识库名称只能用字母、数字、- 和 _（1–32 个字符），不是 {str(name)[:40]!r}")
    return name


def kb_dir(data_dir: Path, name: str) -> Path:
    """The folder whose index/ (and uploads/) hold knowledge base `name`."""
    return data_dir if name == DEFAULT_KB else data_dir / "kb" / name


@dataclass(frozen=True)
class KbInfo:
    name: str
    title: str = ""
    created_at: str = ""


_HEADING = re.compile(r"^[ \t\u3000]*(第[零〇一二三四五六七八九十百千]+条(?:之[零〇一二三四五六七八九十百千]+)?)(?=[\s\u3000])",
                      re.MULTILINE)


@dataclass(frozen=True)
class Snapshot:
    """One committed generation of one knowledge base, as searches read it: replaced whole on reload, never edited."""

    kb: str
    catalog: Catalog
    lexical: LexicalIndex
    retired: frozenset[str]  # chunks of superseded versions (catalog.py supersede): in the store, never returned
    # A small knowledge base's live chunk and sentence vectors, searched in memory (index/exact.py); None: Chroma.
    vectors: InMemoryVectors | None = None
    sentence_vectors: InMemoryVectors | None = None
    _domain: dict = field(default_factory=dict, compare=False, repr=False)  # reference → domain_rows(), per generation

    def domain_rows(self, reference: Sequence[str]) -> np.ndarray:
        """Which BM25 rows are domain chunks (of no reference category), as a bool mask. Computed once per
        generation and set of categories, never per query."""
        return self._domain_of(reference)[0]

    def holds(self, reference: Sequence[str]) -> tuple[bool, bool]:
        """(any domain chunk, any chunk of these reference categories), for the live chunks."""
        return self._domain_of(reference)[1:]

    def _domain_of(self, reference: Sequence[str]) -> tuple[np.ndarray, bool, bool]:
        key = tuple(sorted(reference))
        if key not in self._domain:
            mask = self._domain_mask(self.lexical.ids, reference)
            self._domain[key] = (mask, bool(mask.any()), not bool(mask.all()))
        return self._domain[key]

    def _domain_mask(self, ids: Sequence[str], reference: Sequence[str]) -> np.ndarray:
        chunks, demoted = self.catalog.chunks, set(reference)
        return np.fromiter((chunks[cid].category not in demoted for cid in ids), dtype=bool, count=len(ids))

    def provisions(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(document title, 第N条) → the live chunks holding that article; (title, "第六章") → those of the chapter;
        (title, "") → every live chunk of the document. A chunk of several short articles holds each whose heading
        opens one of its lines. Once per generation: a known question (index/known.py) names its provision so,
        never by chunk id."""
        if "provisions" not in self._domain:
            table: dict[tuple[str, str], list[str]] = {}
            for cid in self.lexical.ids:  # BM25's rows: exactly the live chunks
                chunk = self.catalog.chunks[cid]
                parts = [p.split()[0] for p in chunk.section.split(" > ") if p.split()]
                articles = {chunk.article, "", *parts, *_HEADING.findall(chunk.body)}
                for article in articles:
                    table.setdefault((chunk.title, article), []).append(cid)
            self._domain["provisions"] = {key: tuple(ids) for key, ids in table.items()}
            self._domain["titles"] = frozenset(title for title, _ in table)
        return self._domain["provisions"]

    def titles(self) -> frozenset[str]:
        """The titles of the live documents (with provisions(), once per generation)."""
        self.provisions()
        return self._domain["titles"]

    def vector_domain_rows(self, reference: Sequence[str]) -> np.ndarray | None:
        """domain_rows() for the in-memory vectors' rows; None without them. Once per generation, never per query."""
        if self.vectors is None:
            return None
        key = ("vectors", *sorted(reference))
        if key not in self._domain:
            self._domain[key] = self._domain_mask(self.vectors.ids, reference)
        return self._domain[key]


class KbIndex:
    """One knowledge base's index: its committed generation (IndexDir: catalog and BM25) and its vectors (chunks and
    sentences in Chroma), and the snapshot searches read."""

    def __init__(self, name: str, index_dir: IndexDir, store: ChromaStore, sentences: ChromaStore | None,
                 tokenizer: JiebaTokenizer, exact_max_chunks: int = 0):
        self.name = name
        self.exact_max_chunks = exact_max_chunks  # up to this many live chunks, vectors are searched in memory
        self.index_dir = index_dir
        self.store = store
        self.sentences = sentences
        self.tokenizer = tokenizer
        self._reloading = threading.Lock()  # one reload at a time; searches never wait for it
        self.snap = self._load()

    def _load(self) -> Snapshot:
        lexical = LexicalIndex(self.tokenizer)
        catalog = self.index_dir.load(lexical)
        # Each chunk names its knowledge base (citations carry it); catalogs written before there were several don't.
        catalog.chunks = {cid: c if c.kb == self.name else replace(c, kb=self.name)
                          for cid, c in catalog.chunks.items()}
        retired = catalog.retired()
        live = [cid for cid in catalog.chunks if cid not in retired]
        vectors = sentence_vectors = None
        if 0 < len(live) <= self.exact_max_chunks:
            vectors = InMemoryVectors.load(self.store, live)
            if self.sentences is not None:
                ids = {sentence_id(t) for cid in live for t in provision_sentences(catalog.chunks[cid].body)}
                sentence_vectors = InMemoryVectors.load(self.sentences, sorted(ids))
        return Snapshot(self.name, catalog, lexical, retired, vectors, sentence_vectors)

    @property
    def catalog(self) -> Catalog:
        return self.snap.catalog

    def reload(self) -> None:
        """Pick up a newly committed generation. Searches in flight keep the snapshot they started with: each reads
        self.snap once, and rebinding an attribute is atomic."""
        with self._reloading:
            self.snap = self._load()

    def refresh(self) -> bool:
        """Reload if the committed generation is not the one being served (another process committed); True if it
        reloaded. The question costs a stat of CURRENT (or one small read from the Chroma server)."""
        if self.index_dir.head() == self.snap.catalog.generation:
            return False
        with self._reloading:
            if self.index_dir.head() == self.snap.catalog.generation:
                return False  # another thread reloaded while this one waited
            self.snap = self._load()
        log.info("index %s: now serving generation %d", self.name, self.snap.catalog.generation)
        return True


class Registry:
    """The knowledge bases of a deployment: data_dir/knowledge_bases.json, shared by every process on the data dir,
    or with a Chroma server (`remote`) a document there, shared by every host. The default one is always there.
    Written atomically under a lock, so two processes of a data dir creating at once both land."""

    def __init__(self, data_dir: Path, remote: ChromaDocument | None = None):
        self.path = data_dir / "knowledge_bases.json"
        self._lock_path = data_dir / ".knowledge_bases.lock"
        self.remote = remote

    def stamp(self) -> tuple | None:
        """Changes whenever the list is rewritten: what a process polls to learn of another's create or delete
        (a stat of the file, or one small read from the Chroma server)."""
        if self.remote is not None:
            return (self.remote.version(),)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> tuple[int, str | None]:
        """(version, the list as JSON text; None when never written)."""
        if self.remote is not None:
            found = self.remote.read()
            return found if found is not None else (0, None)
        return 0, self.path.read_text(encoding="utf-8") if self.path.is_file() else None

    def all(self) -> dict[str, KbInfo]:
        entries = {}
        _, text = self._read()
        if text is not None:
            for item in json.loads(text):
                entries[item["name"]] = KbInfo(item["name"], item.get("title", ""), item.get("created_at", ""))
        entries.setdefault(DEFAULT_KB, KbInfo(DEFAULT_KB, "社区政策"))
        return dict(sorted(entries.items(), key=lambda kv: (kv[0] != DEFAULT_KB, kv[0])))

    def add(self, name: str, title: str = "") -> tuple[KbInfo, bool]:
        """(the entry, whether it is new); an existing name keeps its entry (a title given then replaces its own)."""
        with self._locked():
            entries = self.all()
            clash = next((n for n in entries if n != name and n.lower() == name.lower()), None)
            if clash is not None:  # Chroma's collection names (index/store.py) and some file systems fold case
                raise BadQuestion(f"已有知识库 {clash}：知识库名称不区分大小写，请换一个名称")
            old = entries.get(name)
            info = KbInfo(name, title or (old.title if old else ""),
                          old.created_at if old else datetime.now(UTC).isoformat(timespec="seconds"))
            entries[name] = info
            self._write(entries)
            return info, old is None

    def remove(self, name: str) -> None:
        with self._locked():
            entries = self.all()
            entries.pop(name, None)
            self._write(entries)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _write(self, entries: dict[str, KbInfo]) -> None:
        body = json.dumps([{"name": i.name, "title": i.title, "created_at": i.created_at} for i in entries.values()],
                          ensure_ascii=False, indent=1)
        if self.remote is not None:
            self.remote.write(body, self._read()[0] + 1)
            return
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".knowledge_bases.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class Shelf:
    """The knowledge bases this process serves, by name, kept in step with the registry: a knowledge base another
    process created or deleted is opened or closed at the next refresh(). `open_index(name)` builds one KbIndex
    (build_services supplies it: the concrete classes are made there)."""

    def __init__(self, registry: Registry, open_index: Callable[[str], KbIndex], default: Sequence[str] = ()):
        """`default`: the default scope (XIAOYU_DEFAULT_KNOWLEDGE_BASES); empty: every knowledge base."""
        self.registry = registry
        self.default = tuple(default)
        self._open = open_index
        self._lock = threading.Lock()
        self._stamp = registry.stamp()
        self._infos = registry.all()
        self._indexes: dict[str, KbIndex] = {name: open_index(name) for name in self._infos}

    def names(self) -> tuple[str, ...]:
        return tuple(self._indexes)

    def infos(self) -> list[KbInfo]:
        return [self._infos[n] for n in self._indexes if n in self._infos]

    def __getitem__(self, name: str) -> KbIndex:
        found = self._indexes.get(name)
        if found is None:
            raise NotFound(f"没有这个知识库：{name[:40]}")
        return found

    def get(self, name: str) -> KbIndex | None:
        return self._indexes.get(name)

    def scope(self, names: Sequence[str] | None = None) -> tuple[str, ...]:
        """The scope a caller asked for, checked (UnknownKnowledgeBase), in its order without repeats; None or empty:
        the default scope, those of its names that exist (all knowledge bases when none does, or none is set)."""
        if names:
            return tuple(ix.name for ix in self.indexes(names))
        served = self.names()
        return tuple(n for n in self.default if n in served) or served

    def indexes(self, names: Sequence[str]) -> list[KbIndex]:
        """The indexes of a scope, in its order; UnknownKnowledgeBase for a name not served."""
        unknown = [n for n in names if n not in self._indexes]
        if unknown:
            self.refresh_registry()  # another process may have created it a moment ago
            unknown = [n for n in names if n not in self._indexes]
        if unknown:
            raise UnknownKnowledgeBase(unknown, self.names())
        return [self._indexes[n] for n in dict.fromkeys(names)]

    def create(self, name: str, title: str = "") -> tuple[KbInfo, bool]:
        check_name(name)
        info, new = self.registry.add(name, title.strip()[:100] if title else "")
        with self._lock:
            self._infos = self.registry.all()
            self._stamp = self.registry.stamp()
            opened = self._indexes.get(name) or self._open(name)
            # The registry's order (the default first, then by name), as a process that starts now lists them.
            self._indexes = {n: self._indexes.get(n) or opened for n in self._infos if n in self._indexes or n == name}
        return info, new

    def delete(self, name: str, drop: Callable[[KbIndex], None]) -> None:
        """Remove knowledge base `name` from the registry, then `drop(its index)` (its files and collections)."""
        if name == DEFAULT_KB:
            raise BadQuestion(f"默认知识库 {DEFAULT_KB} 不能删除（可以删除其中的文档）")
        index = self[name]
        self.registry.remove(name)
        with self._lock:
            self._infos = self.registry.all()
            self._stamp = self.registry.stamp()
            self._indexes = {n: ix for n, ix in self._indexes.items() if n != name}
        drop(index)

    def refresh_registry(self) -> bool:
        """Open the knowledge bases the registry gained and close those it lost (another process's create or
        delete); True if the names changed. A stat of the registry file while nothing changed."""
        stamp = self.registry.stamp()
        if stamp == self._stamp:
            return False
        with self._lock:
            self._stamp = stamp
            self._infos = self.registry.all()
            kept = {n: self._indexes.get(n) or self._open(n) for n in self._infos}  # in the registry's order
            changed = kept.keys() != self._indexes.keys()
            self._indexes = kept
        return changed

    def refresh(self) -> bool:
        """refresh_registry(), then reload each index whose generation moved; True if anything changed."""
        changed = self.refresh_registry()
        for index in list(self._indexes.values()):
            changed = index.refresh() or changed
        return changed


def remove_tree(path: Path) -> None:
    """Delete a deleted knowledge base's folder (data_dir/kb/<name>), never the data dir itself."""
    if path.name and path.parent.name == "kb" and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
