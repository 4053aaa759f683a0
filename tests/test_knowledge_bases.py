"""Named knowledge bases (index/kb.py, services.KnowledgeBases): made, listed and deleted through the services, the
admin API and the CLI; a question searched and judged within its scope; unknown names refused with the known ones;
the /v1 models; the default and the WeChat scope settings; another process's knowledge bases; and a scope of two
knowledge bases ranking exactly as one holding the same documents.

Real components: the session's onnx embedder, embedded Chroma, jieba BM25, the demo corpus's mediation and property
regulations as `community`, and ten national laws from the library (tests/library_sample.py) as `laws`, ingested
once for the module through `xiaoyu ingest --kb laws` (assistant.cli.main, in this process)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import BUNDLED_KB, Settings, StaffSettings, WebSettings, WeChatSettings
from assistant.errors import BadQuestion, NotFound
from assistant.index.kb import DEFAULT_KB, KbIndex, UnknownKnowledgeBase
from assistant.index.sentences import provision_sentences, sentence_id
from assistant.services import Services, build_services
from assistant.types import Channel
from tests.conftest import CountingEmbedder, make_settings
from tests.library_sample import LAW_QUESTIONS, LAWS, TOBACCO, TOBACCO_LAW, require_library, write_sample

TOKEN = "kb-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMMUNITY_FILES = ("调解/中华人民共和国人民调解法.md", "调解/人民调解委员会组织条例.md",
                   "调解/最高人民法院关于人民调解协议司法确认程序的若干规定.md", "物业/物业管理条例.md")
MEDIATION = "人民调解委员会由哪些人组成？"  # 人民调解委员会组织条例 第三条 or 人民调解法 第八条, in `community` only
NOTICE = (
    "# 幸福里小区电动自行车充电管理办法\n\n"
    "第一条 为消除电动自行车违规充电带来的火灾隐患，制定本办法。\n\n"
    "第二条 小区内电动自行车应当在集中充电棚内充电，充电费用为每小时零点五元。\n\n"
    "第三条 禁止将电动自行车推入电梯或者在楼道内、住宅内充电。\n"
)
NOTICE_TITLE = "幸福里小区电动自行车充电管理办法"
NOTICE_QUESTION = "电动自行车可以推进电梯充电吗？"
SUMMARY = re.compile(r"新增 (\d+) · 更新 (\d+) · 未变 (\d+) · 删除 (\d+) · 失败 (\d+)（嵌入 (\d+) 个片段）")


def _settings(data_dir: Path, **overrides) -> Settings:
    """index_poll_seconds 0: every search first looks for knowledge bases and generations made elsewhere."""
    return make_settings(data_dir, index_poll_seconds=0,
                         staff=StaffSettings(admin_token=TOKEN, console_enabled=False),
                         web=WebSettings(rate_limit_per_minute=0), **overrides)


def _cli(embedder, *argv: str) -> tuple[int, str, str]:
    """`xiaoyu …` in this process: (exit code, stdout, stderr). Its build_services gets the session's embedder: it
    would otherwise load its own copy of the same model from the data dir, seconds per command (the real load is in
    test_ingest_resume.py, whose commands run as processes of their own)."""
    from assistant.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("assistant.services.build_embedder", lambda settings: embedder)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _community_root(dest: Path) -> Path:
    """Four regulations of the demo corpus, with their manifest entries."""
    manifest = json.loads((BUNDLED_KB / "manifest.json").read_text(encoding="utf-8"))
    for name in COMMUNITY_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED_KB / name, dest / name)
    (dest / "manifest.json").write_text(json.dumps([e for e in manifest if e["file"] in COMMUNITY_FILES],
                                                   ensure_ascii=False), encoding="utf-8")
    return dest


def _notice_root(dest: Path) -> Path:
    (dest / "物业").mkdir(parents=True)
    (dest / "物业" / "充电管理办法.md").write_text(NOTICE, encoding="utf-8")
    (dest / "manifest.json").write_text(json.dumps([{
        "file": "物业/充电管理办法.md", "title": NOTICE_TITLE, "category": "物业", "issuer": "幸福里业主委员会",
        "date": "2024-05-01", "kind": "法规", "provenance": "written for this test"}], ensure_ascii=False),
        encoding="utf-8")
    return dest


@dataclass
class Deployment:
    data_dir: Path
    settings: Settings
    services: Services
    client: TestClient
    laws_root: Path
    cli: tuple[int, str, str]  # what `xiaoyu ingest --kb laws` returned and printed
    notice_root: Path


@pytest.fixture(scope="module")
def deploy(tmp_path_factory, embedder):
    require_library()
    base = tmp_path_factory.mktemp("kbs")
    data_dir = base / "data"
    settings = _settings(data_dir)
    services = build_services(settings, embedder)
    report = services.knowledge.ingest([_community_root(base / "community")])
    assert report.added and not report.failed
    laws_root = write_sample(base / "laws", LAWS)
    cli = _cli(embedder, "ingest", "--kb", "laws", str(laws_root), "--data-dir", str(data_dir))
    with TestClient(create_app(settings, services)) as client:
        yield Deployment(data_dir, settings, services, client, laws_root, cli, _notice_root(base / "notice"))


def _kbs(citations) -> set[str]:
    return {c.knowledge_base if hasattr(c, "knowledge_base") else c["knowledge_base"] for c in citations}


def _article(section: str) -> str:
    return section.rsplit(" > ", 1)[-1]


# ---- the CLI -----------------------------------------------------------------------------------------------
def test_cli_ingest_into_a_new_knowledge_base_creates_it_and_prints_the_report(deploy):
    code, out, err = deploy.cli
    assert code == 0, err
    assert "已新建知识库 laws" in err
    counts = SUMMARY.search(out)
    assert counts is not None, out
    laws = deploy.services.library.get("laws")
    chunks = sum(len(d.chunk_ids) for d in laws.documents())
    assert counts.groups() == (str(len(LAWS)), "0", "0", "0", "0", str(chunks))
    assert {d.source for d in laws.documents()} == set(LAWS)
    assert (deploy.data_dir / "kb" / "laws" / "index" / "CURRENT").is_file()
    registry = json.loads((deploy.data_dir / "knowledge_bases.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in registry] == ["community", "laws"]
    # the services built before the CLI ran see it (the registry file changed)
    assert deploy.services.library.names() == ("community", "laws")


def test_cli_ingest_again_changes_nothing_and_kb_list_shows_both(deploy, embedder):
    d = str(deploy.data_dir)
    code, out, err = _cli(embedder, "ingest", "--kb", "laws", str(deploy.laws_root), "--data-dir", d)
    assert code == 0 and "已新建" not in err
    assert SUMMARY.search(out).groups() == ("0", "0", str(len(LAWS)), "0", "0", "0")
    code, out, _ = _cli(embedder, "kb", "list", "--data-dir", d)
    assert code == 0
    rows = {line.split("\t")[0]: line for line in out.splitlines()}
    assert list(rows) == ["community", "laws"]
    assert f"{len(COMMUNITY_FILES)} 个文档" in rows["community"] and f"{len(LAWS)} 个文档" in rows["laws"]
    assert "第 1 代" in rows["laws"] and "（默认范围）" in rows["laws"]


def test_cli_kb_create_and_delete(deploy, embedder):
    d = str(deploy.data_dir)
    try:
        made = _cli(embedder, "kb", "create", "scratch-cli", "--title", "临时", "--data-dir", d)
        assert made[:2] == (0, "已新建知识库 scratch-cli\n")
        assert _cli(embedder, "kb", "create", "scratch-cli", "--data-dir", d)[:2] == (0, "已存在知识库 scratch-cli\n")
        assert {i.name: i.title for i in deploy.services.library.list()}["scratch-cli"] == "临时"
        assert "scratch-cli" in deploy.services.library.names()
        code, _, err = _cli(embedder, "kb", "delete", "community", "--data-dir", d)
        assert code == 2 and "不能删除" in err
        code, _, err = _cli(embedder, "kb", "create", "no way", "--data-dir", d)
        assert code == 2 and "知识库名称" in err
    finally:
        assert _cli(embedder, "kb", "delete", "scratch-cli", "--data-dir", d)[:2] == (0, "已删除知识库 scratch-cli\n")
    assert "scratch-cli" not in deploy.services.library.names()
    code, _, err = _cli(embedder, "kb", "delete", "scratch-cli", "--data-dir", d)
    assert code == 2 and "没有这个知识库" in err


def test_cli_ask_with_kb_answers_from_that_knowledge_base(deploy, embedder):
    d = str(deploy.data_dir)
    code, out, _ = _cli(embedder, "ask", "--kb", "laws", TOBACCO, "--json", "--data-dir", d)
    assert code == 0
    answer = json.loads(out)
    assert not answer["refused"] and answer["citations"]
    assert _kbs(answer["citations"]) == {"laws"} and answer["citations"][0]["title"] == TOBACCO_LAW
    code, out, _ = _cli(embedder, "ask", "--kb", "community", TOBACCO, "--json", "--data-dir", d)
    assert code == 0 and json.loads(out)["refused"]


# ---- services: create, list, delete ------------------------------------------------------------------------
def test_create_list_and_delete_through_the_services(deploy):
    library = deploy.services.library
    try:
        info, new = library.create("scratch", "临时知识库")
        assert new and (info.name, info.title, info.documents, info.chunks, info.generation) == \
            ("scratch", "临时知识库", 0, 0, 0)
        assert info.default  # no default scope is configured: every knowledge base is in it
        assert library.names() == ("community", "laws", "scratch")
        again, new = library.create("scratch")
        assert not new and again.title == "临时知识库" and again.created_at == info.created_at
        renamed, new = library.create("scratch", "改名")
        assert not new and renamed.title == "改名"
        listed = {i.name: i for i in library.list()}
        assert list(listed) == ["community", "laws", "scratch"]
        laws = library.get("laws")
        assert (listed["laws"].documents, listed["laws"].chunks, listed["laws"].generation) == \
            (len(LAWS), len(laws.index.catalog.chunks), laws.index.catalog.generation)
        assert library.get("scratch").is_empty and library.get("scratch").name == "scratch"
    finally:
        library.delete("scratch")
    assert library.names() == ("community", "laws")
    assert not (deploy.data_dir / "kb" / "scratch").exists()
    with pytest.raises(NotFound):
        library.delete("scratch")
    with pytest.raises(NotFound):
        library.get("scratch")
    with pytest.raises(BadQuestion):
        library.delete(DEFAULT_KB)


@pytest.mark.parametrize("name", ["", "bad name", "知识库", "../etc", "a/b", "x" * 33, "laws!"])
def test_a_name_that_is_not_a_slug_is_refused_and_nothing_is_created(deploy, name):
    with pytest.raises(BadQuestion):
        deploy.services.library.create(name)
    assert deploy.services.library.names() == ("community", "laws")
    assert json.loads((deploy.data_dir / "knowledge_bases.json").read_text(encoding="utf-8"))[-1]["name"] == "laws"


# ---- the admin API -----------------------------------------------------------------------------------------
def test_admin_knowledge_bases_create_list_and_delete_status_codes(deploy):
    c = deploy.client
    listed = c.get("/admin/knowledge-bases", headers=AUTH)
    assert listed.status_code == 200
    assert [(k["name"], k["documents"], k["in_default_scope"]) for k in listed.json()] == \
        [("community", len(COMMUNITY_FILES), True), ("laws", len(LAWS), True)]
    assert c.get("/admin/knowledge-bases").status_code == 401
    try:
        made = c.post("/admin/knowledge-bases", headers=AUTH, json={"name": "scratch-api", "title": "临时"})
        assert made.status_code == 201, made.text
        assert made.json() | {"created_at": ""} == {"name": "scratch-api", "title": "临时", "documents": 0, "chunks": 0,
                                                    "generation": 0, "created_at": "", "in_default_scope": True}
        again = c.post("/admin/knowledge-bases", headers=AUTH, json={"name": "scratch-api"})
        assert again.status_code == 200 and again.json()["created_at"] == made.json()["created_at"]
        bad = c.post("/admin/knowledge-bases", headers=AUTH, json={"name": "有 空格"})
        assert bad.status_code == 422 and "知识库名称" in bad.json()["detail"]
        assert c.post("/admin/knowledge-bases", headers=AUTH, json={}).status_code == 422
        names = [k["name"] for k in c.get("/admin/knowledge-bases", headers=AUTH).json()]
        assert names == ["community", "laws", "scratch-api"]
        assert c.delete(f"/admin/knowledge-bases/{DEFAULT_KB}", headers=AUTH).status_code == 422
        assert c.delete("/admin/knowledge-bases/nope", headers=AUTH).status_code == 404
    finally:
        assert c.delete("/admin/knowledge-bases/scratch-api", headers=AUTH).status_code == 204
    assert [k["name"] for k in c.get("/admin/knowledge-bases", headers=AUTH).json()] == ["community", "laws"]
    assert c.delete("/admin/knowledge-bases/scratch-api", headers=AUTH).status_code == 404


def test_admin_documents_of_a_named_knowledge_base(deploy):
    c = deploy.client
    assert c.post("/admin/knowledge-bases", headers=AUTH, json={"name": "notices"}).status_code == 201
    try:
        files = {"file": ("充电管理办法.md", NOTICE.encode(), "text/markdown")}
        form = {"category": "物业", "title": NOTICE_TITLE, "issuer": "幸福里业主委员会", "date": "2024-05-01"}
        up = c.post("/admin/documents?kb=notices", headers=AUTH, files=files, data=form)
        assert up.status_code == 201, up.text
        source = up.json()["source"]
        assert up.json()["status"] == "added" and up.json()["chunks"] == 3
        assert [d["source"] for d in c.get("/admin/documents?kb=notices", headers=AUTH).json()] == [source]
        assert source not in {d["source"] for d in c.get("/admin/documents", headers=AUTH).json()}
        assert (deploy.data_dir / "kb" / "notices" / "uploads" / source).is_file()
        hits = c.post("/api/retrieve", json={"query": NOTICE_QUESTION, "knowledge_bases": ["notices"]}).json()["hits"]
        assert hits and {h["knowledge_base"] for h in hits} == {"notices"} and hits[0]["source"] == source
        chat = c.post("/api/chat", json={"question": NOTICE_QUESTION, "knowledge_bases": ["notices"]}).json()
        assert not chat["refused"] and _kbs(chat["citations"]) == {"notices"}
        # the default knowledge base is untouched
        assert c.post("/api/chat", json={"question": NOTICE_QUESTION, "knowledge_bases": ["community"]}).json()["refused"]
        for method, path in (("get", "/admin/documents?kb=nope"), ("delete", f"/admin/documents/{source}?kb=nope")):
            assert getattr(c, method)(path, headers=AUTH).status_code == 404, path
        assert c.post("/admin/documents?kb=nope", headers=AUTH, files=files, data=form).status_code == 404
        assert c.post("/admin/reindex?kb=nope", headers=AUTH).status_code == 404
        gone = c.delete(f"/admin/documents/{source}?kb=notices", headers=AUTH)
        assert gone.status_code == 200 and gone.json()["removed"] == [source]
        assert c.get("/admin/documents?kb=notices", headers=AUTH).json() == []
        assert not (deploy.data_dir / "kb" / "notices" / "uploads" / source).exists()
    finally:
        assert c.delete("/admin/knowledge-bases/notices", headers=AUTH).status_code == 204
    assert c.get("/admin/documents?kb=notices", headers=AUTH).status_code == 404


# ---- scope: searched and judged within it ------------------------------------------------------------------
@pytest.mark.parametrize("question", list(LAW_QUESTIONS))
def test_a_law_question_is_answered_from_laws_and_refused_within_community(deploy, question):
    chat = deploy.services.chat
    title, article = LAW_QUESTIONS[question]
    for scope in (["laws"], ["community", "laws"], None):  # None: the default scope, every knowledge base
        answer = chat.ask(question, knowledge_bases=scope)
        assert not answer.refused and answer.citations, (scope, answer.text)
        assert _kbs(answer.citations) == {"laws"}, scope
        assert (answer.citations[0].title, _article(answer.citations[0].section)) == (title, article), scope
    answer = chat.ask(question, knowledge_bases=["community"])
    assert answer.refused and not answer.citations
    within = chat.retrieve(question, knowledge_bases=["community"])
    assert not within.evidence.covered and {h.chunk.kb for h in within.hits} <= {"community"}
    assert chat.retrieve(question, knowledge_bases=["laws"]).evidence.covered


def test_a_community_question_is_answered_from_community_and_refused_within_laws(deploy):
    chat = deploy.services.chat
    answer = chat.ask(MEDIATION, knowledge_bases=["community"])
    assert not answer.refused and _kbs(answer.citations) == {"community"}
    # Two provisions of the demo corpus give the same composition, word for word: either is the right first source.
    assert (answer.citations[0].title, _article(answer.citations[0].section)) in {
        ("人民调解委员会组织条例", "第三条"), ("中华人民共和国人民调解法", "第八条")}
    assert "三至九人" in answer.text
    assert chat.ask(MEDIATION, knowledge_bases=["laws"]).refused
    explained = chat.explain(MEDIATION, knowledge_bases=["laws"])
    assert explained.answer.refused and {h.chunk.kb for h in explained.retrieval.hits} == {"laws"}


def test_the_api_scopes_chat_its_stream_and_retrieve(deploy):
    c = deploy.client
    for scope, refused in ((["laws"], False), (["community"], True)):
        body = c.post("/api/chat", json={"question": TOBACCO, "knowledge_bases": scope}).json()
        assert body["refused"] is refused and (refused or _kbs(body["citations"]) == {"laws"})
        hits = c.post("/api/retrieve", json={"query": TOBACCO, "knowledge_bases": scope}).json()
        assert hits["covered"] is not refused and {h["knowledge_base"] for h in hits["hits"]} == set(scope)
        with c.stream("POST", "/api/chat/stream", json={"question": TOBACCO, "knowledge_bases": scope}) as r:
            assert r.status_code == 200
            events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
        done = events[-1]
        assert done["refused"] is refused and (refused or _kbs(done["citations"]) == {"laws"})
    body = c.post("/api/chat", json={"question": TOBACCO}).json()  # no scope: the default one, all of them
    assert not body["refused"] and _kbs(body["citations"]) == {"laws"}


@pytest.mark.parametrize("path,field", [("/api/chat", "question"), ("/api/chat/stream", "question"),
                                        ("/api/retrieve", "query")])
def test_an_unknown_knowledge_base_is_a_422_naming_the_known_ones(deploy, path, field):
    response = deploy.client.post(path, json={field: TOBACCO, "knowledge_bases": ["laws", "nope"]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "nope" in detail and "community" in detail and "laws" in detail
    assert detail.index("nope") < detail.index("community")  # "没有这个知识库：nope。现有的知识库：community、laws"


def test_an_unknown_knowledge_base_is_refused_before_any_work_by_the_service(deploy):
    with pytest.raises(UnknownKnowledgeBase) as raised:
        deploy.services.chat.scope(["nope", "laws"])
    assert raised.value.unknown == ("nope",) and raised.value.known == ("community", "laws")
    assert raised.value.status == 422
    for call in (lambda: deploy.services.chat.ask(TOBACCO, knowledge_bases=["nope"]),
                 lambda: deploy.services.chat.retrieve(TOBACCO, knowledge_bases=["nope"])):
        with pytest.raises(UnknownKnowledgeBase):
            call()


def test_a_scope_keeps_its_order_without_repeats(deploy):
    chat = deploy.services.chat
    assert chat.scope(["laws", "community", "laws"]) == ("laws", "community")
    assert chat.scope() == chat.scope([]) == ("community", "laws")


# ---- /v1: one model per knowledge base ---------------------------------------------------------------------
def _complete(client, model: str, question: str, **extra):
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": question}],
                                                     **extra})


def test_v1_lists_a_model_per_knowledge_base_and_answers_from_its_scope(deploy):
    c = deploy.client
    assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["xiaoyu", "xiaoyu-community", "xiaoyu-laws"]
    assert c.get("/v1/models/xiaoyu-laws").json()["id"] == "xiaoyu-laws"
    assert c.get("/v1/models/xiaoyu-nope").status_code == 404
    laws = _complete(c, "xiaoyu-laws", TOBACCO).json()
    assert not laws["refused"] and _kbs(laws["citations"]) == {"laws"} and laws["model"] == "xiaoyu-laws"
    assert _complete(c, "xiaoyu-community", TOBACCO).json()["refused"]
    assert not _complete(c, "xiaoyu", TOBACCO).json()["refused"]  # the default scope: all of them
    community = _complete(c, "xiaoyu-community", MEDIATION).json()
    assert not community["refused"] and _kbs(community["citations"]) == {"community"}
    assert _complete(c, "xiaoyu-laws", MEDIATION).json()["refused"]


def test_v1_an_unknown_model_is_404_naming_the_models(deploy):
    response = _complete(deploy.client, "xiaoyu-nope", TOBACCO)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "xiaoyu-laws" in error["message"]


def test_v1_streamed_completion_of_a_knowledge_base_model_cites_it(deploy):
    with deploy.client.stream("POST", "/v1/chat/completions", json={
            "model": "xiaoyu-laws", "stream": True, "messages": [{"role": "user", "content": TOBACCO}]}) as r:
        assert r.status_code == 200
        chunks = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert chunks[-1] == "[DONE]"
    last = json.loads(chunks[-2])
    assert not last["refused"] and _kbs(last["citations"]) == {"laws"}


# ---- the scope settings ------------------------------------------------------------------------------------
def test_the_default_scope_setting_is_used_when_a_question_names_none(deploy, embedder):
    settings = _settings(deploy.data_dir, default_knowledge_bases=["community"])
    services = build_services(settings, embedder)
    chat = services.chat
    assert chat.scope() == ("community",)
    assert chat.ask(TOBACCO).refused
    answer = chat.ask(TOBACCO, knowledge_bases=["laws"])
    assert not answer.refused and _kbs(answer.citations) == {"laws"}
    assert _kbs(chat.ask(MEDIATION).citations) == {"community"}
    assert {i.name: i.default for i in services.library.list()} == {"community": True, "laws": False}
    with TestClient(create_app(settings, services)) as c:
        assert c.post("/api/chat", json={"question": TOBACCO}).json()["refused"]
        assert not c.post("/api/chat", json={"question": TOBACCO, "knowledge_bases": ["laws"]}).json()["refused"]
        assert _complete(c, "xiaoyu", TOBACCO).json()["refused"]  # "xiaoyu" is the default scope
        assert not _complete(c, "xiaoyu-laws", TOBACCO).json()["refused"]
        flags = {k["name"]: k["in_default_scope"] for k in c.get("/admin/knowledge-bases", headers=AUTH).json()}
        assert flags == {"community": True, "laws": False}


def test_names_of_the_default_scope_that_do_not_exist_are_left_out(deploy, embedder):
    def scope(names):
        return build_services(_settings(deploy.data_dir, default_knowledge_bases=names), embedder).chat.scope()

    assert scope(["nope", "laws"]) == ("laws",)
    assert scope(["nope"]) == ("community", "laws")  # none exists: every knowledge base


def test_the_wechat_scope_setting_is_used_for_wechat_questions(deploy, embedder):
    settings = _settings(deploy.data_dir, default_knowledge_bases=["community"],
                         wechat=WeChatSettings(knowledge_bases=["laws"]))
    chat = build_services(settings, embedder).chat
    assert chat.scope(channel=Channel.WECHAT) == ("laws",) and chat.scope() == ("community",)
    answer = chat.ask(TOBACCO, session_id="wechat:o-kb-test", channel=Channel.WECHAT, user="o-kb-test")
    assert not answer.refused and _kbs(answer.citations) == {"laws"}
    assert chat.ask(MEDIATION, session_id="wechat:o-kb-test-2", channel=Channel.WECHAT).refused
    assert chat.ask(TOBACCO, channel=Channel.API).refused  # other channels keep the default scope
    # a scope named with the question wins over the channel's
    assert chat.ask(TOBACCO, channel=Channel.WECHAT, knowledge_bases=["community"]).refused


def test_scope_settings_are_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XIAOYU_DEFAULT_KNOWLEDGE_BASES", " community, laws ,")
    monkeypatch.setenv("XIAOYU_WECHAT_KNOWLEDGE_BASES", '["laws"]')
    settings = Settings(data_dir=tmp_path)
    assert settings.default_knowledge_bases == ["community", "laws"]
    assert settings.wechat.knowledge_bases == ["laws"]
    monkeypatch.setenv("XIAOYU_DEFAULT_KNOWLEDGE_BASES", "")
    assert Settings(data_dir=tmp_path).default_knowledge_bases == []


# ---- another process on the same data dir ------------------------------------------------------------------
def test_a_knowledge_base_another_process_creates_and_fills_is_seen_and_searched(deploy, embedder):
    mine = deploy.services
    other = build_services(_settings(deploy.data_dir), embedder)  # another process-like set on the same data dir
    other.library.create("extra", "另一进程")
    try:
        assert mine.library.names() == ("community", "extra", "laws")  # the default first, then by name
        assert mine.chat.retrieve(NOTICE_QUESTION, knowledge_bases=["extra"]).hits == ()  # empty so far
        report = other.library.get("extra").ingest([deploy.notice_root])
        assert report.added and report.embedded == 3
        hits = mine.chat.retrieve(NOTICE_QUESTION, knowledge_bases=["extra"]).hits
        assert hits and {h.chunk.kb for h in hits} == {"extra"} and hits[0].chunk.title == NOTICE_TITLE
        answer = mine.chat.ask(NOTICE_QUESTION, knowledge_bases=["extra"])
        assert not answer.refused and _kbs(answer.citations) == {"extra"}
        assert "extra" in {h.chunk.kb for h in mine.chat.retrieve(NOTICE_QUESTION).hits}  # the default scope: all
        assert "xiaoyu-extra" in [m["id"] for m in deploy.client.get("/v1/models").json()["data"]]
    finally:
        other.library.delete("extra")
    assert mine.library.names() == ("community", "laws")
    with pytest.raises(UnknownKnowledgeBase):
        mine.chat.retrieve(NOTICE_QUESTION, knowledge_bases=["extra"])
    assert "extra" not in {h.chunk.kb for h in mine.chat.retrieve(NOTICE_QUESTION).hits}


def _collections(data_dir: Path) -> set[str]:
    """The names of the Chroma collections in the data dir, read by a client of our own (embedded Chroma wants the
    settings of the services' client, index/store.py, for a path it already serves)."""
    client = chromadb.PersistentClient(path=str(data_dir / "chroma"),
                                       settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))
    return {c.name for c in client.list_collections()}


