"""Our BM25 (index/lexical.py) against bm25s, an independent implementation of the same Lucene variant (k1 1.2,
b 0.75), on the bundled corpus's real chunks and the dev questions; scoring several indexes together as one; rows
reused across generations; persistence, and a generation of the older format rebuilt from its catalog.

Real components throughout: jieba with the corpus's dictionary, the project's loaders and splitter, bm25s itself.
No Chroma and no embedder: nothing here needs vectors."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import bm25s
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.config import BUNDLED_KB, PROJECT_ROOT
from assistant.index.catalog import Catalog, DocRecord, IndexDir
from assistant.index.lexical import K1, B, JiebaTokenizer, LexicalIndex, search_together
from assistant.types import Chunk
from ingest.loaders import discover, load_file, load_manifest
from ingest.splitter import ChineseSplitter

DEV = PROJECT_ROOT / "evals" / "sets" / "dev.jsonl"
TOL = {"rel": 1e-5, "abs": 1e-6}  # float32 arithmetic on both sides; the two add the per-term scores differently


class CountingTokenizer:
    """The real tokenizer, counting the texts it is asked to cut: shows which rows a rebuild tokenized anew."""

    def __init__(self, inner: JiebaTokenizer):
        self.inner = inner
        self.calls = 0

    def tokens(self, text: str) -> list[str]:
        self.calls += 1
        return self.inner.tokens(text)


@pytest.fixture(scope="module")
def tokenizer() -> JiebaTokenizer:
    return JiebaTokenizer(BUNDLED_KB / "userdict.dic")


@pytest.fixture(scope="module")
def chunks() -> list[Chunk]:
    """The bundled corpus as ingest splits it (441 chunks), in discovery order."""
    manifest = load_manifest(BUNDLED_KB)
    splitter = ChineseSplitter()
    out = [c for path in discover(BUNDLED_KB) for c in splitter.split(load_file(path, BUNDLED_KB, manifest))]
    assert len({c.id for c in out}) == len(out) > 300
    return out


@pytest.fixture(scope="module")
def questions() -> list[str]:
    return [json.loads(line)["question"] for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]


def _index(tokenizer, chunks) -> LexicalIndex:
    index = LexicalIndex(tokenizer)
    index.build([c.id for c in chunks], [c.text for c in chunks])
    return index


@pytest.fixture(scope="module")
def index(tokenizer, chunks) -> LexicalIndex:
    return _index(tokenizer, chunks)


@pytest.fixture(scope="module")
def reference(tokenizer, chunks) -> bm25s.BM25:
    ref = bm25s.BM25(k1=1.2, b=0.75)  # method "lucene", bm25s's default
    ref.index([tokenizer.tokens(c.text) for c in chunks], show_progress=False)
    return ref


def _reference_scores(ref: bm25s.BM25, ids: list[str], tokens: list[str]) -> dict[str, float]:
    """bm25s's positive scores for a query, by chunk id."""
    if not tokens:
        return {}
    scores = ref.get_scores(tokens)
    return {ids[i]: float(scores[i]) for i in np.flatnonzero(scores > 0)}


def test_the_constants_are_lucenes_defaults():
    assert (K1, B) == (1.2, 0.75)


def test_scores_equal_bm25s_for_every_dev_question_on_the_bundled_corpus(index, reference, tokenizer, chunks,
                                                                         questions):
    ids = [c.id for c in chunks]
    compared = 0
    for question in questions:
        expected = _reference_scores(reference, ids, tokenizer.tokens(question))
        got = index.search(question, len(chunks))
        # The same chunks score: exactly those sharing a token with the question, nothing with a zero score.
        assert {cid for cid, _ in got} == set(expected), question
        for cid, score in got:
            assert score == pytest.approx(expected[cid], **TOL), (question, cid)
        # Best first; ties may come in any order, so the ranking is compared by its scores.
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True), question
        assert scores == pytest.approx(sorted(expected.values(), reverse=True), **TOL), question
        compared += bool(expected)
    assert compared > 200  # all but the small talk ("谢谢", "在吗？", "👍") share a word with the corpus


def test_the_top_n_are_the_n_best_bm25s_scores(index, reference, tokenizer, chunks, questions):
    ids = [c.id for c in chunks]
    for question in questions[:60]:
        expected = sorted(_reference_scores(reference, ids, tokenizer.tokens(question)).values(), reverse=True)
        for n in (1, 5, 30):
            got = index.search(question, n)
            assert len(got) == min(n, len(expected))
            assert [s for _, s in got] == pytest.approx(expected[:n], **TOL), (question, n)


