"""The HTTP contract of the core API: health, retrieve, chat, and validation that never yields a 500."""

import pytest


def test_health_reports_ok_once_the_index_is_loaded(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["documents"] == 13


def test_chat_answers_with_a_cited_article(client):
    body = client.post("/api/chat", json={"question": "司法确认申请提交以后法院多久给结果？"}).json()
    assert body["refused"] is False
    sources = {c["source"] for c in body["citations"]}
    assert "调解/最高人民法院关于人民调解协议司法确认程序的若干规定.md" in sources
    [fifth] = [c for c in body["citations"] if c["section"].endswith("第五条")]
    assert "十五日内" in fifth["quote"] and "十五日内" in body["answer"]
    assert f"【{fifth['index']}】" in body["answer"]


def test_retrieve_returns_ranked_hits_with_sections(client):
    body = client.post("/api/retrieve", json={"query": "业委会任期几年", "top_k": 3}).json()
    assert len(body["hits"]) == 3
    assert {"source", "title", "section", "text", "score"} <= set(body["hits"][0])
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "payload,message",
    [
        ({"question": ""}, "不能为空"),
        ({"question": "   \n\t "}, "不能为空"),
        ({"question": "物" * 1001}, "太长"),
        ({}, "缺少字段"),
        ({"question": 123}, "类型不正确"),
        ({"question": "物业费", "history": [{"role": "system", "content": "x"}]}, "无效|类型"),
    ],
)
def test_bad_chat_input_gets_422_with_a_chinese_message(client, payload, message):
    res = client.post("/api/chat", json=payload)
    assert res.status_code == 422
    assert __import__("re").search(message, res.json()["detail"])


def test_malformed_json_gets_422(client):
    res = client.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 422 and "JSON" in res.json()["detail"]


def test_retrieve_rejects_empty_query_and_bad_top_k(client):
    assert client.post("/api/retrieve", json={"query": " "}).status_code == 422
    assert client.post("/api/retrieve", json={"query": "物业费", "top_k": 0}).status_code == 422


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    assert "/api/chat" in client.get("/openapi.json").json()["paths"]
