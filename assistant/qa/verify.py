"""Citation verification for LLM answers: nothing reaches a resident unless the provision it cites supports it.

A sentence is kept only if
- it cites at least one provided source (【n】 with 1 ≤ n ≤ number of sources; other numbers are removed);
- enough of its content (character bigrams) is found in the sources it cites: `threshold`, calibrated on
  evals/golden.jsonl by `python -m evals.calibrate_support` (method and figures in that module's docstring);
- every number it states (三十日, 百分之二十, 30%) occurs in those sources, and every negation (不得, 未, 无需 …)
  too: a wrong deadline or a flipped "不" is the costliest mistake an answer can make, and bigram coverage alone
  would let a single changed character through.

Lexical rather than embedding similarity on purpose: e5 scores any two sentences on the same topic above 0.8,
so a made-up rule about 物业费 would "match" any provision about 物业费.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# 【1】, 【1,2】, 【1】【3】, [2], 【资料1】: models write all of these; we only ever output 【n】.
_MARKER = re.compile(r"【\s*(?:资料|来源|出处|文件)?\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*】|\[\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*\]")
_END = "。！？!?\n"
_CLOSERS = "”’」』）)\"'"
# The tail of a buffer that might still grow into a citation marker: "【", "【1", "[1,".
_PARTIAL_MARKER = re.compile(r"【[^】]{0,8}|\[[\d,，、\s]{0,8}")
_LEADING_MARKUP = re.compile(r"^\s*(?:#{1,6}\s*|[-*•]\s+|\d+[.、)）]\s*|[（(]\d+[)）]\s*)+")
_WORD = re.compile(r"[\u4e00-\u9fff0-9a-z]+")
# Framing that a faithful paraphrase adds but a provision never contains ("根据…的规定，您…").
_FRAMING = re.compile(r"根据|依据|依照|规定|明确|指出|提到|资料|来源|您|你")

_CN_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNIT = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_NUMERAL = re.compile(
    r"\d+(?:\.\d+)?"
    r"|[零〇一二两三四五六七八九十百千万]{2,}"
    r"|[零〇二两三四五六七八九十百千万]"  # a lone 一 is mostly a word part (一般, 统一), not a quantity
    r"|一(?=[日天个月年周名人次倍元条款项%])"
)
# Negations, minus the words that only look like one (不动产, 未成年).
_NEGATION = re.compile(r"(?:不(?!动产|断|仅|久)|未(?!成年|来)|无(?!论)|非(?!常)|禁|没|勿)[\u4e00-\u9fff]")
_CLAUSE = re.compile(r"[，,；;：:。！？!?\n]+")


def cn_to_number(text: str) -> float | None:
    """"三十" → 30, "一百零五" → 105, "二〇二一" → 2021, "15" → 15; None if it is not a numeral."""
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or any(ch not in _CN_DIGIT and ch not in _CN_UNIT for ch in text):
        return None
    if all(ch in _CN_DIGIT for ch in text):  # read digit by digit: 二〇二一
        return float("".join(str(_CN_DIGIT[ch]) for ch in text))
    total, section, digit = 0, 0, 0
    for ch in text:
        if ch in _CN_DIGIT:
            digit = _CN_DIGIT[ch]
        elif ch == "万":
            total += (section + digit) * 10000
            section, digit = 0, 0
        else:
            section += (digit or 1) * _CN_UNIT[ch]
            digit = 0
    return float(total + section + digit)


def numbers_in(text: str) -> set[float]:
    out = set()
    for m in _NUMERAL.finditer(text):
        value = cn_to_number(m.group(0))
        if value is not None:
            out.add(value)
    return out


def citation_numbers(text: str) -> list[int]:
    """Citation numbers in order of first appearance: "…费用【2】，…【1,2】。" → [2, 1]."""
    seen: list[int] = []
    for m in _MARKER.finditer(text):
        for n in re.split(r"[,，、]", m.group(1) or m.group(2)):
            if int(n) not in seen:
                seen.append(int(n))
    return seen


def strip_citations(text: str) -> str:
    return _MARKER.sub("", text)


def clean_sentence(text: str) -> str:
    """Drop markdown that small models like to add ("**", "- ", "1. ", "## ") and surrounding space."""
    return _LEADING_MARKUP.sub("", text.replace("**", "")).strip()


def bigrams(text: str) -> set[str]:
    """Content units: character bigrams within runs of Chinese characters, digits and letters ("物业费" → 物业, 业费)."""
    out: set[str] = set()
    for run in _WORD.findall(text.lower()):
        out.update(run[i : i + 2] for i in range(len(run) - 1))
    return out


def claim_units(sentence: str) -> set[str]:
    return bigrams(_FRAMING.sub("，", strip_citations(sentence)))


class SentenceBuffer:
    """Cuts streamed text into whole sentences. A sentence ends at 。！？ or a newline, and keeps the closing quotes
    and citation markers that follow it: "…费用。【1】业主…" → "…费用。【1】" once "业" has arrived."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out = []
        while True:
            end = self._sentence_end(self._buf)
            if end is None:
                return out
            sentence, self._buf = self._buf[:end], self._buf[end:]
            if sentence.strip():
                out.append(sentence)

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, ""
        return [rest] if rest.strip() else []

    @staticmethod
    def _sentence_end(buf: str) -> int | None:
        for i, ch in enumerate(buf):
            if ch not in _END:
                continue
            j = i + 1
            # Absorb what belongs to this sentence: more terminators, closing quotes, citation markers.
            while j < len(buf):
                if buf[j] in _END or buf[j] in _CLOSERS or buf[j] in " \u3000\t":
                    j += 1
                    continue
                m = _MARKER.match(buf, j)
                if m:
                    j = m.end()
                    continue
                break
            if j == len(buf) or _PARTIAL_MARKER.fullmatch(buf, j):
                return None  # what follows hasn't fully arrived: a 【1】 may still belong to this sentence
            return j
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    kept: bool
    text: str  # the cleaned sentence without its citation markers (the answerer renumbers and re-attaches them)
    cited: tuple[int, ...]  # supporting source numbers, in the model's order
    support: float  # share of the sentence's content bigrams found in its supporting sources
    reason: str  # why it was dropped ("" when kept)
    removed: tuple[int, ...] = ()  # citation numbers taken out: out of range, or citing a source that says nothing of it