def test_a_repeated_query_word_counts_again_as_in_bm25s(index, reference, tokenizer, chunks):
    tokens = tokenizer.tokens("业主委员会 业主委员会 维修资金")
    assert tokens.count("业主委员会") == 2
    expected = _reference_scores(reference, [c.id for c in chunks], tokens)
    got = {cid: s for _, cid, s in search_together([index], tokens, len(chunks))}
    assert got.keys() == expected.keys()
    assert all(got[cid] == pytest.approx(expected[cid], **TOL) for cid in expected)


def test_a_question_sharing_no_word_with_the_corpus_finds_nothing(index):
    assert index.search("红烧肉", 10) == []
    assert index.search("", 10) == []
    assert search_together([index], ["不存在的词语xyz"], 10) == []
    assert search_together([index], ["业主"], 0) == []


def _parts(tokenizer, chunks, bounds) -> list[LexicalIndex]:
    return [_index(tokenizer, chunks[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


@pytest.mark.parametrize("pieces", [2, 3])
def test_searching_consecutive_parts_together_gives_exactly_the_ranking_of_one_index(
        index, tokenizer, chunks, questions, pieces):
    """Split in order, ties fall in the same order too (index order, then row order): the lists are identical."""
    bounds = [len(chunks) * i // pieces for i in range(pieces + 1)]
    parts = _parts(tokenizer, chunks, bounds)
    assert sum(p.n for p in parts) == index.n
    for question in questions:
        tokens = tokenizer.tokens(question)
        whole = search_together([index], tokens, 30)
        together = search_together(parts, tokens, 30)
        assert [(cid, s) for _, cid, s in together] == [(cid, s) for _, cid, s in whole], question
        for k, cid, _ in together:  # each hit names the index holding it
            assert cid in parts[k].ids


def test_searching_interleaved_parts_together_scores_as_one_index(index, tokenizer, chunks, questions):
    """Chunks dealt out to three indexes at random: the same chunks, the same scores (ties may swap)."""
    rng = random.Random(16)
    buckets: list[list[Chunk]] = [[], [], []]
    for c in chunks:
        buckets[rng.randrange(3)].append(c)
    parts = [_index(tokenizer, b) for b in buckets]
    for question in questions:
        tokens = tokenizer.tokens(question)
        whole = {cid: s for _, cid, s in search_together([index], tokens, len(chunks))}
        together = search_together(parts, tokens, len(chunks))
        assert {cid: s for _, cid, s in together} == pytest.approx(whole, rel=1e-12), question
        top = search_together(parts, tokens, 10)
        assert [s for _, _, s in top] == pytest.approx(sorted(whole.values(), reverse=True)[:10], rel=1e-12)


def test_an_empty_index_in_the_scope_changes_nothing(index, tokenizer, questions):
    empty = LexicalIndex(tokenizer)
    empty.build([], [])
    for question in questions[:40]:
        tokens = tokenizer.tokens(question)
        alone = search_together([index], tokens, 20)
        assert search_together([empty, index, empty], tokens, 20) == [(1, cid, s) for _, cid, s in alone]
    assert search_together([empty], ["业主"], 5) == []


def test_masked_rows_bring_their_own_best_n_beside_the_overall_best_n(tokenizer, chunks, questions):
    """`also` (the domain's chunks among a law library's): the result is the overall best n plus the best n of the
    masked rows, each with its own score, best first; without a mask nothing changes."""
    rng = random.Random(11)
    buckets: list[list[Chunk]] = [[], []]
    for c in chunks:
        buckets[rng.randrange(2)].append(c)
    parts = [_index(tokenizer, b) for b in buckets]
    masks = [np.array([rng.random() < 0.2 for _ in part.ids]) for part in parts]  # a small minority, as in a county
    masked_ids = {cid for part, mask in zip(parts, masks) for cid, m in zip(part.ids, mask) if m}
    grew = 0
    for question in questions:
        tokens = tokenizer.tokens(question)
        every = search_together(parts, tokens, len(chunks))
        scores = {cid: s for _, cid, s in every}
        best = {cid for _, cid, _ in every[:8]}
        best_masked = {cid for _, cid, _ in [h for h in every if h[1] in masked_ids][:8]}
        got = search_together(parts, tokens, 8, also=masks)
        ids = [cid for _, cid, _ in got]
        # Ties at the 8th place may pick either of the tied: compare scores, not only ids.
        assert sorted(scores[c] for c in ids) == pytest.approx(sorted(scores[c] for c in best | best_masked))
        assert len(ids) == len(set(ids)) == len(best | best_masked), question
        assert [s for _, _, s in got] == sorted((s for _, _, s in got), reverse=True)
        assert all(scores[cid] == s for _, cid, s in got)
        grew += len(ids) > 8
    assert grew > len(questions) // 4  # the masked rows really reach past the overall best 8 for many questions


# A small vocabulary of words jieba keeps whole, so that generated texts have repeated words and real ties.
WORDS = ["业主", "物业", "维修", "资金", "调解", "委员会", "停车", "费用", "党员", "社区", "居民", "纠纷", "合同", "楼道"]
DOCS = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map("，".join), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=DOCS, owners=st.lists(st.integers(0, 3), min_size=25, max_size=25),
       query=st.lists(st.sampled_from(WORDS + ["红烧肉"]), min_size=1, max_size=5))
def test_property_any_partition_scores_as_one_index_and_as_bm25s(tokenizer, texts, owners, query):
    ids = [f"c{i}" for i in range(len(texts))]
    whole = LexicalIndex(tokenizer)
    whole.build(ids, texts)
    parts = []
    for k in range(4):
        mine = [i for i in range(len(texts)) if owners[i] == k]
        part = LexicalIndex(tokenizer)
        part.build([ids[i] for i in mine], [texts[i] for i in mine])
        parts.append(part)
    tokens = tokenizer.tokens("".join(query))
    one = {cid: s for _, cid, s in search_together([whole], tokens, len(texts))}
    together = search_together(parts, tokens, len(texts))
    assert {cid: s for _, cid, s in together} == pytest.approx(one, rel=1e-12)
    assert [s for _, _, s in together] == sorted((s for _, _, s in together), reverse=True)
    ref = bm25s.BM25(k1=1.2, b=0.75)
    ref.index([tokenizer.tokens(t) for t in texts], show_progress=False)
    assert one == pytest.approx(_reference_scores(ref, ids, tokens), **TOL)


def _rows(index: LexicalIndex) -> dict[str, dict[str, int]]:
    """chunk id → {term: count}, read through postings: what a row holds, whatever the column numbers."""
    rows: dict[str, dict[str, int]] = {cid: {} for cid in index.ids}
    for term in index.vocab:
        for row, count in zip(*index.postings(term)):
            rows[index.ids[row]][term] = int(count)
    return rows


def _same_index(got: LexicalIndex, fresh: LexicalIndex, questions) -> None:
    assert got.ids == fresh.ids and got.n == fresh.n
    assert _rows(got) == _rows(fresh)
    assert np.array_equal(got.lengths, fresh.lengths) and got.total_length == fresh.total_length
    for term in set(got.vocab) | set(fresh.vocab):  # a reused vocabulary keeps the terms of removed chunks, at df 0
        assert got.doc_freq(term) == fresh.doc_freq(term), term
    for cid in fresh.ids:
        assert got.terms_of(cid) == fresh.terms_of(cid)
    for question in questions:
        assert got.search(question, 30) == fresh.search(question, 30), question


def test_a_rebuild_reusing_the_previous_rows_equals_a_fresh_build_after_reordering_and_removing(
        index, tokenizer, chunks, questions):
    rng = random.Random(7)
    kept = [c for c in chunks if rng.random() > 0.2]  # a fifth of the chunks removed
    rng.shuffle(kept)  # and the rest in another order
    added = [Chunk(id=f"new-{i}", text=f"幸福里小区第{i}号通知\n电动自行车不得在楼道内充电，违者由物业服务人劝阻。{i}",
                   source="notice.md", title="通知", section="", start=0, end=10) for i in range(5)]
    order = kept[: len(kept) // 2] + added + kept[len(kept) // 2:]
    counting = CountingTokenizer(tokenizer)
    reused = LexicalIndex(counting)
    reused.build([c.id for c in order], [c.text for c in order], reuse=index)
    assert counting.calls == len(added)  # only the new chunks were tokenized
    _same_index(reused, _index(tokenizer, order), questions[:80])


def test_a_rebuild_of_only_kept_or_only_new_chunks_equals_a_fresh_build(index, tokenizer, chunks, questions):
    tail = list(reversed(chunks[100:200]))
    only_kept = LexicalIndex(tokenizer)
    only_kept.build([c.id for c in tail], [c.text for c in tail], reuse=index)
    _same_index(only_kept, _index(tokenizer, tail), questions[:40])
    empty = LexicalIndex(tokenizer)
    empty.build([], [])
    none_kept = LexicalIndex(tokenizer)
    none_kept.build([c.id for c in tail], [c.text for c in tail], reuse=empty)
    _same_index(none_kept, _index(tokenizer, tail), questions[:40])
    nothing = LexicalIndex(tokenizer)
    nothing.build([], [], reuse=index)
    assert nothing.n == 0 and nothing.search("业主委员会", 5) == []


def test_a_rebuild_on_a_rebuild_stays_equal_to_a_fresh_build(index, tokenizer, chunks, questions):
    """Three generations in a row, each reusing the last: the vocabulary only grows, the rows stay right."""
    rng = random.Random(3)
    previous = index
    for _ in range(3):
        sample = rng.sample(chunks, 300)
        current = LexicalIndex(tokenizer)
        current.build([c.id for c in sample], [c.text for c in sample], reuse=previous)
        previous = current
    _same_index(previous, _index(tokenizer, sample), questions[:40])


def test_save_and_load_round_trip(index, tokenizer, chunks, questions, tmp_path):
    index.save(tmp_path / "lexical")
    assert (tmp_path / "lexical" / "FORMAT").read_text(encoding="utf-8") == LexicalIndex.FORMAT
    loaded = LexicalIndex(tokenizer)
    assert loaded.load(tmp_path / "lexical") is True
    _same_index(loaded, index, questions)
    # and the loaded one can be reused by the next generation like the one that was built
    again = LexicalIndex(tokenizer)
    again.build([c.id for c in chunks[:50]], [c.text for c in chunks[:50]], reuse=loaded)
    _same_index(again, _index(tokenizer, chunks[:50]), questions[:20])


def test_an_empty_index_round_trips(tokenizer, tmp_path):
    empty = LexicalIndex(tokenizer)
    empty.build([], [])
    empty.save(tmp_path / "lexical")
    loaded = LexicalIndex(tokenizer)
    assert loaded.load(tmp_path / "lexical") is True
    assert loaded.n == 0 and loaded.search("业主", 5) == []


def _old_format(directory: Path, index: LexicalIndex, tokenizer, texts) -> None:
    """What a generation's lexical/ held before term counts: ids.json and a bm25s index, no FORMAT file."""
    shutil.rmtree(directory)
    directory.mkdir()
    (directory / "ids.json").write_text(json.dumps(index.ids), encoding="utf-8")
    old = bm25s.BM25(k1=1.2, b=0.75)
    old.index([tokenizer.tokens(t) or ["∅"] for t in texts], show_progress=False)
    old.save(str(directory / "bm25"), show_progress=False)


def test_a_directory_of_the_older_format_loads_as_false_and_empty(index, tokenizer, chunks, tmp_path):
    index.save(tmp_path / "lexical")
    _old_format(tmp_path / "lexical", index, tokenizer, [c.text for c in chunks])
    loaded = LexicalIndex(tokenizer)
    assert loaded.load(tmp_path / "lexical") is False
    assert loaded.n == 0 and loaded.ids == [] and loaded.search("业主委员会", 5) == []
    (tmp_path / "lexical" / "FORMAT").write_text("tf-v0", encoding="utf-8")  # another format's name: the same
    assert LexicalIndex(tokenizer).load(tmp_path / "lexical") is False


def _catalog(chunks: list[Chunk]) -> Catalog:
    """A catalog of the corpus's documents, the first one superseded (retired: in the catalog, never in BM25)."""
    by_source: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_source.setdefault(c.source, []).append(c)
    docs = {}
    for n, (source, own) in enumerate(by_source.items()):
        docs[source] = DocRecord(source=source, root=str(BUNDLED_KB), title=own[0].title, category=own[0].category,
                                 issuer=own[0].issuer, date=own[0].date, kind="法规", sha256=f"{n:064x}",
                                 chunk_ids=tuple(c.id for c in own), chars=0, ingested_at="2026-12-01T00:00:00+00:00",
                                 superseded_by="newer.md" if n == 0 else "")
    return Catalog("test-embedder", "chinese-v1/max360", docs, {c.id: c for c in chunks})


def test_index_dir_load_rebuilds_a_generation_of_the_older_format_from_its_catalog(tokenizer, chunks, questions,
                                                                                 tmp_path):
    catalog = _catalog(chunks)
    live = catalog.live_chunks()
    assert 0 < len(live) < len(chunks)
    built = _index(tokenizer, live)
    IndexDir(tmp_path).commit(catalog, built)
    generation = IndexDir(tmp_path).current()
    _old_format(generation / "lexical", built, tokenizer, [c.text for c in live])

    lexical = LexicalIndex(tokenizer)
    loaded = IndexDir(tmp_path).load(lexical)
    assert loaded.generation == 1 and loaded.chunks.keys() == catalog.chunks.keys()
    _same_index(lexical, built, questions)  # rebuilt over the live chunks, in catalog order, without retired ones
    assert not set(lexical.ids) & catalog.retired()
    # The next commit writes the current format again, which then loads as it is.
    IndexDir(tmp_path).commit(loaded, lexical)
    assert (IndexDir(tmp_path).current() / "lexical" / "FORMAT").read_text(encoding="utf-8") == LexicalIndex.FORMAT
    again = LexicalIndex(tokenizer)
    IndexDir(tmp_path).load(again)
    _same_index(again, built, questions[:40])
