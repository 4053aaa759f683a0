"""Known questions: residents' questions whose provision is known (MaxKB's 关联问题, FastGPT's custom indexes).

Residents ask about the same few hundred provisions in ever new words, and a question close to one already answered
most often wants the same article: of the test set's questions whose nearest dev-set question was at cosine ≥ 0.95
(half of them), 87% wanted that question's article, where the retriever's own first hit was right for 61%. The
table (known_questions.tsv in the knowledge base folder, Settings.known_questions_path) pairs a question with the
document title and article (第N条; empty for a news report) that answers it, with "-" for one the knowledge base
does not answer, or with "~" and a reply's name for small talk; the bundled one is written from the dev sets by
`scripts/known_questions.py`.

The provision ranker reads how close the nearest known question naming each pooled provision is (qa/ranker.py
"known"), and their provisions join the pool (qa/retrieve.py): a known question steers, it never answers by itself,
and an article the other signals find unrelated stays behind. The answerability model reads whether a question is
closer to a known unanswerable one than to every known answerable one (qa/evidence.py "known_margin"). A short turn
the rules did not take for small talk is small talk when it is clearly nearer a known small-talk turn than any
known question (qa/pipeline.py): residents thank and greet in more ways than rules list.

Each row also names where it came from (dev.jsonl, staff …): an eval of a set leaves its own rows out
(`without`), or the figures would measure memory, not retrieval."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.index.synonyms import write_staff_table

log = logging.getLogger("xiaoyu")

MAX_ROWS = 20000
MAX_QUESTION = 200
FLOOR = 0.85  # below this cosine an earlier question says nothing about this one (e5's scale: unrelated ≈ 0.80)
NOT_COVERED = "-"  # the title of a row the knowledge base does not answer (房价, 天气 …): a refusal, known
SMALL_TALK = "~"  # the title of a small-talk row ("谢谢小玉"); its article column names the reply (thanks, greeting …)


class KnownQuestionError(ValueError):
    """A line of the table that can't be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class KnownQuestion:
    question: str
    title: str  # the document's title as the knowledge base holds it
    article: str  # 第N条, a chapter (第六章), a range label; "" for every chunk of a document without articles
    origin: str = ""  # which set or person wrote it, for leaving a set's own rows out of its eval
    line: int = field(default=0, compare=False)  # its line in the table, for naming it to staff


def parse_table(text: str) -> list[KnownQuestion]:
    """Lines "question<TAB>title<TAB>article[<TAB>origin]"; "#" opens a comment line. KnownQuestionError names
    a bad line."""
    rows = []
    lines = text.splitlines()
    if len(lines) > MAX_ROWS:
        raise KnownQuestionError(f"已知问题表最多 {MAX_ROWS} 行")
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 3 or not parts[0] or not parts[1]:
            raise KnownQuestionError(f"第 {n} 行：应为“问题<TAB>文件标题<TAB>条款”，条款可以留空")
        if len(parts[0]) > MAX_QUESTION:
            raise KnownQuestionError(f"第 {n} 行：问题太长了（最多 {MAX_QUESTION} 个字）")
        rows.append(KnownQuestion(parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else "", n))
    return rows


def read_table(path: Path | None) -> list[KnownQuestion]:
    if path is None or not path.is_file():
        return []
    return parse_table(path.read_text(encoding="utf-8"))


