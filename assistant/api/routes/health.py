from fastapi import APIRouter

from assistant.api.deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(service: ServiceDep) -> dict:
    # The app only starts serving after the lifespan has loaded the index, so reaching here means it is loaded.
    return {"status": "ok", "documents": len(service.retriever.catalog.docs),
            "chunks": len(service.retriever.catalog.chunks)}
