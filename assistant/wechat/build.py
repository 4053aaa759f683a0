"""build_wechat(): the one place the WeChat bridge's parts are constructed."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from assistant.config import Settings
from assistant.services import ChatService, RequestDesk
from assistant.wechat.bridge import WeChatBridge
from assistant.wechat.client import CustomServiceClient, TokenStorage
from assistant.wechat.protocol import WeChatProtocol
from assistant.wechat.state import BridgeState, MemoryBridgeState, RedisBridgeState

_AES_KEY = re.compile(r"[A-Za-z0-9]{43}")


@dataclass
class WeChat:
    protocol: WeChatProtocol
    bridge: WeChatBridge

    def close(self) -> None:
        self.bridge.close()


def build_wechat(settings: Settings, service: ChatService, desk: RequestDesk | None = None) -> WeChat | None:
    """None when no token is configured: the /wechat endpoint then says it is not set up."""
    wx = settings.wechat
    if not wx.token:
        return None
    if wx.aes_key and not _AES_KEY.fullmatch(wx.aes_key):
        raise ValueError(
            f"XIAOYU_WECHAT_AES_KEY must be the 43-character EncodingAESKey of letters and digits, "
            f"got {len(wx.aes_key)} characters"
        )
    if (wx.aes_key or wx.appsecret.get_secret_value()) and not wx.appid:
        raise ValueError(
            "XIAOYU_WECHAT_APPID is required with XIAOYU_WECHAT_AES_KEY or XIAOYU_WECHAT_APPSECRET"
        )
    if wx.attempts < 1 or wx.reply_budget <= 0 or wx.workers < 1:
        raise ValueError(
            f"XIAOYU_WECHAT_ATTEMPTS ({wx.attempts}) and _WORKERS ({wx.workers}) must be >= 1 "
            f"and _REPLY_BUDGET ({wx.reply_budget}) > 0"
        )
    push = None
    if wx.appsecret.get_secret_value():
        client = CustomServiceClient(
            wx.appid,
            wx.appsecret.get_secret_value(),
            wx.api_base_url,
            TokenStorage(settings.data_dir / "wechat.sqlite3"),
            wx.api_timeout,
        )
        push = client.send_text
    pool = ThreadPoolExecutor(max_workers=wx.workers, thread_name_prefix="wechat")
    bridge = WeChatBridge(service, wx, pool, push, desk, _bridge_state(settings))
    return WeChat(WeChatProtocol(wx), bridge)


def _bridge_state(settings: Settings) -> BridgeState:
    """Redis when configured: behind a load balancer a retry of a message, or the resident's next message, may reach
    another process, which must find the message claimed and the late answers, pages and last answer."""
    url = settings.redis_url.get_secret_value()
    if not url:
        return MemoryBridgeState()
    from assistant.state import redis_state  # the redis client only when scaled out

    # A timeout well inside WeChat's 5 s, so that a stalled Redis fails the request rather than hold it past the cutoff.
    client = redis_state.connect(url, timeout=2.0)
    # Per 公众号: two accounts on one Redis may see the same MsgId.
    return RedisBridgeState(client, prefix=f"{settings.redis_prefix}:wechat:{settings.wechat.appid or 'default'}:")
