"""Sentences of a provision: what the composer quotes as an answer's opening, and what sentence vectors are made of
(max-sim per article ranks the article that says the answer above its neighbours)."""

from __future__ import annotations

import hashlib
import re

SENTENCE = re.compile(r"[^。！？；\n]+[。！？；]?[”’」』）)]*")
ARTICLE_PREFIX = re.compile(r"^第[零〇一二三四五六七八九十百千]+条(?:之[零〇一二三四五六七八九十百千]+)?[\s\u3000]*")
MIN_CHARS = 6  # shorter pieces ("（一）", "第三条") say nothing on their own


def provision_text(body: str) -> str:
    """A chunk body without its article number: "第八条 村民委员会……" → "村民委员会……"."""
    return ARTICLE_PREFIX.sub("", body.strip())


def split_sentences(text: str) -> list[str]:
    """Every sentence and clause (cut at 。！？；), short list items ("（一）党章；") included."""
    return [m.group(0).strip() for m in SENTENCE.finditer(text)]


def provision_sentences(body: str) -> list[str]:
    """"第八条 村民委员会…设立人民调解委员会。企业事业单位根据需要设立人民调解委员会。" → the two sentences,
    without the article number; pieces too short to say anything are left out."""
    return [s for s in split_sentences(provision_text(body)) if len(s) >= MIN_CHARS]


def sentence_id(sentence: str) -> str:
    """A content hash: the same sentence in two chunks (or two generations) is embedded once."""
    return "s" + hashlib.sha256(sentence.encode("utf-8", "surrogatepass")).hexdigest()[:31]
