"""jieba BM25: the lexical half of hybrid retrieval, persisted beside Chroma in each knowledge base's generation."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

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


K1, B = 1.2, 0.75  # BM25's usual constants (Lucene's defaults)


class LexicalIndex:
    """BM25 (Lucene's variant) over jieba tokens, for one knowledge base. Row i is chunk ids[i].

    It keeps raw term counts, a chunk × term sparse matrix (scipy), rather than scores with its own idf baked in:
    search_together() scores a query over several knowledge bases with the statistics of their union (N, document
    frequencies, mean length), so a scope of eleven knowledge bases ranks exactly as one holding their documents.
    A query touches the postings of its own terms only, never every chunk; a rebuild copies the rows of chunks the
    previous generation already holds (build(reuse=…)), so adding one file tokenizes that file alone."""

    FORMAT = "tf-v1"

    def __init__(self, tokenizer: JiebaTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[str] = []
        self.vocab: dict[str, int] = {}
        self._terms: list[str] = []
        self._rows = sparse.csr_matrix((0, 0), dtype=np.float32)  # chunk → its terms: reuse and terms_of()
        self._cols = sparse.csc_matrix((0, 0), dtype=np.float32)  # term → its postings: search
        self.lengths = np.zeros(0, dtype=np.float32)
        self.df = np.zeros(0, dtype=np.int64)
        self._row_of: dict[str, int] = {}

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def total_length(self) -> float:
        return float(self.lengths.sum())

    def build(self, ids: Sequence[str], texts: Sequence[str], reuse: LexicalIndex | None = None) -> None:
        """Index these chunks; a chunk that `reuse` holds keeps its row from there and is not tokenized again."""
        vocab: dict[str, int] = dict(reuse.vocab) if reuse is not None else {}
        terms = list(reuse._terms) if reuse is not None else []
        kept_at, kept_rows, new_at = [], [], []  # positions in `ids` of reused and of new rows; rows in `reuse`
        indptr, indices, data = [0], [], []
        for pos, (cid, text) in enumerate(zip(ids, texts)):
            row = reuse._row_of.get(cid) if reuse is not None else None
            if row is not None:
                kept_at.append(pos)
                kept_rows.append(row)
                continue
            new_at.append(pos)
            for term, count in Counter(self.tokenizer.tokens(text)).items():
                col = vocab.get(term)
                if col is None:
                    col = vocab[term] = len(terms)
                    terms.append(term)
                indices.append(col)
                data.append(count)
            indptr.append(len(indices))
        width = len(terms)
        new = sparse.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32),
                                 np.asarray(indptr, dtype=np.int64)), shape=(len(new_at), width))
        if kept_rows:
            kept = reuse._rows[np.asarray(kept_rows)]  # one vectorised row selection, however many are kept
            kept.resize((len(kept_rows), width))  # the vocabulary may have grown: more columns, all empty
            stacked = sparse.vstack([kept, new], format="csr")
            rows = stacked[np.argsort(np.asarray(kept_at + new_at))]  # back into the order of `ids`
        else:
            rows = new
        self._set(list(ids), terms, sparse.csr_matrix(rows, dtype=np.float32))

    def _set(self, ids: list[str], terms: list[str], rows: sparse.csr_matrix) -> None:
        rows.sort_indices()
        self.ids, self._terms = ids, terms
        self.vocab = {t: i for i, t in enumerate(terms)}
        self._rows, self._cols = rows, rows.tocsc()
        self.lengths = np.asarray(rows.sum(axis=1), dtype=np.float32).ravel()
        self.df = np.diff(self._cols.indptr).astype(np.int64)
        self._row_of = {cid: i for i, cid in enumerate(ids)}

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the chunks holding `term`, its count in each)."""
        col = self.vocab.get(term)
        if col is None:
            return _NO_ROWS, _NO_COUNTS
        lo, hi = self._cols.indptr[col], self._cols.indptr[col + 1]
        return self._cols.indices[lo:hi], self._cols.data[lo:hi]

    def doc_freq(self, term: str) -> int:
        col = self.vocab.get(term)
        return int(self.df[col]) if col is not None else 0

    def terms_of(self, chunk_id: str) -> frozenset[str]:
        """A chunk's content words, as the tokenizer cut them at ingest (empty for a chunk not held)."""
        row = self._row_of.get(chunk_id)
        if row is None:
            return frozenset()
        lo, hi = self._rows.indptr[row], self._rows.indptr[row + 1]
        return frozenset(self._terms[i] for i in self._rows.indices[lo:hi])

    def search(self, query: str, n: int) -> list[tuple[str, float]]:
        """(chunk id, BM25 score) for chunks that share at least one token, best first."""
        return [(cid, score) for _, cid, score in search_together([self], self.tokenizer.tokens(query), n)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
        (directory / "terms.json").write_text(json.dumps(self._terms, ensure_ascii=False), encoding="utf-8")
        sparse.save_npz(directory / "tf.npz", self._rows, compressed=False)  # written at every commit: speed
        (directory / "FORMAT").write_text(self.FORMAT, encoding="utf-8")

    def load(self, directory: Path) -> bool:
        """False (and empty) when `directory` holds another format (a generation written by an older version):
        the caller rebuilds from the catalog's chunks then."""
        fmt = directory / "FORMAT"
        if not fmt.is_file() or fmt.read_text(encoding="utf-8").strip() != self.FORMAT:
            self._set([], [], sparse.csr_matrix((0, 0), dtype=np.float32))
            return False
        ids = json.loads((directory / "ids.json").read_text(encoding="utf-8"))
        terms = json.loads((directory / "terms.json").read_text(encoding="utf-8"))
        self._set(ids, terms, sparse.load_npz(directory / "tf.npz").tocsr().astype(np.float32))
        return True


_NO_ROWS = np.zeros(0, dtype=np.int32)
_NO_COUNTS = np.zeros(0, dtype=np.float32)


def search_together(indexes: Sequence[LexicalIndex], tokens: Sequence[str], n: int,
                    also: Sequence[np.ndarray] | None = None) -> list[tuple[int, str, float]]:
    """BM25 of `tokens` over the union of `indexes`: (position of the index, chunk id, score), best first, at most n.
    Statistics are the union's, so the scores are those of one index holding every chunk; a repeated query token
    counts again, as in bm25s. The work is the query terms' postings: nothing is done per chunk of the corpus.

    `also`: one bool mask over each index's rows; the best n of the masked rows come back too, however far behind
    the overall best n they rank (the domain's chunks among a law library's, qa/retrieve.py)."""
    total = sum(ix.n for ix in indexes)
    if not total or not tokens or n <= 0:
        return []
    avgdl = sum(ix.total_length for ix in indexes) / total or 1.0
    rows: list[list[np.ndarray]] = [[] for _ in indexes]
    scores: list[list[np.ndarray]] = [[] for _ in indexes]
    for term in tokens:
        found = [ix.postings(term) for ix in indexes]
        df = sum(len(r) for r, _ in found)
        if not df:
            continue
        idf = math.log(1 + (total - df + 0.5) / (df + 0.5))
        for k, (r, tf) in enumerate(found):
            if len(r):
                norm = K1 * ((1 - B) + B * indexes[k].lengths[r] / avgdl)
                rows[k].append(r)
                scores[k].append(idf * tf / (norm + tf))
    where, ids_at, summed, present = [], [], [], []
    for k, parts in enumerate(rows):
        if not parts:
            continue
        present.append(k)
        unique, inverse = np.unique(np.concatenate(parts), return_inverse=True)
        where.append(np.full(len(unique), k, dtype=np.int32))
        ids_at.append(unique)
        summed.append(np.bincount(inverse, weights=np.concatenate(scores[k])))
    if not summed:
        return []
    where_all, rows_all, scores_all = np.concatenate(where), np.concatenate(ids_at), np.concatenate(summed)
    if len(scores_all) > n:
        keep = _best(scores_all, n)
        if also is not None:
            masked = np.flatnonzero(np.concatenate([also[k][r] for k, r in zip(present, ids_at)]))
            keep = np.union1d(keep, masked[_best(scores_all[masked], n)])
        where_all, rows_all, scores_all = where_all[keep], rows_all[keep], scores_all[keep]
    order = np.lexsort((rows_all, where_all, -scores_all))  # best first; ties in index order, then row order
    return [(int(where_all[i]), indexes[where_all[i]].ids[rows_all[i]], float(scores_all[i]))
            for i in order if scores_all[i] > 0]


def _best(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n highest scores (all of them when there are fewer), in no particular order."""
    return np.argpartition(-scores, n - 1)[:n] if len(scores) > n else np.arange(len(scores))
