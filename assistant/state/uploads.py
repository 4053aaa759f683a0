"""Files that staff upload: data_dir/uploads/<category>/<safe name>, their metadata in data_dir/uploads/manifest.json.

The manifest has the same shape as knowledge_base/manifest.json, so ingesting the uploads folder reads title, category,
issuer and date from it exactly as it does for the bundled corpus.

An upload is a small transaction whose commit point is the index's own commit (the CURRENT swap, see catalog.py):
1. stage: the file goes to data_dir/uploads/.staging/<id>/<category>/<name> (hidden, so no ingest of the uploads
   folder ever sees it), is checked with the loaders, and then <id>/journal.json records its source and manifest
   entry. Nothing in the uploads folder itself has changed yet.
2. the pipeline ingests that one file from the staging folder and commits the index.
3. place (under the ingest lock, right after that commit): the manifest entry is written, the file is moved into
   place, and the staging folder is removed. A failed ingest only removes the staging folder (abandon).
A crash (kill -9) leaves a staging folder, which recover() settles before the next upload and when the knowledge base
is built: no journal → the file never reached the index, removed; journal, staged file gone → step 3 had moved it,
the manifest is written again and the folder removed; journal and staged file → the index is asked (`committed`)
whether it holds exactly these bytes and metadata: yes → placed (step 3 finished), no → removed. So the uploads
folder never holds a file or manifest entry the index did not commit, and the index never keeps an upload whose
file is missing from the folder. Chunks, vectors and texts of an ingest that never committed are not trusted by
retrieval and are dropped by the next commit (catalog.py)."""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from assistant.errors import LimitExceeded, UploadRejected
from ingest.loaders import CATEGORIES, SUPPORTED, LoadError, extract_text

MANIFEST = "manifest.json"
STAGING = ".staging"  # hidden: discover() skips dot folders, so a re-index never ingests a half-done upload
JOURNAL = "journal.json"
# File names are limited to 255 *bytes* (NAME_MAX); _atomic_write's temp file adds "." + "." + 8 random characters.
_MAX_NAME_BYTES = 255 - 10 - 5  # and 5 to spare
_HASH_CHARS = 8
_COPY_CHUNK = 1 << 20
log = logging.getLogger("xiaoyu")
# Path separators, Windows-reserved characters and control characters never reach the file system.
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_DATE = re.compile(r"^\d{4}(-\d{1,2}(-\d{1,2})?)?$")


@dataclass(frozen=True)
class DocMeta:
    title: str = ""
    category: str = ""
    issuer: str = ""
    date: str = ""


@dataclass(frozen=True)
class Upload:
    """One upload in its staging folder, laid out like the uploads root, until its ingest has committed."""

    folder: Path  # data_dir/uploads/.staging/<id>
    source: str  # "物业/通知.md", relative to the uploads root (as the pipeline names it)
    entry: dict  # its manifest entry

    @property
    def staged(self) -> Path:
        return self.folder / self.source


def safe_filename(name: str) -> str:
    """"../../etc/物业 通知?.MD" → "物业 通知.md": the last path part only, no separators, control or reserved
    characters, no leading dots; the extension lower-cased and required to be one the loaders read. A name over
    _MAX_NAME_BYTES of UTF-8 (81 Chinese characters already pass 255 bytes) is cut at a character boundary and gets
    "-" and a hash of the whole name before its extension, so two long names sharing a prefix stay two files and the
    same long name always maps to the same file."""
    base = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip().lstrip(".").strip()
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    suffix = f".{suffix.lower()}" if suffix else ""
    if suffix not in SUPPORTED:
        raise UploadRejected(f"不支持的文件类型 {suffix or '（无扩展名）'}；支持 {' '.join(SUPPORTED)}")
    stem = re.sub(r"\s+", " ", stem).strip(" ._")
    if not stem:
        raise UploadRejected("文件名无效，请改一个有文字的文件名")
    if len((stem + suffix).encode("utf-8")) <= _MAX_NAME_BYTES:
        return stem + suffix
    digest = hashlib.sha256((stem + suffix).encode("utf-8")).hexdigest()[:_HASH_CHARS]
    room = _MAX_NAME_BYTES - len(suffix.encode("utf-8")) - 1 - _HASH_CHARS
    # errors="ignore" drops only the partial character the byte cut made; the rest was encoded from a str.
    short = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore").rstrip(" ._")
    return f"{short}-{digest}{suffix}"


