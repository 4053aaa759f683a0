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
Answers run in a bounded thread pool; the event loop only awaits.
What must outlive a request (attempts, fixed replies, late answers, "继续" pages, the answer to rate) is in a
`BridgeState`: process memory, or Redis when several processes share the traffic (see state.py). Then a retry that
reaches a process other than the one computing the message waits for the text that one publishes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from assistant.config import WeChatSettings
from assistant.errors import XiaoyuError
from assistant.services import ChatService, RequestDesk
from assistant.state.requests import HelpRequest
from assistant.types import Channel, Rating
from assistant.wechat import format as fmt
from assistant.wechat.messages import Incoming
from assistant.wechat.state import JOB_TTL, BridgeState, Job, MemoryBridgeState

log = logging.getLogger("xiaoyu.wechat")

RESET = "重新开始"
CONTINUE = "继续"
RATINGS = {"有用": Rating.UP, "没用": Rating.DOWN}
HANDOFF = "转人工"
_TRAILING = " \t\r\n。.！!？?~～"
_STRIPES = 64  # locks that serialise each resident's questions (a bounded set, shared by hash)
_POLL = 0.05  # how often a retry checks for the text of a message another process computes


def session_id(openid: str) -> str:
    return f"wechat:{openid}"


def _done(openid: str, question: str, text: str, paginate: bool = True) -> Job:
    """A job answered on the spot (a command, a page, a delivery)."""
    future: Future = Future()
    future.set_result(text)
    return Job(openid, question, future, paginate, text=text)


