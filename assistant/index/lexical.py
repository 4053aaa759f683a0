"""jieba BM25: the lexical half of hybrid retrieval, persisted beside Chroma."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Function words residents type but documents don't share meaningfully; removing them keeps BM25 on content.
STOPWORDS = frozenset(
    """的 了 是 吗 呢 吧 啊 呀 么 嘛 和 与 及 或 在 对 从 把 被 给 让 向 就 都 也 还 又 再 很 最 更 要 会 能 可 可以 应该 需要
    我 你 他 她 它 我们 你们 他们 咱们 自己 这 那 这个 那个 这些 那些 这样 那样 什么 怎么 怎么办 怎样 如何 为什么 哪 哪些 哪里 哪个 多少 多久
    有 没有 没 不 是不是 能不能 可不可以 有没有 一下 一个 一些 请问 请 想 知道 问 问下 问一下 谢谢 您好 你好 吗？ 呢？ 如果 但是 因为 所以 然后 现在 已经
    """.split()  # noqa: SIM905 - one word list a maintainer can read and edit beats a 100-item literal
)
_TOKEN_OK = re.compile(r"[\w\u4e00-\u9fff]")


class JiebaTokenizer:
    """One jieba Tokenizer (not jieba's global one) with the knowledge base's dictionary (Settings.user_dict_path)
    loaded once; None or a missing file: jieba's own dictionary only."""

    def __init__(self, user_dict: Path | None = None):
        import jieba

        jieba.setLogLevel(60)  # jieba prints its cache building to stderr; that is noise in a CLI
        self._tk = jieba.Tokenizer()
        self.user_dict = user_dict
        if user_dict is not None and user_dict.is_file():
            self._tk.load_userdict(str(user_dict))
        self._tk.initialize()

    @property
    def user_terms(self) -> set[str]:
        """The domain dictionary's words (业主委员会, 司法确认, 党龄 …)."""
        if self.user_dict is None or not self.user_dict.is_file():
            return set()
        return {line.split()[0] for line in self.user_dict.read_text(encoding="utf-8").splitlines() if line.strip()}

    def tokens(self, text: str) -> list[str]:
        """"业委会怎么成立？" → ["业委会", "成立"]: search-mode cut, lower-cased, stopwords and punctuation dropped."""
        out = []
        for tok in self._tk.cut_for_search(text.lower()):
            tok = tok.strip()
            if tok and tok not in STOPWORDS and _TOKEN_OK.search(tok):
                out.append(tok)
        return out


class LexicalIndex:
    """BM25 over jieba tokens (bm25s). Row i of the index is chunk ids[i]."""

    def __init__(self, tokenizer: JiebaTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[str] = []
        self._bm25 = None

    def build(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        import bm25s

        self.ids = list(ids)
        corpus = [self.tokenizer.tokens(t) or ["∅"] for t in texts]
        self._bm25 = bm25s.BM25(k1=1.2, b=0.75) if corpus else None
        if self._bm25 is not None:
            self._bm25.index(corpus, show_progress=False)

    def search(self, query: str, n: int) -> list[tuple[str, float]]:
        """(chunk id, BM25 score) for chunks that share at least one token, best first."""
        if self._bm25 is None:
            return []
        toks = self.tokenizer.tokens(query)
        if not toks:
            return []
        scores = self._bm25.get_scores(toks)
        top = np.argsort(-scores)[:n]
        return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
        if self._bm25 is not None:
            self._bm25.save(str(directory / "bm25"), show_progress=False)

    def load(self, directory: Path) -> None:
        import bm25s

        self.ids = json.loads((directory / "ids.json").read_text(encoding="utf-8"))
        self._bm25 = bm25s.BM25.load(str(directory / "bm25"), show_progress=False) if self.ids else None
