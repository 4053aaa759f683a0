"""The 高频诉求 report: real question-log rows (a clock of the test's own), the real e5 embedder and jieba, through
StaffViews as build_services wires it, the admin API and the console's handler with its CSV export."""

from __future__ import annotations

import csv
import time

import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import StaffSettings
from assistant.services import build_services
from assistant.state.questionlog import QuestionLog, install_secret
from assistant.types import Answer, AnswerKind, Channel, Citation, ComposeMode
from tests.conftest import make_settings
from ui.console import handlers as h

DAY = 86400.0
TOKEN = "test-admin-token-0123456789"
PROPERTY_FEE = [
    "物业费怎么交？",
    "物业费能不能不交",
    "拖欠物业费会怎样",
    "物业费多少钱一平",
    "物业费涨价要业主同意吗",
    "物业服务太差了，可以拒交物业费吗",
    "房子一直空着没人住，也要交物业费吗",
    "物业公司天天上门催缴物业费，这样合法吗",
    "欠了两年物业费，物业能去法院起诉我吗",
    "物业费的收费标准是谁定的",
    "新房还没收房，开发商让先交物业费合理吗",
    "不交物业管理费会被停水停电吗",
]
MEDIATION = [
    "和邻居吵架了，怎么申请调解",
    "找人民调解要收费吗",
    "调解协议有法律效力吗",
    "调解不成还能怎么办",
    "怎么申请司法确认调解协议",
    "人民调解委员会是怎么组成的",
]


class Clock:
    """The question log's clock: each row is written at the time the test sets."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _answer(question: str, refused: bool = False, answer_id: str | None = None) -> Answer:
    if refused:
        return Answer("抱歉，知识库中没有找到依据。", (), AnswerKind.REFUSED, question, ComposeMode.TEMPLATE,
                      answer_id=answer_id)
    cite = Citation(1, "物业/物业管理条例.md", "物业管理条例", "第四十一条", "业主应当根据物业服务合同的约定交纳物业服务费用。")
    return Answer("业主应当根据物业服务合同的约定交纳物业服务费用【1】。", (cite,), AnswerKind.ANSWERED, question,
                  answer_id=answer_id)


@pytest.fixture
def report(tmp_path, embedder):
    """(services built by build_services over an empty data dir, a writer into its question log, the clock)."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, staff=StaffSettings(admin_token=TOKEN, console_enabled=False))
    services = build_services(settings, embedder)
    now = time.time()
    clock = Clock(now)
    log = QuestionLog(data_dir / "questions.sqlite3", install_secret(data_dir), clock=clock)

    def ask(question: str, days_ago: float = 0.0, channel: Channel = Channel.WEB, refused: bool = False,
            answer_id: str | None = None) -> int:
        clock.now = now - days_ago * DAY
        return log.record(channel, "resident-1", question, _answer(question, refused, answer_id), 12.0)

    return services, ask, log, now


def test_the_top_topic_of_a_week_holds_the_property_fee_questions_however_they_are_worded(report):
    services, ask, _, now = report
    # Spread over the last six days, interleaved, as residents ask them; one more 物业费 question from 10 days ago.
    fee_ids = {ask(q, days_ago=(i * 0.5) % 6) for i, q in enumerate(PROPERTY_FEE)}
    mediation_ids = {ask(q, days_ago=(i * 0.7 + 0.2) % 6) for i, q in enumerate(MEDIATION)}
    old = ask("物业费一般每个月几号交", days_ago=10)

    topics = services.staff.topics(days=7, now=now)

    top = topics[0]
    in_top = fee_ids & set(top.ids)
    print(f"top topic {top.label!r}: {len(in_top)} of {len(PROPERTY_FEE)} 物业费 questions, {top.count} in all; "
          f"topics: {[(t.label, t.count) for t in topics]}")
    assert len(in_top) >= 10
    assert not mediation_ids & set(top.ids)
    assert "物业费" in top.label
    mediation = next(t for t in topics if mediation_ids & set(t.ids))
    assert "调解" in mediation.label and len(mediation_ids & set(mediation.ids)) >= 4
    assert old not in {i for t in topics for i in t.ids}  # 10 days old: outside days=7
    assert sum(t.count for t in topics) == len(PROPERTY_FEE) + len(MEDIATION)
    assert [t.count for t in topics] == sorted((t.count for t in topics), reverse=True)
    # days=14 reaches the old question, and it joins the 物业费 topic
    assert old in services.staff.topics(days=14, now=now)[0].ids


def test_eval_channel_questions_are_left_out_of_the_report(report):
    services, ask, _, now = report
    for q in PROPERTY_FEE[:4]:
        ask(q, days_ago=1, channel=Channel.EVAL)
    for q in MEDIATION[:3]:
        ask(q, days_ago=1, channel=Channel.WECHAT)

    topics = services.staff.topics(days=7, now=now)

    assert sum(t.count for t in topics) == 3
    assert not any("物业费" in e for t in topics for e in t.examples)


def test_refused_and_down_voted_questions_are_counted_per_topic(report):
    services, ask, log, now = report
    for i, q in enumerate(PROPERTY_FEE[:6]):
        ask(q, days_ago=1, refused=i < 2, answer_id=f"fee-{i}")
    for i, q in enumerate(MEDIATION):
        ask(q, days_ago=2, refused=i == 0, answer_id=f"med-{i}")
    assert log.rate("fee-3", "down") and log.rate("fee-4", "down") and log.rate("fee-5", "up")
    assert log.rate("med-1", "down")

    by_label = {t.label: t for t in services.staff.topics(days=7, now=now)}

    fee = next(t for label, t in by_label.items() if "物业费" in label)
    mediation = next(t for label, t in by_label.items() if "调解" in label)
    assert (fee.count, fee.refused, fee.down_votes) == (6, 2, 2)
    assert (mediation.refused, mediation.down_votes) == (1, 1)