def test_deleting_a_knowledge_base_removes_its_folder_and_collections_and_it_is_no_longer_searched(deploy):
    library, chat = deploy.services.library, deploy.services.chat
    library.create("gone")
    library.get("gone").ingest([deploy.notice_root])
    assert {h.chunk.kb for h in chat.retrieve(NOTICE_QUESTION).hits} >= {"gone"}
    folder = deploy.data_dir / "kb" / "gone"
    assert (folder / "index" / "CURRENT").is_file()
    mine = {n for n in _collections(deploy.data_dir) if n.startswith("kb-gone--")}
    assert len(mine) == 2  # its chunks and its sentences
    before = _collections(deploy.data_dir) - mine
    library.delete("gone")
    assert not folder.exists()
    assert _collections(deploy.data_dir) == before  # its own gone, every other one kept
    assert "gone" not in library.names()
    with pytest.raises(UnknownKnowledgeBase):
        chat.retrieve(NOTICE_QUESTION, knowledge_bases=["gone"])
    assert "gone" not in {h.chunk.kb for h in chat.retrieve(NOTICE_QUESTION).hits}
    # Made again under the same name, it starts empty: nothing of the old one comes back.
    try:
        info, new = library.create("gone")
        assert new and info.documents == 0
        assert chat.retrieve(NOTICE_QUESTION, knowledge_bases=["gone"]).hits == ()
    finally:
        library.delete("gone")


