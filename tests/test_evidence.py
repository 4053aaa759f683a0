"""The evidence step and the article rerank, as pure functions over hand-made retrieval results."""

import pytest

from assistant.config import SHIPPED_ANSWERABILITY, RetrievalSettings
from assistant.qa.evidence import FEATURES, AnswerabilityModel, features, judge
from assistant.qa.retrieve import Candidates, rerank
from assistant.qa.understand import asked_datum, holds_datum
from assistant.types import Chunk, ScoredChunk, TurnKind, TurnPlan
from evals.answerability import Row, fit, pick_threshold


def _hit(cid: str, body: str, score: float, dense: float = 0.9) -> ScoredChunk:
    return ScoredChunk(Chunk(cid, f"条例 第一条\n{body}", "调解/条例.md", "条例", "第一条", 0, len(body)), score,
                       dense=dense)


def _found(dense_top: float, coverage: float = 0.5, query: str = "调解协议有法律效力吗") -> Candidates:
    hits = (_hit("a", "经人民调解委员会调解达成的调解协议，具有法律约束力。", 0.1, dense_top),)
    return Candidates(query, hits, (("a", 5.0),), (("a", dense_top), ("b", dense_top - 0.01)), coverage, 0.1)


MODEL = AnswerabilityModel(weights={"dense_top": 2.0, "off_topic": -1.5}, bias=0.0,
                           means={f: 0.0 for f in FEATURES} | {"dense_top": 0.88}, scales={f: 1.0 for f in FEATURES}
                           | {"dense_top": 0.02}, threshold=0.5, embedder="e5")


def test_a_closer_dense_match_is_more_likely_answerable():
    assert MODEL.probability(features(_found(0.91))) > MODEL.probability(features(_found(0.85)))


def test_an_off_topic_term_lowers_the_probability_and_is_named_in_the_reasons():
    plan = TurnPlan("昆山房价多少", TurnKind.QUESTION, "昆山房价多少", off_topic=("房价",))
    plain = judge(_found(0.89), RetrievalSettings(), MODEL)
    marked = judge(_found(0.89), RetrievalSettings(), MODEL, plan)
    assert plain.covered and not marked.covered
    assert marked.probability < plain.probability
    assert marked.reasons[0] == "知识库外的话题：房价" and "可回答概率" in marked.reason


def test_without_a_model_the_dense_threshold_decides():
    settings = RetrievalSettings(min_dense=0.87)
    assert judge(_found(0.88), settings).covered and not judge(_found(0.86), settings).covered
    assert judge(_found(0.88), settings).probability is None


def test_a_saved_model_loads_back_identical(tmp_path):
    path = tmp_path / "m.json"
    MODEL.save(path)
    assert AnswerabilityModel.load(path) == MODEL


def test_the_shipped_model_names_every_feature_and_its_embedder():
    shipped = AnswerabilityModel.load(SHIPPED_ANSWERABILITY)
    assert set(shipped.weights) == set(FEATURES) and shipped.embedder
    assert 0.0 < shipped.threshold < 1.0


def _rows(n: int = 60) -> list[Row]:
    rows = []
    for i in range(n):
        answerable = i % 3 != 0
        dense = 0.9 + 0.001 * (i % 7) if answerable else 0.86 + 0.001 * (i % 5)
        base = {f: 0.0 for f in FEATURES}
        rows.append(Row(base | {"dense_top": dense, "off_topic": 0.0 if answerable else float(i % 2)}, answerable, ""))
    return rows


def test_the_fitted_threshold_keeps_false_refusals_within_the_budget():
    rows = _rows()
    model = fit(rows, "e5", max_false_refusal=0.05)
    answerable = [r for r in rows if r.answerable]
    refused = sum(model.probability(r.features) < model.threshold for r in answerable)
    assert refused <= 0.05 * len(answerable)
    assert model.weights["dense_top"] > 0 and model.weights["off_topic"] < 0


def test_pick_threshold_with_no_budget_answers_every_answerable_row():
    rows = _rows()
    model = fit(rows, "e5")
    threshold = pick_threshold(model, rows, 0.0)
    assert all(model.probability(r.features) >= threshold for r in rows if r.answerable)


def test_fitting_needs_both_kinds_of_rows():
    with pytest.raises(ValueError, match="both"):
        fit([r for r in _rows() if r.answerable], "e5")