def test_the_same_question_asked_again_counts_twice_but_is_one_example(report):
    services, ask, _, now = report
    for days_ago in (1, 2, 3):
        ask("物业费怎么交？", days_ago=days_ago)
    ask("物业费怎么交", days_ago=1)  # the same, without its question mark
    ask("拖欠物业费会怎样", days_ago=1)

    (topic,) = services.staff.topics(days=7, now=now)

    assert topic.count == 5
    assert topic.examples == ("物业费怎么交", "拖欠物业费会怎样")


def test_a_phone_number_in_a_question_is_masked_in_the_examples_and_never_a_label(report):
    services, ask, _, now = report
    ask("物业费交不上了，我电话13812345678，能分期吗", days_ago=1)
    ask("拖欠物业费会怎样", days_ago=1)

    topics = services.staff.topics(days=7, now=now)

    examples = [e for t in topics for e in t.examples]
    assert "物业费交不上了，我电话138****5678，能分期吗" in examples
    assert not any("13812345678" in e or "5678" in t.label for t in topics for e in t.examples)


def test_each_topic_counts_its_questions_per_iso_week_of_the_window(report):
    services, ask, _, now = report
    for days_ago in (1, 8, 9, 15, 20):
        ask("物业费怎么交", days_ago=days_ago)

    (topic,) = services.staff.topics(days=28, now=now)

    assert len(topic.weeks) in (4, 5)  # 28 days touch four or five ISO weeks
    assert sum(n for _, n in topic.weeks) == 5
    assert [w for w, _ in topic.weeks] == sorted(w for w, _ in topic.weeks)
    assert topic.weeks[-1][1] >= 1  # yesterday's question is in the last (or the last but one) week


def test_an_empty_window_is_an_empty_report(report):
    services, ask, _, now = report
    ask("物业费怎么交", days_ago=30)
    assert services.staff.topics(days=7, now=now) == []


def test_topics_api_returns_the_report_behind_the_admin_token(report):
    services, ask, _, _ = report
    for i, q in enumerate(PROPERTY_FEE):
        ask(q, days_ago=i % 5, refused=i == 0)
    for q in MEDIATION:
        ask(q, days_ago=2)
    ask("物业费可以开发票吗？联系人手机 13912345678", days_ago=1, channel=Channel.WECHAT)
    ask("物业费怎么交", days_ago=1, channel=Channel.EVAL)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    with TestClient(create_app(services.settings, services)) as client:
        assert client.get("/admin/reports/topics").status_code == 401
        body = client.get("/admin/reports/topics", params={"days": 7}, headers=auth).json()
        weekly = client.get("/admin/reports/topics", params={"days": 28, "weekly": "true"}, headers=auth).json()
        assert client.get("/admin/reports/topics", params={"days": 0}, headers=auth).status_code == 422

    assert set(body[0]) == {"topic", "count", "refused", "down_votes", "examples"}
    assert "物业费" in body[0]["topic"] and body[0]["count"] >= 11 and body[0]["refused"] == 1
    assert body[0]["down_votes"] == 0
    assert 1 <= len(body[0]["examples"]) <= 5
    assert [t["count"] for t in body] == sorted((t["count"] for t in body), reverse=True)
    assert sum(t["count"] for t in body) == len(PROPERTY_FEE) + len(MEDIATION) + 1  # the eval question left out
    shown = " ".join(e for t in body for e in t["examples"])
    assert "13912345678" not in shown
    assert {len(w["week"]) for w in weekly[0]["weeks"]} == {8} and sum(w["count"] for w in weekly[0]["weeks"]) >= 11


def test_console_topics_report_exports_a_masked_csv_with_one_column_per_week(report, tmp_path):
    services, ask, _, _ = report
    for i, q in enumerate(PROPERTY_FEE[:8]):
        ask(q, days_ago=i, refused=i == 3)
    ask("物业费交不上了，我电话13812345678，能分期吗", days_ago=1)
    for q in MEDIATION[:4]:
        ask(q, days_ago=9)

    info, rows, chart, path = h.topics_report(services, 28, tmp_path / "exports")

    assert "13 条" in info
    assert rows[0][0].startswith("物业费") and rows[0][1:4] == [9, 1, 0]
    assert set(chart.columns) == {"周", "话题", "提问数"} and chart["提问数"].sum() == 13
    with open(path, encoding="utf-8-sig", newline="") as fh:
        table = list(csv.reader(fh))
    header, first = table[0], table[1]
    assert header[:5] == h.TOPIC_HEADERS and all(w[4:6] == "-W" for w in header[5:])
    assert first[0] == rows[0][0] and first[1] == "9" and sum(int(n) for n in first[5:]) == 9
    text = "\n".join(",".join(r) for r in table)
    assert "138****5678" in text and "13812345678" not in text
    assert len(table) == 1 + len(rows)


def test_console_topics_report_says_so_when_nobody_asked(report, tmp_path):
    services, _, _, _ = report
    info, rows, chart, path = h.topics_report(services, 7, tmp_path)
    assert "没有居民提问" in info and rows == [] and chart.empty and path is None


def test_the_console_has_a_topics_tab_with_a_csv_download(report):
    import gradio as gr

    from ui.console.app import build_console

    services, _, _, _ = report
    console = build_console(lambda: services, services.settings)
    blocks = list(console.blocks.values())
    assert "高频诉求" in [b.label for b in blocks if isinstance(b, gr.Tab)]
    assert any(isinstance(b, gr.DownloadButton) for b in blocks)
    assert any(isinstance(b, gr.BarPlot) for b in blocks)
