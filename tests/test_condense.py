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


def test_a_turn_opening_with_zhe_points_back_unless_it_only_names_a_time():
    history = [Turn("user", "楼顶防水要大修，维修资金怎么用？"), Turn("assistant", "……")]
    assert CONDENSER.condense("这钱最后怎么摊", history) == "楼顶防水要大修，维修资金怎么用？ 这钱最后怎么摊"
    condenser = Condenser({"小区", "业主委员会"})  # 小区: a word of its own, so only a leaning opener would condense
    assert condenser.condense("这周六小区停水吗", history) == "这周六小区停水吗"
    assert condenser.condense("这事小区能管吗", history) == "楼顶防水要大修，维修资金怎么用？ 这事小区能管吗"


def test_a_short_earlier_turn_carries_its_own_predecessor_along():
    """"张罗开会的钱谁掏" has a word of its own, so it was not condensed; "那要多久？" after it still needs the topic it
    leaned on (业主大会)."""
    history = [Turn("user", "业主大会第一次开会谁来组织？"), Turn("assistant", "……"),
               Turn("user", "张罗开会的钱谁掏"), Turn("assistant", "……")]
    assert CONDENSER.condense("那要多久？", history) == "业主大会第一次开会谁来组织？ 张罗开会的钱谁掏 那要多久？"


def test_a_chain_of_short_turns_goes_back_to_the_question_that_named_the_topic():
    history = [Turn("user", "业主大会第一次开会谁来组织？"), Turn("assistant", "……【1】"),
               Turn("user", "谁来牵头张罗"), Turn("assistant", "……【1】"),
               Turn("user", "张罗开会的钱谁掏"), Turn("assistant", "……【1】")]
    assert CONDENSER.condense("那要多久？", history) == "业主大会第一次开会谁来组织？ 谁来牵头张罗 张罗开会的钱谁掏 那要多久？"
    longer = [Turn("user", "物业服务合同到期了怎么办？"), Turn("assistant", "……"), *history]
    assert CONDENSER.condense("那要多久？", longer).startswith("业主大会")  # at most three earlier questions


def test_a_question_the_assistant_refused_is_not_the_topic_of_the_next_follow_up():
    # "谁来牵头张罗" was refused; "那要多久？" asks about the 业主大会 of the turn before it, which was answered.
    history = [Turn("user", "还没开过业主大会，什么时候该开第一次"),
               Turn("assistant", "筹备组应当自成立之日起九十日内组织召开首次业主大会会议。【1】"),
               Turn("user", "谁来牵头张罗"),
               Turn("assistant", "抱歉，我在已收录的政策文件中没有找到能回答这个问题的依据。为了不误导您，我不作猜测。")]
    assert CONDENSER.condense("那要多久？", history) == "还没开过业主大会，什么时候该开第一次 那要多久？"
    # A client that sends only the resident's side: every question still counts.
    assert CONDENSER.condense("那要多久？", history[::2]) == "还没开过业主大会，什么时候该开第一次 谁来牵头张罗 那要多久？"


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
