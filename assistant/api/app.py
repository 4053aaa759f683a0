"""create_app(): the FastAPI application. Routes translate; the services decide. Every XiaoyuError becomes its\nstatus and {"detail": user_message} here, in one handler."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis import RedisError

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from assistant.api.middleware import AdminGuard, BodyLimit, LoginGuard
from assistant.api.routes import admin, chat, health, openai_compat, requests, web
from assistant.api.routes import wechat as wechat_routes
from assistant.config import Settings, get_settings
from assistant.errors import Unavailable, XiaoyuError
from assistant.services import Services, build_services
from assistant.state.ratelimit import LoginThrottle, limits_storage

log = logging.getLogger("xiaoyu")

_FIELD_NAMES = {"question": "问题", "query": "查询", "history": "对话历史", "top_k": "top_k", "role": "角色",
                "content": "内容", "session_id": "会话 ID", "answer_id": "回答 ID", "rating": "评价", "comment": "意见",
                "message": "留言", "contact": "联系方式", "reply": "答复", "status": "状态"}


def _chinese_validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        kind = err.get("type", "")
        field = next((_FIELD_NAMES.get(str(p), str(p)) for p in reversed(err.get("loc", ())) if not isinstance(p, int)),
                     "请求")
        if kind == "json_invalid":
            parts.append("请求体不是有效的 JSON")
        elif kind == "missing":
            parts.append(f"缺少字段：{field}")
        elif kind in ("string_type", "int_parsing", "int_type", "list_type", "literal_error", "model_attributes_type"):
            parts.append(f"字段 {field} 的类型不正确")
        elif kind.startswith("too_long") or kind == "string_too_long":
            parts.append(f"字段 {field} 太长")
        elif kind in ("less_than_equal", "greater_than_equal", "too_short"):
            parts.append(f"字段 {field} 超出允许范围")
        else:
            parts.append(f"字段 {field} 无效")
    return "；".join(dict.fromkeys(parts)) or "请求无效"


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if getattr(app.state, "services", None) is None:
            app.state.services = build_services(settings)
            report = app.state.services.knowledge.ensure_ingested()
            if report is not None:
                log.info("首次启动，已导入内置知识库：%s", report.summary())
        app.state.services.chat.warm()  # the known questions' vectors, before the first resident waits for them
        yield

    app = FastAPI(title="小玉 Xiaoyu", version="0.1.0", lifespan=lifespan,
                  description="党建 · 物业 · 调解政策问答：每个回答都引用出处（文件 + 第X条）。")
    app.state.settings = settings
    app.state.services = services

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _chinese_validation_message(exc)})

    @app.exception_handler(XiaoyuError)
    async def on_xiaoyu_error(request: Request, exc: XiaoyuError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.user_message})

    @app.exception_handler(RedisError)
    async def on_redis_down(request: Request, exc: RedisError) -> JSONResponse:
        # Scaled out, sessions and the log live in Redis: when it stops answering, say so and let clients retry.
        log.warning("Redis unavailable: %s", exc)
        return await on_xiaoyu_error(request, Unavailable("服务暂时不可用，请稍后再试。"))

    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(requests.router)
    app.include_router(admin.router)
    app.include_router(wechat_routes.router)
    app.include_router(openai_compat.router)
    # Inside the embed guard and CORS (added next), so that a 413 still carries the CORS headers a widget needs.
    app.add_middleware(BodyLimit, json_limit=settings.web.max_body_kb * 1024,
                       upload_limit=int(settings.staff.max_upload_mb * 1_000_000) + 64 * 1024)  # + form fields
    # Outside the body limit: an admin request without the token is a 401 before any of its body is read.
    app.add_middleware(AdminGuard, admin_token=settings.staff.admin_token.get_secret_value())
    web.install(app, settings)  # widget, demo page, /sources, /api/chat/stream; CORS and rate limit
    from ui.console.app import PATH, mount_console  # imports gradio: only when an app is actually built

    if settings.staff.console_enabled:
        staff = settings.staff
        app.add_middleware(LoginGuard, paths=(f"{PATH}/login", f"{PATH}/login/"),
                           throttle=LoginThrottle(staff.login_max_failures, staff.login_max_failures_per_ip,
                                                  staff.login_lockout_minutes,
                                                  limits_storage(settings.redis_url.get_secret_value(),
                                                                 settings.redis_prefix)))
    if settings.trusted_proxies:
        # Outermost, so the rate limit and the login throttle see the client the proxy saw. `xiaoyu serve` turns
        # uvicorn's own proxy handling off: by default it believes X-Forwarded-For from 127.0.0.1.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    mount_console(app, settings)
    return app