class VectorCache:
    """Query vectors of the known questions, by embedder and text, kept for the process and in one file of the
    data dir: 700 questions cost ~8 s of query embedding on two cores, paid once per deployment, not per start,
    per services object or per test. Only the texts a scope needs are embedded (a knowledge base without the
    bundled documents embeds none of the bundled rows)."""

    # One memo for the process: every services object built in it (a test's, a rebuilt app's) with the same
    # embedder gets the same vector for a text, so none embeds a row another already did.
    _shared: dict[tuple[str, str], np.ndarray] = {}
    _lock = threading.Lock()

    def __init__(self, path: Path | None):
        self.path = path
        self._vectors = self._shared
        self._loaded: set[str] = set()

    def vectors(self, embedder_name: str, texts: Sequence[str], embed: Callable[[str], np.ndarray]) -> np.ndarray:
        """The vectors of `texts` (normalized rows), embedding and saving those not yet known."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        with self._lock:
            self._load(embedder_name)
            missing = [t for t in dict.fromkeys(texts) if (embedder_name, t) not in self._vectors]
            for t in missing:
                v = np.asarray(embed(t), dtype=np.float32)
                self._vectors[(embedder_name, t)] = v / (np.linalg.norm(v) or 1.0)
            file = self._file(embedder_name)
            if missing or (file is not None and not file.is_file()):  # another data dir's rows are this one's too
                self._save(embedder_name)
            return np.stack([self._vectors[(embedder_name, t)] for t in texts])

    def _file(self, embedder_name: str) -> Path | None:
        if self.path is None:
            return None
        tag = hashlib.sha256(embedder_name.encode()).hexdigest()[:12]
        return self.path / f"known-questions-{tag}.npz"

    def _load(self, embedder_name: str) -> None:
        if embedder_name in self._loaded:
            return
        self._loaded.add(embedder_name)
        file = self._file(embedder_name)
        if file is None or not file.is_file():
            return
        try:
            with np.load(file, allow_pickle=False) as data:
                for t, v in zip(data["texts"].tolist(), data["vectors"]):
                    self._vectors.setdefault((embedder_name, str(t)), v.astype(np.float32))
        except (OSError, ValueError, KeyError):  # a torn or foreign file: embed again, never fail a question
            log.warning("known questions: ignoring the unreadable vector cache %s", file)

    def _save(self, embedder_name: str) -> None:
        file = self._file(embedder_name)
        if file is None:
            return
        mine = [(t, v) for (name, t), v in self._vectors.items() if name == embedder_name]
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as out:
                np.savez(out, texts=np.array([t for t, _ in mine]), vectors=np.stack([v for _, v in mine]))
            os.replace(tmp, file)  # atomic: another worker reads the old cache or the new one
        except OSError:  # a read-only data dir: the vectors stay in memory for this process
            log.warning("known questions: could not write the vector cache %s", file, exc_info=True)


def _file_version(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size) if st else None


class KnownQuestions:
    """The knowledge base's table and staff's rows on top of it, and the rows' vectors as the retriever would embed
    each as a query (`dense_text`: its synonym expansion; `embed`: its model), per synonym-table version.

    Staff's rows live in the data dir (`override`; the knowledge base folder ships with the code and may be
    read-only), saved from the console and read again whenever the file changes, by every worker on the host."""

    def __init__(self, rows: Iterable[KnownQuestion], cache: VectorCache, embedder_name: str,
                 override: Path | None = None, leave_out: str = ""):
        self.bundled = tuple(rows)
        self.cache = cache
        self.embedder_name = embedder_name
        self.override = override
        self.leave_out = leave_out
        # (titles, synonyms version, staff table version) → those rows and their vectors
        self._matrices: dict[tuple[frozenset[str], object, object], tuple[list[KnownQuestion], np.ndarray]] = {}
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None
        self._titles: tuple[tuple[KnownQuestion, ...], frozenset[str]] | None = None
        self._rows = tuple(r for r in self.bundled if r.origin != leave_out)
        self._refresh()

    @property
    def rows(self) -> tuple[KnownQuestion, ...]:
        self._refresh()
        return self._rows

    def _refresh(self) -> None:
        version = _file_version(self.override)
        if version == self._version:
            return
        try:
            staff = read_table(self.override)
        except KnownQuestionError as exc:  # broken by hand (save_override never writes one): left out whole
            log.warning("known questions %s not used: %s", self.override, exc)
            staff = []
        with self._lock:
            self._rows = tuple(r for r in (*self.bundled, *staff) if r.origin != self.leave_out)
            self._version = version

    def titles(self) -> frozenset[str]:
        """The documents some row names: what the table can speak for. Of a document no row names (a staff upload,
        a law library loaded beside the community's rules) it says nothing, for or against."""
        rows = self.rows
        with self._lock:
            if self._titles is None or self._titles[0] is not rows:
                self._titles = (rows, frozenset(r.title for r in rows if r.title not in (NOT_COVERED, SMALL_TALK)))
            return self._titles[1]

    def override_text(self) -> str:
        return self.override.read_text(encoding="utf-8") if self.override and self.override.is_file() else ""

    def save_override(self, text: str) -> list[KnownQuestion]:
        """Write staff's rows atomically (the caller has checked them: parse_table and what they name) and use
        them from the next question on."""
        if self.override is None:
            raise KnownQuestionError("没有配置已知问题补充表的位置")
        rows = parse_table(text)
        write_staff_table(self.override, text)
        self._refresh()
        return rows

    def without(self, origin: str) -> KnownQuestions:
        """The table less the rows of one origin (an eval set's own questions, while that set is scored)."""
        return KnownQuestions(self.bundled, self.cache, self.embedder_name, self.override, origin)

    def nearest(self, vector: np.ndarray, titles: frozenset[str], dense_text: Callable[[str], str],
                embed: Callable[[str], np.ndarray], version: object = None, floor: float = FLOOR
                ) -> list[tuple[float, KnownQuestion]]:
        """The rows titled one of `titles` (documents of the scope, NOT_COVERED, SMALL_TALK) whose question is at
        cosine ≥ floor to the query vector, closest first. The rows and their matrix are picked once per set of
        titles, synonyms version and staff table, not per question."""
        table = self.rows
        key = (titles, version, self._version)
        with self._lock:
            picked = self._matrices.get(key)
        if picked is None:
            rows = [r for r in table if r.title in titles]
            matrix = self.cache.vectors(self.embedder_name, [dense_text(r.question) for r in rows], embed)
            picked = (rows, matrix)
            with self._lock:
                if len(self._matrices) > 16:  # scopes and synonym edits come and go; keep the recent few
                    self._matrices.clear()
                self._matrices[key] = picked
        rows, matrix = picked
        if not rows:
            return []
        q = np.asarray(vector, dtype=np.float32)
        sims = matrix @ (q / (np.linalg.norm(q) or 1.0))
        picked = np.flatnonzero(sims >= floor)
        return sorted(((float(sims[i]), rows[i]) for i in picked), key=lambda t: -t[0])
