"""Incremental, idempotent and atomic ingestion, against real Chroma and the bundled embedder."""

import shutil

import pytest

from assistant.services import build_services
from tests.conftest import CountingEmbedder, chunk_ids, live_chunks, make_settings, stored_ids

CONFIRM = "调解/最高人民法院关于人民调解协议司法确认程序的若干规定.md"
ORG = "调解/人民调解委员会组织条例.md"


@pytest.fixture
def service_factory(tmp_path, embedder):
    """Services over one data dir; each call is a fresh process-like set. `.counting` is the embedder it was given."""
    def make(inner=None):
        counting = inner or CountingEmbedder(embedder)
        services = build_services(make_settings(tmp_path / "data"), counting)
        make.counting = counting
        return services
    return make


def _doc_ids(services, source: str) -> set[str]:
    return set(services.knowledge.document(source).chunk_ids)


def test_reingesting_unchanged_files_keeps_ids_and_embeds_nothing(service_factory, small_kb):
    service = service_factory()
    first = service.knowledge.ingest([small_kb])
    assert sorted(first.added) == [ORG, CONFIRM] and first.embedded > 0
    ids = chunk_ids(service)
    again = service_factory()  # a fresh process-like service over the same data dir
    report = again.knowledge.ingest([small_kb])
    assert sorted(report.unchanged) == [ORG, CONFIRM]
    assert report.embedded == 0 and service_factory.counting.passages == 0
    assert chunk_ids(again) == ids


def test_a_changed_file_replaces_its_chunks_and_embeds_only_new_text(service_factory, small_kb, embedder):
    service = service_factory()
    service.knowledge.ingest([small_kb])
    old_ids = _doc_ids(service, ORG)
    path = small_kb / ORG
    path.write_text(path.read_text(encoding="utf-8") + "\n第十八条 本条例自发布之日起施行，新增测试条款。\n", encoding="utf-8")
    counting = service_factory.counting
    before = counting.passages
    report = service.knowledge.ingest([small_kb])
    assert report.updated == [ORG] and report.unchanged == [CONFIRM]
    new_ids = _doc_ids(service, ORG)
    assert new_ids != old_ids
    # Only chunks whose text changed were embedded; the other articles kept their ids.
    assert 0 < counting.passages - before < len(new_ids)
    assert not (old_ids - new_ids) & chunk_ids(service)
    assert stored_ids(service.settings.data_dir, embedder) == chunk_ids(service)


def test_a_deleted_file_is_pruned_from_catalog_lexical_index_and_chroma(service_factory, small_kb, embedder):
    service = service_factory()
    service.knowledge.ingest([small_kb])
    gone = _doc_ids(service, CONFIRM)
    (small_kb / CONFIRM).unlink()
    report = service.knowledge.ingest([small_kb])
    assert report.removed == [CONFIRM]
    assert CONFIRM not in {d.source for d in service.knowledge.documents()}
    assert not gone & stored_ids(service.settings.data_dir, embedder)
    hits = service.chat.retrieve("司法确认申请要多久", top_k=10).hits
    assert all(h.chunk.source != CONFIRM for h in hits)


def test_a_crash_midway_through_embedding_keeps_the_previous_index_usable(service_factory, small_kb, embedder, tmp_path):
    service = service_factory()
    service.knowledge.ingest([small_kb])
    before = live_chunks(service)
    answer_before = service.chat.ask("司法确认要多久？").text
    extra = small_kb / "物业"
    extra.mkdir()
    shutil.copy(small_kb / ORG, extra / "复制.md")
    for n in range(3):
        (extra / f"新增{n}.md").write_text(f"# 新增{n}\n\n第一条 第{n}个新文件的内容，用于测试中途失败。\n", encoding="utf-8")
    crashing = service_factory(CountingEmbedder(embedder, fail_after=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.knowledge.ingest([small_kb])
    restarted = service_factory()
    assert live_chunks(restarted) == before
    assert restarted.chat.ask("司法确认要多久？").text == answer_before
    # The next successful ingest finishes the job and cleans up any orphaned vectors.
    report = restarted.knowledge.ingest([small_kb])
    assert len(report.added) == 4
    assert stored_ids(restarted.settings.data_dir, embedder) == chunk_ids(restarted)


def test_the_index_persists_across_a_restart(service_factory, small_kb):
    first = service_factory()
    first.knowledge.ingest([small_kb])
    expected = first.chat.retrieve("人民法院多久内作出是否确认的决定", top_k=3)
    second = service_factory()
    got = second.chat.retrieve("人民法院多久内作出是否确认的决定", top_k=3)
    assert [h.chunk.id for h in got.hits] == [h.chunk.id for h in expected.hits]
    assert got.hits[0].chunk.source == CONFIRM


def test_a_broken_file_is_reported_by_name_and_the_rest_is_ingested(service_factory, small_kb):
    (small_kb / "坏文件.docx").write_bytes(b"PK\x03\x04 not a zip")
    (small_kb / "乱码.txt").write_bytes(bytes(range(256)) * 4)
    report = service_factory().knowledge.ingest([small_kb])
    failed = dict(report.failed)
    assert set(failed) == {"坏文件.docx", "乱码.txt"}
    assert "Word" in failed["坏文件.docx"]
    assert sorted(report.added) == [ORG, CONFIRM]


def test_removing_a_document_by_source(service_factory, small_kb):
    service = service_factory()
    service.knowledge.ingest([small_kb])
    report = service.knowledge.remove([ORG])
    assert report.removed == [ORG] and ORG not in {d.source for d in service.knowledge.documents()}
