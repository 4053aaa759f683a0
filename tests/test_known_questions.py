"""Known questions (assistant/index/known.py): a question close to one whose provision is known steers the provision
ranker to that provision; an eval of a set leaves the set's own rows out; the rows' vectors are embedded once and
kept in the data dir.

Real jieba, real Chroma, the real onnx embedder and the shipped ranker over the demo knowledge base; the vector
cache tests count calls of a made-up embed function, which is all they are about."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from assistant.config import BUNDLED_KB, Settings
from assistant.index.known import FLOOR, NOT_COVERED, SMALL_TALK, KnownQuestionError, VectorCache, parse_table
from assistant.qa.compose import SMALLTALK_REPLIES
from assistant.qa.ranker import rank_features
from assistant.qa.retrieve import KNOWN_EXTRA
from assistant.services import build_services
from assistant.types import Chunk, ScoredChunk

# 人民调解法第三十三条 gives the thirty days; without help the ranker puts 司法确认规定 first for this wording.
QUESTION = "调解协议想去法院确认一下，有时间限制吗？多少天内"
# The table names both documents in play: of a document no row names, the known feature says nothing either way.
ROW = ("调解协议去法院申请司法确认有没有期限\t中华人民共和国人民调解法\t第三十三条\tmine.jsonl\n"
       "法院确认完会给我们一个什么东西\t最高人民法院关于人民调解协议司法确认程序的若干规定\t第八条\tmine.jsonl\n")


def test_a_table_line_without_a_title_is_named_and_comments_are_skipped():
    rows = parse_table("# 注释\n\n物业费怎么交\t物业管理条例\t第四十条\n新闻里说的\t昆山新闻\t\tstaff\n")
    assert [(r.question, r.title, r.article, r.origin) for r in rows] == [
        ("物业费怎么交", "物业管理条例", "第四十条", ""), ("新闻里说的", "昆山新闻", "", "staff")]
    with pytest.raises(KnownQuestionError, match="第 2 行"):
        parse_table("物业费怎么交\t物业管理条例\t第四十条\n只有问题没有出处\n")


def _counting(calls: list[str]):
    def embed(text: str) -> np.ndarray:
        calls.append(text)
        return np.array([len(text), 1.0, 0.0], dtype=np.float32)
    return embed


def test_vectors_are_embedded_once_and_read_back_from_the_data_dir(tmp_path):
    name = f"made-up/{tmp_path.name}"  # a name of its own: the process-wide memo holds nothing for it yet
    calls: list[str] = []
    first = VectorCache(tmp_path).vectors(name, ["甲", "乙乙", "甲"], _counting(calls))
    assert calls == ["甲", "乙乙"] and first.shape == (3, 3)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    for key in [k for k in VectorCache._shared if k[0] == name]:  # as a new process would start
        del VectorCache._shared[key]
    again = VectorCache(tmp_path).vectors(name, ["乙乙", "甲"], _counting(calls))
    assert calls == ["甲", "乙乙"]  # nothing embedded: read from the file
    assert np.allclose(again, first[[1, 0]])


def test_a_scope_that_needs_no_rows_embeds_and_writes_nothing(tmp_path):
    calls: list[str] = []
    assert VectorCache(tmp_path).vectors(f"made-up/{tmp_path.name}", [], _counting(calls)).size == 0
    assert calls == [] and not list(tmp_path.glob("*.npz"))


def test_a_torn_vector_file_is_embedded_again_not_a_failed_question(tmp_path):
    name = f"made-up/{tmp_path.name}"
    calls: list[str] = []
    cache = VectorCache(tmp_path)
    cache._file(name).write_bytes(b"not an npz")
    assert cache.vectors(name, ["甲"], _counting(calls)).shape == (1, 3) and calls == ["甲"]


def _hit(cid: str, dense: float) -> ScoredChunk:
    return ScoredChunk(Chunk(cid, "正文", "a.md", "标题", cid, 0, 2, "物业"), 0.03, 0.0, dense, None, 1)


def test_the_known_feature_is_how_far_a_provisions_nearest_known_question_falls_behind_the_nearest_of_all():
    pool = [_hit("a", 0.9), _hit("b", 0.89), _hit("c", 0.88)]
    rows = rank_features(pool, {}, "", {}, lambda h: frozenset(), known={"b": 0.97, "c": 0.91},
                         known_titles=frozenset({"标题"}))
    assert [round(r["known"], 3) for r in rows] == [round(FLOOR - 0.97, 3), 0.0, round(0.91 - 0.97, 3)]
    assert all(r["known"] == 0.0 for r in rank_features(pool, {}, "", {}, lambda h: frozenset()))
    # A document no known question names (a law library's, a new upload's) is not put behind for it.
    other = rank_features(pool, {}, "", {}, lambda h: frozenset(), known={"b": 0.97}, known_titles=frozenset({"别的"}))
    assert all(r["known"] == 0.0 for r in other)


@pytest.fixture
def services_with_row(kb_data_dir, embedder, tmp_path):
    """The demo index, served with a knowledge base folder whose known questions are the one ROW."""
    kb = tmp_path / "kb"
    shutil.copytree(BUNDLED_KB, kb)
    (kb / "known_questions.tsv").write_text(ROW, encoding="utf-8")
    data = tmp_path / "data"
    shutil.copytree(kb_data_dir, data)
    return build_services(Settings(data_dir=data, knowledge_base=kb), embedder)


def _first(services, question: str) -> tuple[str, str]:
    hit = services.chat.retrieve(question).hits[0]
    return hit.chunk.title, hit.chunk.article


def test_a_question_close_to_a_known_one_gets_its_provision_first(services_with_row):
    assert _first(services_with_row, QUESTION) == ("中华人民共和国人民调解法", "第三十三条")
    with services_with_row.chat.known_questions_without("mine.jsonl"):  # the row's own set, as an eval runs it
        assert _first(services_with_row, QUESTION) != ("中华人民共和国人民调解法", "第三十三条")
    assert _first(services_with_row, QUESTION) == ("中华人民共和国人民调解法", "第三十三条")  # and back


def test_a_known_question_steers_only_near_questions_and_adds_few_provisions(services_with_row):
    recorder_pool = services_with_row.chat.retrieve("党员有哪些权利").hits
    assert all(h.chunk.title != "中华人民共和国人民调解法" or h.chunk.article != "第三十三条" for h in recorder_pool)
    retriever = services_with_row.chat._pipeline.retriever
    snaps = [ix.snap for ix in retriever.shelf.indexes(retriever.scope())]
    vector = retriever.embedder.embed_query(retriever.dense_text(QUESTION))
    pool, closest, _ = retriever._known(vector, [], snaps)
    assert closest and all(v >= FLOOR for v in closest.values()) and len(pool) <= KNOWN_EXTRA
    assert ("中华人民共和国人民调解法", "第三十三条") == (pool[0].chunk.title, pool[0].chunk.article)  # the nearest


def test_the_bundled_table_names_only_provisions_the_demo_knowledge_base_holds(kb_data_dir, embedder):
    services = build_services(Settings(data_dir=kb_data_dir), embedder)
    retriever = services.chat._pipeline.retriever
    (snap,) = [ix.snap for ix in retriever.shelf.indexes(retriever.scope())]
    table = snap.provisions()
    missing = {(r.title, r.article) for r in retriever.known.rows
               if r.title not in (NOT_COVERED, SMALL_TALK) and (r.title, r.article) not in table}
    assert retriever.known.rows and not missing, sorted(missing)[:10]
    assert not any(r.origin.startswith("test") for r in retriever.known.rows)
    replies = {r.article for r in retriever.known.rows if r.title == SMALL_TALK}
    assert replies and replies <= set(SMALLTALK_REPLIES), replies - set(SMALLTALK_REPLIES)


def test_serving_embeds_the_known_questions_before_the_first_question(kb_data_dir, embedder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(kb_data_dir, data)
    services = build_services(Settings(data_dir=data), embedder)
    services.chat.warm()
    assert list(Path(data).glob("known-questions-*.npz"))


def test_a_question_nearer_a_known_unanswerable_one_than_any_answerable_one_weighs_toward_refusal(services_with_row,
                                                                                                  tmp_path):
    # The one row of services_with_row is answerable; a "-" row makes 房价 a known refusal.
    from assistant.qa.evidence import features

    retriever = services_with_row.chat._pipeline.retriever
    asked = "昆山的二手房现在什么价"
    found = retriever.search(asked)
    top = found.hits[0].chunk
    assert features(found)["known_margin"] == 0.0

    def known(*lines: str):
        return type(retriever.known)(parse_table("".join(lines)), retriever.known.cache, retriever.known.embedder_name)

    refused = "昆山二手房现在多少钱一平\t-\t\tmine.jsonl\n"
    # The table names the document the question lands on: its verdict counts.
    retriever.known = known(ROW, f"别的问题\t{top.title}\t{top.article}\tmine.jsonl\n", refused)
    assert features(retriever.search(asked))["known_margin"] > 0.05
    assert features(retriever.search(QUESTION))["known_margin"] < 0.0
    if top.title != "中华人民共和国人民调解法":
        # It names no provision of that document: it says nothing for or against the question.
        retriever.known = known(ROW, refused)
        assert features(retriever.search(asked))["known_margin"] == 0.0


def test_a_short_turn_nearer_a_known_small_talk_turn_than_any_question_is_small_talk(services_with_row):
    # The rules list 谢谢 and 辛苦了, not this; a "~" row of a thanks makes it small talk, a question stays one.
    chat = services_with_row.chat
    said = "这回可算弄清楚啦，多亏了你"
    assert chat.ask(said).kind != "smalltalk"
    retriever = chat._pipeline.retriever
    table = parse_table(ROW + "这下可算弄明白了，多亏你了\t~\tthanks\tmine.jsonl\n")
    retriever.known = type(retriever.known)(table, retriever.known.cache, retriever.known.embedder_name)
    answer = chat.ask(said)
    assert answer.kind == "smalltalk" and answer.text == SMALLTALK_REPLIES["thanks"] and not answer.citations
    assert chat.ask(QUESTION).kind == "answered"
    with chat.known_questions_without("mine.jsonl"):
        assert chat.ask(said).kind != "smalltalk"


# ---- staff's rows (the console's 已知问题) --------------------------------------------------------------------
def test_staff_rows_saved_through_the_service_steer_the_next_question_and_a_bad_row_is_named(kb_services):
    from ui.console import levers as lv

    bundled, override = kb_services.chat.known_questions()
    assert "golden.jsonl" in bundled and override == ""
    asked = "调解好的协议去法院确认，最晚什么时候得去"
    staff = f"{asked}\t中华人民共和国人民调解法\t第三十三条\tstaff\n"
    assert _first(kb_services, asked) != ("中华人民共和国人民调解法", "第三十三条")
    assert kb_services.chat.save_known_questions(staff) == 1
    assert kb_services.chat.known_questions()[1] == staff
    assert _first(kb_services, asked) == ("中华人民共和国人民调解法", "第三十三条")
    status = lv.save_known(kb_services, staff + "物业费怎么交\t物业管理条例\t第九百条\tstaff\n")
    assert status.startswith("❌") and "第 2 行" in status and "《物业管理条例》第九百条" in status
    assert lv.save_known(kb_services, "谢啦\t~\tcheers\n").startswith("❌")
    assert kb_services.chat.known_questions()[1] == staff  # nothing saved by a refused table
    assert kb_services.chat.known_questions()[0] == bundled  # and the knowledge base's own table is never written
