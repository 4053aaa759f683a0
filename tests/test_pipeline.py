"""Incremental, idempotent and atomic ingestion, against real Chroma and the bundled embedder."""

import shutil

import pytest

from assistant.service import build_service
from tests.conftest import CountingEmbedder, make_settings

CONFIRM = "调解/最高人民法院关于人民调解协议司法确认程序的若干规定.md"
ORG = "调解/人民调解委员会组织条例.md"


@pytest.fixture
def service_factory(tmp_path, embedder):
    def make(inner=None):
        return build_service(make_settings(tmp_path / "data"), inner or CountingEmbedder(embedder))
    return make


def test_reingesting_unchanged_files_keeps_ids_and_embeds_nothing(service_factory, small_kb):
    service = service_factory()
    first = service.ingest([small_kb])
    assert sorted(first.added) == [ORG, CONFIRM] and first.embedded > 0
    ids = set(service.retriever.catalog.chunks)
    again = service_factory()  # a fresh process-like service over the same data dir
    report = again.ingest([small_kb])
    assert sorted(report.unchanged) == [ORG, CONFIRM]
    assert report.embedded == 0 and again.pipeline.embedder.passages == 0
    assert set(again.retriever.catalog.chunks) == ids


def test_a_changed_file_replaces_its_chunks_and_embeds_only_new_text(service_factory, small_kb):
    service = service_factory()
    service.ingest([small_kb])
    old_ids = set(service.retriever.catalog.docs[ORG].chunk_ids)
    path = small_kb / ORG
    path.write_text(path.read_text(encoding="utf-8") + "\n第十八条 本条例自发布之日起施行，新增测试条款。\n", encoding="utf-8")
    embedder = service.pipeline.embedder
    before = embedder.passages
    report = service.ingest([small_kb])
    assert report.updated == [ORG] and report.unchanged == [CONFIRM]
    new_ids = set(service.retriever.catalog.docs[ORG].chunk_ids)
    assert new_ids != old_ids
    # Only chunks whose text changed were embedded; the other articles kept their ids.
    assert 0 < embedder.passages - before < len(new_ids)
    assert not (old_ids - new_ids) & set(service.retriever.catalog.chunks)
    assert service.pipeline.store.ids() == set(service.retriever.catalog.chunks)


def test_a_deleted_file_is_pruned_from_catalog_lexical_index_and_chroma(service_factory, small_kb):
    service = service_factory()
    service.ingest([small_kb])
    gone = set(service.retriever.catalog.docs[CONFIRM].chunk_ids)
    (small_kb / CONFIRM).unlink()
    report = service.ingest([small_kb])
    assert report.removed == [CONFIRM]
    assert CONFIRM not in service.retriever.catalog.docs
    assert not gone & service.pipeline.store.ids()
    hits = service.retrieve("司法确认申请要多久", top_k=10).hits
    assert all(h.chunk.source != CONFIRM for h in hits)


def test_a_crash_midway_through_embedding_keeps_the_previous_index_usable(service_factory, small_kb, embedder, tmp_path):
    service = service_factory()
    service.ingest([small_kb])
    before = dict(service.retriever.catalog.chunks)
    answer_before = service.ask("司法确认要多久？").text
    extra = small_kb / "物业"
    extra.mkdir()
    shutil.copy(small_kb / ORG, extra / "复制.md")
    for n in range(3):
        (extra / f"新增{n}.md").write_text(f"# 新增{n}\n\n第一条 第{n}个新文件的内容，用于测试中途失败。\n", encoding="utf-8")
    crashing = service_factory(CountingEmbedder(embedder, fail_after=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.ingest([small_kb])
    restarted = service_factory()
    assert restarted.retriever.catalog.chunks == before
    assert restarted.ask("司法确认要多久？").text == answer_before
    # The next successful ingest finishes the job and cleans up any orphaned vectors.
    report = restarted.ingest([small_kb])
    assert len(report.added) == 4
    assert restarted.pipeline.store.ids() == set(restarted.retriever.catalog.chunks)


def test_the_index_persists_across_a_restart(service_factory, small_kb):
    first = service_factory()
    first.ingest([small_kb])
    expected = first.retrieve("人民法院多久内作出是否确认的决定", top_k=3)
    second = service_factory()
    got = second.retrieve("人民法院多久内作出是否确认的决定", top_k=3)
    assert [h.chunk.id for h in got.hits] == [h.chunk.id for h in expected.hits]
    assert got.hits[0].chunk.source == CONFIRM


def test_a_broken_file_is_reported_by_name_and_the_rest_is_ingested(service_factory, small_kb):
    (small_kb / "坏文件.docx").write_bytes(b"PK\x03\x04 not a zip")
    (small_kb / "乱码.txt").write_bytes(bytes(range(256)) * 4)
    report = service_factory().ingest([small_kb])
    failed = dict(report.failed)
    assert set(failed) == {"坏文件.docx", "乱码.txt"}
    assert "Word" in failed["坏文件.docx"]
    assert sorted(report.added) == [ORG, CONFIRM]


def test_removing_a_document_by_source(service_factory, small_kb):
    service = service_factory()
    service.ingest([small_kb])
    report = service.remove([ORG])
    assert report.removed == [ORG] and ORG not in service.retriever.catalog.docs
