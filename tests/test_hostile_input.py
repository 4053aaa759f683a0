"""Input a client can send but no resident would: it gets an answer or a clear 4xx, never a 500."""

import json


def _post(client, path: str, body: dict):
    # ensure_ascii keeps a lone surrogate as the escape "\ud800", exactly as a hostile client would send it.
    return client.post(path, content=json.dumps(body, ensure_ascii=True), headers={"content-type": "application/json"})


def test_a_lone_surrogate_in_a_question_is_cleaned_not_a_500(client):
    r = _post(client, "/api/chat", {"question": "物业费\ud800怎么交？"})
    assert r.status_code == 200 and "\ud800" not in r.json()["query"]


def test_a_question_of_only_control_characters_is_a_422_with_a_reason(client):
    r = _post(client, "/api/chat", {"question": "\x00\x01\ud800"})
    assert r.status_code == 422 and "问题不能为空" in r.json()["detail"]


def test_a_lone_surrogate_through_the_openai_api_is_not_a_500(client):
    r = _post(client, "/v1/chat/completions", {"model": "xiaoyu", "messages": [
        {"role": "user", "content": "调解\udfff协议怎么申请司法确认？"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_forty_turns_of_3900_characters_are_refused_by_size_before_any_work(client):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "物业" * 1950} for i in range(40)]
    r = _post(client, "/api/chat", {"question": "要多久？", "history": history})
    assert r.status_code == 413


def test_a_long_history_within_the_size_limit_is_bounded_before_it_is_read(client):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "业主大会" * 400} for i in range(8)]
    r = client.post("/api/chat", json={"question": "要多久？", "history": history})
    assert r.status_code == 200
    assert len(r.json()["query"]) < 1100  # the condensed query used at most two bounded earlier turns


def test_a_body_over_the_json_limit_is_a_413_before_it_is_parsed(client):
    r = client.post("/api/chat", content=b'{"question": "' + b"x" * (8 << 20) + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "上限是 64 KB" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_counted_as_it_arrives(client):
    def chunks():
        yield b'{"question": "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"}'
    r = client.post("/api/chat", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_the_openai_api_reports_a_large_body_in_its_own_error_shape(client):
    r = client.post("/v1/chat/completions", content=b"x" * (70 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
