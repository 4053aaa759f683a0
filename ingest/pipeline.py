"""load → split → embed → upsert → commit. Idempotent (content-hash ids), incremental, and atomic (see catalog.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from assistant.index.catalog import Catalog, DocRecord, IndexDir, IndexMoved, supersede
from assistant.index.embedding import Embedder
from assistant.index.lexical import LexicalIndex
from assistant.index.sentences import provision_sentences, sentence_id
from assistant.index.store import ChromaStore
from assistant.types import Chunk, SourceDoc
from ingest.loaders import LoadError, discover, load_file, load_manifest
from ingest.splitter import ChineseSplitter

Progress = Callable[[str, int, int], None]  # (phase "files" | "chunks", done, total)
ATTEMPTS = 3  # with a Chroma server, another host may commit while we work: start over on its generation
# Texts per embedder call, each group stored as soon as it is embedded: memory is bounded by the group, and a killed
# ingest loses at most one group's work. A passage's vector depends on its text alone (OnnxE5Embedder runs one text
# per run), so the group size changes only how often the store is written, never a vector.
EMBED_GROUP = 256


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    embedded: int = 0  # chunks that needed a new vector

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        return (
            f"新增 {len(self.added)} · 更新 {len(self.updated)} · 未变 {len(self.unchanged)} · "
            f"删除 {len(self.removed)} · 失败 {len(self.failed)}（嵌入 {self.embedded} 个片段）"
        )


class IngestPipeline:
    def __init__(
        self,
        index_dir: IndexDir,
        store: ChromaStore,
        embedder: Embedder,
        lexical: LexicalIndex,
        splitter: ChineseSplitter,
        sentences: ChromaStore | None = None,
    ):
        self.index_dir = index_dir
        self.store = store
        self.embedder = embedder
        self.lexical = lexical
        self.splitter = splitter
        self.sentences = sentences  # sentence vectors by content hash; None: no sentence-level ranking

    @property
    def split_signature(self) -> str:
        return f"chinese-v1/max{self.splitter.max_chars}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time: a second ingest (CLI beside a running server) waits instead of interleaving.
        with self.index_dir.locked():
            yield

    def _retrying(self, work: Callable[[Catalog, LexicalIndex], IngestReport]) -> IngestReport:
        """`work(the committed catalog, its BM25)` under the lock; once more, on the newer catalog, each time its commit finds
        that another host committed first (IndexMoved: only with a Chroma server). Vectors embedded by a failed
        attempt stay in the store, so starting over embeds nothing twice."""
        for attempt in range(1, ATTEMPTS + 1):
            with self._locked():
                lexical = LexicalIndex(self.lexical.tokenizer)
                previous = self.index_dir.load(lexical)
                try:
                    return work(previous, lexical)
                except IndexMoved:
                    if attempt == ATTEMPTS:
                        raise
        raise AssertionError("unreachable")

    def run(self, roots: list[Path], progress: Progress | None = None, prune: bool = True) -> IngestReport:
        """Ingest every supported file under each root. Files gone from a root are pruned from the index."""
        resolved = [r.resolve() for r in roots]
        return self._retrying(lambda previous, lexical: self._run(previous, lexical, resolved, progress, prune))

    def ingest_file(self, root: Path, source: str, meta: dict, staged: Path | None = None,
                    placed: Callable[[], None] | None = None) -> IngestReport:
        """Ingest (or refresh) the one document `source` of the folder `root`, with `meta` as its manifest entry.
        Every other document, of this root or another, stays exactly as it is: nothing is walked, re-extracted or
        pruned, so an upload costs its own file only. The report names this source alone.

        `staged`: a folder laid out like `root` to read the bytes from (an upload not yet moved into place); the
        document is still recorded as `source` of `root`. `placed` runs under the ingest lock once the document is
        in the committed index (also when it was unchanged), so that a re-index in another process never sees the
        index ahead of the folder. A changed split setting is left to a re-index: the catalog keeps the signature
        its other documents were split with, and only this file is split anew."""
        base = root.resolve()
        folder = staged if staged is not None else base

        def work(previous: Catalog, lexical: LexicalIndex) -> IngestReport:
            report = IngestReport()
            docs = dict(previous.docs)
            fresh: dict[str, tuple[SourceDoc, list[Chunk], str]] = {}
            self._take(source, partial(load_file, folder / source, folder, {source: meta}), base,
                       docs.get(source), False, fresh, report)
            if report.failed:
                return report
            self._apply(previous, lexical, docs, fresh, report, None, False,
                        previous.split_signature if previous.docs else None)
            if placed is not None:
                placed()
            return report

        return self._retrying(work)

    def holds(self, root: Path, source: str, meta: dict, staged: Path | None = None) -> bool:
        """Whether the committed index records `source` of `root` exactly as ingest_file would for these bytes and
        this manifest entry: how an interrupted upload learns whether its ingest committed before the crash."""
        with self._locked():
            catalog = self.index_dir.load(LexicalIndex(self.lexical.tokenizer))
        rec = catalog.docs.get(source)
        if rec is None or rec.root != str(root.resolve()):
            return False
        folder = staged if staged is not None else root.resolve()
        try:
            doc = load_file(folder / source, folder, {source: meta})
        except LoadError:
            return False
        return rec.sha256 == doc.sha256 and self._same_meta(rec, doc)

    def remove(self, sources: list[str]) -> IngestReport:
        """Delete documents by source path (the staff console's and admin API's delete)."""

        def work(catalog: Catalog, lexical: LexicalIndex) -> IngestReport:
            report = IngestReport()
            for source in sources:
                if catalog.docs.pop(source, None) is not None:
                    report.removed.append(source)
            if report.removed:
                self._commit(catalog, lexical, report)
            return report

        return self._retrying(work)

    def _run(self, previous: Catalog, lexical: LexicalIndex, roots: list[Path], progress: Progress | None,
             prune: bool) -> IngestReport:
        report = IngestReport()
        resplit_all = previous.split_signature != self.split_signature
        docs = dict(previous.docs)
        fresh: dict[str, tuple[SourceDoc, list[Chunk], str]] = {}  # source → (doc, chunks, root)
        for root in roots:
            if not root.exists():
                report.failed.append((str(root), "路径不存在"))
                continue
            base = root if root.is_dir() else root.parent
            manifest = self._manifest(base, report)
            files = discover(root)
            seen = set()
            if progress:
                progress("files", 0, len(files))  # the clock of a rate and a time left starts before the first file
            for i, path in enumerate(files, 1):
                source = path.relative_to(base).as_posix()
                seen.add(source)
                self._take(source, partial(load_file, path, base, manifest), base, docs.get(source), resplit_all,
                           fresh, report)
                if progress:
                    progress("files", i, len(files))
            if prune and root.is_dir():
                for source, rec in list(docs.items()):
                    if rec.root == str(base) and source not in seen:
                        del docs[source]
                        report.removed.append(source)
        self._apply(previous, lexical, docs, fresh, report, progress, resplit_all)
        return report

    def _take(self, source: str, load: Callable[[], SourceDoc], base: Path, old: DocRecord | None, resplit: bool,
              fresh: dict[str, tuple[SourceDoc, list[Chunk], str]], report: IngestReport) -> None:
        """Load and split one file into `fresh`, or count it as unchanged or failed."""
        try:
            doc = load()
            if old and old.sha256 == doc.sha256 and not resplit and self._same_meta(old, doc):
                report.unchanged.append(source)
            else:
                chunks = self.splitter.split(doc)
                if not chunks:
                    raise LoadError("没有切分出任何内容")
                fresh[source] = (doc, chunks, str(base))
                (report.updated if old else report.added).append(source)
        except LoadError as exc:
            report.failed.append((source, str(exc)))
        except Exception as exc:  # a parser bug on one file must not sink the whole ingest
            report.failed.append((source, f"{type(exc).__name__}: {exc}"))

    def _apply(self, previous: Catalog, lexical: LexicalIndex, docs: dict[str, DocRecord],
               fresh: dict[str, tuple[SourceDoc, list[Chunk], str]], report: IngestReport,
               progress: Progress | None, resplit_all: bool, split_signature: str | None = None) -> None:
        """Commit `docs` with the `fresh` documents' new chunks, embedding what the store lacks; or nothing at all."""
        # An index made before sentence vectors existed gets them on its next ingest, unchanged files or not.
        sentences_missing = self.sentences is not None and bool(previous.chunks) and not self.sentences.count()
        if not (report.added or report.updated or report.removed or resplit_all or sentences_missing
                or previous.embedder != self.embedder.name or self.index_dir.needs_publish(previous)):
            return  # nothing to embed or commit: the index stays exactly as it was

        catalog = Catalog(self.embedder.name, self.split_signature, generation=previous.generation)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for source, rec in docs.items():
            if source not in fresh:
                catalog.docs[source] = rec  # a doc from another root keeps its chunks until that root is re-ingested
        for source, (doc, chunks, base) in fresh.items():
            self.index_dir.save_text(doc.sha256, doc.text)
            catalog.docs[source] = DocRecord(
                source=source, root=base, title=doc.title, category=doc.category, issuer=doc.issuer,
                date=doc.date, kind=doc.kind, sha256=doc.sha256, chunk_ids=tuple(c.id for c in chunks),
                chars=len(doc.text), ingested_at=now,
            )
            for c in chunks:
                catalog.chunks[c.id] = c
        for rec in catalog.docs.values():
            if rec.source not in fresh:
                for cid in rec.chunk_ids:
                    catalog.chunks[cid] = previous.chunks[cid]
        self._embed_missing(catalog, report, progress)
        self._commit(catalog, lexical, report, split_signature)

    @staticmethod
    def _manifest(base: Path, report: IngestReport) -> dict[str, dict]:
        try:
            return load_manifest(base)
        except LoadError as exc:
            report.failed.append(("manifest.json", str(exc)))
            return {}

    @staticmethod
    def _same_meta(old: DocRecord, doc: SourceDoc) -> bool:
        # A manifest edit (new title or date) must reach the chunks too, even when the file bytes are unchanged.
        return (old.title, old.category, old.issuer, old.date) == (doc.title, doc.category, doc.issuer, doc.date)

    def _embed_missing(self, catalog: Catalog, report: IngestReport, progress: Progress | None) -> None:
        have = self.store.ids()
        todo = [c for c in catalog.chunks.values() if c.id not in have]
        if progress and todo:
            progress("chunks", 0, len(todo))
        for i in range(0, len(todo), EMBED_GROUP):
            batch = todo[i : i + EMBED_GROUP]
            vectors = np.asarray(self.embedder.embed_passages([c.text for c in batch]), dtype=np.float32)
            self.store.upsert(batch, vectors)
            report.embedded += len(batch)
            if progress:
                progress("chunks", report.embedded, len(todo))
        if self.sentences is not None:
            self._embed_sentences(catalog, progress)

    def _embed_sentences(self, catalog: Catalog, progress: Progress | None) -> None:
        """Vectors of every live chunk's sentences that the store lacks: the same sentence is embedded once."""
        have = self.sentences.ids()
        todo = {sentence_id(t): t for c in catalog.chunks.values() for t in provision_sentences(c.body)}
        missing = [(i, t) for i, t in todo.items() if i not in have]
        if progress and missing:
            progress("sentences", 0, len(missing))
        for start in range(0, len(missing), EMBED_GROUP):
            batch = missing[start : start + EMBED_GROUP]
            vectors = np.asarray(self.embedder.embed_passages([t for _, t in batch]), dtype=np.float32)
            self.sentences.upsert_texts([i for i, _ in batch], [t for _, t in batch], vectors)
            if progress:
                progress("sentences", start + len(batch), len(missing))

    def _commit(self, catalog: Catalog, previous: LexicalIndex, report: IngestReport,
                split_signature: str | None = None) -> None:
        """`previous`: the BM25 of the generation this one replaces; its chunks keep their rows (not re-tokenized)."""
        # Versions are settled here, where every change (ingest, upload, delete) passes: an older version retired,
        # or reinstated when its newer one is gone. Retired chunks stay (vectors too), out of BM25 only.
        catalog.docs = supersede(catalog.docs)
        # Chunks of removed docs must leave the catalog too.
        live = {cid for rec in catalog.docs.values() for cid in rec.chunk_ids}
        catalog.chunks = {cid: c for cid, c in catalog.chunks.items() if cid in live}
        catalog.embedder = self.embedder.name
        catalog.split_signature = split_signature or self.split_signature
        lexical = LexicalIndex(self.lexical.tokenizer)
        ordered = catalog.live_chunks()
        lexical.build([c.id for c in ordered], [c.text for c in ordered], reuse=previous)
        self.index_dir.commit(catalog, lexical)
        # Garbage-collect vectors no generation needs; after the commit, so a crash here only leaves orphans.
        stale = self.store.ids() - live
        if stale:
            self.store.delete(list(stale))
        if self.sentences is not None:
            needed = {sentence_id(t) for c in catalog.chunks.values() for t in provision_sentences(c.body)}
            stale = self.sentences.ids() - needed
            if stale:
                self.sentences.delete(list(stale))

