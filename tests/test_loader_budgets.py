"""Hostile and oversized files: zip bombs, lying zip directories, PDFs with absurd page trees, garbage bytes.
Every one must end as a LoadError that names the limit, without the loader paying the price the file asks for."""

import io
import struct
import tracemalloc
import zipfile
import zlib

import docx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from assistant.errors import LoadError as AppLoadError
from assistant.errors import UploadRejected
from ingest.loaders import DEFAULT_BUDGET, SUPPORTED, LoadBudget, LoadError, extract_text

MB = 1024 * 1024
CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    b'<Default Extension="xml" ContentType="application/xml"/>'
    b'<Override PartName="/word/document.xml" '
    b'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
ROOT_RELS = (
    b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    b'Target="word/document.xml"/></Relationships>'
)


def docx_bomb(inflated_bytes: int) -> bytes:
    """A docx-shaped zip whose word/document.xml inflates to `inflated_bytes` of spaces; written in 1 MB pieces
    so the test never holds the inflated form either."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        zf.writestr("_rels/.rels", ROOT_RELS)
        with zf.open("word/document.xml", "w") as entry:
            piece = b" " * MB
            for _ in range(inflated_bytes // MB):
                entry.write(piece)
    return buf.getvalue()


def understate_size(raw: bytes, name: str, claimed: int) -> bytes:
    """Rewrite the uncompressed size of `name` in its local header and central-directory record: a zip that lies."""
    data = bytearray(raw)
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo(name)
    struct.pack_into("<I", data, info.header_offset + 22, claimed)
    record = raw.find(b"PK\x01\x02")
    while record >= 0:
        name_len = struct.unpack_from("<H", raw, record + 28)[0]
        if raw[record + 46 : record + 46 + name_len] == name.encode():
            struct.pack_into("<I", data, record + 24, claimed)
            break
        record = raw.find(b"PK\x01\x02", record + 4)
    return bytes(data)


def peak_traced_mb(fn) -> float:
    # tracemalloc sees every bytes object zlib hands back, so inflating the bomb would show up here.
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / MB


def hand_made_pdf(*objects: bytes) -> bytes:
    """A PDF with a correct xref table around the given objects (object n is objects[n-1]); /Root is object 1."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"


def reportlab_pdf(pages: list[str]) -> bytes:
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for line in pages:
        c.setFont("STSong-Light", 12)
        c.drawString(50, 800, line)
        c.showPage()
    c.save()
    return buf.getvalue()


