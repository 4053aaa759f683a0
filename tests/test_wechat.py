"""The /wechat bridge end to end: requests signed and encrypted exactly as WeChat's servers do, in all three
modes, answered by the real ChatService over the demo knowledge base.

WeChat's own servers can't take part here, so `WeChatSim` plays them: it signs (sha1 of the sorted token,
timestamp and nonce), encrypts (AES-256-CBC as in WeChat's spec) and decrypts replies with its own code,
written from the protocol description rather than with wechatpy, so the bridge's use of wechatpy is checked
against an independent implementation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import struct
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import WeChatSettings
from assistant.state.sessions import SessionStore
from assistant.wechat import format as fmt
from assistant.wechat.bridge import session_id
from assistant.wechat.client import CustomServiceClient, TokenStorage

TOKEN = "xiaoyuTestToken2024"
APPID = "wx5823bf96d3bd56c7"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"  # a 43-character EncodingAESKey
ACCOUNT = "gh_0123456789ab"
QUESTION = "调解协议怎么申请司法确认？"
# The rule on where to apply (第二条) or with which papers (第三条): which of the two comes first, or alone, is the
# provision ranker's call (tests/test_ranker.py); these tests are about what WeChat carries.
ANSWER_MARK = "《最高人民法院关于人民调解协议司法确认程序的若干规定》"
CITED = re.compile(r"【\d】" + re.escape(ANSWER_MARK) + "第[二三]条")
SAYS_HOW = ("司法确认申请书", "基层人民法院")


# ---- WeChat's side of the protocol -------------------------------------------------------------------------
def sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def _cipher(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def wx_encrypt(xml: str, appid: str = APPID, encoding_key: str = AES_KEY) -> str:
    key = base64.b64decode(encoding_key + "=")
    body = xml.encode("utf-8")
    raw = os.urandom(16) + struct.pack(">I", len(body)) + body + appid.encode()
    pad = 32 - len(raw) % 32  # PKCS#7 to a 32-byte block, as WeChat does
    raw += bytes([pad]) * pad
    enc = _cipher(key).encryptor()
    return base64.b64encode(enc.update(raw) + enc.finalize()).decode()


def wx_decrypt(encrypted: str) -> str:
    key = base64.b64decode(AES_KEY + "=")
    dec = _cipher(key).decryptor()
    raw = dec.update(base64.b64decode(encrypted)) + dec.finalize()
    raw = raw[: -raw[-1]][16:]
    (length,) = struct.unpack(">I", raw[:4])
    assert raw[4 + length :].decode() == APPID, "the reply must be encrypted for our AppID"
    return raw[4 : 4 + length].decode("utf-8")


def wechat_xml(msg_type: str, fields: str, openid: str = "oUser1") -> str:
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[{msg_type}]]></MsgType>{fields}</xml>"
    )


def text_xml(content: str, msg_id: str, openid: str) -> str:
    content = content.replace("]]>", "]]]]><![CDATA[>")  # how any XML writer puts "]]>" into CDATA
    return wechat_xml("text", f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId>", openid)


class WeChatSim:
    """Sends what WeChat's servers send to the 公众号 server URL, and reads the replies as WeChat would."""

    def __init__(self, client: TestClient, mode: str = "plaintext"):
        self.client = client
        self.mode = mode
        self.app = client.app

    @property
    def bridge(self):
        return self.app.state.wechat.bridge

    def signed_params(self, timestamp: int | None = None, openid: str = "") -> dict:
        ts, nonce = str(int(time.time()) if timestamp is None else timestamp), str(secrets.randbelow(10**9))
        params = {"signature": sha1_sorted(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
        if openid:
            params["openid"] = openid  # WeChat adds it to message pushes
        return params

    def post_xml(self, xml: str, openid: str = "oUser1", timestamp: int | None = None):
        params = self.signed_params(timestamp, openid)
        body = xml
        if self.mode != "plaintext":
            encrypted = wx_encrypt(xml)
            params |= {
                "encrypt_type": "aes",
                "msg_signature": sha1_sorted(TOKEN, params["timestamp"], params["nonce"], encrypted),
            }
            head = (
                xml.removesuffix("</xml>")
                if self.mode == "compatible"
                else f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
            )
            body = f"{head}<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        return self.client.post("/wechat", params=params, content=body.encode("utf-8"))

    def read_reply(self, response, openid: str = "oUser1") -> str:
        """The text the resident sees, or "success" (WeChat shows nothing)."""
        assert response.status_code == 200, response.text
        if response.text == "success":
            return "success"
        root = ET.fromstring(response.text)
        if self.mode != "plaintext":
            assert root.find("Content") is None, "an encrypted-mode reply must not carry plaintext"
            encrypted = root.findtext("Encrypt")
            assert root.findtext("MsgSignature") == sha1_sorted(
                TOKEN, root.findtext("TimeStamp"), root.findtext("Nonce"), encrypted
            )
            root = ET.fromstring(wx_decrypt(encrypted))
        assert root.findtext("MsgType") == "text"
        assert root.findtext("ToUserName") == openid and root.findtext("FromUserName") == ACCOUNT
        content = root.findtext("Content")
        assert len(content.encode("utf-8")) <= 2048
        return content

    def send(self, content: str, msg_id: str | None = None, openid: str = "oUser1") -> str:
        msg_id = msg_id or str(secrets.randbelow(10**18))
        return self.read_reply(self.post_xml(text_xml(content, msg_id, openid), openid), openid)

    def send_xml(self, xml: str, openid: str = "oUser1") -> str:
        return self.read_reply(self.post_xml(xml, openid), openid)


class SlowAsk:
    """Wraps the real ChatService.ask, counting calls, and holds each call until `release()`: a deliberate
    fake of slowness (an LLM backend, a loaded server). A gate instead of a sleep keeps the tests free of
    timing: a test decides exactly when the answer becomes ready relative to WeChat's retries."""

    def __init__(self, service, slow: bool = True):
        self.real = service.chat.ask
        self.calls = 0
        self.gate = threading.Event()
        if not slow:
            self.gate.set()
        service.chat.ask = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        assert self.gate.wait(120), "the test never released the slowed answerer"
        return self.real(*args, **kwargs)

    def release(self):
        self.gate.set()


@pytest.fixture
def make_wechat(kb_services):
    """A WeChatSim over a fresh app on the real service; keyword arguments override WeChat settings."""
    clients = []

    def make(mode: str = "plaintext", **overrides) -> WeChatSim:
        # A generous budget unless a test shortens it: the real answerer on a shared, loaded CI core must not
        # spill into the retry path by accident.
        values = {
            "token": TOKEN,
            "appid": APPID,
            "aes_key": AES_KEY,
            "reply_budget": 120.0,
            "retry_hold": 0.0,
        }
        settings = kb_services.settings.model_copy(update={"wechat": WeChatSettings(**(values | overrides))})
        client = TestClient(create_app(settings, kb_services))
        client.__enter__()
        clients.append(client)
        return WeChatSim(client, mode)

    yield make
    ask = kb_services.chat.ask
    if isinstance(ask, SlowAsk):
        ask.release()  # a failed test must not leave the pool blocked
    for client in clients:
        client.__exit__(None, None, None)


# ---- URL verification and authentication -------------------------------------------------------------------
def test_url_verification_echoes_echostr(make_wechat):
    wx = make_wechat()
    response = wx.client.get("/wechat", params=wx.signed_params() | {"echostr": "5837205361243157391"})
    assert response.status_code == 200
    assert response.text == "5837205361243157391"


def test_url_verification_with_a_forged_signature_is_refused(make_wechat):
    wx = make_wechat()
    params = wx.signed_params() | {"echostr": "5837205361243157391"}
    params["signature"] = sha1_sorted("not-the-token", params["timestamp"], params["nonce"])
    response = wx.client.get("/wechat", params=params)
    assert response.status_code == 403
    assert "5837205361243157391" not in response.text
    assert "签名校验失败" in response.json()["detail"]


def _opens_with_a_cited_sentence(reply: str) -> bool:
    """The extractive answer's shape: its first line is a provision's sentence marked 【1】, not a refusal."""
    first = reply.split("\n", 1)[0]
    return first.endswith("【1】") or "【1】" in first and not first.startswith("抱歉")


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_a_text_message_gets_a_cited_chinese_answer_in_every_mode(make_wechat, kb_services, mode):
    wx = make_wechat(mode)
    reply = wx.send(QUESTION)
    assert _opens_with_a_cited_sentence(reply)
    basis = reply.split("\n\n依据：\n", 1)[1].split("\n\n", 1)[0]
    assert CITED.search(basis)
    assert any(words in reply for words in SAYS_HOW)


def test_a_forged_message_is_refused_and_not_processed(make_wechat, kb_services):
    wx = make_wechat()
    counter = SlowAsk(kb_services, slow=False)
    params = wx.signed_params(openid="oUser1")
    params["signature"] = "0" * 40
    response = wx.client.post("/wechat", params=params, content=text_xml(QUESTION, "1001", "oUser1").encode())
    assert response.status_code == 403
    assert counter.calls == 0


def test_an_encrypted_message_with_a_forged_msg_signature_is_refused(make_wechat, kb_services):
    wx = make_wechat("safe")
    counter = SlowAsk(kb_services, slow=False)
    params = wx.signed_params(
        openid="oUser1"
    )  # the outer signature is right; the one over the ciphertext is not
    encrypted = wx_encrypt(text_xml(QUESTION, "1002", "oUser1"))
    params |= {
        "encrypt_type": "aes",
        "msg_signature": sha1_sorted("wrong", params["timestamp"], params["nonce"], encrypted),
    }
    body = f"<xml><ToUserName>{ACCOUNT}</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    response = wx.client.post("/wechat", params=params, content=body.encode())
    assert response.status_code == 403
    assert counter.calls == 0


def test_a_message_encrypted_for_another_appid_is_refused(make_wechat, kb_services):
    wx = make_wechat("safe")
    counter = SlowAsk(kb_services, slow=False)
    params = wx.signed_params(openid="oUser1")
    encrypted = wx_encrypt(text_xml(QUESTION, "1003", "oUser1"), appid="wx_someone_else")
    params |= {
        "encrypt_type": "aes",
        "msg_signature": sha1_sorted(TOKEN, params["timestamp"], params["nonce"], encrypted),
    }
    body = f"<xml><ToUserName>{ACCOUNT}</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    response = wx.client.post("/wechat", params=params, content=body.encode())
    assert response.status_code == 403
    assert counter.calls == 0


@pytest.mark.parametrize("age", [3600, -3600])
def test_a_replayed_request_with_a_stale_timestamp_is_refused(make_wechat, kb_services, age):
    wx = make_wechat()
    counter = SlowAsk(kb_services, slow=False)
    stale = int(time.time()) - age  # correctly signed, but an hour away from now
    response = wx.post_xml(text_xml(QUESTION, "1004", "oUser1"), timestamp=stale)
    assert response.status_code == 403
    assert "过期" in response.json()["detail"]
    assert counter.calls == 0


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><ToUserName><![CDATA[gh_x]]></ToUser",  # cut off
        b"this is not xml",
        b"<root><MsgType>text</MsgType></root>",  # no <xml> root
        b"<xml><FromUserName>oUser1</FromUserName></xml>",  # no MsgType
        b"<xml><MsgType>text</MsgType><Content>hi</Content></xml>",  # no sender
        "<xml>物业</xml>".encode("gbk"),  # not UTF-8
        # entity expansion ("billion laughs") and an external entity: refused, never expanded or fetched
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b"<xml><FromUserName>o</FromUserName><MsgType>text</MsgType><Content>&b;</Content></xml>"
        ),
        (
            b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b"<xml><FromUserName>o</FromUserName><MsgType>text</MsgType><Content>&e;</Content></xml>"
        ),
        b"",
    ],
)
def test_malformed_xml_gets_400_and_is_not_processed(make_wechat, kb_services, body):
    wx = make_wechat()
    counter = SlowAsk(kb_services, slow=False)
    response = wx.client.post("/wechat", params=wx.signed_params(openid="oUser1"), content=body)
    assert response.status_code == 400, response.text
    assert "消息" in response.json()["detail"]
    assert counter.calls == 0