class SupportVerifier:
    """Checks one sentence of an LLM answer against the numbered sources (1-based) it was given."""

    def __init__(self, threshold: float = 0.65, min_units: int = 4):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"support threshold ({threshold}) must be in (0, 1]")
        self.threshold = threshold
        self.min_units = min_units

    def coverage(self, sentence: str, source: str) -> float:
        units = claim_units(sentence)
        return len(units & bigrams(source)) / len(units) if units else 0.0

    def check(self, sentence: str, sources: Sequence[str]) -> Verdict:
        cleaned = clean_sentence(sentence)
        numbers = citation_numbers(cleaned)
        valid = [n for n in numbers if 1 <= n <= len(sources)]
        out_of_range = tuple(n for n in numbers if n not in valid)
        body = clean_sentence(strip_citations(cleaned))
        units = claim_units(body)

        def drop(reason: str, support: float = 0.0, cited: Iterable[int] = ()) -> Verdict:
            return Verdict(False, body, tuple(cited), support, reason, out_of_range)

        if not valid:
            return drop("引用编号超出范围" if out_of_range else "未标注出处")
        if len(units) < self.min_units:
            return drop("内容太短，无法核对", cited=valid)
        per_source = {n: units & bigrams(sources[n - 1]) for n in valid}
        # A citation is only credited when its source carries a fair part of the sentence on its own.
        supporting = [n for n in valid if len(per_source[n]) >= 0.5 * self.threshold * len(units)]
        removed = out_of_range + tuple(n for n in valid if n not in supporting)
        covered = set().union(*(per_source[n] for n in supporting)) if supporting else set()
        support = len(covered) / len(units)
        if support < self.threshold:
            return Verdict(False, body, tuple(supporting), support, f"出处不支持（{support:.2f}）", removed)
        evidence = "".join(sources[n - 1] for n in supporting)
        # A source's first line names it ("物业管理条例 第四十一条"); restating only that says nothing.
        headers = set().union(*(bigrams(sources[n - 1].split("\n", 1)[0]) for n in supporting if "\n" in sources[n - 1]))
        if len(units & (covered - headers)) < self.min_units:
            return Verdict(False, body, tuple(supporting), support, "只有条文名称，没有内容", removed)
        missing_numbers = numbers_in(body) - numbers_in(evidence)
        if missing_numbers:
            shown = "、".join(f"{v:g}" for v in sorted(missing_numbers))
            return Verdict(False, body, tuple(supporting), support, f"数字 {shown} 不在出处中", removed)
        evidence_bigrams = bigrams(evidence)
        negations = [m.group(0) for m in _NEGATION.finditer(body) if m.group(0) not in evidence_bigrams]
        if negations:
            return Verdict(False, body, tuple(supporting), support, f"否定词 {'、'.join(negations)} 不在出处中", removed)
        flipped = self._dropped_negation(body, evidence)
        if flipped:
            return Verdict(False, body, tuple(supporting), support, f"出处为否定：{flipped}", removed)
        return Verdict(True, body, tuple(supporting), support, "", removed)

    @staticmethod
    def _dropped_negation(body: str, evidence: str) -> str:
        """The source clause a claim clause restates, when that clause is negated and the claim is not:
        "司法确认收取费用" against "…司法确认案件，不收取费用" → "不收取费用"."""
        source_clauses = [(c, bigrams(c)) for c in _CLAUSE.split(evidence) if c.strip()]
        for clause in _CLAUSE.split(body):
            units = claim_units(clause)
            if len(units) < 3 or _NEGATION.search(clause):
                continue
            best, shared = max(((c, len(units & u)) for c, u in source_clauses), key=lambda t: t[1], default=("", 0))
            if shared >= 0.6 * len(units) and _NEGATION.search(best):
                return best
        return ""


def attach(body: str, numbers: Sequence[int]) -> str:
    """Put the citation markers before the sentence's final punctuation: "业主应当交费。" + [1] → "业主应当交费【1】。"."""
    markers = "".join(f"【{n}】" for n in numbers)
    m = re.search(r"[。！？!?.；;]*[”’」』）)\"']*$", body)
    cut = m.start() if m else len(body)
    tail = body[cut:] or "。"
    return f"{body[:cut]}{markers}{tail}"
