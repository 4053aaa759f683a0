"""Files that staff upload: data_dir/uploads/<category>/<safe name>, their metadata in data_dir/uploads/manifest.json.

The manifest has the same shape as knowledge_base/manifest.json, so ingesting the uploads folder reads title, category,
issuer and date from it exactly as it does for the bundled corpus."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import LimitExceeded, UploadRejected
from ingest.loaders import CATEGORIES, SUPPORTED, LoadError, extract_text

MANIFEST = "manifest.json"
_MAX_NAME_CHARS = 100
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
class Staged:
    """One stored upload and what it replaced, so a failed ingest can be undone."""

    source: str  # "物业/通知.md", relative to the uploads root (as the pipeline names it)
    previous_bytes: bytes | None
    previous_entry: dict | None


def safe_filename(name: str) -> str:
    """"../../etc/物业 通知?.MD" → "物业 通知_.md": the last path part only, no separators, control or reserved
    characters, no leading dots; the extension lower-cased and required to be one the loaders read."""
    base = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip().lstrip(".").strip()
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    suffix = f".{suffix.lower()}" if suffix else ""
    if suffix not in SUPPORTED:
        raise UploadRejected(f"不支持的文件类型 {suffix or '（无扩展名）'}；支持 {' '.join(SUPPORTED)}")
    stem = re.sub(r"\s+", " ", stem).strip(" ._")[:_MAX_NAME_CHARS]
    if not stem:
        raise UploadRejected("文件名无效，请改一个有文字的文件名")
    return stem + suffix


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
        # Held across store → ingest → undo, so two uploads never interleave their manifest edits.
        self.lock = threading.RLock()

    @property
    def resolved(self) -> str:
        """The root as the pipeline records it (DocRecord.root)."""
        return str(self.root.resolve())

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise LimitExceeded(f"文件太大（{size / 1e6:.1f} MB），上限是 {self.max_bytes / 1e6:.0f} MB")

    def stage(self, filename: str, data: bytes, meta: DocMeta, taken: set[str] = frozenset()) -> Staged:
        """Validate and store one upload. Raises UploadRejected, before touching the disk, for a file the loaders
        can't read (the same extract_text the pipeline uses), so a broken file never reaches the index.
        `taken`: sources owned by other folders (the bundled corpus), which an upload may not replace."""
        self.check_size(len(data))
        name = safe_filename(filename)
        meta = check_meta(meta)
        try:
            extract_text(data, Path(name).suffix, name)
        except LoadError as exc:
            raise UploadRejected(f"文件无法导入：{exc.user_message}", status=exc.status) from exc
        source = f"{meta.category}/{name}"
        if source in taken:
            raise UploadRejected(f"知识库中已有同名文档 {source}（不是上传的文件），请改个文件名再上传")
        path = self._path(source)
        manifest = self._manifest()
        staged = Staged(source, path.read_bytes() if path.is_file() else None,
                        next((e for e in manifest if e.get("file") == source), None))
        entry = {"file": source, "title": meta.title, "category": meta.category, "issuer": meta.issuer,
                 "date": meta.date}
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)
        self._save_manifest([e for e in manifest if e.get("file") != source] + [{k: v for k, v in entry.items() if v}])
        return staged

    def undo(self, staged: Staged) -> None:
        path = self._path(staged.source)
        if staged.previous_bytes is None:
            path.unlink(missing_ok=True)
        else:
            _atomic_write(path, staged.previous_bytes)
        manifest = [e for e in self._manifest() if e.get("file") != staged.source]
        self._save_manifest(manifest + ([staged.previous_entry] if staged.previous_entry else []))

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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
