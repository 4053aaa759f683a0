"""Follow-up questions keep their context; standalone ones are left alone."""

from assistant.qa.understand import Condenser
from assistant.types import Turn

CONDENSER = Condenser({"司法确认", "入党", "党龄", "预备党员", "业主委员会"})
SJQR = [Turn("user", "调解协议怎么申请司法确认？"), Turn("assistant", "根据……第二条：当事人应当共同向人民法院申请。")]


def test_short_follow_up_is_prefixed_with_the_previous_question():
    assert CONDENSER.condense("要多久？", SJQR) == "调解协议怎么申请司法确认？ 要多久？"


def test_follow_up_opening_with_na_is_condensed_even_with_a_topic_word():
    history = [Turn("user", "预备党员的预备期多长？"), Turn("assistant", "预备期为一年。")]
    assert CONDENSER.condense("那党龄从什么时候算？", history) == "预备党员的预备期多长？ 那党龄从什么时候算？"


def test_a_short_question_with_its_own_topic_stands_alone():
    assert CONDENSER.condense("入党需要什么条件？", SJQR) == "入党需要什么条件？"


def test_a_chain_of_follow_ups_keeps_the_original_topic():
    history = SJQR + [Turn("user", "要多久？"), Turn("assistant", "十五日内。")]
    assert CONDENSER.condense("能延长吗？", history) == "调解协议怎么申请司法确认？ 要多久？ 能延长吗？"


def test_follow_up_through_the_service_retrieves_the_right_article(kb_services):
    alone = kb_services.chat.retrieve("要多久？")
    followed = kb_services.chat.retrieve("要多久？", SJQR)
    assert followed.query == "调解协议怎么申请司法确认？ 要多久？"
    assert followed.hits[0].chunk.source.endswith("最高人民法院关于人民调解协议司法确认程序的若干规定.md")
    assert alone.hits[0].chunk.id != followed.hits[0].chunk.id or not alone.evidence.covered


def test_follow_up_through_the_api_history(client):
    body = client.post("/api/chat", json={"question": "要多久？", "history": [
        {"role": "user", "content": "调解协议怎么申请司法确认？"}]}).json()
    assert not body["refused"]
    assert any("日内" in c["quote"] for c in body["citations"])