def test_rerank_moves_up_the_article_whose_sentence_says_the_answer():
    pool = [_hit("near", "人民调解员从事调解工作，应当给予适当的误工补贴。", 0.10),
            _hit("says", "因从事调解工作致伤致残的，应当提供必要的医疗、生活救助。", 0.09)]
    sentences = {"near": (("人民调解员从事调解工作，应当给予适当的误工补贴。", 0.86),),
                 "says": (("因从事调解工作致伤致残的，应当提供必要的医疗、生活救助。", 0.91),)}
    assert [h.chunk.id for h in rerank(pool, sentences, "", 4.0, 0.0)] == ["says", "near"]
    assert [h.chunk.id for h in rerank(pool, sentences, "", 0.0, 0.0)] == ["near", "says"]


def test_rerank_prefers_an_article_with_a_time_limit_for_a_duration_question():
    pool = [_hit("how", "当事人可以申请司法确认。", 0.10), _hit("when", "应当自受理之日起十五日内作出决定。", 0.098)]
    assert rerank(pool, {}, "duration", 4.0, 0.1)[0].chunk.id == "when"
    assert rerank(pool, {}, "", 4.0, 0.1)[0].chunk.id == "how"


@pytest.mark.parametrize("question,kind", [
    ("小区门禁卡丢了，补办一张要多少钱", "price"), ("昆山居民用水多少钱一吨", "price"),
    ("民政局周末上不上班", "clock"), ("政务服务中心几点开门", "clock"),
    ("不动产登记中心电话多少", "contact"), ("物业巡回法庭的地址在哪", "contact"),
    ("调解协议有法律效力吗", ""), ("业主大会多久开一次", ""), ("物业天天打电话催我交费，合理吗", ""),
    ("党的纪律具体分哪几块", ""),
    ("申请司法确认要交钱吗", "price"), ("去法院起诉要交多少诉讼费", "price"),
    ("明天我们小区停不停水", "date"), ("这周末社区有没有免费体检活动", "date"), ("我儿子下个月要入党宣誓，誓词说些啥", ""),
    ("今天物业停了我家的水，合法吗", ""), ("明天会不会停电", "date"),
    ("那个平台我密码忘了，登不上去咋办", "contact"), ("“昆物通”APP在哪下载", "contact"),
    ("我们小区电梯是哪个牌子的", "name"), ("我们小区对口的是哪个小学", "name"),
])
def test_a_question_asking_for_a_price_a_time_a_date_a_contact_or_a_name_is_told_apart(question, kind):
    assert asked_datum(question) == kind


def test_a_price_question_whose_evidence_names_no_amount_counts_as_missing_its_datum():
    ruled = _found(0.9, query="小区门禁卡补办要多少钱")
    assert features(ruled)["missing_datum"] == 1.0
    free = Candidates("调解要收费吗，收多少", (_hit("a", "人民调解委员会调解民间纠纷，不收取任何费用。", 0.1),), (), (), 0.5, 0.1)
    fined = Candidates("占用通道罚多少钱", (_hit("a", "由有关部门处一千元以上一万元以下罚款。", 0.1),), (), (), 0.5, 0.1)
    assert features(free)["missing_datum"] == features(fined)["missing_datum"] == 0.0
    assert features(_found(0.9))["missing_datum"] == 0.0  # a question of rules asks for no datum
    # A fine is no price of parking: "处…罚款" answers only a question about the fine.
    parking = Candidates("地面停车位一个月多少钱", (_hit("a", "违反规定出租车位的，处一万元以上十万元以下罚款。", 0.1),), (), (),
                         0.5, 0.1)
    assert features(parking)["missing_datum"] == 1.0
    assert holds_datum("price", "违反规定的，处五百元罚款。", "会被罚多少钱")
    assert not holds_datum("price", "违反规定的，处五百元罚款。", "停车一个月多少钱")
    # A name is given in quotes by the news reports ("第一个集宿区社区叫什么"), never by a law.
    assert holds_datum("name", "成立全省首个集宿区社区“青春社区”。") and not holds_datum("name", "业主委员会由业主大会选举产生。")


def test_the_shipped_model_weighs_a_missing_datum_against_answering():
    model = AnswerabilityModel.load(SHIPPED_ANSWERABILITY)
    assert model.weights["missing_datum"] < 0
    x = features(_found(0.9, query="小区门禁卡补办要多少钱"))
    assert model.probability(x) < model.probability({**x, "missing_datum": 0.0})
