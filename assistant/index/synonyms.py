"""Residents say 业委会 and 维修基金; policy files say 业主委员会 and 专项维修资金. A staff-editable table
(synonyms.tsv in the configured knowledge base, Settings.synonyms_path) bridges the two before retrieval.

Staff edit it in the console. The bundled knowledge_base folder is not written (it ships with the code and may be
read-only in a container): their table is an override in the data dir (data_dir/synonyms.tsv), loaded on top of the
knowledge base's. A key there replaces the same key of the knowledge base's table; `词 -` removes it. `reload()`
reads both again, so the running retriever expands with the new table without a restart."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("xiaoyu")

MAX_LINES = 2000
MAX_TERM = 20
MAX_TARGETS = 10
REMOVE = "-"


class SynonymError(ValueError):
    """A line of a synonym table that can't be used; the message names the line."""


def parse_table(text: str, allow_remove: bool = False) -> dict[str, tuple[str, ...]]:
    """"业委会\t业主委员会 业委会成员" → {"业委会": ("业主委员会", "业委会成员")}; raises SynonymError naming the line.
    Lines: a resident's word, then the documents' words, separated by tabs or spaces; "#" starts a comment."""
    table: dict[str, tuple[str, ...]] = {}
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise SynonymError(f"同义词表最多 {MAX_LINES} 行")
    for n, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        key, targets = parts[0], tuple(dict.fromkeys(parts[1:]))
        if not targets:
            raise SynonymError(f"第 {n} 行：“{key[:MAX_TERM]}”后面缺少对应的规范用语（用空格或制表符隔开）")
        if key in table:
            raise SynonymError(f"第 {n} 行：“{key}”在前面已经写过一次")
        if allow_remove and targets == (REMOVE,):
            table[key] = ()  # remove the knowledge base's entry
            continue
        if len(targets) > MAX_TARGETS:
            raise SynonymError(f"第 {n} 行：一个词最多对应 {MAX_TARGETS} 个规范用语")
        for term in (key, *targets):
            if len(term) > MAX_TERM:
                raise SynonymError(f"第 {n} 行：“{term[:MAX_TERM]}…”太长了（每个词最多 {MAX_TERM} 个字）")
            if term == REMOVE:
                raise SynonymError(f"第 {n} 行：“-”只能单独写在词后面，表示删除知识库里的这一条")
        table[key] = targets
    return table


def write_staff_table(path: Path, text: str) -> None:
    """Staff's tables in the data dir (synonyms, known questions): written whole and atomically, so that a worker
    reading it meanwhile gets the old table or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") or not text else text + "\n")
    os.replace(tmp, path)


def _read(path: Path | None) -> str:
    return path.read_text(encoding="utf-8") if path is not None and path.is_file() else ""


class QueryExpander:
    def __init__(self, path: Path | None = None, override: Path | None = None):
        self.path = path
        self.override = override  # staff's table in the data dir, on top of the knowledge base's (None: none)
        self._lock = threading.Lock()
        self.table: dict[str, tuple[str, ...]] = {}
        self._keys: list[str] = []
        self._version: tuple[int, int] | None = None
        self.reload()

    def _override_version(self) -> tuple[int, int] | None:
        try:
            st = self.override.stat() if self.override is not None else None
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def reload(self) -> None:
        """Read the knowledge base's table and the override again. A broken line in the shipped table is skipped, as
        before; an override broken by hand (save_override never writes one) is left out whole, with a warning."""
        version = self._override_version()
        table: dict[str, tuple[str, ...]] = {}
        for line in _read(self.path).splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2:
                table[parts[0]] = tuple(parts[1:])
        try:
            override = parse_table(_read(self.override), allow_remove=True)
        except SynonymError as exc:
            log.warning("synonym override %s not used: %s", self.override, exc)
            override = {}
        for key, targets in override.items():
            if targets:
                table[key] = targets
            else:
                table.pop(key, None)
        # Longest first, so 加装电梯 wins over 电梯 when both could match the same words.
        keys = sorted(table, key=len, reverse=True)
        with self._lock:
            self.table, self._keys, self._version = table, keys, version

    def override_text(self) -> str:
        return _read(self.override)

    def save_override(self, text: str) -> dict[str, tuple[str, ...]]:
        """Check staff's table, write it atomically and reload; raises SynonymError (nothing written) when a line
        can't be used."""
        if self.override is None:
            raise SynonymError("没有配置同义词覆盖表的位置")
        parsed = parse_table(text, allow_remove=True)
        write_staff_table(self.override, text)
        self.reload()
        return parsed

    @property
    def version(self) -> tuple[int, int] | None:
        """Changes when staff's override does (the knowledge base's own table is read once, at start)."""
        return self._version

    @property
    def terms(self) -> set[str]:
        """Every word on either side of the table: the domain's topic words."""
        table = self.table
        return set(table) | {t for targets in table.values() for t in targets}

    def expansions(self, query: str) -> list[str]:
        """"维修基金能修屋顶吗" → ["专项维修资金"]: the official terms missing from the query."""
        if self._override_version() != self._version:  # another worker on this host saved the override
            self.reload()
        with self._lock:
            table, keys = self.table, self._keys
        found: list[str] = []
        rest = query
        for key in keys:
            if key in rest:
                rest = rest.replace(key, " ")
                found.extend(t for t in table[key] if t not in query and t not in found)
        return found

    def expand(self, query: str) -> str:
        extra = self.expansions(query)
        return f"{query}（{' '.join(extra)}）" if extra else query
