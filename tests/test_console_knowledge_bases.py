"""The console's knowledge-base handlers over a real service of their own (a fresh data dir, not the shared demo
index: these tests create, fill and delete knowledge bases). The default scope is the default knowledge base only
(XIAOYU_DEFAULT_KNOWLEDGE_BASES=community), so a new knowledge base is searched only when a scope names it."""

from __future__ import annotations

import pytest

from assistant.index.kb import DEFAULT_KB
from assistant.services import build_services
from tests.conftest import make_settings
from ui.console import handlers as h

SOLAR = (
    "# 青禾小区屋顶光伏板安装管理规定\n\n"
    "第一条 为规范本小区住宅屋顶光伏板的安装，保障房屋结构和消防安全，制定本规定。\n\n"
    "第二条 业主在屋顶安装光伏板，应当事先向物业服务中心登记，并提交房屋结构安全评估报告。\n\n"
    "第三条 光伏板及其支架不得遮挡消防通道和排烟设施，安装高度不得超过女儿墙一点五米。\n"
)
SOLAR_SOURCE = "物业/光伏板安装规定.md"
SOLAR_QUESTION = "在屋顶安装光伏板要先向谁登记？"
GARBAGE = (
    "# 青禾小区生活垃圾分类投放办法\n\n"
    "第一条 本小区生活垃圾分为厨余垃圾、可回收物、有害垃圾和其他垃圾四类。\n\n"
    "第二条 厨余垃圾应当在每日早七点至九点、晚六点至八点投放到小区东门的定时投放点。\n"
)


@pytest.fixture(scope="module")
def services(embedder, tmp_path_factory):
    """One service for the module, its default knowledge base holding one small document (not the demo corpus)."""
    data_dir = tmp_path_factory.mktemp("console-kbs") / "data"
    built = build_services(make_settings(data_dir, default_knowledge_bases=[DEFAULT_KB]), embedder)
    garbage = _write(tmp_path_factory.mktemp("garbage") / "垃圾分类投放办法.md", GARBAGE)
    assert h.upload_document(built, str(garbage), "", "物业", "青禾小区业主委员会", "2024-03").startswith("✅")
    return built


@pytest.fixture
def solar(tmp_path):
    return _write(tmp_path / "光伏板安装规定.md", SOLAR)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _names(services) -> list[str]:
    return [r[0] for r in h.kb_rows(services)]


def test_a_new_knowledge_base_is_listed_with_its_title_and_outside_the_default_scope(services):
    status = h.create_kb(services, " estate ", "不动产登记")  # pasted with spaces: still the name meant
    assert status.startswith("✅ 已创建知识库 estate") and "不在默认检索范围内" in status
    assert 'data-knowledge-bases="estate"' in status  # what staff must add to a page to reach it

    rows = {r[0]: r for r in h.kb_rows(services)}
    assert rows["estate"][:4] == ["estate", "不动产登记", 0, 0]
    assert rows["estate"][5] == "否" and rows[DEFAULT_KB][5] == "是"
    assert rows[DEFAULT_KB][2] == 1  # the module's one default document
    assert rows["estate"][6][:2] == "20"  # created, local time
    assert _names(services)[0] == DEFAULT_KB
    assert ("estate（不动产登记）", "estate") in h.kb_choices(services)

    again = h.create_kb(services, "estate", "不动产登记与交易")
    assert again.startswith("✅") and "已存在" in again and "不动产登记与交易" in again
    assert _names(services).count("estate") == 1
    assert h.kb_rows(services)[_names(services).index("estate")][1] == "不动产登记与交易"


@pytest.mark.parametrize("name", ["法律法规", "laws 2024", "../etc", "x" * 33])
def test_a_bad_knowledge_base_name_shows_the_chinese_reason_and_creates_nothing(services, name):
    before = _names(services)
    status = h.create_kb(services, name, "标题")
    assert status.startswith("❌") and "知识库名称只能用字母、数字、- 和 _" in status
    assert _names(services) == before


