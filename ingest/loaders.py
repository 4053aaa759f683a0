"""File → SourceDoc: decode (UTF-8, BOM, GB18030/GBK), extract text per format, strip web cruft, attach manifest metadata."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from pathlib import Path

from assistant.types import SourceDoc

SUPPORTED = (".txt", ".md", ".html", ".htm", ".docx", ".pdf")
CATEGORIES = ("党建", "物业", "调解")


class LoadError(Exception):
    """A file that can't be read; the message is the reason shown to staff."""


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
        return raw[len(codecs.BOM_UTF8) :].decode("utf-8")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
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


def _docx_text(raw: bytes) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(raw))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise LoadError(f"不是有效的 Word 文档（.docx）：{exc}") from exc
    except Exception as exc:  # zipfile.BadZipFile and lxml errors come through here
        raise LoadError(f"Word 文档已损坏：{exc}") from exc
    out = []
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name or "").lower() if para.style is not None else ""
        if style.startswith("heading") or style == "title":
            level = 1 if style == "title" else min(int(style[-1]) if style[-1].isdigit() else 2, 3)
            out.append(f"{'#' * level} {text}")
        else:
            out.append(text)
    return "\n\n".join(out)


def _pdf_text(raw: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise LoadError(f"PDF 文件已损坏或无法解析：{exc}") from exc
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


def extract_text(raw: bytes, suffix: str, name: str = "") -> str:
    suffix = suffix.lower()
    if suffix not in SUPPORTED:
        raise LoadError(f"不支持的文件类型 {suffix or '（无扩展名）'}；支持 {' '.join(SUPPORTED)}")
    if not raw.strip():
        raise LoadError("文件是空的")
    if suffix == ".docx":
        text = _docx_text(raw)
    elif suffix == ".pdf":
        text = _pdf_text(raw)
    elif suffix in (".html", ".htm"):
        text = _html_text(decode(raw, name))
    else:
        text = decode(raw, name)
        if "\x00" in text:
            raise LoadError("文件包含二进制内容，不是文本文件")
    text = clean(text)
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
    return {e["file"]: e for e in entries if isinstance(e, dict) and "file" in e}


def _guess_kind(text: str) -> str:
    articles = sum(1 for line in text.splitlines() if _ARTICLE_LINE.match(line))
    return "法规" if articles >= 3 else "文章"


def _guess_title(text: str, path: Path) -> str:
    for line in text.splitlines()[:5]:
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ")


def load_file(path: Path, root: Path, manifest: dict[str, dict] | None = None) -> SourceDoc:
    """Load one file under root. Raises LoadError with a reason a staff member can act on."""
    rel = path.relative_to(root).as_posix()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"无法读取文件：{exc.strerror or exc}") from exc
    text = extract_text(raw, path.suffix, rel)
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
