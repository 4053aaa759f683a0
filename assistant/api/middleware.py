"""What keeps an embeddable, public question endpoint safe: the origin allowlist and the per-client question limit.

CORS headers alone only stop a foreign page from *reading* answers; a "simple" cross-origin POST still runs. So a
browser request whose Origin is neither Xiaoyu's own host nor on the allowlist is refused here before any work is
done. Requests without an Origin (curl, the openai client, the WeChat server) are not browser embeds and pass."""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from assistant.state.ratelimit import RateLimiter

# Endpoints that answer a question: each POST costs a retrieval, so each one counts against the limit.
QUESTION_PATHS = frozenset({"/api/chat", "/api/chat/stream", "/v1/chat/completions"})
# Endpoints a browser page may call; other routes (admin, console, WeChat) keep their own protection.
GUARDED_PREFIXES = ("/api/chat", "/v1/")


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]):
        self.allowed = {o.rstrip("/") for o in allowed}
        self.any = "*" in self.allowed

    def allows(self, origin: str, host: str) -> bool:
        """"https://shequ.example" may call us if it is listed (or "*"), or if it is our own host (the demo page)."""
        if origin == "null":  # sandboxed iframes and file:// pages: no identifiable site to allowlist
            return self.any
        return self.any or origin in self.allowed or urlsplit(origin).netloc == host


class EmbedGuard:
    """Pure ASGI middleware (so streamed responses pass through untouched)."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy, limiter: RateLimiter | None):
        self.app = app
        self.origins = origins
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or not path.startswith(
                GUARDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin and not self.origins.allows(origin, headers.get("host", "")):
            message = "此网站未获授权使用小玉。如需在您的网站嵌入小玉，请联系管理员把网站地址加入允许列表。"
            await _refuse(send, path, 403, message, "permission_error", "origin_not_allowed")
            return
        if self.limiter is not None and path in QUESTION_PATHS:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.limiter.hit(client)
            if wait:
                message = (f"提问太频繁了：每分钟最多可以提 {self.limiter.per_minute} 个问题，"
                           f"请 {wait} 秒后再试。")
                await _refuse(send, path, 429, message, "rate_limit_error", "rate_limit_exceeded",
                              [(b"retry-after", str(wait).encode())])
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, path: str, status: int, message: str, kind: str, code: str,
                  extra: list[tuple[bytes, bytes]] = ()) -> None:
    # /v1 clients (openai, LangChain) read OpenAI's error shape; our own API uses {"detail": …} like the rest.
    if path.startswith("/v1/"):
        payload = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    else:
        payload = {"detail": message}
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Limits before work: a request body over its limit is a 413 while it is being read, never parsed. A declared
    Content-Length over the limit is refused before a byte is read; a chunked body is counted as it arrives.
    Uploads (the admin API, the console) get the upload limit, everything else the JSON limit."""

    def __init__(self, app: ASGIApp, json_limit: int, upload_limit: int,
                 upload_prefixes: tuple[str, ...] = ("/admin/documents", "/console")):
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit
        self.upload_prefixes = upload_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.upload_limit if path.startswith(self.upload_prefixes) else self.json_limit
        message = f"请求内容过大：上限是 {_size(limit)}。"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, path, 413, message, "invalid_request_error", "request_too_large")
            return
        received = 0
        started = refused = False

        async def counted() -> dict:
            # Over the limit, the 413 goes out at once and the app is told the client left: FastAPI turns any
            # exception raised while it reads a body into a 400, so raising here would hide the reason.
            nonlocal received, refused
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    if not started and not refused:
                        refused = True
                        await _refuse(send, path, 413, message, "invalid_request_error", "request_too_large")
                    return {"type": "http.disconnect"}
            return event

        async def watched(event: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the app answers to the disconnect is dropped
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted, watched)
        except ClientDisconnect:
            if not refused:  # a real disconnect is the server's business as before
                raise


def _size(limit: int) -> str:
    return f"{limit / 1_000_000:.0f} MB" if limit >= 1_000_000 else f"{limit // 1024} KB"