# ---- two knowledge bases holding halves of the documents rank as one holding all -----------------------------
def _copy_vectors(src: KbIndex, dst: KbIndex) -> None:
    """Give dst's collections src's chunk and sentence vectors, so that ingesting the same files embeds nothing.

    Why copied, not embedded again: the onnx embedder quantizes activations per batch (int8, dynamic), so one passage
    embedded in another batch gets a vector a few 1e-3 away, and dense ranks may swap. What is tested here is the
    retriever's promise, that a scope ranks as one knowledge base holding the same documents, given the same vectors."""
    ids = sorted(src.catalog.chunks)
    chunks, vectors = src.store.chunks(ids), src.store.vectors(ids)
    dst.store.upsert([chunks[i] for i in ids], np.stack([vectors[i] for i in ids]))
    texts = {sentence_id(t): t for i in ids for t in provision_sentences(chunks[i].body)}
    found = src.sentences.vectors(sorted(texts))
    sids = sorted(found)
    dst.sentences.upsert_texts(sids, [texts[s] for s in sids], np.stack([found[s] for s in sids]))


@dataclass
class Halves:
    services: Services
    client: TestClient
    first: set[str]  # the sources in half1; half2 holds the others


@pytest.fixture(scope="module")
def halves(deploy, embedder, tmp_path_factory):
    """Another data dir with knowledge bases `all` (the ten laws), `half1` (the first five, in catalog order) and
    `half2` (the other five), their vectors copied from the deployment's `laws`."""
    base = tmp_path_factory.mktemp("halves")
    counting = CountingEmbedder(embedder)
    counting.same_vectors_as = embedder.same_vectors_as  # so the shipped answerability model applies, as served
    settings = _settings(base / "data")
    services = build_services(settings, counting)
    laws = deploy.services.library.get("laws").index
    order = list(laws.catalog.docs)
    roots = {"all": deploy.laws_root, "half1": write_sample(base / "half1", order[:5]),
             "half2": write_sample(base / "half2", order[5:])}
    for name, root in roots.items():
        services.library.create(name)
        _copy_vectors(laws, services.library.get(name).index)
        report = services.library.get(name).ingest([root])
        assert report.added and report.embedded == 0 and not report.failed
    assert counting.passages == 0  # neither a chunk nor a sentence was embedded again
    with TestClient(create_app(settings, services)) as client:
        yield Halves(services, client, set(order[:5]))


