"""OpenAI Chat Completions on top of ChatService, so the openai client, LangChain's ChatOpenAI and existing chat
front ends can talk to Xiaoyu. Only shapes are converted here; ChatService answers.

Xiaoyu's extras: a top-level `citations` list (also on the last streamed chunk), `refused`, `kind`, `answer_id`
(for POST /api/feedback), and an optional `session_id` (send it with the client's `extra_body`) to use the stored
conversation instead of the messages: an id the server did not issue starts a new conversation, and the response's
`session_id` is the one to send next."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from assistant.api.deps import ChatDep
from assistant.api.schemas import CitationOut
from assistant.errors import BadQuestion
from assistant.services import ChatService
from assistant.types import Answer, Channel, EventType, Turn

log = logging.getLogger("xiaoyu")
router = APIRouter(prefix="/v1", tags=["openai-compatible"])

MODEL = "xiaoyu"
_CREATED = int(time.time())


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str = ""


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # LangChain and multimodal clients send a list of parts
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Sampling parameters (temperature, top_p, max_tokens …) are accepted and ignored: answers quote policy text.
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[MessageIn] = Field(min_length=1, max_length=100)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)


def _error(status: int, message: str, kind: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "code": code, "param": param}})


def _split(messages: list[MessageIn]) -> tuple[str, list[Turn]] | str:
    """The last user message is the question; earlier user/assistant turns are history. System prompts are
    dropped on purpose: Xiaoyu answers only from its policy files, and a prompt must not be able to change that.
    Returns an error message (Chinese) when there is no question to answer."""
    if messages[-1].role != "user":
        return "最后一条消息必须是用户（user）的问题。"
    history = [Turn(m.role, m.text()) for m in messages[:-1] if m.role in ("user", "assistant") and m.text().strip()]
    return messages[-1].text(), history


def _usage(question: str, answer: Answer) -> dict:
    # Xiaoyu has no tokenizer for its answers; characters stand in for tokens (about one per Chinese character).
    prompt, completion = len(question), len(answer.text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _citations(answer: Answer) -> list[dict]:
    return [CitationOut.of(c).model_dump() for c in answer.citations]


def _completion(completion_id: str, model: str, question: str, answer: Answer) -> dict:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(question, answer),
        "citations": _citations(answer), "refused": answer.refused, "kind": answer.kind.value,
        "answer_id": answer.answer_id, **_session(answer),
    }


def _session(answer: Answer) -> dict:
    # Only for a client that asked for a stored conversation: plain OpenAI clients send the whole history.
    return {"session_id": answer.session_id} if answer.session_id else {}


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
           **extra) -> str:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
    return json.dumps(body, ensure_ascii=False)


def _stream_chunks(service: ChatService, req: ChatCompletionRequest, question: str, history: list[Turn],
                   completion_id: str, scope: tuple[str, ...]) -> Iterator[dict]:
    """Runs in a worker thread (sse-starlette iterates sync generators in the threadpool)."""
    created = int(time.time())
    yield {"data": _chunk(completion_id, created, req.model, {"role": "assistant", "content": ""})}
    answer = None
    try:
        for event in service.stream(question, history, req.session_id, Channel.OPENAI, req.user,
                                    knowledge_bases=scope):
            if event.type is EventType.DELTA and event.text:
                yield {"data": _chunk(completion_id, created, req.model, {"content": event.text})}
            elif event.type is EventType.DONE:
                answer = event.answer
    except Exception:
        log.exception("streamed completion failed")
        # Headers are already sent, so the error can only travel in the stream, as OpenAI's own API does.
        yield {"data": json.dumps({"error": {"message": "小玉出了点问题，请稍后再试。", "type": "server_error",
                                             "code": "internal_error", "param": None}}, ensure_ascii=False)}
        return
    assert answer is not None
    yield {"data": _chunk(completion_id, created, req.model, {}, "stop", citations=_citations(answer), refused=answer.refused,
                                kind=answer.kind.value, answer_id=answer.answer_id, **_session(answer))}
    if req.stream_options and req.stream_options.include_usage:
        yield {"data": json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                   "model": req.model, "choices": [], "usage": _usage(question, answer)})}
    yield {"data": "[DONE]"}


@router.post("/chat/completions", response_model=None)
async def chat_completions(req: ChatCompletionRequest, chat: ChatDep) -> JSONResponse | EventSourceResponse:
    scopes = _scopes(chat)
    if req.model not in scopes:
        return _error(404, f"模型 {req.model[:64]!r} 不存在，可用的模型：{'、'.join(scopes)}。", "invalid_request_error",
                      "model_not_found", "model")
    scope = scopes[req.model]
    split = _split(req.messages)
    if isinstance(split, str):
        return _error(400, split, "invalid_request_error", "invalid_messages", "messages")
    question, history = split
    try:
        question = chat.check_question(question)  # before streaming starts, so a bad question is a 400
    except BadQuestion as exc:
        return _error(400, exc.user_message, "invalid_request_error", "invalid_question", "messages")
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if req.stream:
        return EventSourceResponse(_stream_chunks(chat, req, question, history, completion_id, scope), ping=15)
    answer = await run_in_threadpool(partial(chat.ask, question, history, req.session_id, Channel.OPENAI, req.user,
                                             knowledge_bases=scope))
    return JSONResponse(_completion(completion_id, req.model, question, answer))


@router.get("/models")
def list_models(chat: ChatDep) -> dict:
    return {"object": "list", "data": [_model(name) for name in _scopes(chat)]}


@router.get("/models/{model_id}", response_model=None)
def get_model(model_id: str, chat: ChatDep) -> dict | JSONResponse:
    scopes = _scopes(chat)
    if model_id not in scopes:
        return _error(404, f"模型 {model_id[:64]!r} 不存在，可用的模型：{'、'.join(scopes)}。", "invalid_request_error",
                      "model_not_found")
    return _model(model_id)


def _scopes(chat: ChatService) -> dict[str, tuple[str, ...]]:
    """Model name → the knowledge bases it answers from, as Dify and FastGPT bind datasets to an app: "xiaoyu" is
    the default scope, "xiaoyu-<name>" one knowledge base alone."""
    return {MODEL: chat.scope(), **{f"{MODEL}-{name}": (name,) for name in chat.knowledge_base_names()}}


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "xiaoyu"}