class WeChatBridge:
    def __init__(
        self,
        service: ChatService,
        settings: WeChatSettings,
        pool: ThreadPoolExecutor,
        push: Callable[[str, str], object] | None = None,
        desk: RequestDesk | None = None,
        state: BridgeState | None = None,
    ):
        """`push(openid, text)` sends a customer-service message; None when no AppSecret is configured. `desk` takes
        ratings and hand-offs (without it, 有用 / 没用 / 转人工 are asked as questions). `state`: process memory unless
        given (build_wechat() passes the Redis one when configured)."""
        self.service = service
        self.desk = desk
        self.settings = settings
        self._pool = pool
        self._push = push
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0  # questions queued or being answered
        # This process's jobs by message key, oldest first: their futures, and retries that reached this process.
        self._jobs: dict[str, Job] = {}
        self.state: BridgeState = state if state is not None else MemoryBridgeState()
        self._resident_locks = [threading.Lock() for _ in range(_STRIPES)]
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
        # The state may be Redis: its round trips run off the event loop.
        job, last = await asyncio.to_thread(self._admit, msg)
        if await self._wait(job):
            return await asyncio.to_thread(self._serve, job)
        # Should WeChat not retry after all, the resident's next message delivers this answer.
        await asyncio.to_thread(self._add_late, job)
        if not last:
            # WeChat hangs up at 5 s and retries; answering before then would stop the retries: wait it out.
            await asyncio.sleep(self.settings.retry_hold)
            return None
        return await asyncio.to_thread(self._defer, job)

    def _admit(self, msg: Incoming) -> tuple[Job, bool]:
        """The message's job (started here if no process has claimed it), and whether this is its last request."""
        with self._lock:
            job = self._jobs.get(msg.key)
            if job is None:
                self._forget_expired()
                if self.state.claim(msg.key, msg.openid):
                    job = self._start(msg)
                    job.key = msg.key  # before its _finished() can publish it: that waits for the lock held here
                    if job.text is not None:
                        self.state.finish(job)  # answered on the spot: a retry elsewhere replies with it too
                else:
                    # Another process computes it; this one's retries wait for the text it publishes.
                    job = Job(msg.openid, msg.text.strip(), key=msg.key)
                self._jobs[msg.key] = job
            last = self.state.attempt(job) >= self.settings.attempts
        return job, last

    def _add_late(self, job: Job) -> None:
        with self._lock:
            self.state.add_late(job)

    async def _wait(self, job: Job) -> bool:
        """Wait up to the reply budget for the job's text; False when it is not ready in time."""
        if job.future is not None:
            # asyncio.wait leaves the job running on timeout (wait_for would cancel it).
            done, _ = await asyncio.wait({asyncio.wrap_future(job.future)}, timeout=self.settings.reply_budget)
            return bool(done)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reply_budget
        while job.text is None:
            found = await asyncio.to_thread(self.state.published, job)
            if found is not None:
                job.text, job.paginate = found
                break
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(_POLL, left))
        return True

    # ---- starting a job (under the lock) -------------------------------------------------------------------
    def _start(self, msg: Incoming) -> Job:
        openid, text = msg.openid, msg.text.strip()
        command = text.rstrip(_TRAILING)
        if command == RESET:
            self.state.forget(openid)
            return self._submit(openid, text, self._reset, openid, paginate=False)
        if command == CONTINUE:
            return _done(openid, text, self.state.next_page(openid) or fmt.NO_MORE, paginate=False)
        late = self.state.late(openid)
        # Only those taken here: another process may be delivering the same late answer right now.
        ready = [j for j in late if j.text is not None and self.state.take_late(j)]
        if ready:
            # This message fetches what it was told to; its own text is not asked (the header says so).
            text = "\n\n".join(
                f"您之前的问题“{j.question[:50]}”查到了（如有新问题请重新发送）：\n\n{j.text}" for j in ready
            )
            return _done(openid, msg.text, text)
        if self.desk is not None and (command in RATINGS or text.startswith(HANDOFF)):
            answered = self.state.answered(openid)
            if command in RATINGS and answered is not None:
                return self._submit(openid, text, self._rate, openid, answered, RATINGS[command], paginate=False)
            if text.startswith(HANDOFF):
                note = text[len(HANDOFF):].strip(" \t\r\n:：,，。")
                return self._submit(openid, text, self._handoff, openid, note, answered)
        if self._push is None and any(j.deferred for j in late):
            # Told to "reply any text" for the answer: this is that reply, not a new question.
            return _done(openid, text, fmt.STILL_WORKING, paginate=False)
        if self._running >= self.settings.max_pending:
            return _done(openid, text, fmt.BUSY, paginate=False)
        return self._submit(openid, text, self._answer, text, openid)

    def _submit(
        self, openid: str, question: str, work: Callable[..., str], *args, paginate: bool = True
    ) -> Job:
        self._running += 1
        job = Job(openid, question, Future(), paginate)
        self._pool.submit(self._run, work, *args, job=job)
        return job

    def _run(self, work: Callable[..., str], *args, job: Job | None = None) -> str:
        """Runs in the pool. Never raises: a retry that finds an exception would have nothing to say."""
        try:
            try:
                text = work(*args)
            except XiaoyuError as exc:
                text = exc.user_message
            except Exception:
                log.exception("微信消息处理失败")
                text = fmt.FAILED
            if job is not None:
                self._finished(job, text)  # before the count drops, so that wait_idle() also waits for a push
            return text
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _finished(self, job: Job, text: str) -> None:
        """Publish the job's text (retries on other processes wait for it), then wake the requests waiting here.
        Push it if its last request has passed; that request or this, whichever comes second, pushes."""
        push = False
        try:
            with self._lock:
                job.text = text
                push = self.state.finish(job) and self._push is not None
                if push:
                    self._running += 1  # the push is pending work, so that wait_idle() and close() wait for it
        except Exception:
            log.exception("微信消息状态保存失败")
        finally:
            job.future.set_result(text)  # type: ignore[union-attr]
        if push:
            self._hand_to_pool(self._push_late, job)

    def _resident(self, openid: str) -> threading.Lock:
        # One question at a time per resident: two quick messages must join the conversation in order (and the
        # session store's append is not safe against two concurrent appends to one session).
        return self._resident_locks[hash(openid) % _STRIPES]

    def _answer(self, question: str, openid: str) -> str:
        with self._resident(openid):
            answer = self.service.ask(question, session_id=session_id(openid), channel=Channel.WECHAT, user=openid)
        if answer.answer_id:
            with self._lock:
                self.state.set_answered(openid, answer.answer_id)
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

    # ---- delivering ----------------------------------------------------------------------------------------
    def _serve(self, job: Job) -> str | None:
        """The reply for a finished job: its first page (the one fixed by the first request served, on whichever
        process). The rest wait for "继续"."""
        first, rest = self._pages(job)
        with self._lock:
            return self.state.serve(job, first, rest) or None

    def _pages(self, job: Job) -> tuple[str, list[str] | None]:
        """The job's text cut into its first page and the rest, for "继续" (None: one page, "继续" unchanged)."""
        assert job.text is not None
        if not job.paginate:
            return job.text, None
        pages = fmt.paginate(job.text, self.settings.reply_max_bytes)
        return pages[0], pages[1:]

    def _defer(self, job: Job) -> str:
        with self._lock:
            finished = self.state.defer(job)
            push = self._push is not None and finished is not None
            if push:
                # Finished already (here or on another process): this request pushes it, not _finished().
                job.text, job.paginate = finished  # type: ignore[misc]
                self._running += 1  # the push is pending work, so that wait_idle() and close() wait for it
        if self._push is None:
            return fmt.PLACEHOLDER
        if push:
            # Hand the HTTP call to the pool rather than make the event loop wait for it.
            self._hand_to_pool(self._push_late, job)
        return fmt.PLACEHOLDER_PUSH

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

    def _push_late(self, job: Job) -> str:
        first, rest = self._pages(job)
        with self._lock:
            # Taken, a later retry of this message gets no reply: it must not repeat the push.
            if not self.state.take_late(job):
                return ""  # a retry or the next message already delivered it
            if rest is not None:
                self.state.set_pages(job.openid, rest)
        try:
            self._push(job.openid, first)  # type: ignore[misc]
        except Exception:
            log.exception("客服消息发送失败，答案将在用户下一条消息时发送")
            with self._lock:
                self.state.restore_late(job)
            return ""
        return first

    # ---- housekeeping --------------------------------------------------------------------------------------
    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._jobs:
            key, job = next(iter(self._jobs.items()))  # dicts keep insertion order: the oldest first
            if now - job.started < JOB_TTL:
                break
            del self._jobs[key]
        self.state.expire()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no question is queued or being answered; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Let running answers finish (so late ones are still pushed), then stop the pool."""
        self.wait_idle(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.state.close()
