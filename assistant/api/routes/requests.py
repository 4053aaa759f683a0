"""Residents' side of the loop: rate an answer (POST /api/feedback), hand off to a person (POST /api/requests) and
read the reply (GET /api/requests/{id}?session_id=…). RequestDesk decides; these routes translate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from assistant.api.deps import DeskDep
from assistant.api.schemas import FeedbackIn, FeedbackOut, RequestIn, RequestOpened, RequestStatusOut

router = APIRouter(prefix="/api", tags=["feedback and hand-off"])


@router.post("/feedback", response_model=FeedbackOut, status_code=201)
async def feedback(body: FeedbackIn, desk: DeskDep) -> FeedbackOut:
    """👍 / 👎 (with an optional reason) on an answer, named by the answer_id it came with; a second rating of the
    same answer replaces the first. 404 for an unknown answer_id."""
    await run_in_threadpool(desk.rate, body.answer_id, body.rating, body.comment)
    return FeedbackOut(answer_id=body.answer_id, rating=body.rating)


@router.post("/requests", response_model=RequestOpened, status_code=201)
async def open_request(body: RequestIn, desk: DeskDep) -> RequestOpened:
    """转人工 / 留言 from a conversation the server issued (404 otherwise); staff see that conversation with it."""
    opened = await run_in_threadpool(desk.open, body.session_id, body.message, body.contact, body.answer_id)
    return RequestOpened(id=opened.id, status=opened.status.value)


@router.get("/requests/{request_id}", response_model=RequestStatusOut)
def request_status(desk: DeskDep, request_id: Annotated[str, Path(max_length=64)],
                   session_id: Annotated[str, Query(max_length=128)]) -> RequestStatusOut:
    """The request's status and the staff reply, for the session that opened it; any other session gets 404."""
    return RequestStatusOut.of(desk.status(request_id, session_id))
