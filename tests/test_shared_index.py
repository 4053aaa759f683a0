"""Several workers and hosts on one index: generations committed elsewhere are picked up, and with a Chroma server a
worker on an empty data dir serves the server's index (catalog included) without ingesting. Real `chroma run` on
loopback, the bundled embedder, the small two-regulation knowledge base."""

from __future__ import annotations

import time

import pytest

from assistant.services import build_services
from assistant.state.uploads import DocMeta
from tests.conftest import CountingEmbedder, chroma_server, live_chunks, make_settings

QUESTION = "人民调解委员会由哪些人组成？"
NOTICE = (
    "# 幸福里小区电动自行车充电管理办法\n\n"
    "第一条 为消除电动自行车违规充电带来的火灾隐患，制定本办法。\n\n"
    "第二条 小区内电动自行车应当在集中充电棚内充电，充电费用为每小时零点五元。\n\n"
    "第三条 禁止将电动自行车推入电梯或者在楼道内、住宅内充电。\n"
)
NOTICE_META = DocMeta("幸福里小区电动自行车充电管理办法", "物业", "幸福里业主委员会", "2024-05-01")
NOTICE_QUESTION = "电动自行车可以推进电梯充电吗？"
ORG = "调解/人民调解委员会组织条例.md"
CONFIRM = "调解/最高人民法院关于人民调解协议司法确认程序的若干规定.md"


@pytest.fixture
def server(tmp_path):
    with chroma_server(tmp_path / "chroma-server") as address:
        yield address


def _services(data_dir, server, embedder, **overrides):
    host, port = server
    return build_services(make_settings(data_dir, chroma_host=host, chroma_port=port, **overrides), embedder)


def _sources(services) -> set[str]:
    return {d.source for d in services.knowledge.documents()}


def _split_off_org(small_kb, tmp_path):
    """Move ORG out of small_kb into a knowledge base of its own (small_kb keeps CONFIRM); returns its root."""
    root = tmp_path / "kb-org"
    (root / "调解").mkdir(parents=True)
    (small_kb / ORG).rename(root / ORG)
    return root


def _cited(services, question: str) -> set[str]:
    return {h.chunk.source for h in services.chat.retrieve(question).hits}


def test_a_worker_on_an_empty_data_dir_serves_the_servers_index_without_embedding_a_passage(
        tmp_path, server, embedder, small_kb):
    a = _services(tmp_path / "a", server, embedder)
    assert not a.knowledge.ingest([small_kb]).failed
    counting = CountingEmbedder(embedder)
    b = _services(tmp_path / "b", server, counting)

    assert b.knowledge.ensure_ingested() is None  # `xiaoyu serve` start-up: nothing to ingest, the index is there
    answer_a, answer_b = a.chat.ask(QUESTION), b.chat.ask(QUESTION)
    assert answer_b.citations and answer_b.citations == answer_a.citations
    assert answer_b.text == answer_a.text
    assert counting.passages == 0
    # The catalog came along whole: document records, every chunk field, and the source texts of source pages.
    assert b.knowledge.documents() == a.knowledge.documents()
    assert live_chunks(b) == live_chunks(a)
    cited = answer_b.citations[0].chunk_id
    assert b.chat.source_passage(cited) == a.chat.source_passage(cited) is not None
    assert (tmp_path / "b" / "index" / "CURRENT").is_file()  # BM25 and the catalog mirrored as a local generation


def test_a_document_uploaded_through_one_host_is_retrievable_on_another_after_its_poll(
        tmp_path, server, embedder, small_kb):
    a = _services(tmp_path / "a", server, embedder)
    a.knowledge.ingest([small_kb])
    counting = CountingEmbedder(embedder)
    b = _services(tmp_path / "b", server, counting, index_poll_seconds=0)  # 0: the poll runs before each search
    assert not any("充电" in s for s in _sources(b))

    source, report = a.knowledge.add_document("充电管理办法.md", NOTICE.encode(), NOTICE_META)
    assert report.added == [source]
    assert source in _cited(b, NOTICE_QUESTION)  # b's next search polled, pulled the new generation and found it
    assert _sources(b) == _sources(a)
    doc = b.knowledge.document(source)
    assert (doc.title, doc.issuer, doc.date) == ("幸福里小区电动自行车充电管理办法", "幸福里业主委员会", "2024-05-01")
    assert {c.title for c in b.knowledge.chunks_of(source)} == {"幸福里小区电动自行车充电管理办法"}

    a.knowledge.delete_document(source)  # and a deletion reaches b the same way
    assert source not in _cited(b, NOTICE_QUESTION)
    assert source not in _sources(b)
    assert counting.passages == 0


