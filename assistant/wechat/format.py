"""WeChat text: plain-text answers with short 《标题》第X条 citation lines, in pages of at most 2048 bytes."""

from __future__ import annotations

import re

from assistant.qa.compose import PROVISIONS_HEADING, label
from assistant.types import Answer

MORE_HINT = "回复“继续”查看更多"
PLACEHOLDER = "正在查询，请稍后回复任意文字获取答案"
PLACEHOLDER_PUSH = "正在查询，答案查到后会马上发给您；如未收到，请稍后回复任意文字获取。"
STILL_WORKING = "您上一个问题还在查询中，请稍后回复任意文字获取答案。"
NO_MORE = "没有更多内容了。请直接发送您的问题。"
RESET_DONE = "好的，之前的对话已清空，请发送您的新问题。"
BUSY = "现在咨询的人较多，请一分钟后再发送您的问题。"
FAILED = "抱歉，查询时出现问题，请稍后重新发送您的问题。"
HELP = "小玉目前只能阅读文字消息。请用文字（或语音）告诉我您的问题，例如：物业费不交会怎么样？"
VOICE_UNCLEAR = "抱歉，没有听清这条语音。请再说一遍，或直接发送文字。"
RATED_UP = "谢谢您的反馈！"
RATED_DOWN = "抱歉这次没能帮上忙，您的反馈已记下。回复“转人工”加上您的问题和联系方式，工作人员会尽快答复您。"
HANDOFF_NO_NOTE = "（居民在微信中请求转人工，未留言，请查看对话记录）"


def handoff_opened(request_id: str, pushed: bool) -> str:
    when = "答复会通过本公众号发给您" if pushed else "您下次给小玉发消息时，会一并收到答复"
    return f"已为您转人工（留言编号 {request_id}）。工作人员会查看您和小玉的对话记录，{when}。"


def staff_reply(reply: str) -> str:
    return f"工作人员回复了您的留言：\n{reply}"


# Every example is answered from the demo knowledge base (tests/test_wechat_bridge.py asks each one).
EXAMPLES = ("物业费不交会怎么样？", "调解协议怎么申请司法确认？", "入党需要什么条件？")
WELCOME = (
    "您好，我是小玉，社区政策问答助手。\n"
    "我可以解答党建（入党条件、党员权利义务等）、物业管理（物业费、维修资金、业主大会等）"
    "和人民调解（调解程序、调解协议、司法确认等）方面的政策问题，每个回答都注明出处文件和条款。\n\n"
    "您可以这样问：\n" + "\n".join(f"· {q}" for q in EXAMPLES) + "\n\n"
    "回复“重新开始”可清空对话。"
)

# "【2】《物业管理条例》第四十一条：业主应当……": a provision as the extractive answer lists it.
_LISTED = re.compile(r"^【(\d+)】《[^》]*》[^：\n]*：(.*)$", re.MULTILINE)
_MARKDOWN = re.compile(r"\*\*|__|`|^#{1,6}\s*", re.MULTILINE)
# A sentence (with closing quotes/brackets) or a run of newlines: pages break only between these.
_PIECE = re.compile(r"[^。！？；\n]*[。！？；]+[”’」』）)]*|[^。！？；\n]+|\n+")


def format_answer(answer: Answer) -> str:
    """The answer, then 依据 lines such as 【1】《物业管理条例》第四十一条, then the quoted provisions: the excerpts the
    answer itself quotes when it has them (they keep a reply on one page), else the whole provisions."""
    body, _, listed = answer.text.partition(PROVISIONS_HEADING)
    body = _MARKDOWN.sub("", body).strip()
    if not answer.citations:
        return body
    basis = "\n".join(f"【{c.index}】{label(c)}" for c in answer.citations)
    excerpts = {int(m.group(1)): m.group(2).strip() for m in _LISTED.finditer(listed)}
    quotes = "\n\n".join(f"【{c.index}】{(excerpts.get(c.index) or c.quote).strip()}" for c in answer.citations
                          if (excerpts.get(c.index) or c.quote).strip())
    return f"{body}\n\n依据：\n{basis}" + (f"\n\n条文原文：\n{quotes}" if quotes else "")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _pieces(text: str, limit: int) -> list[str]:
    """Sentences and line breaks; a sentence longer than a page is cut between characters."""
    out: list[str] = []
    for piece in _PIECE.findall(text):
        while _utf8_len(piece) > limit:
            cut = len(piece.encode("utf-8")[:limit].decode("utf-8", "ignore"))
            out.append(piece[:cut])
            piece = piece[cut:]
        out.append(piece)
    return out


def paginate(text: str, max_bytes: int = 2048) -> list[str]:
    """Pages of at most max_bytes (UTF-8); every page but the last ends with 回复“继续”查看更多."""
    text = text.strip()
    if _utf8_len(text) <= max_bytes:
        return [text]
    suffix = f"\n\n{MORE_HINT}"
    limit = max_bytes - _utf8_len(suffix)
    if limit < 16:
        raise ValueError(f"reply_max_bytes ({max_bytes}) leaves no room for text next to {MORE_HINT!r}")
    pages, current = [], ""
    for piece in _pieces(text, limit):
        if current and _utf8_len(current + piece) > limit:
            pages.append(current.strip())
            current = piece.lstrip("\n")
        else:
            current += piece
    if current.strip():
        pages.append(current.strip())
    pages = [p for p in pages if p]
    return [p + suffix for p in pages[:-1]] + pages[-1:]
