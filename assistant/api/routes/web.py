"""The residents' web widget: /widget.js (+ css), the demo page at /, cited sources at /sources/{id}, the native
SSE stream at /api/chat/stream, and install(), which adds the widget's routes, CORS and the embed guard."""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator
from functools import cache

from fastapi import APIRouter, FastAPI, Path, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse
from sse_starlette import EventSourceResponse

from assistant.api.deps import ChatDep
from assistant.api.middleware import EmbedGuard, OriginPolicy
from assistant.api.schemas import ChatRequest, ChatResponse, CitationOut
from assistant.config import PROJECT_ROOT, Settings
from assistant.errors import XiaoyuError
from assistant.services import ChatService
from assistant.state.ratelimit import RateLimiter, limits_storage
from assistant.types import Channel, EventType

log = logging.getLogger("xiaoyu")
router = APIRouter(tags=["web widget"])

WIDGET_DIR = PROJECT_ROOT / "ui" / "widget"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# The source page shows document text: it needs no script at all, so it is allowed none.
_SOURCE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def install(app: FastAPI, settings: Settings) -> None:
    """Widget routes, then the embed guard inside CORS: CORS must be outermost so that a 429 still carries
    Access-Control-Allow-Origin and the widget on another site can read the Chinese message."""
    app.include_router(router)
    web = settings.web
    limiter = None
    if web.rate_limit_per_minute:  # with XIAOYU_REDIS_URL, every host counts a client's questions together
        limiter = RateLimiter(web.rate_limit_per_minute,
                              limits_storage(settings.redis_url.get_secret_value(), settings.redis_prefix))
    app.add_middleware(EmbedGuard, origins=OriginPolicy(web.cors_origins), limiter=limiter)
    if web.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=web.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["content-type", "authorization"], expose_headers=["retry-after"],
                           max_age=600)


@cache
def _template(name: str) -> str:
    return (WIDGET_DIR / name).read_text(encoding="utf-8")


def render(name: str, safe_html: dict[str, str] | None = None, **text: str) -> str:
    """Fill {{name}} placeholders: `text` values HTML-escaped, `safe_html` (markup this module built from escaped
    parts) as is. One pass, so a value can't smuggle in placeholders of its own."""
    safe_html = safe_html or {}

    def fill(m: re.Match) -> str:
        key = m.group(1)
        return safe_html[key] if key in safe_html else html.escape(text[key])

    return _PLACEHOLDER.sub(fill, _template(name))


# ---- static widget ------------------------------------------------------------------------------------------
@router.get("/widget.js", include_in_schema=False)
def widget_js() -> FileResponse:
    return FileResponse(WIDGET_DIR / "widget.js", media_type="text/javascript; charset=utf-8",
                        headers={"cache-control": "public, max-age=300", "x-content-type-options": "nosniff"})


@router.get("/widget.css", include_in_schema=False)
def widget_css() -> FileResponse:
    return FileResponse(WIDGET_DIR / "widget.css", media_type="text/css; charset=utf-8",
                        headers={"cache-control": "public, max-age=300", "x-content-type-options": "nosniff"})


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def demo_page(request: Request) -> HTMLResponse:
    """A community website that embeds the widget with the one tag an administrator would paste."""
    snippet = f'<script src="{request.url_for("widget_js")}" data-title="社区小助手" data-welcome="…"></script>'
    return HTMLResponse(render("demo.html", snippet=snippet))


# ---- cited sources ------------------------------------------------------------------------------------------
@router.get("/sources/{chunk_id}", include_in_schema=False, response_class=HTMLResponse)
def source_page(chat: ChatDep, chunk_id: str = Path(max_length=128)) -> HTMLResponse:
    found = chat.source_passage(chunk_id)
    headers = {"content-security-policy": _SOURCE_CSP, "x-content-type-options": "nosniff",
               "referrer-policy": "no-referrer"}
    if found is None:
        return HTMLResponse(render("source_missing.html"), status_code=404, headers=headers)
    chunk, text = found
    # Everything from the document is escaped; only the <mark> around the cited passage is ours.
    body = (html.escape(text[: chunk.start]) + '<mark id="cited" tabindex="-1">'
            + html.escape(text[chunk.start: chunk.end]) + "</mark>" + html.escape(text[chunk.end:]))
    return HTMLResponse(render("source.html", {"body": body}, title=chunk.title, article=chunk.article or "全文",
                               section=chunk.section.replace(" > ", " · ") or "—", issuer=chunk.issuer or "—",
                               date=chunk.date or "—", source=chunk.source, body=body), headers=headers)


# ---- native streaming ---------------------------------------------------------------------------------------
def _sse(kind: str, data: dict) -> dict:
    return {"event": kind, "data": json.dumps(data, ensure_ascii=False)}


def _events(service: ChatService, req: ChatRequest, history, scope: tuple[str, ...]) -> Iterator[dict]:
    """citations → delta … → done. Runs in a worker thread; a client that goes away simply stops the iteration."""
    try:
        for event in service.stream(req.question, history, req.session_id, Channel.WEB, start_session=True,
                                    knowledge_bases=scope):
            if event.type is EventType.CITATIONS:
                yield _sse("citations", {"citations": [CitationOut.of(c).model_dump() for c in event.citations]})
            elif event.type is EventType.DELTA:
                yield _sse("delta", {"text": event.text})
            elif event.answer is not None:
                yield _sse("done", ChatResponse.of(event.answer).model_dump())
    except XiaoyuError as exc:
        yield _sse("error", {"detail": exc.user_message})
    except Exception:
        log.exception("streamed answer failed")
        yield _sse("error", {"detail": "小玉出了点问题，请稍后再试。"})


@router.post("/api/chat/stream", tags=["chat"], response_model=None,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "SSE: event citations, then delta (text) events, then done"}})
async def chat_stream(req: ChatRequest, chat: ChatDep) -> EventSourceResponse:
    chat.check_question(req.question)  # a bad question is a 422 with its reason, before the stream starts
    scope = chat.scope(req.knowledge_bases)  # and so is an unknown knowledge base
    history = [t.to_turn() for t in req.history]
    return EventSourceResponse(_events(chat, req, history, scope), ping=15)


@router.delete("/api/chat/sessions/{session_id}", tags=["chat"], status_code=204)
def reset_session(chat: ChatDep, session_id: str = Path(max_length=128)) -> Response:
    """The widget's 新对话: forget the stored conversation."""
    chat.reset_session(session_id)
    return Response(status_code=204)