def test_creating_a_knowledge_base_without_a_name_asks_for_one(services):
    assert h.create_kb(services, "  ", "标题").startswith("❌ 请填写知识库名称")


def test_a_document_uploaded_into_a_knowledge_base_is_in_its_table_only_and_hit_testing_that_scope_cites_it(
        services, solar):
    assert h.create_kb(services, "solar", "光伏").startswith("✅")
    status = h.upload_document(services, str(solar), "", "物业", "青禾小区业主大会", "2024-06", "solar")
    assert status.startswith("✅ 已导入") and SOLAR_SOURCE in status and "到知识库 solar" in status
    assert "在“知识库范围”里选上 solar" in status  # outside the default scope: hit testing must be told

    row, = h.document_rows(services, "solar")
    assert row[:6] == [SOLAR_SOURCE, "青禾小区屋顶光伏板安装管理规定", "物业", "青禾小区业主大会", "2024-06",
                       len(services.library.get("solar").chunks_of(SOLAR_SOURCE))]
    assert SOLAR_SOURCE not in [r[0] for r in h.document_rows(services)]  # the default knowledge base's table
    assert "知识库 solar 共 1 篇文档" in h.kb_summary(services, "solar")
    assert "青禾小区屋顶光伏板安装管理规定" in h.chunks_html(services, SOLAR_SOURCE, "solar")
    assert "没有这个文档" in h.chunks_html(services, SOLAR_SOURCE)

    verdict, rows, cards = h.hit_test(services, SOLAR_QUESTION, "hybrid", 5, ["solar"])
    assert "会<b>作答</b>" in verdict and "《青禾小区屋顶光伏板安装管理规定》第二条" in verdict
    assert "知识库范围 solar" in verdict
    assert (rows[0][6], rows[0][8]) == (SOLAR_SOURCE, "solar") and rows[0][7].endswith("第二条")
    assert {r[8] for r in rows} == {"solar"}  # nothing from outside the scope
    assert f"solar/{SOLAR_SOURCE}" in cards and "<mark>光伏</mark>" in cards

    # Nothing chosen is the default scope, what a resident's question searches: the new document is not in it.
    default_verdict, default_rows, _ = h.hit_test(services, SOLAR_QUESTION, "hybrid", 5)
    assert "知识库范围 community（默认）" in default_verdict
    assert SOLAR_SOURCE not in [r[6] for r in default_rows] and {r[8] for r in default_rows} <= {DEFAULT_KB}


def test_deleting_a_document_acts_on_the_chosen_knowledge_base_only(services, solar):
    assert h.create_kb(services, "twin", "").startswith("✅")
    for kb in ("twin", DEFAULT_KB):  # the same file, so the same source name, in two knowledge bases
        assert h.upload_document(services, str(solar), "", "物业", "", "", kb).startswith("✅")
    assert h.reingest(services, SOLAR_SOURCE, "twin").startswith("✅")

    assert h.delete_document(services, SOLAR_SOURCE, True, "twin").startswith(f"✅ 已删除 {SOLAR_SOURCE}")
    assert h.document_rows(services, "twin") == []
    assert SOLAR_SOURCE in [r[0] for r in h.document_rows(services)]
    assert h.delete_document(services, SOLAR_SOURCE, True, "twin").startswith("❌ 知识库中没有这个文档")
    assert h.delete_document(services, SOLAR_SOURCE, True).startswith("✅")  # tidy: the default one as it was


