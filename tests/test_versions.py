"""Versions of one document: a later date supersedes the older version (kept, listed as superseded, never retrieved
or cited), in whatever order they arrive; deleting the newer reinstates the older; equal or missing dates keep both.

Over real services (the bundled embedder, embedded Chroma or `chroma run`, jieba BM25) on a small knowledge base
written here in the demo corpus's format: a manifest with title and date, `# title`, `<!-- INFO END -->`, 第X条."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import BUNDLED_KB, StaffSettings
from assistant.index.catalog import Catalog, version_key
from assistant.services import build_services
from assistant.state.uploads import DocMeta
from tests.conftest import chroma_server, make_settings

TITLE = "幸福里小区机动车停放管理规定"
OLD = "物业/停车管理规定（2019年）.md"
NEW = "物业/停车管理规定.md"
ORG = "调解/人民调解委员会组织条例.md"
OLD_TEXT = (
    f"# {TITLE}\n\n2019年3月1日幸福里业主大会通过\n\n<!-- INFO END -->\n\n## 第一章 总则\n\n"
    "第一条 为规范幸福里小区机动车停放秩序，制定本规定。\n\n"
    "第二条 外来车辆在小区内临时停放的，停车费为每小时五元。\n\n"
    "## 第二章 业主车辆\n\n"
    "第三条 业主每月可以在物业服务中心免费领取两张访客停车券。\n\n"
    "第四条 车辆应当停放在划定的车位内，不得占用绿地。\n"
)
NEW_TEXT = (
    f"# {TITLE}（2023年修订）\n\n2023年6月1日幸福里业主大会修订\n\n<!-- INFO END -->\n\n## 第一章 总则\n\n"
    "第一条 为规范幸福里小区机动车停放秩序，保障消防通道畅通，制定本规定。\n\n"
    "第二条 外来车辆在小区内临时停放的，首半小时免费，此后停车费为每小时二元。\n\n"
    "## 第二章 业主车辆\n\n"
    "第三条 车辆应当停放在划定的车位内，不得占用绿地和消防通道。\n"
)
FEE = "外来车辆在小区里临时停车每小时收多少钱？"
VOUCHER = "业主每月能免费领几张访客停车券？"


def _write_kb(root: Path, versions: dict[str, tuple[str, str, str]]) -> Path:
    """A knowledge base of the given {source: (title, date, text)} plus one real regulation, with its manifest."""
    (root / "调解").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_KB / ORG, root / ORG)
    manifest = [{"file": ORG, "title": "人民调解委员会组织条例", "category": "调解", "issuer": "国务院",
                 "date": "1989-06-17", "kind": "法规", "provenance": "demo corpus"}]
    for source, (title, date, text) in versions.items():
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        (root / source).write_text(text, encoding="utf-8")
        manifest.append({"file": source, "title": title, "category": "物业", "issuer": "幸福里业主大会", "date": date,
                         "kind": "法规", "provenance": "written for this test"})
    (root / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture
def services(tmp_path, embedder):
    return build_services(make_settings(tmp_path / "data"), embedder)


@pytest.fixture
def both(tmp_path, services):
    """The two versions ingested together: the 2019 text and its 2023 revision (titled 《…》（2023年修订）)."""
    kb = _write_kb(tmp_path / "kb", {OLD: (TITLE, "2019-03-01", OLD_TEXT),
                                     NEW: (f"《{TITLE}》（2023年修订）", "2023-06-01", NEW_TEXT)})
    assert not services.knowledge.ingest([kb]).failed
    return services


def _superseded(services) -> dict[str, str]:
    return {d.source: d.superseded_by for d in services.knowledge.documents()}


def _retrieved(services, question: str) -> set[str]:
    return {h.chunk.source for h in services.chat.retrieve(question, top_k=20).hits}


def _cited(answer) -> set[str]:
    return {c.source for c in answer.citations}


def test_the_newer_version_answers_and_is_cited(both):
    answer = both.chat.ask(FEE)
    assert not answer.refused
    assert _cited(answer) == {NEW}
    assert "二元" in answer.text and "五元" not in answer.text


def test_what_only_the_older_version_says_is_never_retrieved_or_cited(both):
    answer = both.chat.ask(VOUCHER)
    assert OLD not in _cited(answer)
    assert "两张" not in answer.text
    for mode in ("hybrid", "bm25", "dense"):
        hits = both.chat.retrieve(VOUCHER, top_k=20, mode=mode).hits
        assert OLD not in {h.chunk.source for h in hits}, mode


def test_the_older_version_is_kept_and_listed_as_superseded_by_the_newer(both):
    assert _superseded(both) == {OLD: NEW, NEW: "", ORG: ""}
    assert both.knowledge.chunks_of(OLD)  # its record, chunks and text stay, for the day the newer one goes


def test_the_console_table_and_the_admin_listing_mark_the_superseded_version(both, tmp_path, embedder):
    from ui.console import handlers as h

    rows = {r[0]: r for r in h.document_rows(both)}
    assert rows[OLD][-1] == f"旧版本，已由 {NEW} 取代，不再检索" and rows[NEW][-1] == "现行"
    assert "1 篇是已被新版本取代的旧版本" in h.kb_summary(both)
    token = "test-admin-token-0123456789"
    settings = make_settings(tmp_path / "data", staff=StaffSettings(admin_token=token))
    with TestClient(create_app(settings, build_services(settings, embedder))) as client:
        listed = {d["source"]: d for d in client.get("/admin/documents",
                                                     headers={"Authorization": f"Bearer {token}"}).json()}
    assert listed[OLD]["superseded_by"] == NEW
    assert listed[NEW]["superseded_by"] is None and listed[ORG]["superseded_by"] is None


def test_a_staff_answer_cannot_be_pinned_to_the_superseded_version(both):
    from assistant.errors import BadQuestion

    with pytest.raises(BadQuestion, match="旧版本"):
        both.chat.pin("keywords", "访客停车券", "每月两张。", OLD, "第三条", "免费领取两张访客停车券")
    pin = both.chat.pin("keywords", "停车费", "每小时二元。", NEW, "第二条", "此后停车费为每小时二元")
    assert pin.source == NEW


def test_an_older_version_uploaded_after_the_newer_is_retired_at_once(tmp_path, services):
    kb = _write_kb(tmp_path / "kb", {NEW: (f"《{TITLE}》（2023年修订）", "2023-06-01", NEW_TEXT)})
    services.knowledge.ingest([kb])
    source, report = services.knowledge.add_document("停车管理规定旧版.md", OLD_TEXT.encode(),
                                                     DocMeta(TITLE, "物业", "幸福里业主大会", "2019-03-01"))
    assert report.added == [source]
    assert _superseded(services)[source] == NEW
    assert source not in _retrieved(services, VOUCHER) | _retrieved(services, FEE)
    assert _cited(services.chat.ask(FEE)) == {NEW}


def test_deleting_the_newer_version_reinstates_the_older(both):
    both.knowledge.delete_document(NEW)
    assert _superseded(both) == {OLD: "", ORG: ""}
    answer = both.chat.ask(VOUCHER)
    assert not answer.refused and _cited(answer) == {OLD}
    assert "两张" in answer.text


@pytest.mark.parametrize(("old_date", "new_date"), [("2023-06-01", "2023-06-01"), ("", "2023-06-01"),
                                                    ("2023-06", "2023-06-01")])
def test_versions_whose_dates_do_not_order_them_both_stay_live(tmp_path, services, old_date, new_date):
    kb = _write_kb(tmp_path / "kb", {OLD: (TITLE, old_date, OLD_TEXT), NEW: (TITLE, new_date, NEW_TEXT)})
    services.knowledge.ingest([kb])
    assert _superseded(services) == {OLD: "", NEW: "", ORG: ""}
    assert {OLD, NEW} <= _retrieved(services, FEE)
    assert OLD in _cited(services.chat.ask(VOUCHER))


def test_a_host_on_a_chroma_server_serves_the_same_versions(tmp_path, embedder):
    kb = _write_kb(tmp_path / "kb", {OLD: (TITLE, "2019-03-01", OLD_TEXT), NEW: (TITLE, "2023-06-01", NEW_TEXT)})
    with chroma_server(tmp_path / "chroma-server") as (host, port):
        def host_on(data_dir):
            return build_services(make_settings(data_dir, chroma_host=host, chroma_port=port, index_poll_seconds=0),
                                  embedder)

        writer = host_on(tmp_path / "a")
        assert not writer.knowledge.ingest([kb]).failed
        reader = host_on(tmp_path / "b")  # an empty data dir: pulls the records (superseded_by included) and BM25
        assert _superseded(reader) == {OLD: NEW, NEW: "", ORG: ""}
        assert OLD not in _retrieved(reader, VOUCHER) | _retrieved(reader, FEE)
        writer.knowledge.delete_document(NEW)
        reader.chat.retrieve(FEE)  # poll_seconds 0: the next search picks up the writer's generation
        assert _superseded(reader) == {OLD: "", ORG: ""}
        assert OLD in _retrieved(reader, VOUCHER)


def test_titles_of_one_documents_versions_share_a_key_and_other_titles_do_not():
    assert version_key("《中华人民共和国 刑法》（2020年修正）") == version_key("中华人民共和国刑法") \
        == version_key("中华人民共和国刑法(2017年修订)")
    assert version_key("中国共产党章程（2017年修改）") == "中国共产党章程"
    # Each amendment, numbered or dated, is a document of its own; so is a trial version.
    assert len({version_key(t) for t in ("中华人民共和国宪法修正案（1999年）", "中华人民共和国宪法修正案（2004年）",
                                         "中华人民共和国刑法修正案（七）", "中华人民共和国刑法修正案（八）")}) == 4
    assert version_key("人民检察院刑事诉讼规则（试行）") != version_key("人民检察院刑事诉讼规则")


def test_a_catalog_written_before_versions_existed_still_loads():
    record = {"source": OLD, "root": "/kb", "title": TITLE, "category": "物业", "issuer": "", "date": "2019-03-01",
              "kind": "法规", "sha256": "0" * 64, "chunk_ids": [], "chars": 0, "ingested_at": "2024-01-01T00:00:00"}
    catalog = Catalog.from_json({"embedder": "e5", "split_signature": "s", "generation": 3, "docs": [record],
                                 "chunks": []})
    assert catalog.docs[OLD].superseded_by == "" and catalog.retired() == frozenset()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_ingest_progress_shows_documents_and_chunks_per_second_with_the_time_left(monkeypatch):
    from assistant.cli import _progress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    update = _progress()
    for phase, total in (("files", 3), ("chunks", 40)):
        for done in range(total + 1):
            update(phase, done, total)
    shown = terminal.getvalue()
    assert "读取文件" in shown and "篇/s" in shown
    assert "嵌入片段" in shown and "段/s" in shown
    assert "3/3 [" in shown and "40/40 [" in shown and "<00:00" in shown  # [elapsed<remaining, rate]
