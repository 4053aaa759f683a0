"""Understanding a turn before retrieval: small talk, intents, and when a turn leans on the conversation."""

import pytest

from assistant.config import BUNDLED_KB
from assistant.index.lexical import JiebaTokenizer
from assistant.qa.understand import Condenser, Understander, Vocabulary, question_intent, smalltalk_intent
from assistant.types import Turn, TurnKind

# The small talk detector is a whole-turn match: each line must be recognised, each question must not be.
SMALLTALK = {
    "你好": "greeting", "小玉早呀！": "greeting", "在吗": "greeting", "谢谢你的解答～": "thanks", "辛苦了": "thanks",
    "再见": "goodbye", "你是谁": "identity", "你是机器人吗": "identity", "你能做什么": "abilities",
    "你能回答物业方面的问题吗": "abilities", "好的明白了": "ack", "👍": "ack", "谢谢，再见": "thanks",
    "你真棒": "praise",
}
QUESTIONS = ["物业费怎么交", "你好，物业费怎么交？", "好的，那维修资金怎么用", "可以吗", "对方不肯调解怎么办",
             "入党需要什么条件？", "谢谢你们物业公司不作为怎么投诉"]


@pytest.mark.parametrize("text,intent", SMALLTALK.items())
def test_small_talk_is_recognised_with_its_intent(text, intent):
    assert smalltalk_intent(text) == intent


@pytest.mark.parametrize("text", QUESTIONS)
def test_a_question_is_never_small_talk_even_when_it_starts_politely(text):
    assert smalltalk_intent(text) == ""


@pytest.mark.parametrize("question,intent", [
    ("申请司法确认有没有期限", "duration"), ("邻里纠纷找谁调解", "where"), ("业委会怎么成立", "how"),
    ("调解协议有法律效力吗", "permission"), ("入党需要什么条件", "materials"), ("要多少业主同意才行", "amount"),
    ("邻居好几年不交物业费，物业能起诉吗", "permission"),  # "好几年" is the story, not a question of duration
])
def test_question_intent_follows_the_question_word(question, intent):
    assert question_intent(question) == intent


@pytest.fixture(scope="module")
def understander() -> Understander:
    tokenizer = JiebaTokenizer(BUNDLED_KB / "userdict.dic")
    corpus_words = {"物业费", "维修", "资金", "司法确认", "调解", "期限", "申请"}
    vocabulary = Vocabulary(tokenizer.tokens, corpus_words.__contains__, ["房价", "天气", "下雨", "基金"])
    return Understander(Condenser({"司法确认", "维修基金", "物业费", "入党"}, 6, vocabulary), 1000, 6)


HISTORY = [Turn("user", "调解协议怎么申请司法确认？"), Turn("assistant", "双方当事人可以自调解协议生效之日起三十日内……")]


def test_an_elliptical_follow_up_is_condensed_with_the_earlier_question(understander):
    plan = understander.plan("要多久？", HISTORY)
    assert plan.kind is TurnKind.FOLLOW_UP and plan.condensed_by == "rules"
    assert plan.query == "调解协议怎么申请司法确认？ 要多久？"


ANSWERED = [Turn("user", "申请司法确认要交钱吗"),
            Turn("assistant", "人民法院办理人民调解协议司法确认案件，不收取费用。【1】\n\n相关条文：\n"
                              "【1】《最高人民法院关于人民调解协议司法确认程序的若干规定》第十一条：…不收取费用。\n"
                              "【2】《昆山：以高质量党建赋能高效能治理》优化民生服务 创新小区治理路径：…成立物业巡回法庭…")]


def test_a_plan_knows_what_the_last_answer_cited_past_a_refusal_and_the_cut_of_a_history_turn(understander):
    padded = [ANSWERED[0], Turn("assistant", "很长的回答。" * 200 + ANSWERED[1].content)]  # list past MAX_TURN_CHARS
    for history in (ANSWERED, padded):
        assert understander.plan("要多久？", history).cited_before == (
            "《最高人民法院关于人民调解协议司法确认程序的若干规定》第十一条", "《昆山：以高质量党建赋能高效能治理》优化民生服务 创新小区治理路径")
    refused = [*ANSWERED, Turn("user", "那房价呢？"), Turn("assistant", "抱歉，我在已收录的政策文件中没有找到能回答这个问题的依据。")]
    assert understander.plan("要多久？", refused).cited_before == understander.plan("要多久？", ANSWERED).cited_before
    assert understander.plan("要多久？", [Turn("user", "申请司法确认要交钱吗")]).cited_before == ()


def test_a_pronoun_follow_up_is_condensed_even_with_words_the_corpus_lacks(understander):
    assert understander.plan("它要是赖着不走呢？", HISTORY).kind is TurnKind.FOLLOW_UP


@pytest.mark.parametrize("question", ["明天会下雨吗", "那房价呢？"])
def test_an_off_topic_turn_is_judged_alone_whatever_came_before(understander, question):
    plan = understander.plan(question, HISTORY)
    assert plan.kind is TurnKind.QUESTION and plan.query == question
    assert plan.off_topic  # the evidence step weighs this


def test_a_domain_term_that_contains_an_off_topic_word_is_not_off_topic(understander):
    plan = understander.plan("维修基金是什么时候交的？", HISTORY)
    assert plan.off_topic == ()


def test_thanks_between_two_questions_does_not_become_the_topic(understander):
    history = [*HISTORY, Turn("user", "谢谢"), Turn("assistant", "不客气！")]
    assert understander.plan("那要多久？", history).query == "调解协议怎么申请司法确认？ 那要多久？"


def test_small_talk_in_a_conversation_is_small_talk(understander):
    plan = understander.plan("谢谢小玉", HISTORY)
    assert (plan.kind, plan.intent) == (TurnKind.SMALLTALK, "thanks")


@pytest.mark.parametrize("text,intent", [("谢谢你啊小玉，帮了大忙", "thanks"), ("小玉你几岁了", "identity"),
                                         ("你好！我想咨询一下", "greeting"), ("我没有别的问题了", "goodbye"),
                                         ("今天先问到这儿", "goodbye"), ("小玉你今年多大", "identity"),
                                         ("那挺方便的，谢了", "thanks"), ("你说得对", "feedback"),
                                         ("你答非所问", "feedback"), ("你们是哪个部门的", "identity"),
                                         ("陪我聊聊天吧", "abilities"), ("我想问个问题", "greeting"),
                                         ("祝你工作顺利", "thanks"), ("我走了", "goodbye")])
def test_short_chat_with_a_cue_and_no_domain_words_is_small_talk(understander, text, intent):
    plan = understander.plan(text)
    assert (plan.kind, plan.intent) == (TurnKind.SMALLTALK, intent)


@pytest.mark.parametrize("text", ["你好，物业费怎么交", "谢谢，那司法确认要多久", "你好，昆山房价多少"])
def test_a_cue_beside_a_domain_or_off_topic_word_is_not_small_talk(understander, text):
    assert understander.plan(text).kind is TurnKind.QUESTION