@pytest.mark.parametrize(
    "encrypted",
    ["!!!not base64!!!", base64.b64encode(b"short").decode(), wx_encrypt("decrypts fine, but is not XML")],
)
def test_ciphertext_that_is_not_a_message_gets_400(make_wechat, kb_services, encrypted):
    wx = make_wechat("safe")
    counter = SlowAsk(kb_services, slow=False)
    params = wx.signed_params(openid="oUser1")
    params |= {
        "encrypt_type": "aes",
        "msg_signature": sha1_sorted(TOKEN, params["timestamp"], params["nonce"], encrypted),
    }
    body = f"<xml><ToUserName>{ACCOUNT}</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    response = wx.client.post("/wechat", params=params, content=body.encode())
    assert response.status_code == 400, response.text
    assert counter.calls == 0


def test_an_oversized_body_is_refused(make_wechat):
    wx = make_wechat()
    response = wx.client.post(
        "/wechat", params=wx.signed_params(), content=b"<xml>" + b"x" * 100_000 + b"</xml>"
    )
    assert response.status_code == 413


def test_an_encrypted_message_without_a_configured_key_gets_a_clear_400(make_wechat):
    wx = make_wechat("safe", aes_key="")
    response = wx.post_xml(text_xml(QUESTION, "1005", "oUser1"))
    assert response.status_code == 400
    assert "XIAOYU_WECHAT_AES_KEY" in response.json()["detail"]


