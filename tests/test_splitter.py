"""The splitter's exact output on real articles from the demo corpus, and its invariants on every file."""

from pathlib import Path

import pytest

from assistant.config import BUNDLED_KB
from assistant.types import SourceDoc
from ingest.loaders import discover, load_file, load_manifest
from ingest.splitter import ChineseSplitter

ROOT = BUNDLED_KB  # the demo corpus, copied from ../shared/corpus with its manifest
SPLITTER = ChineseSplitter(360)


def chunks_of(rel: str):
    doc = load_file(ROOT / rel, ROOT, load_manifest(ROOT))
    return doc, SPLITTER.split(doc)


def test_article_is_one_chunk_with_its_chapter_path_and_context_header():
    doc, chunks = chunks_of("物业/物业管理条例.md")
    [third] = [c for c in chunks if c.article == "第三条"]
    assert third.section == "第一章 总则 > 第三条"
    assert third.text == "物业管理条例 第一章 总则 第三条\n第三条 国家提倡业主通过公开、公平、公正的市场竞争机制选择物业服务企业。"
    assert doc.text[third.start : third.end] == third.body


def test_full_width_space_heading_of_party_constitution_keeps_all_paragraphs_of_the_article():
    doc, chunks = chunks_of("党建/中国共产党章程.md")
    [seventh] = [c for c in chunks if c.article == "第七条"]
    assert seventh.section == "第一章 党员 > 第七条"
    assert seventh.body.startswith("第七条\u3000预备党员的预备期为一年。")
    assert seventh.body.endswith("党员的党龄，从预备期满转为正式党员之日算起。")
    assert seventh.body.count("\n\n") == 3  # four 款, none lost


def test_chapter_heading_glued_to_first_article_is_split_apart():
    _, chunks = chunks_of("物业/江苏省物业管理条例.md")
    [first] = [c for c in chunks if c.article == "第一条"]
    assert first.section == "第一章 总则 > 第一条"
    assert first.body.startswith("第一条 为了规范物业管理活动")


def test_heading_that_swallowed_unnumbered_articles_is_cut_at_its_title_and_split_on_sentence_ends():
    _, chunks = chunks_of("物业/江苏省物业管理条例.md")
    run_on = [c for c in chunks if c.section == "第六章 物业的使用和维护 > 第五十七条之后、第六十九条之前"]
    assert len(run_on) == 7
    assert run_on[0].text.startswith("江苏省物业管理条例 第六章 物业的使用和维护\n业主、物业使用人对物业的使用与维护，")
    assert run_on[1].body.startswith("建设单位未出售或者未附赠的车位、车库，")
    assert run_on[5].body == (
        "物业管理区域内禁止下列行为：（一）擅自改变物业的规划用途；（二）损坏或者擅自变动房屋承重结构、主体结构；"
        "（三）违法搭建建筑物、构筑物；（四）损坏或者擅自占用、改建物业共用部分，损坏或者擅自占用、移装共用设施设备；"
        "（五）存放易燃、易爆、剧毒、放射性物质或者超负重等违反安全规定的物品；（六）制造超过规定标准的噪音、振动或者影响邻居采光、通风；"
        "（七）任意弃置垃圾、排放污水、抛掷杂物和露天焚烧；（八）侵占绿地、毁坏绿化和绿化设施；（九）擅自摆摊设点、占道经营，无序停放车辆；"
        "（十）破坏或者擅自改变房屋外观；（十一）擅自在建筑物、构筑物上悬挂、张贴、涂写、刻画；（十二）法律、法规和管理规约禁止的其他行为。"
    )
    # A cross-reference inside the run-on text ("本条例第六十六条 第一款") is not mistaken for an article.
    assert not any(c.article == "第六十六条" and "人民防空" in c.body for c in chunks)


def test_long_article_is_cut_on_paragraphs_and_items_carry_their_lead_in():
    doc = SourceDoc(
        source="t.md", title="测试条例", kind="法规",
        text="## 第一章 总则\n\n第一条 业主享有下列权利：\n\n" + "\n\n".join(f"（{n}）" + "权利内容说明" * 12 + "；" for n in "一二三四五六七八") + "\n",
    )
    chunks = ChineseSplitter(200).split(doc)
    assert len(chunks) > 1
    assert all(c.section == "第一章 总则 > 第一条" for c in chunks)
    assert chunks[0].body.startswith("第一条 业主享有下列权利：")
    for c in chunks[1:]:
        assert c.text.startswith("测试条例 第一章 总则 第一条 第一条 业主享有下列权利：\n（")
        assert len(c.text) <= 200


def test_news_report_is_split_on_its_subheadings_and_web_cruft_is_gone():
    doc, chunks = chunks_of("党建/江苏昆山探索党建引领集宿区治理新路径.txt")
    sections = list(dict.fromkeys(c.section for c in chunks))
    assert "五位一体 创新区域管理模式" in sections
    assert "多方共建共享 增强网格治理效能" in sections
    assert "数智服务集成 打造安心乐居家园" in sections
    assert "扫一扫" not in doc.text and "责编" not in doc.text and "分享\n" not in doc.text


@pytest.mark.parametrize("path", discover(ROOT), ids=lambda p: p.name)
def test_no_chunk_ends_mid_sentence_and_offsets_point_at_the_body(path: Path):
    doc = load_file(path, ROOT, load_manifest(ROOT))
    chunks = SPLITTER.split(doc)
    assert chunks
    for c in chunks:
        assert doc.text[c.start : c.end] == c.body
        end = c.body.rstrip()[-1]
        paragraph_end = doc.text[c.end : c.end + 1] in ("\n", "")
        # Either a sentence end, or the end of a paragraph (headings, captions, list items end without 。).
        assert end in "。！？；：”’）)" or paragraph_end, (c.section, c.body[-30:])
        assert len(c.text) <= 2 * SPLITTER.max_chars


def test_ids_are_content_hashes():
    _, a = chunks_of("调解/人民调解委员会组织条例.md")
    _, b = chunks_of("调解/人民调解委员会组织条例.md")
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)


def test_too_small_max_chars_is_rejected_with_the_value_named():
    with pytest.raises(ValueError, match=r"max_chars \(40\)"):
        ChineseSplitter(40)
