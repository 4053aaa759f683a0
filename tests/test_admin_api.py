"""The admin API over a real service (a copy of the ingested demo index): token, upload, delete, re-index, log."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import StaffSettings
from assistant.services import build_services
from tests.conftest import make_settings

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOTICE = (
    "# 幸福里小区电动自行车充电管理办法\n\n"
    "第一条 为消除电动自行车违规充电带来的火灾隐患，制定本办法。\n\n"
    "第二条 小区内电动自行车应当在集中充电棚内充电，充电费用为每小时零点五元。\n\n"
    "第三条 禁止将电动自行车推入电梯或者在楼道内、住宅内充电。\n"
)


def _client(kb_data_dir, embedder, tmp_path, **staff) -> TestClient:
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    settings = make_settings(data_dir, staff=StaffSettings(**staff))
    return TestClient(create_app(settings, build_services(settings, embedder)))


@pytest.fixture
def admin(kb_data_dir, embedder, tmp_path):
    # low_confidence_below 0.99: every answered question counts as low-confidence, so the filter is visible
    with _client(kb_data_dir, embedder, tmp_path, admin_token=TOKEN, max_upload_mb=0.05,
                 low_confidence_below=0.99) as c:
        yield c


def _upload(client, name="充电管理办法.md", data: bytes | None = None, category="物业", **form):
    fields = {"category": category, "title": "幸福里小区电动自行车充电管理办法", "issuer": "幸福里业主委员会",
              "date": "2024-05-01", **form}
    files = {"file": (name, NOTICE.encode() if data is None else data, "text/markdown")}
    return client.post("/admin/documents", headers=AUTH, files=files, data=fields)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}])
def test_admin_api_answers_401_without_the_right_bearer_token(admin, headers):
    for method, path in (("get", "/admin/questions"), ("post", "/admin/reindex"), ("delete", "/admin/documents/x.md"),
                         ("post", "/admin/documents")):
        r = admin.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path)
        assert "管理令牌" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_admin_api_is_disabled_with_a_clear_message_when_no_token_is_configured(kb_data_dir, embedder, tmp_path):
    with _client(kb_data_dir, embedder, tmp_path) as c:
        r = c.get("/admin/questions", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 503
    assert "XIAOYU_ADMIN_TOKEN" in r.json()["detail"]


def test_uploaded_document_is_ingested_and_then_answers_with_a_citation(admin):
    r = _upload(admin)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source"] == "物业/充电管理办法.md"
    assert body["status"] == "added" and body["chunks"] >= 3
    listed = {d["source"]: d for d in admin.get("/admin/documents", headers=AUTH).json()}
    assert listed["物业/充电管理办法.md"]["issuer"] == "幸福里业主委员会"
    assert listed["物业/充电管理办法.md"]["date"] == "2024-05-01"

    answer = admin.post("/api/chat", json={"question": "电动自行车在楼道里充电可以吗？"}).json()
    assert answer["refused"] is False
    cited = [(c["source"], c["section"]) for c in answer["citations"]]
    assert ("物业/充电管理办法.md", "第三条") in [(s, sec.rsplit(" > ", 1)[-1]) for s, sec in cited]


def test_uploading_the_same_file_again_changes_nothing(admin):
    assert _upload(admin).json()["status"] == "added"
    again = _upload(admin)
    assert again.status_code == 201
    assert again.json()["status"] == "unchanged" and again.json()["report"]["embedded"] == 0


def test_file_names_are_sanitised_so_an_upload_cannot_leave_the_uploads_folder(admin):
    r = _upload(admin, name="../../../../etc/充电办法.md")
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "物业/充电办法.md"
    app_settings = admin.app.state.settings
    assert (app_settings.data_dir / "uploads" / "物业" / "充电办法.md").is_file()


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("扫描件.pdf", b"%PDF-1.4 this is not really a pdf", "PDF"),
    ("通知.docx", b"PK\x03\x04 not a zip", "Word"),
    ("空白.txt", b"   \n", "空"),
    ("只有标题.md", "# 只有一个标题\n".encode(), "没有切分出任何内容"),
    ("程序.exe", b"MZ\x90\x00", "不支持的文件类型"),
])
def test_a_broken_upload_is_refused_with_its_reason_and_the_knowledge_base_is_unchanged(admin, name, data, reason):
    before = admin.get("/admin/documents", headers=AUTH).json()
    r = _upload(admin, name=name, data=data)
    assert r.status_code == 422
    assert reason in r.json()["detail"]
    assert admin.get("/admin/documents", headers=AUTH).json() == before
    uploads = admin.app.state.settings.data_dir / "uploads"
    assert not list(uploads.rglob(name)) if uploads.exists() else True


def test_upload_with_an_unknown_category_or_bad_date_is_refused(admin):
    assert "分类" in _upload(admin, category="杂项").json()["detail"]
    assert "日期" in _upload(admin, date="五月一日").json()["detail"]


def test_uploads_over_the_size_limit_get_413(admin):
    r = _upload(admin, data=("第一条 充电。\n" * 10_000).encode())  # ~170 kB > 0.05 MB
    assert r.status_code == 413
    assert "上限" in r.json()["detail"]


def test_an_upload_may_not_take_over_a_bundled_document(admin):
    r = _upload(admin, name="物业管理条例.md")
    assert r.status_code == 422
    assert "同名文档" in r.json()["detail"]


def test_delete_removes_an_uploaded_document_and_its_file(admin):
    _upload(admin)
    r = admin.delete("/admin/documents/物业/充电管理办法.md", headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == ["物业/充电管理办法.md"]
    sources = [d["source"] for d in admin.get("/admin/documents", headers=AUTH).json()]
    assert "物业/充电管理办法.md" not in sources
    assert not (admin.app.state.settings.data_dir / "uploads" / "物业" / "充电管理办法.md").exists()
    # and a re-index does not bring it back
    assert "物业/充电管理办法.md" not in admin.post("/admin/reindex", headers=AUTH).json()["added"]
    assert admin.delete("/admin/documents/物业/充电管理办法.md", headers=AUTH).status_code == 404


def test_delete_of_a_path_outside_the_index_is_404_and_touches_nothing(admin):
    r = admin.delete("/admin/documents/..%2F..%2Fquestions.sqlite3", headers=AUTH)
    assert r.status_code == 404
    assert (admin.app.state.settings.data_dir / "questions.sqlite3").exists()


def test_reindex_of_an_unchanged_knowledge_base_embeds_nothing(admin):
    r = admin.post("/admin/reindex", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["embedded"] == 0 and not body["added"] and not body["removed"]
    assert len(body["unchanged"]) == 13


def test_questions_lists_resident_questions_with_refusal_filter(admin):
    admin.post("/api/chat", json={"question": "业委会选出来以后要去哪里备案？"})
    admin.post("/api/chat", json={"question": "今天股市行情怎么样，推荐一只股票"})
    every = admin.get("/admin/questions", headers=AUTH).json()
    assert [q["question"] for q in every] == ["今天股市行情怎么样，推荐一只股票", "业委会选出来以后要去哪里备案？"]
    refused = admin.get("/admin/questions", headers=AUTH, params={"refused": "true"}).json()
    assert [q["question"] for q in refused] == ["今天股市行情怎么样，推荐一只股票"]
    low = admin.get("/admin/questions", headers=AUTH, params={"low_confidence": "true"}).json()
    assert [q["question"] for q in low] == ["业委会选出来以后要去哪里备案？"]  # answered, under 0.99; refused ones aren't
    answered = every[1]
    assert answered["refused"] is False and answered["dense_top"] > 0.8 and answered["evidence"]
    assert answered["citations"][0]["source"].startswith("物业/")
