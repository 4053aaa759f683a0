"""FastAPI dependencies as Annotated aliases, so route signatures read plainly."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from assistant.services import ChatService, KnowledgeBase, RequestDesk, Services, StaffViews


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_chat(request: Request) -> ChatService:
    return request.app.state.services.chat


def get_knowledge(request: Request) -> KnowledgeBase:
    return request.app.state.services.knowledge


def get_staff(request: Request) -> StaffViews:
    return request.app.state.services.staff


def get_desk(request: Request) -> RequestDesk:
    return request.app.state.services.desk


ServicesDep = Annotated[Services, Depends(get_services)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
KnowledgeDep = Annotated[KnowledgeBase, Depends(get_knowledge)]
StaffDep = Annotated[StaffViews, Depends(get_staff)]
DeskDep = Annotated[RequestDesk, Depends(get_desk)]
