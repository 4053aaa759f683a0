"""FastAPI dependencies as Annotated aliases, so route signatures read plainly."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from assistant.service import ChatService


def get_service(request: Request) -> ChatService:
    return request.app.state.service


ServiceDep = Annotated[ChatService, Depends(get_service)]