def real_docx(paragraphs: list[str], image: bytes | None = None) -> bytes:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if image is not None:
        document.add_picture(io.BytesIO(image))
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)  # 2x2 RGB: python-docx reads the size from IHDR
    pixels = zlib.compress(b"\x00" + b"\xff\x00\x00" * 2 + b"\x00" + b"\x00\xff\x00" * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# ---- the error type ------------------------------------------------------------------------------------------


def test_load_error_is_the_projects_upload_rejection_type():
    assert LoadError is AppLoadError
    assert issubclass(LoadError, UploadRejected)


def test_default_budget_matches_the_documented_limits():
    assert DEFAULT_BUDGET == LoadBudget(
        max_unzipped_bytes=100 * MB, max_zip_entries=2_000, max_compression_ratio=100, ratio_min_bytes=1 * MB,
        max_pdf_pages=2_000, pdf_seconds=60, max_chars=2_000_000,
    )
    with pytest.raises(AttributeError):
        DEFAULT_BUDGET.max_chars = 1  # frozen: a shared default can't be loosened by accident


# ---- docx / zip ------------------------------------------------------------------------------------------------


def _refusal_and_peak_mb(data: bytes, suffix: str) -> tuple[LoadError, float]:
    """The LoadError that loading `data` must raise, and the peak traced memory of the attempt."""
    caught = []

    def load():
        with pytest.raises(LoadError) as info:
            extract_text(data, suffix)
        caught.append(info.value)

    peak = peak_traced_mb(load)
    return caught[0], peak


def test_docx_inflating_to_200_mb_is_refused_from_its_directory_without_being_inflated():
    bomb = docx_bomb(200 * MB)
    assert len(bomb) < 1 * MB  # what an upload size limit lets through
    error, peak = _refusal_and_peak_mb(bomb, ".docx")
    assert peak < 50
    message = str(error)
    assert "100 MB" in message and "200 MB" in message and "压缩炸弹" in message
    assert error.status == 413


def test_docx_entry_with_an_absurd_compression_ratio_is_refused_even_under_the_size_limit():
    with pytest.raises(LoadError, match=r"压缩比异常（\d+ 倍，上限 100 倍）"):
        extract_text(docx_bomb(5 * MB), ".docx")


def test_docx_whose_directory_understates_an_entry_is_refused_without_inflating_the_real_size():
    # The directory says 1 KB; the deflate stream really holds 200 MB. ZipFile.read() would inflate all of it.
    liar = understate_size(docx_bomb(200 * MB), "word/document.xml", 1024)
    assert zipfile.ZipFile(io.BytesIO(liar)).getinfo("word/document.xml").file_size == 1024
    error, peak = _refusal_and_peak_mb(liar, ".docx")
    assert peak < 50
    assert "Word" in str(error)


def test_zip_with_too_many_entries_is_refused_with_the_count_and_the_limit():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        for i in range(60):
            zf.writestr(f"word/media/image{i}.png", b"x")
    with pytest.raises(LoadError, match=r"条目过多（61 个，上限 50 个）"):
        extract_text(buf.getvalue(), ".docx", budget=LoadBudget(max_zip_entries=50))


def test_zip_with_too_many_entries_is_refused_at_the_default_limit_too():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # empty entries: only the count can trip
        for i in range(2_001):
            zf.writestr(f"e{i}", b"")
    with pytest.raises(LoadError, match=r"2001 个，上限 2000 个"):
        extract_text(buf.getvalue(), ".docx")


def test_docx_with_a_picture_still_loads_its_text():
    # Pictures are replaced by empty placeholders before python-docx sees the package; that must stay invisible.
    raw = real_docx(["第一条 业主大会由全体业主组成。"], image=tiny_png())
    assert any(n.startswith("word/media/") for n in zipfile.ZipFile(io.BytesIO(raw)).namelist())
    assert extract_text(raw, ".docx") == "第一条 业主大会由全体业主组成。\n"


def test_docx_over_the_character_budget_names_both_counts():
    raw = real_docx(["业主委员会" * 40] * 5)
    with pytest.raises(LoadError, match=r"上限 500 字"):
        extract_text(raw, ".docx", budget=LoadBudget(max_chars=500))


@pytest.mark.parametrize(
    "raw",
    [
        b"PK\x03\x04" + bytes(range(256)) * 4,
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600,  # an old .doc / encrypted docx container
        real_docx(["第一条 测试。"])[:700],  # truncated: no central directory
    ],
    ids=["zip-magic-then-garbage", "ole-container", "truncated-docx"],
)
def test_garbage_docx_is_a_load_error_mentioning_word(raw):
    with pytest.raises(LoadError, match="Word|docx"):
        extract_text(raw, ".docx")


def test_zip_that_is_not_a_word_document_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "not a docx")
    with pytest.raises(LoadError, match="Word"):
        extract_text(buf.getvalue(), ".docx")


# ---- pdf ---------------------------------------------------------------------------------------------------------


