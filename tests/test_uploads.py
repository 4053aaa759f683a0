"""Staff uploads: one file ingested per upload, long Chinese names, the token before the body, crash recovery.

Over real services (a copy of the ingested demo index). Crashes are simulated two ways: staging folders written by
hand as a kill -9 leaves them, and a BaseException raised at the step in question, which (like a kill) skips every
`except Exception` clean-up and leaves the disk as it was at that instant."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import ingest.loaders
from assistant.services import build_services
from assistant.state import uploads as uploads_module
from assistant.state.uploads import DocMeta, safe_filename
from tests.conftest import CountingEmbedder, make_settings
from tests.test_admin_api import AUTH, NOTICE, TOKEN, _client, _upload

META = DocMeta("幸福里小区电动自行车充电管理办法", "物业", "幸福里业主委员会", "2024-05-01")
ORPHAN = "第一条 这份通知只写进了暂存区，进程就被终止了。\n\n第二条 重新启动以后它不应出现在知识库里。\n"


@pytest.fixture
def admin(kb_data_dir, embedder, tmp_path):
    with _client(kb_data_dir, embedder, tmp_path, admin_token=TOKEN, max_upload_mb=0.05) as c:
        yield c


@pytest.fixture
def data_dir(kb_data_dir, tmp_path) -> Path:
    """A copy of the ingested demo data dir; tests build services over it themselves (recovery runs at build)."""
    path = tmp_path / "data"
    shutil.copytree(kb_data_dir, path)
    return path


def _notice(n: int) -> bytes:
    """Versions of NOTICE that differ in an article (the heading alone is in no chunk), so each needs embedding."""
    assert "每小时零点五元" in NOTICE
    return NOTICE.replace("每小时零点五元", f"每小时{n}元").encode()


def _uploads_snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the uploads folder with its bytes, outside the staging area's lock file."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"} if root.exists() else {}


def _staging(data_dir: Path) -> list[Path]:
    staging = data_dir / "uploads" / ".staging"
    return sorted(p for p in staging.iterdir() if p.is_dir()) if staging.exists() else []


def _leftover(data_dir: Path, source: str, data: bytes, journal: bool = True, staged: bool = True) -> Path:
    """A staging folder as a crash leaves it: the staged file (unless already moved) and maybe its journal."""
    folder = data_dir / "uploads" / ".staging" / "tmpcrashed"
    folder.mkdir(parents=True)
    if staged:
        (folder / source).parent.mkdir(parents=True)
        (folder / source).write_bytes(data)
    if journal:
        entry = {"file": source, "title": "暂存通知", "category": source.split("/")[0]}
        (folder / "journal.json").write_text(json.dumps({"source": source, "entry": entry}, ensure_ascii=False),
                                             encoding="utf-8")
    return folder


class Killed(BaseException):
    """Stands in for kill -9: not an Exception, so no clean-up on the way out runs."""


# ---- incremental --------------------------------------------------------------------------------------------------
def test_an_upload_extracts_only_its_own_file_and_leaves_the_other_uploads_in_place(admin, monkeypatch):
    for n in (1, 2):
        assert _upload(admin, name=f"通知{n}.md", data=_notice(n)).status_code == 201
    before = {d["source"]: d for d in admin.get("/admin/documents", headers=AUTH).json()}

    # A spy on the real extract_text, both where the upload check and where the pipeline's load_file call it.
    extracted: list[str] = []
    real = ingest.loaders.extract_text

    def spy(raw, suffix, name="", budget=None):
        extracted.append(name)
        return real(raw, suffix, name, budget)

    monkeypatch.setattr(ingest.loaders, "extract_text", spy)
    monkeypatch.setattr(uploads_module, "extract_text", spy)
    r = _upload(admin, name="通知3.md", data=_notice(3))

    assert r.status_code == 201, r.text
    assert extracted and set(extracted) <= {"通知3.md", "物业/通知3.md"}  # the upload check, then the ingest
    report = r.json()["report"]
    assert report["added"] == ["物业/通知3.md"]
    assert report["removed"] == [] and report["unchanged"] == [] and report["updated"] == []
    after = {d["source"]: d for d in admin.get("/admin/documents", headers=AUTH).json()}
    assert set(after) == set(before) | {"物业/通知3.md"}
    assert all(after[s] == before[s] for s in before)  # not re-ingested: same chunks, same ingested_at


def test_a_reindex_after_uploads_finds_them_exactly_as_a_full_ingest_would(admin):
    assert _upload(admin).status_code == 201
    assert _upload(admin, name="遗留通知.md", data=ORPHAN.encode(), title="", issuer="", date="").status_code == 201
    r = admin.post("/admin/reindex", headers=AUTH).json()
    assert not r["added"] and not r["updated"] and not r["removed"] and r["embedded"] == 0
    assert {"物业/充电管理办法.md", "物业/遗留通知.md"} <= set(r["unchanged"])
    # and the one-file ingest reached BM25 and the vectors: the upload answers with a citation
    answer = admin.post("/api/chat", json={"question": "电动自行车在楼道里充电可以吗？"}).json()
    assert "物业/充电管理办法.md" in [c["source"] for c in answer["citations"]]


# ---- long file names ----------------------------------------------------------------------------------------------
def test_a_200_character_chinese_file_name_uploads_and_is_stored_within_255_bytes(admin):
    name = ("幸福里小区电动自行车集中充电管理办法" * 12)[:200] + ".md"
    r = _upload(admin, name=name)
    assert r.status_code == 201, r.text
    source = r.json()["source"]
    stored = admin.app.state.settings.data_dir / "uploads" / source
    assert stored.is_file()
    assert len(stored.name.encode("utf-8")) <= 255
    assert stored.suffix == ".md" and stored.name.startswith("幸福里小区电动自行车集中充电管理办法")
    assert source in {d["source"] for d in admin.get("/admin/documents", headers=AUTH).json()}


def test_two_long_names_with_the_same_prefix_are_stored_as_two_files(admin):
    prefix = "关于进一步加强幸福里小区电动自行车充电安全管理工作的通知" * 5
    first = _upload(admin, name=prefix + "（第一版）.md", data=_notice(1)).json()["source"]
    second = _upload(admin, name=prefix + "（第二版）.md", data=_notice(2)).json()["source"]
    assert first != second
    uploads = admin.app.state.settings.data_dir / "uploads"
    assert (uploads / first).read_bytes() == _notice(1) and (uploads / second).read_bytes() == _notice(2)


@pytest.mark.parametrize("lead", ["", "a", "ab"])  # shifts where the byte cut falls inside a 3-byte character
def test_a_long_name_is_cut_between_characters_and_keeps_its_extension(lead):
    stem = lead + "条" * 120
    name = safe_filename(stem + ".DOCX")
    kept, _, digest = name.removesuffix(".docx").rpartition("-")
    assert name.endswith(".docx")
    assert len(f".{name}.".encode()) + 8 <= 255  # _atomic_write's temp name fits too
    assert stem.startswith(kept) and len(digest) == 8
    assert safe_filename(stem + ".DOCX") == name  # the same name always maps to the same file
    assert safe_filename("../../etc/物业 通知?.MD") == "物业 通知.md"  # short names are only sanitised


# ---- the token before the body ------------------------------------------------------------------------------------
class CountingReceive:
    """An ASGI wrapper that counts the body chunks the app (any of its middleware included) reads."""

    def __init__(self, app):
        self.app = app
        self.chunks = 0

    async def __call__(self, scope, receive, send):
        async def counted():
            event = await receive()
            if event["type"] == "http.request":
                self.chunks += 1
            return event

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}])
def test_an_upload_without_the_token_is_refused_before_its_body_is_read(admin, headers):
    wrapped = CountingReceive(admin.app)
    client = TestClient(wrapped)  # the services are already built by the `admin` client
    big = b"x" * 300_000  # over the 0.05 MB upload limit: the body limit would answer 413
    r = client.post("/admin/documents", headers=headers, files={"file": ("通知.md", big)}, data={"category": "物业"})
    assert r.status_code == 401 and "管理令牌" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert wrapped.chunks == 0

    # The wrapper does see a body the app reads: with the token, the form is parsed (then refused for its category).
    r = client.post("/admin/documents", headers=AUTH, files={"file": ("通知.md", NOTICE.encode())},
                    data={"category": "杂项"})
    assert r.status_code == 422 and wrapped.chunks > 0


def test_an_upload_is_refused_with_503_before_its_body_is_read_when_no_token_is_configured(kb_data_dir, embedder,
                                                                                            tmp_path):
    with _client(kb_data_dir, embedder, tmp_path) as c:
        wrapped = CountingReceive(c.app)
        r = TestClient(wrapped).post("/admin/documents", headers=AUTH, files={"file": ("通知.md", b"x" * 300_000)})
    assert r.status_code == 503 and "XIAOYU_ADMIN_TOKEN" in r.json()["detail"]
    assert wrapped.chunks == 0


# ---- crash recovery -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("journal", [False, True], ids=["file-without-journal", "journal-but-index-not-written"])
def test_a_leftover_upload_the_index_never_committed_is_removed_at_the_next_start(data_dir, embedder, caplog,
                                                                                 journal):
    uploads = data_dir / "uploads"
    _leftover(data_dir, "物业/遗留通知.md", ORPHAN.encode(), journal=journal)
    with caplog.at_level(logging.WARNING, logger="xiaoyu"):
        services = build_services(make_settings(data_dir), embedder)
    assert _staging(data_dir) == []
    assert "interrupted" in caplog.text
    assert _uploads_snapshot(uploads) == {}  # nothing was moved into place, no manifest entry was written
    report = services.knowledge.ingest([uploads])  # what a re-index of the uploads folder walks
    assert not report.added and not report.failed
    assert "物业/遗留通知.md" not in {d.source for d in services.knowledge.documents()}


def test_a_crash_after_the_index_commit_is_finished_at_the_next_start(data_dir, embedder, monkeypatch, caplog):
    services = build_services(make_settings(data_dir), embedder)

    def killed(self, upload):
        raise Killed

    monkeypatch.setattr(uploads_module.UploadDir, "place", killed)
    with pytest.raises(Killed):
        services.knowledge.add_document("充电管理办法.md", NOTICE.encode(), META)
    monkeypatch.undo()
    uploads = data_dir / "uploads"
    assert not (uploads / "物业" / "充电管理办法.md").exists() and len(_staging(data_dir)) == 1  # as a kill leaves it

    with caplog.at_level(logging.WARNING, logger="xiaoyu"):
        again = build_services(make_settings(data_dir), embedder)
    assert "moved into place" in caplog.text
    assert _staging(data_dir) == []
    assert (uploads / "物业" / "充电管理办法.md").read_bytes() == NOTICE.encode()
    manifest = json.loads((uploads / "manifest.json").read_text(encoding="utf-8"))
    assert manifest == [{"file": "物业/充电管理办法.md", "title": META.title, "category": "物业",
                         "issuer": META.issuer, "date": META.date}]
    report = again.knowledge.reindex()
    assert "物业/充电管理办法.md" in report.unchanged and not report.removed and not report.updated


def test_a_crash_between_the_manifest_and_the_move_is_finished_at_the_next_start(data_dir, embedder, monkeypatch):
    services = build_services(make_settings(data_dir), embedder)
    real_replace = uploads_module.os.replace

    def replace(src, dst):
        if ".staging" in str(src) and not Path(src).name.startswith("."):  # the move, not an atomic write
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(uploads_module.os, "replace", replace)
    with pytest.raises(Killed):
        services.knowledge.add_document("充电管理办法.md", NOTICE.encode(), META)
    monkeypatch.undo()
    assert (data_dir / "uploads" / "manifest.json").is_file()  # the manifest was written, the file not moved

    again = build_services(make_settings(data_dir), embedder)
    assert _staging(data_dir) == []
    assert (data_dir / "uploads" / "物业" / "充电管理办法.md").read_bytes() == NOTICE.encode()
    assert "物业/充电管理办法.md" in again.knowledge.reindex().unchanged


def test_a_crash_in_the_middle_of_the_ingest_leaves_the_knowledge_base_as_before(data_dir, embedder):
    killing = CountingEmbedder(embedder)
    services = build_services(make_settings(data_dir), killing)
    assert services.knowledge.add_document("通知1.md", _notice(1), META)[0] == "物业/通知1.md"
    uploads = data_dir / "uploads"
    before_files, before_docs = _uploads_snapshot(uploads), services.knowledge.documents()

    def embed_passages(texts):
        raise Killed

    killing.embed_passages = embed_passages
    with pytest.raises(Killed):
        services.knowledge.add_document("通知1.md", _notice(2), META)  # a new version of the same file
    assert len(_staging(data_dir)) == 1

    again = build_services(make_settings(data_dir), embedder)
    assert _staging(data_dir) == []
    assert _uploads_snapshot(uploads) == before_files
    assert again.knowledge.documents() == before_docs
    assert "物业/通知1.md" in again.knowledge.reindex().unchanged


def test_recovery_leaves_alone_an_upload_another_process_is_still_running(data_dir, embedder):
    folder = _leftover(data_dir, "物业/遗留通知.md", ORPHAN.encode(), journal=False)
    with open(data_dir / "uploads" / ".staging" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what another process's upload holds (flock conflicts across open files)
        build_services(make_settings(data_dir), embedder)
        assert folder.is_dir()
        fcntl.flock(lock, fcntl.LOCK_UN)
    build_services(make_settings(data_dir), embedder)
    assert not folder.exists()


# ---- failed ingests -----------------------------------------------------------------------------------------------
def test_a_failed_ingest_leaves_the_uploads_folder_and_the_index_as_before(data_dir, embedder):
    failing = CountingEmbedder(embedder)
    services = build_services(make_settings(data_dir), failing)
    services.knowledge.add_document("通知1.md", _notice(1), META)
    uploads = data_dir / "uploads"
    before_files, before_docs = _uploads_snapshot(uploads), services.knowledge.documents()
    current = (data_dir / "index" / "CURRENT").read_text()

    failing.fail_after = failing.passages  # the next embedding raises RuntimeError
    for name, data in (("通知1.md", _notice(2)), ("通知2.md", _notice(3))):  # a replacement, then a new file
        with pytest.raises(RuntimeError, match="simulated crash"):
            services.knowledge.add_document(name, data, META)
        assert _uploads_snapshot(uploads) == before_files
        assert services.knowledge.documents() == before_docs
        assert (data_dir / "index" / "CURRENT").read_text() == current
        assert _staging(data_dir) == []