HALF_QUESTIONS = [*LAW_QUESTIONS, "契税的税率是多少？", "车船税由谁缴纳？", "国籍怎么取得？", "城市维护建设税怎么计算？",
                  "恐怖活动组织的资助怎么处罚？", "人民调解委员会由哪些人组成？", "业主大会怎么成立？"]


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_a_scope_of_two_halves_ranks_exactly_as_one_knowledge_base_holding_all(halves, mode):
    chat = halves.services.chat
    for question in HALF_QUESTIONS:
        one = chat.retrieve(question, top_k=10, mode=mode, knowledge_bases=["all"])
        two = chat.retrieve(question, top_k=10, mode=mode, knowledge_bases=["half1", "half2"])
        assert [h.chunk.id for h in two.hits] == [h.chunk.id for h in one.hits], question
        for a, b in zip(one.hits, two.hits):
            assert (b.lexical_rank, b.dense_rank) == (a.lexical_rank, a.dense_rank), question
            # Cosines are float32: another collection (or matrix) may round the last bit otherwise (6e-8), and the
            # provision ranker weighs a cosine difference ~40 times, so its score may differ in the sixth digit.
            assert (b.lexical, b.dense) == pytest.approx((a.lexical, a.dense), rel=1e-6), question
            assert b.score == pytest.approx(a.score, rel=1e-5), question
            assert b.chunk.kb == ("half1" if b.chunk.source in halves.first else "half2")
            assert a.chunk.kb == "all"
        assert two.evidence.covered == one.evidence.covered, question
        assert two.evidence.dense_top == pytest.approx(one.evidence.dense_top, rel=1e-6)
    # the scope's order does not change which chunks score what
    one = chat.retrieve(TOBACCO, top_k=10, mode=mode, knowledge_bases=["all"])
    flipped = chat.retrieve(TOBACCO, top_k=10, mode=mode, knowledge_bases=["half2", "half1"])
    assert sorted(h.score for h in flipped.hits) == pytest.approx(sorted(h.score for h in one.hits), rel=1e-6)