def test_pdf_claiming_a_million_pages_is_refused_before_the_tree_is_walked():
    raw = hand_made_pdf(b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1000000 >>", PAGE)
    with pytest.raises(LoadError, match=r"声明 1000000 页，上限 2000 页") as info:
        extract_text(raw, ".pdf")
    assert info.value.status == 413


def test_pdf_whose_real_page_tree_exceeds_the_page_budget_is_refused_even_if_count_understates_it():
    kids = b" ".join(b"%d 0 R" % n for n in range(3, 8))
    raw = hand_made_pdf(
        b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [" + kids + b"] /Count 1 >>", *[PAGE] * 5
    )
    with pytest.raises(LoadError, match=r"（5 页，上限 3 页）"):
        extract_text(raw, ".pdf", budget=LoadBudget(max_pdf_pages=3))


@pytest.mark.parametrize(
    "pages_object",
    [
        b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",  # the tree contains itself
        b"<< /Type /Pages /Kids [3 0 R] /Count /Many >>",
        b"<< /Type /Pages /Kids 7 /Count 1 >>",
        b"<< /Type /Pages /Kids [99 0 R] /Count -5 >>",
        b"[1 2 3]",
    ],
    ids=["cycle", "count-is-a-name", "kids-not-an-array", "negative-count", "pages-not-a-dictionary"],
)
def test_malformed_page_tree_is_a_load_error(pages_object):
    raw = hand_made_pdf(b"<< /Type /Catalog /Pages 2 0 R >>", pages_object, PAGE)
    with pytest.raises(LoadError, match="PDF"):
        extract_text(raw, ".pdf")


def test_pdf_extraction_stops_at_the_time_budget_and_says_so():
    raw = reportlab_pdf(["第一条 为了规范物业管理活动。"] * 3)
    assert "第一条" in extract_text(raw, ".pdf")  # the same file loads under the default budget
    with pytest.raises(LoadError, match=r"超时.*0/3 页.*上限 0 秒"):
        extract_text(raw, ".pdf", budget=LoadBudget(pdf_seconds=0))


def test_pdf_over_the_character_budget_is_refused():
    raw = reportlab_pdf(["第一条 为了规范物业管理活动，维护业主的合法权益。"] * 4)
    with pytest.raises(LoadError, match=r"上限 30 字"):
        extract_text(raw, ".pdf", budget=LoadBudget(max_chars=30))


@pytest.mark.parametrize(
    "raw",
    [
        reportlab_pdf(["第一条 测试。"])[:300],
        b"%PDF-1.7\n" + bytes(range(256)) * 8,
        hand_made_pdf(b"<< /Type /Catalog /Pages 5 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", PAGE),
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
    ],
    ids=["truncated", "header-then-garbage", "dangling-pages-reference", "no-xref"],
)
def test_truncated_or_garbage_pdf_is_a_load_error_mentioning_pdf(raw):
    with pytest.raises(LoadError, match="PDF"):
        extract_text(raw, ".pdf")


# ---- text --------------------------------------------------------------------------------------------------------


def test_text_over_the_character_budget_names_the_limit():
    with pytest.raises(LoadError, match=r"上限 100 字"):
        extract_text(("业主" * 80).encode(), ".txt", budget=LoadBudget(max_chars=100))


@pytest.mark.parametrize("raw", [b"\xef\xbb\xbf\xff\xfe\xfd", b"\xff\xfe\x00"], ids=["bad-utf8-after-bom", "odd-utf16"])
def test_broken_unicode_after_a_byte_order_mark_is_a_load_error(raw):
    with pytest.raises(LoadError, match="UTF"):
        extract_text(raw, ".txt")


# ---- anything at all ---------------------------------------------------------------------------------------------

SEEDS = [
    real_docx(["第一条 为了规范物业管理活动。", "第二条 本条例适用于本省。"]),
    reportlab_pdf(["第一条 为了规范物业管理活动。"]),
    "<html><body><h1>标题</h1><p>正文。</p></body></html>".encode("gbk"),
    "第一条 业主。\n".encode("utf-8-sig"),
]


@st.composite
def hostile_bytes(draw) -> bytes:
    """Pure noise, or a valid file truncated or with bytes overwritten: the latter get past the magic numbers and
    into the parsers, where the interesting failures are."""
    how = draw(st.sampled_from(["noise", "truncated", "overwritten"]))
    if how == "noise":
        return draw(st.binary(max_size=2048))
    seed = draw(st.sampled_from(SEEDS))
    if how == "truncated":
        return seed[: draw(st.integers(0, len(seed)))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 24))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=hostile_bytes(), suffix=st.sampled_from(SUPPORTED))
def test_any_bytes_either_load_or_raise_load_error_and_nothing_else(raw, suffix):
    try:
        text = extract_text(raw, suffix)
    except LoadError as exc:
        assert str(exc)  # a reason to show, never an empty message
    else:
        assert isinstance(text, str) and text.strip()
