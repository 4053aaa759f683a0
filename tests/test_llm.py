"""LLMAnswerer, LLMCondenser and their wiring into ChatService.

Two kinds of model here:
- ScriptedModel, a fake, for hand-written LLM outputs (a real model can't be made to write a chosen mistake);
- real local HTTP servers on 127.0.0.1 that speak the OpenAI protocol to LangChain's real ChatOpenAI: one answers
  with a scripted SSE stream, one stalls, one returns 500. The real model (Gemma via llama.cpp) is in
  test_llm_integration.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from langchain_core.messages import AIMessageChunk

from assistant.config import BUNDLED_KB, LLMSettings, RetrievalSettings
from assistant.index.lexical import JiebaTokenizer
from assistant.qa.compose import Answerer, ExtractiveAnswerer
from assistant.qa.llm import LLMAnswerer, LLMCondenser
from assistant.qa.pipeline import QuestionPipeline
from assistant.qa.understand import Condenser, Understander
from assistant.qa.verify import SupportVerifier, citation_numbers
from assistant.state.questionlog import QuestionQuery
from assistant.types import Evidence, Retrieval, ScoredChunk, Turn, TurnKind
from tests.conftest import live_chunks, make_settings

# The rule-based fallback with the topic words the tests' questions use.
RULES = Condenser({"司法确认", "业主委员会", "入党"})

QUESTION = "租客不交物业费，物业能找房东要吗？"


class ScriptedModel:
    """Fake chat model: streams a fixed reply in small pieces and records the prompts it was sent.
    `gate` (optional) holds back everything after the first sentence until the test sets it."""

    def __init__(self, reply: str, gate: threading.Event | None = None, fail: Exception | None = None):
        self.reply = reply
        self.gate = gate
        self.fail = fail
        self.prompts: list[str] = []
        self.released_by_timeout = False

    def stream(self, messages, **kwargs):
        self.prompts.append("\n".join(content for _, content in messages))
        if self.fail:
            raise self.fail
        first_end = self.reply.index("。") + 1 if self.gate else len(self.reply)
        for i in range(0, len(self.reply), 3):
            if self.gate and i >= first_end + 3 and not self.gate.is_set():
                self.released_by_timeout = not self.gate.wait(30)
            yield AIMessageChunk(content=self.reply[i : i + 3])


@pytest.fixture(scope="module")
def tokenizer() -> JiebaTokenizer:
    return JiebaTokenizer(BUNDLED_KB / "userdict.dic")


@pytest.fixture
def provisions(kb_services):
    """Three real provisions of the demo corpus, found by article."""
    chunks = live_chunks(kb_services).values()

    def find(source_part: str, article: str):
        return next(c for c in chunks if source_part in c.source and c.article == article)

    return [find("/物业管理条例", "第四十一条"), find("/物业管理条例", "第四十五条"),
            find("司法确认", "第十一条")]


def retrieval_of(chunks, covered: bool = True) -> Retrieval:
    hits = tuple(ScoredChunk(c, 1.0 - i / 10) for i, c in enumerate(chunks))
    return Retrieval(QUESTION, hits, Evidence(covered, "test"))


def answerer_with(model, tokenizer, **settings) -> LLMAnswerer:
    llm_settings = LLMSettings(base_url="http://unused", **settings)
    return LLMAnswerer(model, ExtractiveAnswerer(tokenizer, "社区居委会"),
                       SupportVerifier(llm_settings.support_threshold), llm_settings)


MIXED_REPLY = (
    "您好，这个问题我来解答。"                                   # no citation: dropped
    "业主与物业使用人约定由物业使用人交纳物业服务费用的，业主负连带交纳责任【3】。"  # true, wrong source: dropped
    "物业服务企业可以停水停电催交物业服务费用【1】。"               # made up: dropped
    "业主与物业使用人约定由物业使用人交纳物业服务费用的，从其约定，业主负连带交纳责任【1】【7】。"  # true, 【7】 out of range
    "人民法院办理人民调解协议司法确认案件，不收取费用【3】。"         # true
)


def test_only_verified_sentences_reach_the_answer_with_citations_renumbered(provisions, tokenizer):
    model = ScriptedModel(MIXED_REPLY)
    answer = answerer_with(model, tokenizer).answer(retrieval_of(provisions))

    assert answer.mode == "llm"
    assert answer.text == ("业主与物业使用人约定由物业使用人交纳物业服务费用的，从其约定，业主负连带交纳责任【1】。"
                           "人民法院办理人民调解协议司法确认案件，不收取费用【2】。")
    # Only the sources actually used, numbered in order of first use: 第四十一条 → 1, 司法确认第十一条 → 2.
    assert [(c.index, c.section.rsplit(" > ", 1)[-1]) for c in answer.citations] == [(1, "第四十一条"), (2, "第十一条")]
    assert any("【7】" in n for n in answer.notes)
    assert "LLM 句子：保留 2，删除 3" in answer.notes


def test_the_prompt_numbers_the_sources_and_demands_citations(provisions, tokenizer):
    model = ScriptedModel(MIXED_REPLY)
    answerer_with(model, tokenizer).answer(retrieval_of(provisions))
    prompt = model.prompts[0]
    assert "【1】物业管理条例" in prompt and "【3】最高人民法院关于人民调解协议司法确认程序的若干规定" in prompt
    assert "只根据" in prompt and "【编号】" in prompt and "资料中没有找到答案" in prompt
    assert prompt.rstrip().endswith(f"问题：{QUESTION}")


def test_streaming_sends_each_verified_sentence_before_the_model_finishes(provisions, tokenizer):
    gate = threading.Event()
    reply = ("人民法院办理人民调解协议司法确认案件，不收取费用【3】。"
             "业主应当根据物业服务合同的约定交纳物业服务费用【1】。")
    model = ScriptedModel(reply, gate=gate)
    events = []
    for event in answerer_with(model, tokenizer).stream(retrieval_of(provisions)):
        events.append(event)
        if event.type == "delta":
            gate.set()  # the model only goes on once the first sentence has reached us
    assert not model.released_by_timeout, "the first sentence was held back until the model finished"
    kinds = [e.type for e in events]
    assert kinds == ["citations", "delta", "citations", "delta", "done"]
    # Each citations event carries the list so far, in final numbering, before the sentence that needs it.
    assert [len(e.citations) for e in events if e.type == "citations"] == [1, 2]
    done = events[-1].answer
    assert "".join(e.text for e in events if e.type == "delta") == done.text
    assert done.text == ("人民法院办理人民调解协议司法确认案件，不收取费用【1】。"
                         "业主应当根据物业服务合同的约定交纳物业服务费用【2】。")


def test_an_answer_with_nothing_verifiable_falls_back_to_the_extractive_one(provisions, tokenizer):
    reply = "物业可以停水停电【1】。房东必须替租客交钱【5】。资料中没有找到答案。"
    answerer = answerer_with(ScriptedModel(reply), tokenizer)
    answer = answerer.answer(retrieval_of(provisions))
    extractive = answerer.fallback.answer(retrieval_of(provisions))
    assert answer.mode == "extractive-fallback"
    assert (answer.text, answer.citations) == (extractive.text, extractive.citations)
    assert "LLM 回答中没有可核实的句子" in answer.notes


def test_more_verified_sentences_can_be_required(provisions, tokenizer):
    reply = "人民法院办理人民调解协议司法确认案件，不收取费用【3】。物业可以停水停电【1】。"
    answer = answerer_with(ScriptedModel(reply), tokenizer, min_sentences=2).answer(retrieval_of(provisions))
    assert answer.mode == "extractive-fallback"


def test_a_model_error_falls_back_to_the_extractive_answer(provisions, tokenizer):
    model = ScriptedModel("", fail=ConnectionError("connection reset"))
    events = list(answerer_with(model, tokenizer).stream(retrieval_of(provisions)))
    assert events[0].type == "citations" and events[-1].type == "done"
    assert events[-1].answer.mode == "extractive-fallback"
    assert any("ConnectionError" in n for n in events[-1].answer.notes)


def test_an_uncovered_question_is_refused_without_asking_the_model(provisions, tokenizer):
    model = ScriptedModel("人民法院办理人民调解协议司法确认案件，不收取费用【3】。")
    answer = answerer_with(model, tokenizer).answer(retrieval_of(provisions, covered=False))
    assert (answer.refused, answer.mode) == (True, "refusal")
    assert model.prompts == []


def test_both_answerers_satisfy_the_answerer_protocol(tokenizer):
    extractive = ExtractiveAnswerer(tokenizer, "社区居委会")
    assert isinstance(extractive, Answerer)
    assert isinstance(answerer_with(ScriptedModel(""), tokenizer), Answerer)


# ---- follow-up condensation ----------------------------------------------------------------------------
HISTORY = [Turn("user", "调解协议怎么申请司法确认？"), Turn("assistant", "根据《若干规定》第二条……")]


def test_a_follow_up_is_rewritten_by_the_llm_and_the_rewrite_is_what_the_plan_searches():
    model = ScriptedModel("人民调解协议申请司法确认要多长时间？")
    condenser = LLMCondenser(model, LLMSettings(base_url="http://unused"), RULES)
    # Planning needs no answerer (None makes sure it doesn't touch it), and of the retriever only whether a short
    # turn is near a known small-talk turn (a stand-in that knows none: anything else of it would raise).
    asked = []
    knows_no_small_talk = SimpleNamespace(small_talk=lambda q: asked.append(q) or "")
    pipeline = QuestionPipeline(Understander(RULES, 1000, 6), knows_no_small_talk, None, RetrievalSettings(), condenser)
    plan = pipeline.plan("要多久？", HISTORY, time.monotonic() + 30)
    assert asked == ["要多久？"]
    assert (plan.kind, plan.condensed_by) == (TurnKind.FOLLOW_UP, "llm")
    assert plan.query == "人民调解协议申请司法确认要多长时间？"
    assert "调解协议怎么申请司法确认" in model.prompts[0] and "要多久？" in model.prompts[0]


def test_a_standalone_question_costs_no_llm_call():
    model = ScriptedModel("不该被调用")
    condenser = LLMCondenser(model, LLMSettings(base_url="http://unused"), RULES)
    assert condenser.condense("业主委员会委员由什么样的业主担任？", HISTORY) == "业主委员会委员由什么样的业主担任？"
    assert model.prompts == []


@pytest.mark.parametrize("reply, fail", [("", ConnectionError("down")), ("好的。", None), ("x" * 300, None)])
def test_a_failed_or_unusable_rewrite_falls_back_to_the_rule(reply, fail):
    condenser = LLMCondenser(ScriptedModel(reply, fail=fail), LLMSettings(base_url="http://unused"), RULES)
    assert condenser.condense("要多久？", HISTORY) == "调解协议怎么申请司法确认？ 要多久？"


# ---- real local OpenAI-compatible servers: scripted, stalling, failing ------------------------------------
class _Endpoint(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.release = threading.Event()
        self.requests = 0
        self.last_request: dict = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Endpoint

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.server.requests += 1
        self.server.last_request = request
        if self.server.behaviour == "error":
            body = json.dumps({"error": {"message": "model crashed", "type": "server_error"}}).encode()
            self.send_response(500)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.server.behaviour == "stall":
            self.server.release.wait(60)  # far beyond any budget the tests give
        reply = scripted_reply(request["messages"][-1]["content"])
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for i in range(0, len(reply), 4):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": reply[i : i + 4]}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def longest_sentence(source: str) -> str:
    """The longest sentence of a source's body (its first line is the header naming it)."""
    body = source.split("\n", 1)[-1]
    return max((s.strip() for s in re.findall(r"[^。；\n]+", body)), key=len)