def test_the_endpoint_says_it_is_disabled_without_a_token(make_wechat):
    wx = make_wechat(token="")
    for response in (
        wx.client.get("/wechat", params={"echostr": "1"}),
        wx.client.post("/wechat", content=b"<xml/>"),
    ):
        assert response.status_code == 503
        assert "XIAOYU_WECHAT_TOKEN" in response.json()["detail"]


def test_a_malformed_aes_key_fails_at_startup_naming_the_setting(kb_services):
    settings = kb_services.settings.model_copy(
        update={"wechat": WeChatSettings(token=TOKEN, appid=APPID, aes_key="short")}
    )
    with (
        pytest.raises(ValueError, match="XIAOYU_WECHAT_AES_KEY"),
        TestClient(create_app(settings, kb_services)),
    ):
        pass


# ---- the 5-second rule -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["plaintext", "safe"])
def test_a_retried_msgid_is_computed_once_and_every_retry_gets_the_same_reply(make_wechat, kb_services, mode):
    wx = make_wechat(mode)
    counter = SlowAsk(kb_services, slow=False)
    replies = [wx.send(QUESTION, msg_id="6001") for _ in range(3)]
    assert counter.calls == 1
    assert replies[0] == replies[1] == replies[2]
    assert CITED.search(replies[0])