def test_an_ingest_on_a_host_behind_the_server_keeps_the_other_hosts_documents(tmp_path, server, embedder, small_kb):
    only_org = _split_off_org(small_kb, tmp_path)  # small_kb keeps CONFIRM alone
    a = _services(tmp_path / "a", server, embedder, index_poll_seconds=0)
    b = _services(tmp_path / "b", server, embedder, index_poll_seconds=3600)  # never polls during the test
    a.knowledge.ingest([only_org])
    assert _sources(b) == set()  # b has not looked at the server since it started

    report = b.knowledge.ingest([small_kb])  # b syncs before it builds on the index
    assert report.added == [CONFIRM] and not report.removed
    assert _sources(b) == {ORG, CONFIRM}
    assert _cited(a, QUESTION) and _sources(a) == _sources(b)


def test_two_workers_on_one_local_data_dir_pick_up_each_others_generations(tmp_path, embedder, small_kb):
    """No Chroma server: the processes share data_dir/index, and each notices the other's commits via CURRENT."""
    data_dir = tmp_path / "data"
    org_only = _split_off_org(small_kb, tmp_path)
    first = build_services(make_settings(data_dir, index_poll_seconds=0), embedder)
    second = build_services(make_settings(data_dir, index_poll_seconds=0), embedder)

    first.knowledge.ingest([org_only])
    assert ORG in _cited(second, QUESTION)
    second.knowledge.ingest([small_kb])
    assert CONFIRM in _cited(first, "人民调解协议的司法确认应当向哪个法院申请？")
    assert _sources(first) == _sources(second) == {ORG, CONFIRM}


def test_the_background_poll_reloads_a_worker_that_is_asked_nothing(tmp_path, embedder, small_kb):
    data_dir = tmp_path / "data"
    writer = build_services(make_settings(data_dir), embedder)
    idle = build_services(make_settings(data_dir, index_poll_seconds=0.05), embedder)
    writer.knowledge.ingest([_split_off_org(small_kb, tmp_path)])  # one regulation is enough
    deadline = time.monotonic() + 30
    while not idle.knowledge.documents():  # waiting for the watcher thread, with a generous bound
        assert time.monotonic() < deadline, "the watcher never reloaded"
        time.sleep(0.02)
    assert _sources(idle) == _sources(writer)


def test_a_search_between_polls_does_not_look_at_the_index_dir(tmp_path, embedder, monkeypatch):
    from assistant.index.catalog import IndexDir

    services = build_services(make_settings(tmp_path / "data", index_poll_seconds=3600), embedder)
    looked = []
    monkeypatch.setattr(IndexDir, "head", lambda self: looked.append(1) or 0)
    for _ in range(3):
        services.chat.retrieve(QUESTION)
    assert looked == []


def test_a_commit_that_finds_another_hosts_newer_generation_starts_over_on_it(tmp_path, server, embedder, small_kb):
    only_org = _split_off_org(small_kb, tmp_path)  # small_kb keeps CONFIRM alone
    a = _services(tmp_path / "a", server, embedder, index_poll_seconds=3600)
    b = _services(tmp_path / "b", server, embedder, index_poll_seconds=3600)
    interleaved = []

    def a_commits_while_b_works(phase, done, total):
        if not interleaved:  # b has read the index and is loading its files: a commits in the meantime
            interleaved.append(a.knowledge.ingest([only_org]))

    report = b.knowledge.ingest([small_kb], a_commits_while_b_works)
    assert interleaved[0].added == [ORG]
    assert report.added == [CONFIRM] and not report.removed
    assert _sources(b) == {ORG, CONFIRM}
    fresh = _services(tmp_path / "c", server, embedder)
    assert _sources(fresh) == {ORG, CONFIRM}


def test_a_knowledge_base_created_on_one_host_is_served_by_another_host_of_the_chroma_server(
        tmp_path, server, embedder, small_kb):
    a = _services(tmp_path / "a", server, embedder, index_poll_seconds=0)
    b = _services(tmp_path / "b", server, embedder, index_poll_seconds=0)
    assert b.library.names() == ("community",)
    notice = tmp_path / "notice"
    (notice / "物业").mkdir(parents=True)
    (notice / "物业" / "充电管理办法.md").write_text(NOTICE, encoding="utf-8")
    a.library.create("xiaoqu", "幸福里小区")
    assert not a.library.get("xiaoqu").ingest([notice]).failed

    assert "xiaoqu" in b.library.names()  # the list lives on the server, not in a's data dir
    answer = b.chat.ask(NOTICE_QUESTION, knowledge_bases=["xiaoqu"])
    assert not answer.refused
    assert {c.knowledge_base for c in answer.citations} == {"xiaoqu"}

    a.library.delete("xiaoqu")
    assert "xiaoqu" not in b.library.names()