def test_api_retrieve_over_two_halves_returns_the_hits_of_one_knowledge_base_holding_all(halves):
    c = halves.client
    for question in HALF_QUESTIONS:
        one = c.post("/api/retrieve", json={"query": question, "top_k": 10, "knowledge_bases": ["all"]}).json()
        two = c.post("/api/retrieve", json={"query": question, "top_k": 10,
                                            "knowledge_bases": ["half1", "half2"]}).json()
        assert [h["id"] for h in two["hits"]] == [h["id"] for h in one["hits"]], question
        assert two["covered"] == one["covered"]
        assert {h["knowledge_base"] for h in one["hits"]} <= {"all"}
        assert all(h["knowledge_base"] == ("half1" if h["source"] in halves.first else "half2") for h in two["hits"])


# ---- names that differ only in case ------------------------------------------------------------------------
def test_deleting_a_knowledge_base_leaves_one_whose_name_differs_only_in_case_searchable(tmp_path, embedder):
    services = build_services(_settings(tmp_path / "data"), embedder)
    library, chat = services.library, services.chat
    library.create("notes")
    library.get("notes").ingest([_notice_root(tmp_path / "notice")])
    with pytest.raises(BadQuestion, match="notes"):  # Chroma's collection names fold case: refused, naming the other
        library.create("Notes")
    assert "Notes" not in library.names()
    hits = chat.retrieve(NOTICE_QUESTION, mode="dense", knowledge_bases=["notes"]).hits
    assert hits and hits[0].chunk.title == NOTICE_TITLE
    fresh = build_services(_settings(tmp_path / "data"), embedder)  # and for a process started afterwards
    assert fresh.library.get("notes").index.store.count() == len(fresh.library.get("notes").index.catalog.chunks)