def test_an_answer_too_slow_for_the_first_request_is_given_to_a_retry_from_the_cache(make_wechat, kb_services):
    wx = make_wechat(reply_budget=0.2)
    slow = SlowAsk(kb_services)
    # Not ready within the budget: the first request stays silent (WeChat has hung up by then) and WeChat
    # retries.
    assert wx.send(QUESTION, msg_id="7001") == "success"
    slow.release()
    assert wx.bridge.wait_idle(120)
    reply = wx.send(QUESTION, msg_id="7001")  # WeChat's retry of the same message
    assert _opens_with_a_cited_sentence(reply)
    assert slow.calls == 1


def test_an_answer_later_than_the_last_retry_comes_with_the_next_message(make_wechat, kb_services):
    wx = make_wechat(reply_budget=0.2)
    slow = SlowAsk(kb_services)
    assert wx.send(QUESTION, msg_id="8001") == "success"
    assert wx.send(QUESTION, msg_id="8001") == "success"
    assert (
        wx.send(QUESTION, msg_id="8001") == fmt.PLACEHOLDER
    )  # the last retry must be answered with something
    # The resident replies too early: told to wait, and the text is not asked as a question.
    assert wx.send("好的", msg_id="8002") == fmt.STILL_WORKING
    slow.release()
    assert wx.bridge.wait_idle(120)
    reply = wx.send("1", msg_id="8003")
    assert reply.startswith(f"您之前的问题“{QUESTION}”查到了")
    assert CITED.search(reply)
    assert slow.calls == 1
    # Delivered once: the next message is a question again.
    again = wx.send("物业服务企业可以停水停电催交物业费吗？", msg_id="8004")
    assert _opens_with_a_cited_sentence(again) and not again.startswith("您之前的问题")
    assert slow.calls == 2


