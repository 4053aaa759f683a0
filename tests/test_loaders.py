"""Loaders on fixtures the tests generate: GBK/GB18030, UTF-8 with BOM, docx, pdf, html, and broken files."""

import io

import docx
import pytest
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from ingest.loaders import LoadError, decode, extract_text, load_file

ARTICLES = "第一条 为了规范人民调解委员会的工作，制定本条例。\n\n第二条 人民调解委员会调解民间纠纷。\n"


def make_pdf(lines: list[str]) -> bytes:
    # STSong-Light is one of reportlab's built-in CID fonts: Chinese text with no font file to ship.
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.setFont("STSong-Light", 12)
    for i, line in enumerate(lines):
        c.drawString(50, 800 - 18 * i, line)
    c.save()
    return buf.getvalue()


def make_docx(paragraphs: list[tuple[str, str | None]]) -> bytes:
    document = docx.Document()
    for text, style in paragraphs:
        if style:
            document.add_heading(text, level=int(style))
        else:
            document.add_paragraph(text)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8", "utf-8-sig"])
def test_text_in_each_common_encoding_decodes_to_the_same_chinese(encoding):
    assert extract_text(ARTICLES.encode(encoding), ".txt") == ARTICLES


def test_gb18030_only_characters_survive():
    text = "业主𠮷先生（生僻字）申请调解。"
    assert decode(text.encode("gb18030")) == text


def test_binary_garbage_is_rejected_with_an_encoding_reason():
    with pytest.raises(LoadError, match="编码|二进制"):
        extract_text(bytes(range(256)) * 8, ".txt")


def test_docx_paragraphs_and_headings_are_extracted():
    raw = make_docx([("人民调解委员会组织条例", "1"), ("第一章 总则", "2"), ("第一条 为了规范人民调解委员会的工作，制定本条例。", None)])
    text = extract_text(raw, ".docx")
    assert text == "# 人民调解委员会组织条例\n\n## 第一章 总则\n\n第一条 为了规范人民调解委员会的工作，制定本条例。\n"


def test_pdf_text_is_extracted_and_wrapped_lines_are_rejoined():
    raw = make_pdf(["第一条 为了规范人民调解委员会的工作，制定本条例。", "第二条 人民调解委员会是居民委员会下设的", "调解民间纠纷的群众性组织。"])
    assert extract_text(raw, ".pdf") == (
        "第一条 为了规范人民调解委员会的工作，制定本条例。\n第二条 人民调解委员会是居民委员会下设的调解民间纠纷的群众性组织。\n"
    )


def test_html_keeps_headings_and_paragraphs_and_drops_scripts_navigation_and_share_lines():
    html = """<html><head><style>p{}</style><script>alert(1)</script></head><body>
    <nav>首页 | 新闻</nav><h1>昆山打造红管先锋品牌</h1><p>昆山坚持党建引领。</p><p>分享</p>
    <p>微信“扫一扫”添加“学习大国”</p><p>(责编:李枫、秦华)</p><footer>版权所有</footer></body></html>"""
    text = extract_text(html.encode("gbk"), ".html")
    assert "# 昆山打造红管先锋品牌" in text and "昆山坚持党建引领。" in text
    for cruft in ("alert", "首页", "分享", "扫一扫", "责编", "版权所有"):
        assert cruft not in text


@pytest.mark.parametrize(
    "suffix,raw,reason",
    [
        (".docx", b"PK\x03\x04 this is not really a zip", "Word"),
        (".pdf", b"%PDF-1.4 broken", "PDF"),
        (".pdf", make_pdf([]), "没有可提取的文字"),
        (".txt", b"   \n", "空"),
        (".xlsx", b"data", "不支持"),
    ],
)
def test_broken_files_raise_a_reason_staff_can_act_on(suffix, raw, reason):
    with pytest.raises(LoadError, match=reason):
        extract_text(raw, suffix)


def test_manifest_metadata_wins_and_category_falls_back_to_the_folder(tmp_path):
    (tmp_path / "物业").mkdir()
    path = tmp_path / "物业" / "某市物业管理办法.md"
    path.write_text("# 某市物业管理办法\n\n第一条 为了规范物业管理。\n\n第二条 适用范围。\n\n第三条 定义。\n", encoding="utf-8")
    doc = load_file(path, tmp_path, {})
    assert (doc.source, doc.title, doc.category, doc.kind) == ("物业/某市物业管理办法.md", "某市物业管理办法", "物业", "法规")
    doc = load_file(path, tmp_path, {"物业/某市物业管理办法.md": {"title": "办法", "issuer": "某市人民政府", "date": "2024-01-01"}})
    assert (doc.title, doc.issuer, doc.date) == ("办法", "某市人民政府", "2024-01-01")
