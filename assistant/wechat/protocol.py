"""WeChat's wire format: signature and replay checks, the three message modes, XML in and out.

Modes (the 公众号 admin setting decides what WeChat sends):
- 明文 plaintext: the XML as is;
- 兼容 compatible: plaintext fields plus <Encrypt>, with encrypt_type=aes in the URL;
- 安全 safe: only <Encrypt>.
Whenever encrypt_type=aes is present we decrypt (checking msg_signature) and encrypt the reply, which both
compatible and safe mode accept. wechatpy does the SHA-1 and AES; this module decides what to trust."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

from assistant.config import WeChatSettings
from assistant.errors import XiaoyuError
from assistant.wechat.messages import Incoming

# Subscribing gets the welcome; other events (menu clicks, location reports, unsubscribe) get "success".
_GREETING_EVENTS = {"subscribe", "subscribe_scan"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


class Rejected(XiaoyuError):
    """A request WeChat did not (or could not) send: the API answers `status` and processes nothing."""

    def __init__(self, status: int, message: str):
        super().__init__(message, status=status)


@dataclass(frozen=True, slots=True)
class Inbound:
    incoming: Incoming
    account: str  # the 公众号's own id (ToUserName): the reply comes from it
    encrypted: bool


class WeChatProtocol:
    def __init__(self, settings: WeChatSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self.crypto = (
            WeChatCrypto(settings.token, settings.aes_key, settings.appid) if settings.aes_key else None
        )
        # Plaintext mode signs the URL, not the body: (timestamp, nonce) → the body's hash, within the replay window.
        # WeChat's retries re-send the same body with the same URL and pass; another body under a used URL does not.
        self._bodies: OrderedDict[tuple[str, str], str] = OrderedDict()

    def verify(self, signature: str, timestamp: str, nonce: str) -> None:
        """sha1 of the sorted token, timestamp and nonce (on every request); the timestamp must be recent."""
        try:
            check_signature(self.settings.token, signature, timestamp, nonce)
        except InvalidSignatureException:
            raise Rejected(403, "签名校验失败：该请求不是来自微信服务器。") from None
        try:
            age = abs(self.clock() - int(timestamp))
        except ValueError:
            raise Rejected(403, "时间戳无效。") from None
        if age > self.settings.replay_window:
            raise Rejected(403, "请求已过期（时间戳超出允许范围），可能是重放请求。")

    def read(
        self,
        body: bytes,
        encrypt_type: str = "",
        msg_signature: str = "",
        timestamp: str = "",
        nonce: str = "",
    ) -> Inbound:
        """The POST body as an Incoming message; call verify() first."""
        encrypted = encrypt_type.lower() == "aes"
        if not encrypted:
            self._check_replay(timestamp, nonce, body)
        try:
            xml = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(400, "消息不是 UTF-8 编码的 XML。") from None
        if encrypted:
            if self.crypto is None:
                raise Rejected(400, "收到加密消息，但服务器未配置 XIAOYU_WECHAT_AES_KEY（消息加解密密钥）。")
            try:
                xml = self.crypto.decrypt_message(xml, msg_signature, timestamp, nonce)
            except (InvalidSignatureException, InvalidAppIdException):
                raise Rejected(403, "加密消息签名或 AppID 校验失败。") from None
            except Exception:  # bad XML, base64, padding or length: all just "not a WeChat message"
                raise Rejected(400, "加密消息格式错误，无法解密。") from None
        try:
            message = parse_message(xml)
            return Inbound(_incoming(message), str(message.target or ""), encrypted)
        except Rejected:
            raise
        except Exception:  # expat errors, a missing <xml> root or MsgType: wechatpy raises whatever it hits
            raise Rejected(400, "消息格式错误：不是有效的微信消息 XML。") from None

    def _check_replay(self, timestamp: str, nonce: str, body: bytes) -> None:
        now = self.clock()
        # Forget URLs whose timestamp has left the window: verify() refuses those already.
        while self._bodies:
            (oldest, _), _ = next(iter(self._bodies.items()))
            if oldest.isdigit() and now - int(oldest) <= self.settings.replay_window and len(self._bodies) < 100_000:
                break
            self._bodies.popitem(last=False)
        digest = hashlib.sha256(body).hexdigest()
        seen = self._bodies.setdefault((timestamp, nonce), digest)
        if seen != digest:
            raise Rejected(403, "重放请求：这个签名已用于另一条消息，已拒绝。")

    def render(self, text: str | None, inbound: Inbound) -> str:
        """A passive text reply, encrypted when the request was; "success" when there is nothing to say."""
        if not text:
            return "success"
        reply = TextReply(
            source=inbound.account,
            target=inbound.incoming.openid,
            content=_cdata_safe(text),
            time=int(self.clock()),
        ).render()
        if inbound.encrypted and self.crypto is not None:
            return self.crypto.encrypt_message(reply, secrets.token_hex(8), str(int(self.clock())))
        return reply


def _incoming(message) -> Incoming:
    # The raw fields, not wechatpy's classes: an event type wechatpy does not know still has MsgType "event".
    data = message._data
    openid = str(message.source or "")
    if not openid:
        raise Rejected(400, "消息缺少发送者（FromUserName）。")
    kind = str(data.get("MsgType") or "").lower()
    # WeChat's advice: dedupe messages by MsgId, events (which have none) by sender + CreateTime.
    key = str(data.get("MsgId") or f"{openid}:{data.get('CreateTime', '')}")
    if kind == "text":
        return Incoming(openid, key, "text", str(data.get("Content") or ""))
    if kind == "voice":
        recognition = str(data.get("Recognition") or "").strip()
        return Incoming(openid, key, "text" if recognition else "unclear", recognition)
    if kind == "event":
        event = str(data.get("Event") or "").lower()
        return Incoming(openid, key, "subscribe" if event in _GREETING_EVENTS else "ignore")
    return Incoming(openid, key, "other")


def _cdata_safe(text: str) -> str:
    """Content goes into <![CDATA[...]]>: "]]>" would end it early; XML 1.0 forbids control characters."""
    text = _CONTROL.sub("", text)
    return text.replace("]]>", "]]]]><![CDATA[>")
