from fastapi import APIRouter

from assistant.api.deps import ChatDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(chat: ChatDep) -> dict:
    # The app only starts serving after the lifespan has loaded the index, so reaching here means it is loaded.
    stats = chat.stats()
    return {"status": "ok", "documents": stats.documents, "chunks": stats.chunks}
