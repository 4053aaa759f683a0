"""高频诉求: residents' questions grouped by meaning, each group labelled by its distinctive words.

"物业费怎么交" and "拖欠物业费会怎样" share little wording but one concern; "物业费" and "调解费" share a character
and nothing else. So two signals are mixed: the embedder's similarity (meaning) and jieba tf-idf (the words a
caseworker would search for). Agglomerative clustering with a distance threshold decides how many topics there are.
The only scikit-learn user in assistant/."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from assistant.state.privacy import mask
from assistant.state.questionlog import AskedQuestion

# Question and function words that survive the lexical stopwords but say nothing about the concern.
QUESTION_WORDS = frozenset(
    """不能 不能不 能否 是否 会不会 要不要 可不可以 需不需要 怎么样 咋 咋办 啥 谁 哪儿 几 多 办 行 得 去 做 弄 搞 怎么弄
    吗 呢 啊 嘛 的话 情况 问题 相关 规定 有关 一般 我家 我们家 家里 本人""".split()  # noqa: SIM905 - a word list a maintainer can edit
)
# E5's cosine between two unrelated Chinese questions is about 0.8: similarity is rescaled from that floor to 1.
SIMILARITY_FLOOR = 0.8
MEANING_WEIGHT = 0.5  # the embedder's share of the similarity; the rest is the keywords'
DISTANCE_THRESHOLD = 0.72  # average-linkage distance above which two groups stay apart
MAX_DISTINCT = 2000  # distinct questions clustered per report (the rarest are left out beyond this)
MAX_EXAMPLES = 5
_TRAILING = re.compile(r"[\s？?。.！!，,~～…]+$")
_NOT_A_WORD = re.compile(r"[\d*＊]")  # masked numbers (138****5678) are never a label


@dataclass(frozen=True)
class Topic:
    label: str  # "物业费 · 拖欠"
    count: int  # questions asked in the window
    refused: int
    down_votes: int
    examples: tuple[str, ...]  # up to five distinct questions, most asked first, personal numbers masked
    weeks: tuple[tuple[str, int], ...]  # ("2025-W14", questions that ISO week), every week of the window
    ids: tuple[int, ...] = ()  # the question-log rows of the topic, in id order


def iso_weeks(since: float, until: float) -> list[str]:
    """The ISO weeks (local time) a window touches, oldest first: "2025-W14"."""
    day, last, weeks = datetime.fromtimestamp(since).date(), datetime.fromtimestamp(until).date(), []
    while day <= last:
        week = _week_of(day)
        if not weeks or weeks[-1] != week:
            weeks.append(week)
        day += timedelta(days=1)
    return weeks


def group_topics(asked: Sequence[AskedQuestion], embed: Callable[[str], np.ndarray],
                 tokens: Callable[[str], list[str]], weeks: Sequence[str]) -> list[Topic]:
    """Topics of the asked questions, most asked first. `embed` and `tokens`: the service's embedder and jieba."""
    by_text: dict[str, list[AskedQuestion]] = defaultdict(list)
    for q in reversed(asked):  # newest first: of two wordings asked as often, the recent one is the example
        text = _TRAILING.sub("", mask(q.question).strip())
        if text:
            by_text[text].append(q)
    # Residents ask the same few questions again and again: cluster each distinct wording once.
    texts = sorted(by_text, key=lambda t: -len(by_text[t]))[:MAX_DISTINCT]
    if not texts:
        return []
    words = [_content_words(tokens, t) for t in texts]
    clusters = _cluster([embed(t) for t in texts], words)
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(clusters):
        members[c].append(i)
    # How many questions use each word, over the whole window: what makes a word distinctive for one group.
    used = Counter(w for i, ws in enumerate(words) for w in set(ws) for _ in by_text[texts[i]])
    total = sum(len(by_text[t]) for t in texts)
    topics = []
    for idx in members.values():
        rows = [q for i in idx for q in by_text[texts[i]]]
        per_week = Counter(_week_of(datetime.fromtimestamp(q.ts).date()) for q in rows)
        topics.append(Topic(
            label=_label([(words[i], len(by_text[texts[i]])) for i in idx], used, total) or texts[idx[0]],
            count=len(rows), refused=sum(q.refused for q in rows), down_votes=sum(q.down_voted for q in rows),
            examples=tuple(texts[i] for i in idx[:MAX_EXAMPLES]),  # idx keeps the most-asked-first order
            weeks=tuple((w, per_week.get(w, 0)) for w in weeks),
            ids=tuple(sorted(q.id for q in rows))))
    return sorted(topics, key=lambda t: (-t.count, t.label))


def _week_of(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _content_words(tokens: Callable[[str], list[str]], text: str) -> list[str]:
    return [w for w in tokens(text) if w not in QUESTION_WORDS and not _NOT_A_WORD.search(w)]


def _cluster(vectors: Sequence[np.ndarray], words: Sequence[list[str]]) -> list[int]:
    """A cluster number per text. Distance = 1 − (w·meaning + (1−w)·keyword overlap), average linkage."""
    if len(vectors) == 1:
        return [0]
    # lazy: only reports need scikit-learn, and it is slow to import
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import TfidfVectorizer

    v = np.asarray(vectors, dtype=np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    meaning = np.clip((v @ v.T - SIMILARITY_FLOOR) / (1 - SIMILARITY_FLOOR), 0, 1)
    if any(words):
        tfidf = TfidfVectorizer(analyzer=lambda ws: ws, sublinear_tf=True).fit_transform(words)
        keywords = (tfidf @ tfidf.T).toarray()
    else:
        keywords = np.zeros_like(meaning)
    distance = np.clip(1 - (MEANING_WEIGHT * meaning + (1 - MEANING_WEIGHT) * keywords), 0, 1)
    np.fill_diagonal(distance, 0)
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                    distance_threshold=DISTANCE_THRESHOLD)
    return [int(c) for c in model.fit_predict(distance)]


def _label(group: Sequence[tuple[list[str], int]], used: Counter, total: int, most: int = 2) -> str:
    """The group's top words by tf-idf (share of its questions using the word × rarity among all questions):
    "物业费 · 拖欠". A word inside an already chosen one is redundant; one holding it (物业费 after 物业) replaces it
    when nearly as distinctive. A second word must be used by two questions of the group (of a group of two or more)."""
    share: Counter = Counter()
    whole: dict[str, None] = {}  # words standing alone somewhere, not only inside a longer one (人民 in 人民调解)
    for ws, n in group:
        for w in dict.fromkeys(ws):
            share[w] += n
            if not any(w != o and w in o for o in ws):
                whole[w] = None
    size = sum(n for _, n in group)
    score = {w: share[w] / size * (math.log((1 + total) / (1 + used[w])) + 1) for w in whole}
    # Ties (a question asked once) keep the question's word order.
    scored = sorted(whole, key=lambda w: (-score[w], -len(w)))
    # Single characters (交, 钱) label badly: one only when nothing longer is there.
    scored = [w for w in scored if len(w) > 1] or scored[:1]
    chosen: list[str] = []
    for w in scored:
        if len(chosen) == most:
            break
        if chosen and share[w] < min(2, size):
            continue
        inside = [i for i, c in enumerate(chosen) if c in w]
        if inside:  # 物业费 after 物业: the longer word says more, if nearly as many questions use it
            if score[w] >= 0.8 * score[chosen[inside[0]]] and not any(w in c for c in chosen):
                chosen[inside[0]] = w
            continue
        if any(w in c for c in chosen):
            continue
        chosen.append(w)
    return " · ".join(chosen)
