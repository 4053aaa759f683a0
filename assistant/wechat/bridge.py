"""WeChatBridge: every WeChat message gets an answer, however slow the answerer.

WeChat waits 5 s for a reply, then hangs up and sends the same message again (3 requests in all); if none is
answered the resident sees "该公众号暂时无法提供服务". So:
- one computation per message: requests are keyed by MsgId; retries find the job the first request started;
- each request waits up to `reply_budget` (4.5 s) and replies passively if the answer is ready;
- a request that is not the last and finds no answer holds past WeChat's cutoff, so that WeChat retries
  (the retry then takes the answer from the job);
- the last request replies a placeholder, and the answer follows through the customer-service API (with an
  AppSecret) or on the resident's next message.
Right after an answer, "有用" / "没用" rate it; "转人工 …" hands the conversation to staff, whose reply is pushed
(with an AppSecret) or comes with the resident's next message.
Answers run in a bounded thread pool; the event loop only awaits."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from assistant.config import WeChatSettings
from assistant.errors import XiaoyuError
from assistant.services import ChatService, RequestDesk
from assistant.state.requests import HelpRequest
from assistant.types import Channel, Rating
from assistant.wechat import format as fmt
from assistant.wechat.messages import Incoming

log = logging.getLogger("xiaoyu.wechat")

RESET = "重新开始"
CONTINUE = "继续"
RATINGS = {"有用": Rating.UP, "没用": Rating.DOWN}
HANDOFF = "转人工"
# Retries of one message arrive within ~15 s; a job is kept well past that to recognise a late duplicate.
_JOB_TTL = 300.0
# Undelivered answers and "继续" pages wait this long for the resident to come back.
_PENDING_TTL = 24 * 3600.0
_TRAILING = " \t\r\n。.！!？?~～"
_STRIPES = 64  # locks that serialise each resident's questions (a bounded set, shared by hash)
_MAX_ANSWERED = 100_000  # residents whose last answer 有用 / 没用 can still rate


@dataclass(eq=False)
class _Job:
    openid: str
    question: str
    future: Future  # -> str: the full WeChat text, not yet cut into pages
    paginate: bool = True  # False for "继续" and commands, whose text is already one page
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    deferred: bool = False  # the last request passed: the resident was told to send any text
    reply: str | None = None  # the first page, fixed when first served, so every retry gets the same reply


def session_id(openid: str) -> str:
    return f"wechat:{openid}"


def _done(text: str) -> Future:
    future: Future = Future()
    future.set_result(text)
    return future


class WeChatBridge:
    def __init__(
        self,
        service: ChatService,
        settings: WeChatSettings,
        pool: ThreadPoolExecutor,
        push: Callable[[str, str], object] | None = None,
        desk: RequestDesk | None = None,
    ):
        """`push(openid, text)` sends a customer-service message; None when no AppSecret is configured. `desk` takes
        ratings and hand-offs (without it, 有用 / 没用 / 转人工 are asked as questions)."""
        self.service = service
        self.desk = desk
        self.settings = settings
        self._pool = pool
        self._push = push
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0  # questions queued or being answered
        self._jobs: OrderedDict[str, _Job] = OrderedDict()  # by message key, oldest first
        # openid -> answers no request could deliver in time, oldest first
        self._late: dict[str, list[_Job]] = {}
        self._more: dict[str, tuple[list[str], float]] = {}  # openid -> pages left for "继续", when stored
        self._resident_locks = [threading.Lock() for _ in range(_STRIPES)]
        self._answered: dict[str, str] = {}  # openid -> answer_id of the last answer: what 有用 / 没用 rate
        if desk is not None and push is not None:
            desk.on_reply(self._on_staff_reply)

    async def reply(self, msg: Incoming) -> str | None:
        """The passive reply's text, or None for "nothing to say" (the route answers "success")."""
        if msg.type == "ignore":
            return None
        if msg.type == "subscribe":
            return fmt.WELCOME
        if msg.type == "unclear":
            return fmt.VOICE_UNCLEAR
        if msg.type == "other":
            return fmt.HELP
        with self._lock:
            job = self._jobs.get(msg.key)
            if job is None:
                self._forget_expired()
                job = self._jobs[msg.key] = self._start(msg)
            job.attempts += 1
            last = job.attempts >= self.settings.attempts
        # asyncio.wait leaves the job running on timeout (wait_for would cancel it).
        done, _ = await asyncio.wait({asyncio.wrap_future(job.future)}, timeout=self.settings.reply_budget)
        if done:
            return self._serve(job)
        with self._lock:
            # Should WeChat not retry after all, the resident's next message delivers this answer.
            self._add_late(job)
        if not last:
            # WeChat hangs up at 5 s and retries; answering before then would stop the retries: wait it out.
            await asyncio.sleep(self.settings.retry_hold)
            return None
        return self._defer(job)

    # ---- starting a job (under the lock) -------------------------------------------------------------------
    def _start(self, msg: Incoming) -> _Job:
        openid, text = msg.openid, msg.text.strip()
        command = text.rstrip(_TRAILING)
        late = self._late.get(openid, [])
        if command == RESET:
            self._late.pop(openid, None)
            self._more.pop(openid, None)
            self._answered.pop(openid, None)
            return self._submit(openid, text, self._reset, openid, paginate=False)
        if command == CONTINUE:
            return _Job(openid, text, _done(self._next_page(openid)), paginate=False)
        ready = [j for j in late if j.future.done()]
        if ready:
            # This message fetches what it was told to; its own text is not asked (the header says so).
            for j in ready:
                self._take_late(j)
                j.reply = ""  # a straggling retry of the old message must not deliver it a second time
            text = "\n\n".join(
                f"您之前的问题“{j.question[:50]}”查到了（如有新问题请重新发送）：\n\n{j.future.result()}"
                for j in ready
            )
            return _Job(openid, msg.text, _done(text))
        if self.desk is not None:
            if command in RATINGS and openid in self._answered:
                return self._submit(openid, text, self._rate, openid, self._answered[openid], RATINGS[command],
                                    paginate=False)
            if text.startswith(HANDOFF):
                note = text[len(HANDOFF):].strip(" \t\r\n:：,，。")
                return self._submit(openid, text, self._handoff, openid, note, self._answered.get(openid))
        if self._push is None and any(j.deferred for j in late):
            # Told to "reply any text" for the answer: this is that reply, not a new question.
            return _Job(openid, text, _done(fmt.STILL_WORKING), paginate=False)
        if self._running >= self.settings.max_pending:
            return _Job(openid, text, _done(fmt.BUSY), paginate=False)
        return self._submit(openid, text, self._answer, text, openid)

    def _submit(
        self, openid: str, question: str, work: Callable[..., str], *args, paginate: bool = True
    ) -> _Job:
        self._running += 1
        return _Job(openid, question, self._pool.submit(self._run, work, *args), paginate)

    def _run(self, work: Callable[..., str], *args) -> str:
        """Runs in the pool. Never raises: a retry that finds an exception would have nothing to say."""
        try:
            return work(*args)
        except XiaoyuError as exc:
            return exc.user_message
        except Exception:
            log.exception("微信消息处理失败")
            return fmt.FAILED
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _resident(self, openid: str) -> threading.Lock:
        # One question at a time per resident: two quick messages must join the conversation in order (and the
        # session store's append is not safe against two concurrent appends to one session).
        return self._resident_locks[hash(openid) % _STRIPES]

    def _answer(self, question: str, openid: str) -> str:
        with self._resident(openid):
            answer = self.service.ask(question, session_id=session_id(openid), channel=Channel.WECHAT, user=openid)
        with self._lock:
            if answer.answer_id:
                self._answered.pop(openid, None)  # re-inserted last: the oldest resident is forgotten first
                self._answered[openid] = answer.answer_id
                if len(self._answered) > _MAX_ANSWERED:
                    del self._answered[next(iter(self._answered))]
        return self._with_staff_replies(openid, fmt.format_answer(answer))

    def _rate(self, openid: str, answer_id: str, rating: Rating) -> str:
        self.desk.rate(answer_id, rating)  # type: ignore[union-attr]
        return self._with_staff_replies(openid, fmt.RATED_UP if rating is Rating.UP else fmt.RATED_DOWN)

    def _handoff(self, openid: str, note: str, answer_id: str | None) -> str:
        with self._resident(openid):  # after any question of theirs still being answered: it joins the history
            request = self.desk.open(session_id(openid), note or fmt.HANDOFF_NO_NOTE,  # type: ignore[union-attr]
                                     answer_id=answer_id, channel=Channel.WECHAT)
        opened = fmt.handoff_opened(request.id, pushed=self._push is not None)
        return self._with_staff_replies(openid, opened)

    def _with_staff_replies(self, openid: str, text: str) -> str:
        """Staff replies the resident has not seen yet go first (without an AppSecret this is how they arrive)."""
        if self.desk is None:
            return text
        replies = self.desk.take_replies(session_id(openid))
        return "\n\n".join([*(fmt.staff_reply(r.reply) for r in replies), text])

    def _on_staff_reply(self, request: HelpRequest) -> None:
        """(RequestDesk calls this in the staff member's thread.) Push a reply to a WeChat resident from the pool."""
        if request.channel != Channel.WECHAT or not request.reply or request.delivered:
            return
        with self._lock:
            self._running += 1
        self._hand_to_pool(self._push_reply, request)

    def _push_reply(self, request: HelpRequest) -> str:
        openid = request.session_key.removeprefix(session_id(""))
        text = fmt.staff_reply(request.reply)
        try:
            for page in fmt.paginate(text, self.settings.reply_max_bytes):  # all of it: "继续" is for answers
                self._push(openid, page.removesuffix(f"\n\n{fmt.MORE_HINT}"))  # type: ignore[misc]
        except Exception:
            log.exception("客服消息发送失败，工作人员的答复将在用户下一条消息时发送")
            return ""
        self.desk.delivered(request)  # type: ignore[union-attr]
        return text

    def _reset(self, openid: str) -> str:
        with self._resident(openid):
            self.service.reset_session(session_id(openid), Channel.WECHAT)
        return fmt.RESET_DONE

    def _next_page(self, openid: str) -> str:
        pages, _ = self._more.get(openid, ([], 0.0))
        if not pages:
            return fmt.NO_MORE
        self._more[openid] = (pages[1:], time.monotonic())
        return pages[0]

    # ---- delivering ----------------------------------------------------------------------------------------
    def _serve(self, job: _Job) -> str | None:
        """The reply for a finished job: its first page. The rest wait for "继续"."""
        with self._lock:
            self._take_late(job)
            if job.reply is None:
                job.reply = self._pages_for(job)
            return job.reply or None

    def _pages_for(self, job: _Job) -> str:
        """(Under the lock.) Cut the job's text into pages, keep the rest for "继续", return the first."""
        text = job.future.result()
        if not job.paginate:
            return text
        pages = fmt.paginate(text, self.settings.reply_max_bytes)
        self._more[job.openid] = (pages[1:], time.monotonic())
        return pages[0]

    def _defer(self, job: _Job) -> str:
        with self._lock:
            job.deferred = True
            if self._push is not None:
                # The push counts as pending work from now, so that wait_idle() and close() wait for it.
                self._running += 1
        if self._push is None:
            return fmt.PLACEHOLDER
        # The callback runs in whichever thread finishes the job (or here, if it just finished): hand the HTTP
        # call to the pool rather than make the event loop wait for it.
        job.future.add_done_callback(lambda _: self._submit_push(job))
        return fmt.PLACEHOLDER_PUSH

    def _submit_push(self, job: _Job) -> None:
        self._hand_to_pool(self._push_late, job)

    def _hand_to_pool(self, work: Callable[..., str], *args) -> None:
        """Run a push in the pool; it is already counted in _running, so wait_idle() and close() wait for it. If the
        pool is shut down, it is uncounted, and what it would have sent comes with the resident's next message."""
        try:
            self._pool.submit(self._run, work, *args)
        except RuntimeError:
            log.warning("线程池已关闭，消息将在用户下一条消息时发送")
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _push_late(self, job: _Job) -> str:
        with self._lock:
            if not self._take_late(job):
                return ""  # a retry or the next message already delivered it
            first = self._pages_for(job)
            job.reply = ""  # delivered by push: a later retry of this message must not repeat it
        try:
            self._push(job.openid, first)  # type: ignore[misc]
        except Exception:
            log.exception("客服消息发送失败，答案将在用户下一条消息时发送")
            with self._lock:
                job.reply = None
                self._add_late(job)
            return ""
        return first

    def _add_late(self, job: _Job) -> None:
        jobs = self._late.setdefault(job.openid, [])
        if job not in jobs:
            jobs.append(job)

    def _take_late(self, job: _Job) -> bool:
        """Remove a job from the late answers; False when it was not there (already delivered)."""
        jobs = self._late.get(job.openid, [])
        if job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del self._late[job.openid]
        return True

    # ---- housekeeping --------------------------------------------------------------------------------------
    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._jobs:
            key, job = next(iter(self._jobs.items()))
            if now - job.started < _JOB_TTL:
                break
            del self._jobs[key]
        for openid, jobs in list(self._late.items()):
            jobs[:] = [j for j in jobs if now - j.started < _PENDING_TTL]
            if not jobs:
                del self._late[openid]
        for openid in [o for o, (_, at) in self._more.items() if now - at > _PENDING_TTL]:
            del self._more[openid]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no question is queued or being answered; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Let running answers finish (so late ones are still pushed), then stop the pool."""
        self.wait_idle(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