def test_a_message_beyond_the_pending_limit_is_asked_to_retry_shortly(make_wechat, kb_services):
    wx = make_wechat(reply_budget=0.2, max_pending=1)
    slow = SlowAsk(kb_services)
    assert wx.send(QUESTION, msg_id="8101", openid="oA") == "success"
    assert wx.send("物业费不交会怎么样？", msg_id="8102", openid="oB") == fmt.BUSY
    slow.release()
    assert wx.bridge.wait_idle(120)
    assert slow.calls == 1


# ---- customer-service push (AppSecret configured) ----------------------------------------------------------
class FakeWeChatAPI:
    """A real HTTP server on 127.0.0.1 standing in for api.weixin.qq.com, which tests cannot reach: it issues
    access tokens and records customer-service messages, as the real API does for a verified account."""

    def __init__(self, send_errcode: int = 0):
        self.token_fetches = 0
        self.sent: list[dict] = []
        self.send_errcode = send_errcode
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, payload: dict):
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if (
                    url.path == "/cgi-bin/token"
                    and query.get("appid") == [APPID]
                    and query.get("secret") == ["s3cret"]
                ):
                    fake.token_fetches += 1
                    self._json({"access_token": f"TOKEN{fake.token_fetches}", "expires_in": 7200})
                else:
                    self._json({"errcode": 40013, "errmsg": "invalid appid"})

            def do_POST(self):
                url = urlparse(self.path)
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                issued = [f"TOKEN{n}" for n in range(1, fake.token_fetches + 1)]
                if (
                    url.path != "/cgi-bin/message/custom/send"
                    or parse_qs(url.query).get("access_token", [""])[0] not in issued
                ):
                    return self._json({"errcode": 40001, "errmsg": "invalid credential"})
                if fake.send_errcode:
                    return self._json({"errcode": fake.send_errcode, "errmsg": "response out of time limit"})
                fake.sent.append(data)
                self._json({"errcode": 0, "errmsg": "ok"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/cgi-bin/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wechat_api():
    apis = []

    def make(**kwargs) -> FakeWeChatAPI:
        apis.append(FakeWeChatAPI(**kwargs))
        return apis[-1]

    yield make
    for api in apis:
        api.close()


def test_with_an_appsecret_a_late_answer_is_pushed_as_a_customer_service_message(
    make_wechat, kb_services, wechat_api
):
    api = wechat_api()
    wx = make_wechat("safe", reply_budget=0.2, appsecret="s3cret", api_base_url=api.base_url)
    slow = SlowAsk(kb_services)
    for question, msg_id in ((QUESTION, "9001"), ("物业服务企业可以停水停电催交物业费吗？", "9002")):
        replies = [wx.send(question, msg_id=msg_id) for _ in range(3)]
        assert replies == ["success", "success", fmt.PLACEHOLDER_PUSH]
    slow.release()
    assert wx.bridge.wait_idle(120)  # waits for the pushes too
    assert {m["touser"] for m in api.sent} == {"oUser1"}
    assert [m["msgtype"] for m in api.sent] == ["text", "text"]
    texts = sorted((m["text"]["content"] for m in api.sent), key=lambda t: ANSWER_MARK in t)
    assert "供水" in texts[0] and _opens_with_a_cited_sentence(texts[1])
    assert all(len(t.encode("utf-8")) <= 2048 for t in texts)
    assert api.token_fetches == 1  # the access token is cached between pushes
    assert slow.calls == 2
    # Pushed, so not delivered again: the next message is simply a question.
    assert _opens_with_a_cited_sentence(wx.send("物业费不交会怎么样？", msg_id="9003"))
    assert slow.calls == 3


def test_when_the_push_fails_the_answer_comes_with_the_next_message(make_wechat, kb_services, wechat_api):
    api = wechat_api(send_errcode=45015)  # WeChat refuses: the resident has not interacted recently enough
    wx = make_wechat(reply_budget=0.2, appsecret="s3cret", api_base_url=api.base_url)
    slow = SlowAsk(kb_services)
    assert [wx.send(QUESTION, msg_id="9101") for _ in range(3)][-1] == fmt.PLACEHOLDER_PUSH
    slow.release()
    assert wx.bridge.wait_idle(120)
    assert api.sent == []
    reply = wx.send("在吗", msg_id="9102")
    assert reply.startswith(f"您之前的问题“{QUESTION}”查到了") and CITED.search(reply)
    assert slow.calls == 1


def test_a_stale_stored_token_is_replaced_once_and_the_message_still_sent(tmp_path, wechat_api):
    api = wechat_api()
    storage = TokenStorage(tmp_path / "wechat.sqlite3")
    storage.set(f"{APPID}_access_token", "REVOKED", 7200)  # e.g. another server fetched a newer one long ago
    client = CustomServiceClient(APPID, "s3cret", api.base_url, storage, 10)
    client.send_text("oUser1", "您好")
    assert api.token_fetches == 1
    assert [m["text"]["content"] for m in api.sent] == ["您好"]


def test_the_access_token_is_shared_through_the_data_dir(tmp_path, wechat_api):
    api = wechat_api()
    first = CustomServiceClient(APPID, "s3cret", api.base_url, TokenStorage(tmp_path / "wechat.sqlite3"), 10)
    first.send_text("oUser1", "您好")
    # A restarted process (or another worker) reads the stored token instead of fetching a new one.
    second = CustomServiceClient(APPID, "s3cret", api.base_url, TokenStorage(tmp_path / "wechat.sqlite3"), 10)
    second.send_text("oUser2", "您好")
    assert api.token_fetches == 1
    assert [m["touser"] for m in api.sent] == ["oUser1", "oUser2"]


# ---- conversation ------------------------------------------------------------------------------------------
def test_a_long_answer_is_split_and_continue_returns_the_next_parts(make_wechat, kb_services):
    wx = make_wechat("safe", reply_max_bytes=400)
    expected = fmt.format_answer(kb_services.chat.ask(QUESTION))  # the same answer, asked without a session
    pages = [wx.send(QUESTION)]
    while pages[-1].endswith(fmt.MORE_HINT):
        pages.append(wx.send("继续"))
        assert len(pages) < 20
    assert len(pages) >= 3
    assert all(len(p.encode("utf-8")) <= 400 for p in pages)
    joined = "".join(p.removesuffix("\n\n" + fmt.MORE_HINT) for p in pages)
    assert "".join(joined.split()) == "".join(expected.split())
    assert wx.send("继续") == fmt.NO_MORE


def test_a_retried_continue_does_not_skip_a_part(make_wechat, kb_services):
    wx = make_wechat(reply_max_bytes=400)
    wx.send(QUESTION)
    second = [wx.send("继续", msg_id="9201") for _ in range(2)]
    third = wx.send("继续", msg_id="9202")
    assert second[0] == second[1] != third


def _stored(services, session: str):
    """The conversation as stored in the data dir, read by a session store of our own."""
    return SessionStore(services.settings.data_dir / "sessions.sqlite3").history(session)


def test_memory_is_per_openid_and_restart_clears_it(make_wechat, kb_services):
    wx = make_wechat()
    wx.send(QUESTION, openid="oAlice")
    wx.send("入党需要什么条件？", openid="oBob")
    alice = _stored(kb_services, session_id("oAlice"))
    assert [t.content for t in alice if t.role == "user"] == [QUESTION]
    assert [t.content for t in _stored(kb_services, session_id("oBob")) if t.role == "user"] == [
        "入党需要什么条件？"
    ]
    assert wx.send("重新开始", openid="oAlice") == fmt.RESET_DONE
    assert _stored(kb_services, session_id("oAlice")) == []
    assert len(_stored(kb_services, session_id("oBob"))) == 2


def test_questions_are_logged_on_the_wechat_channel(make_wechat, kb_services):
    wx = make_wechat()
    counter = SlowAsk(kb_services, slow=False)
    real = counter.real
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    counter.real = spy
    wx.send(QUESTION, openid="oCarol")
    assert (
        seen["channel"] == "wechat"
        and seen["user"] == "oCarol"
        and seen["session_id"] == session_id("oCarol")
    )


def test_a_too_long_question_gets_the_services_chinese_message(make_wechat):
    wx = make_wechat()
    assert wx.send("物业" * 600).startswith("问题太长了")


def test_an_answerer_failure_gets_an_apology_not_an_error(make_wechat, kb_services):
    wx = make_wechat()

    def broken(*args, **kwargs):  # a fake failure: the real answerer does not fail on demand
        raise RuntimeError("index unavailable")

    kb_services.chat.ask = broken
    assert wx.send(QUESTION) == fmt.FAILED


# ---- other message types -----------------------------------------------------------------------------------
def _event_xml(event: str) -> str:
    return wechat_xml("event", f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[]]></EventKey>")


def _media_xml(msg_type: str, fields: str) -> str:
    return wechat_xml(msg_type, f"{fields}<MsgId>{secrets.randbelow(10**18)}</MsgId>")


def test_subscribing_gets_a_welcome_whose_examples_are_answered(make_wechat, kb_services):
    wx = make_wechat("compatible")
    welcome = wx.send_xml(_event_xml("subscribe"))
    assert welcome == fmt.WELCOME
    assert "党建" in welcome and "物业" in welcome and "调解" in welcome
    for example in fmt.EXAMPLES:
        assert example in welcome
        assert not kb_services.chat.ask(example).refused, example


def test_a_voice_message_with_recognition_is_answered_as_text(make_wechat, kb_services):
    wx = make_wechat("safe")
    counter = SlowAsk(kb_services, slow=False)
    voice = _media_xml(
        "voice",
        f"<MediaId><![CDATA[m1]]></MediaId><Format><![CDATA[amr]]></Format>"
        f"<Recognition><![CDATA[{QUESTION}]]></Recognition>",
    )
    assert _opens_with_a_cited_sentence(wx.send_xml(voice))
    assert counter.calls == 1
    unclear = _media_xml("voice", "<MediaId><![CDATA[m2]]></MediaId><Format><![CDATA[amr]]></Format>")
    assert wx.send_xml(unclear) == fmt.VOICE_UNCLEAR
    assert counter.calls == 1


@pytest.mark.parametrize(
    "xml",
    [
        _media_xml(
            "image", "<PicUrl><![CDATA[http://example.com/a.jpg]]></PicUrl><MediaId><![CDATA[m3]]></MediaId>"
        ),
        _media_xml(
            "location",
            "<Location_X>31.38</Location_X><Location_Y>120.98</Location_Y><Scale>15</Scale>"
            "<Label><![CDATA[昆山市]]></Label>",
        ),
        _media_xml("shortvideo", "<MediaId><![CDATA[m4]]></MediaId>"),
    ],
)
def test_images_locations_and_other_types_get_a_short_help_text(make_wechat, kb_services, xml):
    wx = make_wechat()
    counter = SlowAsk(kb_services, slow=False)
    assert wx.send_xml(xml) == fmt.HELP
    assert counter.calls == 0


@pytest.mark.parametrize("event", ["unsubscribe", "CLICK", "LOCATION", "some_new_event"])
def test_events_not_addressed_to_us_get_success_and_no_message(make_wechat, event):
    wx = make_wechat()
    assert wx.send_xml(_event_xml(event)) == "success"


def test_a_question_quoted_back_with_cdata_terminators_stays_valid_xml(make_wechat, kb_services):
    wx = make_wechat(reply_budget=0.2)
    slow = SlowAsk(kb_services)
    question = "]]><Content>物业费不交会怎么样？"
    assert [wx.send(question, msg_id="9301") for _ in range(3)][-1] == fmt.PLACEHOLDER
    slow.release()
    assert wx.bridge.wait_idle(120)
    # The late answer's header quotes the question; read_reply parses the reply as XML.
    assert wx.send("1", msg_id="9302").startswith(f"您之前的问题“{question}”查到了")