def check_meta(meta: DocMeta) -> DocMeta:
    category = meta.category.strip()
    if category not in CATEGORIES:
        raise UploadRejected(f"请选择分类：{'、'.join(CATEGORIES)}")
    date = meta.date.strip()
    if date and not _DATE.match(date):
        raise UploadRejected(f"日期格式应为 2024-05-01（或 2024-05、2024），收到：{date}")
    fields = {"title": meta.title.strip(), "issuer": meta.issuer.strip()}
    for label, value in (("标题", fields["title"]), ("发文机关", fields["issuer"])):
        if len(value) > 200:
            raise UploadRejected(f"{label}太长（{len(value)} 字），请控制在 200 字以内")
    return DocMeta(fields["title"], category, fields["issuer"], date)


class UploadDir:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        # In this process: held across stage → ingest → place, delete and re-index, so they never interleave.
        self.lock = threading.RLock()

    @property
    def resolved(self) -> str:
        """The root as the pipeline records it (DocRecord.root)."""
        return str(self.root.resolve())

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise LimitExceeded(f"文件太大（{size / 1e6:.1f} MB），上限是 {self.max_bytes / 1e6:.0f} MB")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Held across stage → ingest → place/abandon: one upload at a time, in this process and across processes
        (a CLI beside the server), and recover() never settles a staging folder whose upload is still running."""
        with self.lock, self._exclusive(wait=True):
            yield

    def stage(self, filename: str, data: bytes | BinaryIO, meta: DocMeta, taken: set[str] = frozenset()) -> Upload:
        """Validate one upload and write it to a staging folder of its own; the uploads folder is not touched.
        `data`: the bytes, or a binary file (the API's spooled upload), copied in chunks and never held whole. Raises
        UploadRejected for a file the loaders can't read (the same extract_text the pipeline uses), and
        LimitExceeded past max_bytes; the staging folder is removed then. `taken`: sources owned by other folders
        (the bundled corpus), which an upload may not replace. Call inside transaction()."""
        if isinstance(data, bytes | bytearray):
            self.check_size(len(data))
        name = safe_filename(filename)
        meta = check_meta(meta)
        source = f"{meta.category}/{name}"
        if source in taken:
            raise UploadRejected(f"知识库中已有同名文档 {source}（不是上传的文件），请改个文件名再上传")
        self._path(source)  # refuses a source outside the root before anything is written
        entry = {k: v for k, v in {"file": source, "title": meta.title, "category": meta.category,
                                   "issuer": meta.issuer, "date": meta.date}.items() if v}
        self._staging.mkdir(parents=True, exist_ok=True)
        upload = Upload(Path(tempfile.mkdtemp(dir=self._staging)), source, entry)
        try:
            upload.staged.parent.mkdir(parents=True)
            self._copy(data, upload.staged)
            try:
                extract_text(upload.staged.read_bytes(), upload.staged.suffix, name)
            except LoadError as exc:
                raise UploadRejected(f"文件无法导入：{exc.user_message}", status=exc.status) from exc
            # Written last: a staging folder without a journal never reached the index, whatever else it holds.
            _atomic_write(upload.folder / JOURNAL,
                          json.dumps({"source": source, "entry": entry}, ensure_ascii=False).encode("utf-8"))
        except BaseException:
            self.abandon(upload)
            raise
        return upload

    def place(self, upload: Upload) -> None:
        """Move a committed upload into the uploads folder: the manifest entry, then the file, then its staging
        folder goes. Each step may be repeated, so recovery redoes whichever a crash interrupted."""
        manifest = self._manifest()
        self._save_manifest([e for e in manifest if e.get("file") != upload.source] + [upload.entry])
        if upload.staged.is_file():
            path = self._path(upload.source)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload.staged, path)
        shutil.rmtree(upload.folder, ignore_errors=True)

    def abandon(self, upload: Upload) -> None:
        """Drop an upload whose ingest failed or never committed: the uploads folder is exactly as before."""
        shutil.rmtree(upload.folder, ignore_errors=True)

    def settle(self, upload: Upload, committed: Callable[[Upload], bool]) -> str:
        """Place the upload if the index holds it, else abandon it: "placed" or "abandoned". After an ingest that
        raised, and for each upload a crash left behind."""
        if not upload.staged.is_file() or committed(upload):  # gone from staging: place() had already moved it
            self.place(upload)
            return "placed"
        self.abandon(upload)
        return "abandoned"

    def recover(self, committed: Callable[[Upload], bool], wait: bool = True) -> list[str]:
        """Settle what a crash left in the staging area (see the module docstring), logging each; the sources
        settled. `wait=False` (when the knowledge base is built): if another process is uploading right now, leave
        the staging area to it and to the next upload here, rather than waiting for it."""
        if not self._staging.is_dir():
            return []
        with self.lock, self._exclusive(wait) as held:
            if not held:
                log.info("uploads: another process is uploading; leftover uploads are settled at the next upload")
                return []
            settled = []
            for folder in sorted(p for p in self._staging.iterdir() if p.is_dir()):
                upload = _journaled(folder)
                if upload is None:
                    shutil.rmtree(folder, ignore_errors=True)
                    log.warning("uploads: removed the unfinished upload %s (interrupted before its ingest)", folder)
                    continue
                try:
                    outcome = self.settle(upload, committed)
                except Exception:  # e.g. a full disk: the folder stays hidden and is tried again next time
                    log.exception("uploads: could not settle the interrupted upload of %s", upload.source)
                    continue
                log.warning("uploads: an upload of %s was interrupted; %s", upload.source,
                            "its ingest had committed, so it was moved into place" if outcome == "placed"
                            else "its ingest had not committed, so it was removed")
                settled.append(upload.source)
            return settled

    def discard(self, source: str) -> bool:
        """Delete an uploaded file and its manifest entry; False when it was not an upload."""
        path = self._path(source)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        manifest = self._manifest()
        kept = [e for e in manifest if e.get("file") != source]
        if len(kept) != len(manifest):
            self._save_manifest(kept)
        return existed or len(kept) != len(manifest)

    @property
    def _staging(self) -> Path:
        return self.root / STAGING

    @contextmanager
    def _exclusive(self, wait: bool) -> Iterator[bool]:
        # flock: released by the kernel when a process dies, so a crashed upload never holds it.
        self._staging.mkdir(parents=True, exist_ok=True)
        with open(self._staging / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _copy(self, data: bytes | BinaryIO, target: Path) -> None:
        with open(target, "wb") as out:
            if isinstance(data, bytes | bytearray):
                out.write(data)
                return
            size = 0
            while chunk := data.read(_COPY_CHUNK):
                size += len(chunk)
                self.check_size(size)  # a file object's size is only known once it is read
                out.write(chunk)

    def _path(self, source: str) -> Path:
        path = (self.root / source).resolve()
        # Sources come from our own sanitising, but delete takes them from a URL: never step outside the root.
        if not path.is_relative_to(self.root.resolve()) or path == self.root.resolve():
            raise UploadRejected(f"无效的文档路径：{source}")
        return path

    def _manifest(self) -> list[dict]:
        path = self.root / MANIFEST
        if not path.is_file():
            return []
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UploadRejected(f"上传目录的 {MANIFEST} 已损坏，请修复或删除后重试：{exc}") from exc
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def _save_manifest(self, entries: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(sorted(entries, key=lambda e: e.get("file", "")), ensure_ascii=False, indent=1)
        _atomic_write(self.root / MANIFEST, text.encode("utf-8"))


def _journaled(folder: Path) -> Upload | None:
    """The upload a staging folder's journal describes; None when the journal is missing or unreadable."""
    try:
        journal = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
        upload = Upload(folder, journal["source"], journal["entry"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The journal is ours, but recovery must not follow a tampered one out of the folder.
    inside = upload.staged.resolve().is_relative_to(folder.resolve()) and upload.staged.resolve() != folder.resolve()
    if not (isinstance(upload.entry, dict) and upload.entry.get("file") == upload.source and inside):
        return None
    return upload


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
