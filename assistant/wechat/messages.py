"""What the protocol hands the bridge: one authenticated, decoded message. Its own module so that protocol.py and
bridge.py both depend on it and not on each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MessageType = Literal["text", "subscribe", "unclear", "other", "ignore"]


@dataclass(frozen=True, slots=True)
class Incoming:
    openid: str
    key: str  # MsgId, or sender + CreateTime for events: what WeChat's retries of one message share
    type: MessageType
    text: str = ""  # the text, or a voice message's Recognition
