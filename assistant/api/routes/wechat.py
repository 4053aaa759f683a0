"""/wechat, the 公众号 server URL: translates HTTP to the WeChat protocol and bridge (assistant/wechat)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response

from assistant.wechat.build import WeChat, build_wechat

# A WeChat message is a few hundred bytes; anything this large is not one.
_MAX_BODY = 64 * 1024


@asynccontextmanager
async def _lifespan(app: FastAPI):
    # Runs after the app's own lifespan has built the service (FastAPI nests included routers' lifespans).
    app.state.wechat = build_wechat(app.state.settings, app.state.services.chat, app.state.services.desk)
    try:
        yield
    finally:
        if app.state.wechat is not None:
            await run_in_threadpool(app.state.wechat.close)


router = APIRouter(tags=["wechat"], lifespan=_lifespan)


def _wechat(request: Request) -> WeChat:
    wechat = getattr(request.app.state, "wechat", None)
    if wechat is None:
        raise HTTPException(
            503, "微信公众号接入未启用：请设置 XIAOYU_WECHAT_TOKEN（与公众号后台填写的 Token 一致）。"
        )
    return wechat


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise HTTPException(413, "消息过大，不是有效的微信消息。")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/wechat", response_class=PlainTextResponse)
async def verify(
    request: Request, signature: str = "", timestamp: str = "", nonce: str = "", echostr: str = ""
) -> PlainTextResponse:
    """Server URL check from the 公众号 admin: echo echostr when the signature is WeChat's."""
    _wechat(request).protocol.verify(signature, timestamp, nonce)  # raises Rejected: the app's handler answers
    return PlainTextResponse(echostr)


@router.post("/wechat")
async def receive(
    request: Request,
    signature: str = "",
    timestamp: str = "",
    nonce: str = "",
    encrypt_type: str = "",
    msg_signature: str = "",
) -> Response:
    wechat = _wechat(request)
    # Verified before the body is read: forged requests cost nothing. Rejected maps to its status in the app.
    wechat.protocol.verify(signature, timestamp, nonce)
    inbound = wechat.protocol.read(await _body(request), encrypt_type, msg_signature, timestamp, nonce)
    text = await wechat.bridge.reply(inbound.incoming)
    if not text:
        return PlainTextResponse("success")
    return Response(wechat.protocol.render(text, inbound), media_type="application/xml")
