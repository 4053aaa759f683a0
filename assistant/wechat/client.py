"""The customer-service message API (客服消息) via wechatpy's WeChatClient, for answers too late to reply to."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session import SessionStorage

from assistant.state.sqlite import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wechat_kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL  -- unix seconds; NULL = never
);
"""
# Fetch a new token a minute early rather than send one that expires in flight.
_EARLY = 60
# invalid credential, invalid token, expired token: the stored token is stale, fetch another once.
_STALE_TOKEN = {40001, 40014, 42001}


class TokenStorage(SessionStorage):
    """wechatpy session storage in the data dir. The access token outlives restarts and is shared by every
    worker: WeChat allows 2000 token fetches a day, and each fetch soon retires the token others hold."""

    def __init__(self, path: Path):
        self._db = SQLiteFile(path, _SCHEMA)

    def get(self, key, default=None):
        with self._db.connect() as db:
            row = db.execute(
                "SELECT value FROM wechat_kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            ).fetchone()
        return row["value"] if row else default

    def set(self, key, value, ttl=None):
        if value is None:
            return
        expires_at = time.time() + max(int(ttl) - _EARLY, 1) if ttl else None
        with self._db.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO wechat_kv (key, value, expires_at) VALUES (?, ?, ?)",
                (key, str(value), expires_at),
            )

    def delete(self, key):
        with self._db.connect() as db:
            db.execute("DELETE FROM wechat_kv WHERE key = ?", (key,))


class CustomServiceClient(WeChatClient):
    """WeChatClient whose API root is configurable (a forward proxy in production, a local fake in tests).
    wechatpy 1.8 hard-codes the token URL, so fetch_access_token is redirected to the same root."""

    def __init__(self, appid: str, secret: str, api_base_url: str, storage: SessionStorage, timeout: float):
        # wechatpy's auto_retry refetches the token and retries without limit; send_text retries once instead.
        super().__init__(appid, secret, session=storage, timeout=timeout, auto_retry=False)
        self.API_BASE_URL = api_base_url.rstrip("/") + "/"
        # Pushes are rare; one at a time means two late answers finishing together fetch one token, not two.
        self._lock = threading.Lock()

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=f"{self.API_BASE_URL}token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )

    def send_text(self, openid: str, text: str) -> None:
        with self._lock:
            try:
                self.message.send_text(openid, text)
            except WeChatClientException as exc:
                if exc.errcode not in _STALE_TOKEN:
                    raise
                self.session.delete(self.access_token_key)
                self.message.send_text(openid, text)
