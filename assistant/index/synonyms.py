"""Residents say 业委会 and 维修基金; policy files say 业主委员会 and 专项维修资金. A staff-editable table
(synonyms.tsv in the configured knowledge base, Settings.synonyms_path) bridges the two before retrieval."""

from __future__ import annotations

from pathlib import Path


class QueryExpander:
    def __init__(self, path: Path | None = None):
        self.table: dict[str, tuple[str, ...]] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 2:
                    self.table[parts[0]] = tuple(parts[1:])
        # Longest first, so 加装电梯 wins over 电梯 when both could match the same words.
        self._keys = sorted(self.table, key=len, reverse=True)

    @property
    def terms(self) -> set[str]:
        """Every word on either side of the table: the domain's topic words."""
        return set(self.table) | {t for targets in self.table.values() for t in targets}

    def expansions(self, query: str) -> list[str]:
        """"维修基金能修屋顶吗" → ["专项维修资金"]: the official terms missing from the query."""
        found: list[str] = []
        rest = query
        for key in self._keys:
            if key in rest:
                rest = rest.replace(key, " ")
                found.extend(t for t in self.table[key] if t not in query and t not in found)
        return found

    def expand(self, query: str) -> str:
        extra = self.expansions(query)
        return f"{query}（{' '.join(extra)}）" if extra else query
