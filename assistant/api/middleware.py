"""What keeps an embeddable, public question endpoint safe: the origin allowlist and the per-client question limit.

CORS headers alone only stop a foreign page from *reading* answers; a "simple" cross-origin POST still runs. So a
browser request whose Origin is neither Xiaoyu's own host nor on the allowlist is refused here before any work is
done. Requests without an Origin (curl, the openai client, the WeChat server) are not browser embeds and pass."""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from assistant.state.accounts import token_matches
from assistant.state.ratelimit import LoginThrottle, RateLimiter

# Endpoints that answer a question: each POST costs a retrieval, so each one counts against the limit. So does
# opening a hand-off request: each one reaches staff (and the webhook), and a script must not flood their queue.
QUESTION_PATHS = frozenset({"/api/chat", "/api/chat/stream", "/api/retrieve", "/v1/chat/completions", "/api/requests"})
# Endpoints a browser page may call; other routes (admin, console, WeChat) keep their own protection.
GUARDED_PREFIXES = ("/api/chat", "/api/retrieve", "/v1/", "/api/feedback", "/api/requests")


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
            wait = self.limiter.hit(client_ip(scope))
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


ADMIN_PREFIX = "/admin"
ADMIN_DISABLED = "管理接口未启用：请设置环境变量 XIAOYU_ADMIN_TOKEN 后重启服务"
ADMIN_UNAUTHORIZED = "缺少或错误的管理令牌：请在请求头中提供 Authorization: Bearer <令牌>"


def admin_refusal(configured: str, presented: str | None) -> tuple[int, str] | None:
    """(status, message) refusing an admin request that presents the bearer token `presented`; None to let it in."""
    if not configured:
        return 503, ADMIN_DISABLED
    if not token_matches(configured, presented):
        return 401, ADMIN_UNAUTHORIZED
    return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of "Bearer <token>", read as FastAPI's HTTPBearer reads it (scheme case-insensitive)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class AdminGuard:
    """The admin token is checked before a byte of the body is read. FastAPI reads and parses a request's form body
    before it runs the route's dependencies, so with require_admin alone anyone could make the server receive and
    spool a whole upload. require_admin stays on the router: it documents the security scheme in OpenAPI."""

    def __init__(self, app: ASGIApp, admin_token: str):
        self.app = app
        self.admin_token = admin_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        refusal = admin_refusal(self.admin_token, bearer_token(Headers(scope=scope).get("authorization")))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await _refuse(send, path, status, message, "authentication_error", "admin_token", extra)


def _size(limit: int) -> str:
    return f"{limit / 1_000_000:.0f} MB" if limit >= 1_000_000 else f"{limit // 1024} KB"


def client_ip(scope: Scope) -> str:
    # The peer address; with XIAOYU_TRUSTED_PROXIES set, uvicorn's ProxyHeadersMiddleware (outermost, see
    # create_app) has already replaced it with the address the trusted proxy saw. Never X-Forwarded-For itself.
    return (scope.get("client") or ("unknown", 0))[0]


class LoginGuard:
    """Throttles the console's login form (Gradio's POST <console>/login) per account and per IP: a locked one gets
    a 429 before any password is hashed. Gradio answers 200 for a good password and 400 for a bad one, which is how
    failures are counted here without reaching into Gradio."""

    def __init__(self, app: ASGIApp, paths: Iterable[str], throttle: LoginThrottle, max_body: int = 16 * 1024):
        self.app = app
        self.paths = frozenset(paths)
        self.throttle = throttle
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            event = await receive()
            if event["type"] != "http.request":
                return  # the client left before the form arrived
            body += event.get("body", b"")
            more = event.get("more_body", False)
            if len(body) > self.max_body:
                await _refuse(send, "", 413, f"登录请求过大：上限是 {_size(self.max_body)}。", "", "")
                return
        account = await _form_field(scope, body, "username")
        ip = client_ip(scope)
        wait = self.throttle.locked(ip, account)
        if wait:
            minutes = max(1, round(wait / 60))
            await _refuse(send, "", 429, f"登录失败次数过多，已暂时锁定：请 {minutes} 分钟后再试。", "", "",
                          [(b"retry-after", str(wait).encode())])
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def watch(event: dict) -> None:
            if event["type"] == "http.response.start":
                if event["status"] == 200:
                    self.throttle.succeeded(account)
                elif event["status"] == 400:
                    self.throttle.failed(ip, account)
            await send(event)

        await self.app(scope, replay, watch)


async def _form_field(scope: Scope, body: bytes, name: str) -> str:
    """One field of a buffered form body, urlencoded or multipart (Gradio's login page sends FormData)."""
    async def once() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(scope, once).form(max_files=0, max_fields=16) as form:
            value = form.get(name)
    except Exception:  # a malformed form: Gradio will refuse it; the throttle still counts the IP
        return ""
    return value.strip() if isinstance(value, str) else ""