def scripted_reply(prompt: str) -> str:
    """What the scripted endpoint answers: a sentence copied from source 【1】 of the prompt, correctly cited,
    then a made-up one citing 【2】."""
    first_source = re.search(r"^【1】(.*?)(?=\n\n【2】|\n\n问题：)", prompt, re.DOTALL | re.MULTILINE).group(1)
    return f"{longest_sentence(first_source)}【1】。物业可以停水停电催交物业费【2】。"


@pytest.fixture
def endpoint(request):
    server = _Endpoint(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def llm_service(kb_data_dir, embedder, tmp_path, **llm):
    """A real ChatService over the demo index, built by build_service with the LLM settings given."""
    from assistant.services import build_services

    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    return build_services(make_settings(data_dir, llm=LLMSettings(**llm)), embedder)


FEE_QUESTION = "租出去的房子，租客不交物业费，业主要负责吗？"


@pytest.mark.parametrize("endpoint", ["answer"], indirect=True)
def test_build_service_wires_the_llm_answerer_over_http(endpoint, kb_data_dir, embedder, tmp_path):
    service = llm_service(kb_data_dir, embedder, tmp_path, base_url=endpoint.base_url, model="m")
    answer = service.chat.ask(FEE_QUESTION)
    top = service.chat.retrieve(FEE_QUESTION).hits[0].chunk
    assert answer.mode == "llm"
    assert answer.text == f"{longest_sentence(top.text)}【1】。"  # the made-up 【2】 sentence is gone
    assert [(c.index, c.chunk_id) for c in answer.citations] == [(1, top.id)]
    logged = service.staff.questions(QuestionQuery(limit=1))[0]
    assert (logged.mode, logged.answer) == ("llm", answer.text)
    # The classic field, which every OpenAI-compatible server honours (llama.cpp ignores max_completion_tokens).
    assert endpoint.last_request["max_tokens"] == service.settings.llm.max_tokens
    assert "max_completion_tokens" not in endpoint.last_request


@pytest.mark.parametrize("endpoint", ["stall"], indirect=True)
def test_a_stalled_endpoint_gives_the_extractive_answer_within_the_wechat_budget(endpoint, kb_data_dir, embedder,
                                                                                   tmp_path):
    service = llm_service(kb_data_dir, embedder, tmp_path, base_url=endpoint.base_url, timeout=120,
                          wechat_timeout=1.0)
    answer = service.chat.ask(FEE_QUESTION, channel="wechat")
    # Had the 1 s WeChat budget not applied, the stalled server would have been waited for and answered "llm".
    assert answer.mode == "extractive-fallback"
    assert any("LLMTimeout" in n for n in answer.notes)
    assert not answer.refused and answer.citations
    logged = service.staff.questions(QuestionQuery(limit=1))[0]
    assert (logged.channel, logged.mode) == ("wechat", "extractive-fallback")
    assert "LLMTimeout" in logged.notes


@pytest.mark.parametrize("endpoint", ["stall"], indirect=True)
def test_an_explicit_budget_overrides_the_channel_default(endpoint, kb_data_dir, embedder, tmp_path):
    service = llm_service(kb_data_dir, embedder, tmp_path, base_url=endpoint.base_url, timeout=120)
    events = list(service.chat.stream(FEE_QUESTION, budget=1.0))
    assert events[-1].answer.mode == "extractive-fallback"
    assert "".join(e.text for e in events if e.type == "delta") == events[-1].answer.text


@pytest.mark.parametrize("endpoint", ["error"], indirect=True)
def test_an_endpoint_error_gives_the_extractive_answer_in_ask_stream_and_http(endpoint, kb_data_dir, embedder,
                                                                            tmp_path):
    from fastapi.testclient import TestClient

    from assistant.api import create_app

    service = llm_service(kb_data_dir, embedder, tmp_path, base_url=endpoint.base_url)
    answer = service.chat.ask(FEE_QUESTION)
    assert answer.mode == "extractive-fallback"
    assert any("500" in n for n in answer.notes)
    events = list(service.chat.stream(FEE_QUESTION))
    assert events[0].type == "citations" and events[-1].answer.mode == "extractive-fallback"
    with TestClient(create_app(service.settings, service)) as client:
        response = client.post("/api/chat", json={"question": FEE_QUESTION})
    assert response.status_code == 200
    assert response.json()["answer"] == answer.text
    assert endpoint.requests == 3  # one attempt per answer: no retries eating the budget


def test_an_unreachable_endpoint_gives_the_extractive_answer(kb_data_dir, embedder, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    service = llm_service(kb_data_dir, embedder, tmp_path, base_url=f"http://127.0.0.1:{port}/v1")
    answer = service.chat.ask(FEE_QUESTION)
    assert answer.mode == "extractive-fallback"
    assert any("Connection" in n for n in answer.notes)


def test_without_a_base_url_the_extractive_answerer_and_the_rule_condenser_are_used(kb_services):
    assert kb_services.chat.ask(FEE_QUESTION).mode == "extractive"
    assert kb_services.chat.explain("要多久？", HISTORY).plan.condensed_by == "rules"


def test_citation_numbers_in_an_llm_answer_stay_in_range(provisions, tokenizer):
    answer = answerer_with(ScriptedModel(MIXED_REPLY), tokenizer).answer(retrieval_of(provisions))
    assert set(citation_numbers(answer.text)) == {c.index for c in answer.citations}