def test_deleting_a_knowledge_base_needs_confirmation_then_removes_it_with_its_documents(services, solar):
    assert h.create_kb(services, "gone", "临时").startswith("✅")
    assert h.upload_document(services, str(solar), "", "物业", "", "", "gone").startswith("✅")
    folder = services.settings.data_dir / "kb" / "gone"
    assert folder.is_dir()

    assert h.delete_kb(services, "", True).startswith("❌ 请先在表格中点选")
    assert "确认删除知识库" in h.delete_kb(services, "gone", False)
    assert "gone" in _names(services)

    status = h.delete_kb(services, "gone", True)
    assert status.startswith("✅ 已删除知识库 gone") and "1 篇文档" in status
    assert "gone" not in _names(services) and "gone" not in [n for _, n in h.kb_choices(services)]
    assert not folder.exists()
    # A console still showing it (another staff member deleted it) gets reasons, not tracebacks.
    assert h.document_rows(services, "gone") == []
    assert h.kb_summary(services, "gone").startswith("❌ 没有这个知识库")
    assert h.upload_document(services, str(solar), "", "物业", "", "", "gone").startswith("❌")
    verdict, rows, _ = h.hit_test(services, SOLAR_QUESTION, "hybrid", 5, ["gone"])
    assert verdict.startswith("❌ 没有这个知识库：gone") and rows == []
    assert h.delete_kb(services, "gone", True).startswith("❌ 没有这个知识库")


def test_the_default_knowledge_base_cannot_be_deleted(services):
    status = h.delete_kb(services, DEFAULT_KB, True)
    assert status.startswith("❌") and "不能删除" in status
    assert DEFAULT_KB in _names(services) and h.document_rows(services)  # its documents kept


def _component(console, label: str):
    """A component of the built console by its label (a button by its text); tabs are not components."""
    import gradio as gr

    return next(b for b in console.blocks.values() if isinstance(b, gr.components.Component)
                and (b.label == label or isinstance(b, gr.Button) and b.value == label))


def _wired(console, component, event: str = "click") -> list:
    """What Gradio runs on `component`'s event, in order: the event's function, then each .then()'s."""
    fns = list(console.fns.values())
    chain = [next(f for f in fns if (component._id, event) in [tuple(t) for t in f.targets])]
    while (after := next((f for f in fns if f.trigger_after == chain[-1]._id), None)) is not None:
        chain.append(after)
    return chain


def test_the_console_wires_create_upload_hit_test_and_delete_to_the_chosen_knowledge_base(services, solar):
    from ui.console.app import build_console

    console = build_console(lambda: services, services.settings)
    picker, scope = _component(console, "知识库"), _component(console, "知识库范围（不选 = 默认范围，与居民提问相同）")
    assert picker.value == DEFAULT_KB and scope.multiselect

    create, refresh = _wired(console, _component(console, "新建"))
    assert create.fn("wired", "接线").startswith("✅ 已创建知识库 wired")
    rows, picked, scoped = refresh.fn(DEFAULT_KB, [])
    assert "wired" in [r[0] for r in rows] and ("wired（接线）", "wired") in picked.choices
    assert ("wired（接线）", "wired") in scoped.choices and picked.value == DEFAULT_KB

    # The picker feeds the upload: the document lands in the knowledge base chosen above the table.
    upload, docs_after = _wired(console, _component(console, "上传并导入"))
    assert picker in upload.inputs
    assert "到知识库 wired" in upload.fn(str(solar), "", "物业", "", "", "wired")
    info, table = docs_after.fn("wired")
    assert "知识库 wired 共 1 篇文档" in info and [r[0] for r in table] == [SOLAR_SOURCE]
    _, default_table, *cleared = _wired(console, picker, "change")[0].fn(DEFAULT_KB)
    assert SOLAR_SOURCE not in [r[0] for r in default_table] and cleared == ["", "", False]

    hit, = _wired(console, _component(console, "测试"))
    assert scope in hit.inputs
    _, hits, _ = hit.fn(SOLAR_QUESTION, "hybrid", 5, ["wired"])
    assert (hits[0][6], hits[0][8]) == (SOLAR_SOURCE, "wired")

    delete, after_delete = _wired(console, _component(console, "删除知识库"))
    assert delete.fn("wired", True).startswith("✅ 已删除知识库 wired")
    rows, picked, scoped, selected, confirmed = after_delete.fn("wired", ["wired"])
    assert "wired" not in [r[0] for r in rows]
    assert picked.value == DEFAULT_KB and scoped.value == []  # a deleted pick falls back; the scope drops it
    assert (selected, confirmed) == ("", False)
