"""File → SourceDoc: decode (UTF-8, BOM, GB18030/GBK), extract text per format, strip web cruft, attach manifest metadata."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import LoadError  # re-exported: the pipeline and uploads import it from here
from assistant.types import SourceDoc

SUPPORTED = (".txt", ".md", ".html", ".htm", ".docx", ".pdf")
CATEGORIES = ("党建", "物业", "调解", "法律法规")  # 法律法规: the national library's class (LIBRARY.md)
MB = 1024 * 1024


@dataclass(frozen=True)
class LoadBudget:
    """What reading one file may cost. The defaults leave room for a thick regulation compendium; tests pass
    small budgets to reach each limit cheaply."""

    max_unzipped_bytes: int = 100 * MB  # all entries of a docx, as declared in its central directory
    max_zip_entries: int = 2_000
    max_compression_ratio: float = 100.0  # per entry; real Word XML deflates 5-20x
    ratio_min_bytes: int = 1 * MB  # tiny entries compress absurdly well and can't hurt: no ratio check
    max_pdf_pages: int = 2_000
    pdf_seconds: float = 60.0
    max_chars: int = 2_000_000  # of extracted text per document


DEFAULT_BUDGET = LoadBudget()
_CHUNK = 1 * MB  # streaming read size: memory per inflated entry stays at this, whatever the entry claims
_CD_BYTES_PER_ENTRY = 1024  # a generous central-directory record (46 bytes + name + extra field)
_EOCD = b"PK\x05\x06"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .doc and password-protected .docx are OLE files


def _over(message: str) -> LoadError:
    # Budget refusals answer 413 like the other LimitExceeded cases; broken files keep LoadError's 422.
    return LoadError(message, status=413)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


# Lines that are page furniture, not content. Kept deliberately literal: a regex that is too clever eats text.
_CRUFT = [
    re.compile(p)
    for p in (
        r"^分享$",
        r"^打印$|^关闭窗口$|^返回顶部$|^【纠错】$|^相关专题$|^相关新闻$",
        r"^·\s*党的建设数据库$",
        r"微信\s*[“\"]?扫一扫",
        r"^[（(]\s*责编[:：].*[)）]$",
        r"^[（(]?\s*责任编辑[:：].*$",
        r"^中国共产党新闻网\s*>>",
        r"^\d{4}-\d{2}-\d{2} ——.* \d+ \d+ \S+日报",  # e-paper footer: "2023-06-30 ——标题 2 2 滁州日报 content…"
    )
]
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ARTICLE_LINE = re.compile(r"^\s*第[零〇一二三四五六七八九十百千]+条")


def decode(raw: bytes, name: str = "") -> str:
    """Bytes → str. Government files are often GB18030/GBK, sometimes UTF-8 with a BOM."""
    if raw.startswith(codecs.BOM_UTF8):
        try:
            return raw[len(codecs.BOM_UTF8) :].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LoadError(f"{name or '文件'}以 UTF-8 标记开头，但内容不是有效的 UTF-8 文本") from exc
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LoadError(f"{name or '文件'}以 UTF-16 标记开头，但内容不是有效的 UTF-16 文本") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        # GB18030 is a superset of GBK and GB2312; strict decoding rejects binary garbage.
        return raw.decode("gb18030")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None or best.encoding is None:
        raise LoadError(f"无法识别文件编码（{name or '文件'}不是 UTF-8 或 GB18030/GBK 文本）")
    return str(best)


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "iframe", "form"]):
        tag.decompose()
    for level in range(1, 4):
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n")
    lines = []
    for block in soup.get_text("\n").splitlines():
        lines.append(block.strip())
    return "\n".join(lines)


def _too_many_chars(count: int, budget: LoadBudget) -> LoadError:
    return _over(f"文档文字过多（已超过 {count} 字，上限 {budget.max_chars} 字），请拆分成几个文件再导入")


def _check_zip_directory(raw: bytes, budget: LoadBudget) -> None:
    """Refuse on the end-of-central-directory record alone: ZipFile builds one ZipInfo per entry before anyone can
    count them, so a zip of a million empty entries would cost memory just to be opened."""
    at = raw.rfind(_EOCD, max(0, len(raw) - 65_557))  # the record sits within the last 22 + 65535 (comment) bytes
    if at < 0 or len(raw) - at < 22:
        return  # no record: ZipFile itself reports the file as not a zip
    entries, directory_bytes = struct.unpack_from("<HI", raw, at + 10)
    if entries > budget.max_zip_entries:
        raise _over(f"Word 文档内的条目过多（{entries} 个，上限 {budget.max_zip_entries} 个），已拒绝导入")
    limit = budget.max_zip_entries * _CD_BYTES_PER_ENTRY
    if directory_bytes > limit:
        raise _over(f"Word 文档的目录区过大（{directory_bytes} 字节，上限 {limit} 字节），已拒绝导入")


def _check_entries(infos: list[zipfile.ZipInfo], budget: LoadBudget) -> None:
    if len(infos) > budget.max_zip_entries:
        raise _over(f"Word 文档内的条目过多（{len(infos)} 个，上限 {budget.max_zip_entries} 个），已拒绝导入")
    total = sum(info.file_size for info in infos)
    if total > budget.max_unzipped_bytes:
        raise _over(
            f"文件解压后过大（{total / MB:.0f} MB，超过 {budget.max_unzipped_bytes / MB:g} MB 上限），"
            "可能是压缩炸弹，已拒绝导入"
        )
    names: set[str] = set()
    for info in infos:
        if info.filename in names:
            raise LoadError(f"Word 文档结构异常（条目 {info.filename} 重复出现），已拒绝导入")
        names.add(info.filename)
        if info.flag_bits & 0x1:
            raise LoadError("Word 文档已加密，请先取消密码保护再导入")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # Word only writes these two; bzip2/LZMA would also inflate a whole read in one call, unbounded.
            raise LoadError(f"Word 文档使用了不支持的压缩方式（条目 {info.filename}），请用 Word 重新另存为 .docx")
        if info.file_size >= budget.ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > budget.max_compression_ratio:
                raise _over(
                    f"Word 文档中的 {info.filename} 压缩比异常（{ratio:.0f} 倍，上限 {budget.max_compression_ratio:g} 倍），"
                    "可能是压缩炸弹，已拒绝导入"
                )


# Parts python-docx keeps as opaque blobs and text extraction never reads. Anything else is copied, so an XML part
# with an unusual name still parses.
_MEDIA_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".emf", ".wmf", ".wdp", ".bin", ".odttf",
                   ".ttf", ".xlsx", ".xlsm", ".docx", ".pptx", ".mp3", ".mp4", ".wav")


def _is_media_part(name: str) -> bool:
    return name.lower().endswith(_MEDIA_SUFFIXES)


def _rebuilt_docx(raw: bytes, budget: LoadBudget) -> bytes:
    """The docx re-packed from entries inflated under our own bounded reads, for python-docx to parse.

    The central directory can lie: an entry declared as 1 KB may inflate to gigabytes, and ZipFile.read() (which
    python-docx uses) inflates the whole stream before truncating it to the declared size. Reading in _CHUNK
    pieces caps memory, and zipfile stops every entry at its declared size (a CRC error if the data disagrees),
    so the checked totals hold. Pictures and embedded files carry no text: they become empty placeholders and are
    never inflated at all."""
    if raw.startswith(_OLE):
        raise LoadError("这是旧版 .doc 或加密的 Word 文档，请用 Word 另存为 .docx（并取消密码）后再导入")
    _check_zip_directory(raw, budget)
    try:
        source = zipfile.ZipFile(io.BytesIO(raw))
        infos = source.infolist()
    except Exception as exc:  # BadZipFile, and struct/OSError/ValueError on a mangled directory
        raise LoadError(f"不是有效的 Word 文档（.docx）：{_reason(exc)}") from exc
    _check_entries(infos, budget)
    out = io.BytesIO()
    try:
        with source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as target:
            for info in infos:
                if info.is_dir():
                    continue
                if _is_media_part(info.filename):
                    target.writestr(info.filename, b"")
                    continue
                with source.open(info) as src, target.open(info.filename, "w") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
    except Exception as exc:  # a CRC mismatch, truncated data, a bad local header
        raise LoadError(f"Word 文档已损坏：{_reason(exc)}") from exc
    return out.getvalue()


def _docx_text(raw: bytes, budget: LoadBudget) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    package = _rebuilt_docx(raw, budget)
    try:
        document = docx.Document(io.BytesIO(package))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise LoadError(f"不是有效的 Word 文档（.docx）：{_reason(exc)}") from exc
    except Exception as exc:  # lxml syntax errors and the like
        raise LoadError(f"Word 文档已损坏：{_reason(exc)}") from exc
    out = []
    count = 0
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        count += len(text)
        if count > budget.max_chars:
            raise _too_many_chars(count, budget)
        style = (para.style.name or "").lower() if para.style is not None else ""
        if style.startswith("heading") or style == "title":
            level = 1 if style == "title" else min(int(style[-1]) if style[-1].isdigit() else 2, 3)
            out.append(f"{'#' * level} {text}")
        else:
            out.append(text)
    return "\n\n".join(out)


class _OutOfTime(Exception):
    """Raised from inside pypdf's operator loop, so one slow page can't overrun the budget by much."""


def _claimed_pages(reader) -> int | None:
    """/Count of the page tree root, read before the tree is walked; None when absent."""
    from pypdf.generic import DictionaryObject

    root = reader.trailer["/Root"].get_object()
    pages = root.get("/Pages") if isinstance(root, DictionaryObject) else None
    pages = pages.get_object() if pages is not None else None
    if not isinstance(pages, DictionaryObject):
        raise LoadError("PDF 文件已损坏：找不到页面目录（/Pages）")
    count = pages.get("/Count")
    if count is None:
        return None
    count = count.get_object()
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise LoadError(f"PDF 文件已损坏：页数信息无效（{count!r}）")
    return int(count)


def _pdf_pages(raw: bytes, budget: LoadBudget) -> list[str]:
    from pypdf import PdfReader

    started = time.monotonic()
    deadline = started + budget.pdf_seconds
    reader = PdfReader(io.BytesIO(raw))
    claimed = _claimed_pages(reader)
    if claimed is not None and claimed > budget.max_pdf_pages:
        raise _over(f"PDF 页数过多（声明 {claimed} 页，上限 {budget.max_pdf_pages} 页），已拒绝导入")
    if reader.is_encrypted and not reader.decrypt(""):
        raise LoadError("PDF 文件设有打开密码，请先取消密码保护再导入")
    total = len(reader.pages)  # walks the real tree: /Count may have understated it
    if total > budget.max_pdf_pages:
        raise _over(f"PDF 页数过多（{total} 页，上限 {budget.max_pdf_pages} 页），已拒绝导入")

    def watchdog(*_):
        if time.monotonic() > deadline:
            raise _OutOfTime

    texts: list[str] = []
    count = 0
    for i in range(total):
        try:
            if time.monotonic() > deadline:
                raise _OutOfTime
            text = reader.pages[i].extract_text(visitor_operand_before=watchdog) or ""
        except _OutOfTime:
            raise _over(
                f"PDF 文字提取超时（{time.monotonic() - started:.1f} 秒只处理了 {i}/{total} 页，"
                f"上限 {budget.pdf_seconds:g} 秒），已停止导入"
            ) from None
        count += len(text)
        if count > budget.max_chars:
            raise _too_many_chars(count, budget)
        texts.append(text)
    return texts


def _pdf_text(raw: bytes, budget: LoadBudget) -> str:
    try:
        pages = _pdf_pages(raw, budget)
    except LoadError:
        raise
    except Exception as exc:  # pypdf raises PdfReadError, LimitReachedError, but also KeyError, TypeError, …
        raise LoadError(f"PDF 文件已损坏或无法解析：{_reason(exc)}") from exc
    text = "\n".join(pages)
    if not text.strip():
        raise LoadError("PDF 中没有可提取的文字（可能是扫描件，请先做文字识别）")
    # pypdf ends every visual line with \n; Chinese lines wrap mid-sentence, so join lines that don't end a sentence.
    return re.sub(r"(?<![。！？；：\n])\n(?!\n|第[零〇一二三四五六七八九十百千]+[条章节编]|[（(][一二三四五六七八九十]+[)）])", "", text)


def clean(text: str) -> str:
    """Normalise newlines and whitespace and drop web cruft lines such as "微信“扫一扫”添加…" and "(责编:…)"."""
    text = _HTML_COMMENT.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\u00a0", " ").replace("\ufeff", "")
    kept = []
    for line in text.split("\n"):
        stripped = line.strip()
        if any(p.search(stripped) for p in _CRUFT):
            continue
        kept.append(stripped)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip() + "\n"


def extract_text(raw: bytes, suffix: str, name: str = "", budget: LoadBudget | None = None) -> str:
    """Cleaned text of one file. For any bytes at all, the only exception is LoadError (a parser's own exception
    is kept as __cause__), so callers need one except clause."""
    budget = budget or DEFAULT_BUDGET
    try:
        return _extract(raw, suffix.lower(), name, budget)
    except LoadError:
        raise
    except MemoryError as exc:
        raise _over(f"文件内容过大，解析时内存不足（{len(raw) / MB:.1f} MB）") from exc
    except RecursionError as exc:
        raise LoadError("文件结构嵌套过深，无法解析") from exc
    except Exception as exc:  # a parser bug on hostile bytes must still reach staff as a reason, not a 500
        raise LoadError(f"文件无法解析（{type(exc).__name__}：{_reason(exc)}）") from exc


def _extract(raw: bytes, suffix: str, name: str, budget: LoadBudget) -> str:
    if suffix not in SUPPORTED:
        raise LoadError(f"不支持的文件类型 {suffix or '（无扩展名）'}；支持 {' '.join(SUPPORTED)}")
    if not raw or raw.isspace():  # isspace, unlike strip, doesn't copy a large upload
        raise LoadError("文件是空的")
    if suffix == ".docx":
        text = _docx_text(raw, budget)
    elif suffix == ".pdf":
        text = _pdf_text(raw, budget)
    elif suffix in (".html", ".htm"):
        text = _html_text(decode(raw, name))
    else:
        text = decode(raw, name)
        if "\x00" in text:
            raise LoadError("文件包含二进制内容，不是文本文件")
    if len(text) > 2 * budget.max_chars:
        raise _too_many_chars(len(text), budget)  # no point cleaning what is refused anyway
    text = clean(text)
    if len(text) > budget.max_chars:
        raise _too_many_chars(len(text), budget)
    if not text.strip():
        raise LoadError("文件中没有可用的文字内容")
    return text


def load_manifest(root: Path) -> dict[str, dict]:
    """manifest.json (a list of {file, title, category, issuer, date, kind}) keyed by relative path."""
    path = root / "manifest.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"manifest.json 格式错误：{exc}") from exc
    if not isinstance(entries, list):
        raise LoadError("manifest.json 格式错误：最外层应是一个列表")
    return {e["file"]: e for e in entries if isinstance(e, dict) and "file" in e}


def _guess_kind(text: str) -> str:
    articles = sum(1 for line in text.splitlines() if _ARTICLE_LINE.match(line))
    return "法规" if articles >= 3 else "文章"


def _guess_title(text: str, path: Path) -> str:
    for line in text.splitlines()[:5]:
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ")


def load_file(
    path: Path, root: Path, manifest: dict[str, dict] | None = None, budget: LoadBudget | None = None
) -> SourceDoc:
    """Load one file under root. Raises LoadError with a reason a staff member can act on."""
    rel = path.relative_to(root).as_posix()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"无法读取文件：{exc.strerror or exc}") from exc
    text = extract_text(raw, path.suffix, rel, budget)
    meta = (manifest or {}).get(rel, {})
    top = rel.split("/", 1)[0]
    return SourceDoc(
        source=rel,
        text=text,
        title=meta.get("title") or _guess_title(text, path),
        category=meta.get("category") or (top if top in CATEGORIES else ""),
        issuer=meta.get("issuer", ""),
        date=meta.get("date", ""),
        kind=meta.get("kind") or _guess_kind(text),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def discover(root: Path) -> list[Path]:
    """Supported files under root, in a stable order (hidden files and the manifest excluded)."""
    if root.is_file():
        return [root] if root.suffix.lower() in SUPPORTED else []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in SUPPORTED and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
