from functools import partial

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from assistant.api.deps import ChatDep
from assistant.api.schemas import ChatRequest, ChatResponse, HitOut, RetrieveRequest, RetrieveResponse
from assistant.types import Channel

router = APIRouter(prefix="/api", tags=["chat"])


@router.post("/retrieve", response_model=RetrieveResponse)
async def retrieve(req: RetrieveRequest, chat: ChatDep) -> RetrieveResponse:
    history = [t.to_turn() for t in req.history]
    scope = chat.scope(req.knowledge_bases)  # an unknown name is a 422 before any work
    result = await run_in_threadpool(chat.retrieve, req.query, history, req.top_k, "hybrid", scope)
    return RetrieveResponse(query=result.query, covered=result.evidence.covered, reason=result.evidence.reason,
                            hits=[HitOut.of(h) for h in result.hits])


@router.post("/chat", response_model=ChatResponse)
async def chat(req: ChatRequest, chat: ChatDep) -> ChatResponse:
    history = [t.to_turn() for t in req.history]
    scope = chat.scope(req.knowledge_bases)
    answer = await run_in_threadpool(partial(chat.ask, req.question, history, req.session_id, Channel.API,
                                             start_session=True, knowledge_bases=scope))
    return ChatResponse.of(answer)
