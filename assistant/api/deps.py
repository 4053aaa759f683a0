"""FastAPI dependencies as Annotated aliases, so route signatures read plainly."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from assistant.services import ChatService, KnowledgeBase, KnowledgeBases, RequestDesk, Services, StaffViews
from assistant.types import DEFAULT_KB


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_chat(request: Request) -> ChatService:
    return request.app.state.services.chat


def get_knowledge(request: Request, kb: Annotated[str, Query(max_length=64, description="the knowledge base")
                                                   ] = DEFAULT_KB) -> KnowledgeBase:
    """The knowledge base `?kb=` names (the default one without it); 404 for one that does not exist."""
    return request.app.state.services.library.get(kb)


def get_library(request: Request) -> KnowledgeBases:
    return request.app.state.services.library


def get_staff(request: Request) -> StaffViews:
    return request.app.state.services.staff


def get_desk(request: Request) -> RequestDesk:
    return request.app.state.services.desk


ServicesDep = Annotated[Services, Depends(get_services)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
KnowledgeDep = Annotated[KnowledgeBase, Depends(get_knowledge)]
LibraryDep = Annotated[KnowledgeBases, Depends(get_library)]
StaffDep = Annotated[StaffViews, Depends(get_staff)]
DeskDep = Annotated[RequestDesk, Depends(get_desk)]
