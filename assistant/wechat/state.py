"""What the WeChat bridge remembers between requests: per message (attempts, the fixed reply) and per resident (late
answers, "继续" pages, the answer that 有用 / 没用 rate).

One process keeps it in memory (`MemoryBridgeState`). Behind a load balancer, WeChat's retries of one message and the
resident's next message may reach another `xiaoyu serve`, so there it lives in Redis (`RedisBridgeState`), and the
process that claimed a message publishes its text for the others' retries to reply with. build_wechat() picks one.
The futures and the thread pool stay in the bridge: only what another process must see is here."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis import Redis

# Retries of one message arrive within ~15 s; a job is kept well past that to recognise a late duplicate.
JOB_TTL = 300.0
# Undelivered answers and "继续" pages wait this long for the resident to come back.
PENDING_TTL = 24 * 3600.0
_MAX_ANSWERED = 100_000  # in memory: residents whose last answer 有用 / 没用 can still rate


@dataclass(eq=False)
class Job:
    """One WeChat message, however many requests carry it."""

    openid: str
    question: str
    future: Future | None = None  # resolves (to `text`) when computed in this process; None when another computes it
    paginate: bool = True  # False for "继续" and commands, whose text is already one page
    key: str = ""  # the message key (MsgId): what the state records it under
    text: str | None = None  # the full WeChat text once finished, not yet cut into pages
    started: float = field(default_factory=time.monotonic)
    # The in-memory state keeps these on the job; the Redis state keeps them in the message's record instead.
    attempts: int = 0
    deferred: bool = False  # the last request passed: the resident was told to send any text
    reply: str | None = None  # the first page, fixed when first served, so every retry gets the same reply


class BridgeState(Protocol):
    """The bridge calls these under its own lock (all but published(), which only reads), so an implementation need
    only be atomic across processes."""

    # ---- one message
    def claim(self, job_key: str, openid: str) -> bool:
        """True when this process is to compute the message (no other has claimed it)."""

    def attempt(self, job: Job) -> int:
        """Count one more request for the message; the count so far, across processes."""

    def finish(self, job: Job) -> bool:
        """Publish the finished `job.text`; True when the last request has passed (the answer is to be pushed)."""

    def published(self, job: Job) -> tuple[str, bool] | None:
        """(text, paginate) of a message another process computes, once it has finished."""

    def defer(self, job: Job) -> tuple[str, bool] | None:
        """Mark the message deferred (its last request passed); (text, paginate) if it had already finished."""

    def serve(self, job: Job, first: str, rest: list[str] | None) -> str:
        """The reply for a finished message: the first reply fixed for it, or `first`, fixing it (and "继续"'s
        `rest`, unless None); it is no longer a late answer."""

    # ---- late answers, pages, ratings: per resident
    def add_late(self, job: Job) -> None:
        """No request delivered the message in time: it goes with the resident's next message (or a push)."""

    def late(self, openid: str) -> list[Job]:
        """The resident's undelivered messages, oldest first (`text` None while still being answered)."""

    def take_late(self, job: Job) -> bool:
        """Deliver a late answer otherwise (next message, push): False when already delivered."""

    def restore_late(self, job: Job) -> None:
        """A push failed: the answer is late again, for the next message."""

    def set_pages(self, openid: str, pages: list[str]) -> None: ...

    def next_page(self, openid: str) -> str | None:
        """The next page for "继续", None when there is none."""

    def set_answered(self, openid: str, answer_id: str) -> None: ...

    def answered(self, openid: str) -> str | None:
        """The id of the resident's last answer: what 有用 / 没用 rate."""

    def forget(self, openid: str) -> None:
        """重新开始: drop the resident's late answers, pages and last answer."""

    def expire(self) -> None: ...

    def close(self) -> None: ...


class MemoryBridgeState:
    """One process: every request reaches it, so its jobs dict already dedupes and every claim succeeds. Not locked:
    the bridge's lock guards it."""

    def __init__(self) -> None:
        self._late: dict[str, list[Job]] = {}  # openid -> answers no request could deliver in time, oldest first
        self._more: dict[str, tuple[list[str], float]] = {}  # openid -> pages left for "继续", when stored
        self._answered: OrderedDict[str, str] = OrderedDict()  # openid -> answer_id, least recently answered first

    def claim(self, job_key: str, openid: str) -> bool:
        return True

    def attempt(self, job: Job) -> int:
        job.attempts += 1
        return job.attempts

    def finish(self, job: Job) -> bool:
        return job.deferred

    def published(self, job: Job) -> tuple[str, bool] | None:
        return None  # never asked: every job is computed here

    def defer(self, job: Job) -> tuple[str, bool] | None:
        job.deferred = True
        return None if job.text is None else (job.text, job.paginate)

    def serve(self, job: Job, first: str, rest: list[str] | None) -> str:
        self._remove_late(job)
        if job.reply is None:
            job.reply = first
            if rest is not None:
                self._more[job.openid] = (rest, time.monotonic())
        return job.reply

    def add_late(self, job: Job) -> None:
        jobs = self._late.setdefault(job.openid, [])
        if job not in jobs:
            jobs.append(job)

    def late(self, openid: str) -> list[Job]:
        return list(self._late.get(openid, []))

    def take_late(self, job: Job) -> bool:
        if not self._remove_late(job):
            return False
        job.reply = ""  # a straggling retry of the message must not deliver it a second time
        return True

    def restore_late(self, job: Job) -> None:
        job.reply = None
        self.add_late(job)

    def _remove_late(self, job: Job) -> bool:
        jobs = self._late.get(job.openid, [])
        if job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del self._late[job.openid]
        return True

    def set_pages(self, openid: str, pages: list[str]) -> None:
        self._more[openid] = (pages, time.monotonic())

    def next_page(self, openid: str) -> str | None:
        pages, _ = self._more.get(openid, ([], 0.0))
        if not pages:
            return None
        self._more[openid] = (pages[1:], time.monotonic())
        return pages[0]

    def set_answered(self, openid: str, answer_id: str) -> None:
        self._answered.pop(openid, None)  # re-inserted last: the oldest resident is forgotten first
        self._answered[openid] = answer_id
        if len(self._answered) > _MAX_ANSWERED:
            self._answered.popitem(last=False)

    def answered(self, openid: str) -> str | None:
        return self._answered.get(openid)

    def forget(self, openid: str) -> None:
        self._late.pop(openid, None)
        self._more.pop(openid, None)
        self._answered.pop(openid, None)

    def expire(self) -> None:
        now = time.monotonic()
        for openid, jobs in list(self._late.items()):
            jobs[:] = [j for j in jobs if now - j.started < PENDING_TTL]
            if not jobs:
                del self._late[openid]
        for openid in [o for o, (_, at) in self._more.items() if now - at > PENDING_TTL]:
            del self._more[openid]

    def close(self) -> None:
        pass


# Each step that reads and writes runs as one script, so that two processes serving one message (a retry here, the
# next message there) cannot both deliver it. `keep` only lengthens a TTL: a message that became a late answer must
# outlive the 5-minute retry window.
_KEEP = """
local function keep(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or (ttl >= 0 and ttl < tonumber(ms)) then redis.call('PEXPIRE', key, ms) end
end
"""
_ATTEMPT = _KEEP + """
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
keep(KEYS[1], ARGV[1])
return n
"""
_FINISH = _KEEP + """
redis.call('HSET', KEYS[1], 'text', ARGV[1], 'paginate', ARGV[2])
keep(KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], 'deferred') == '1' and 1 or 0
"""
_DEFER = _KEEP + """
redis.call('HSET', KEYS[1], 'deferred', '1')
keep(KEYS[1], ARGV[1])
return redis.call('HMGET', KEYS[1], 'text', 'paginate')
"""
# KEYS: message, late, pages. ARGV: message key, first page, job ms, pending ms, "1" to store pages, pages...
_SERVE = _KEEP + """
redis.call('ZREM', KEYS[2], ARGV[1])
local reply = redis.call('HGET', KEYS[1], 'reply')
if reply then return reply end
redis.call('HSET', KEYS[1], 'reply', ARGV[2])
keep(KEYS[1], ARGV[3])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[3])
  if #ARGV > 5 then
    redis.call('RPUSH', KEYS[3], unpack(ARGV, 6))
    redis.call('PEXPIRE', KEYS[3], ARGV[4])
  end
end
return ARGV[2]
"""
# KEYS: message, late. ARGV: message key, now (s), openid, question, pending ms, "1" to forget a fixed reply.
_ADD_LATE = _KEEP + """
if ARGV[6] == '1' then redis.call('HDEL', KEYS[1], 'reply') end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
redis.call('HSETNX', KEYS[1], 'openid', ARGV[3])
redis.call('HSETNX', KEYS[1], 'question', ARGV[4])
keep(KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
"""
_TAKE_LATE = _KEEP + """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'reply', '')
keep(KEYS[1], ARGV[2])
return 1
"""


class RedisBridgeState:
    """Several processes: the message's record (attempts, text, deferred, reply) and each resident's late answers,
    pages and last answer live in Redis with the in-memory TTLs. Every key of one resident shares a hash tag
    ({openid}), so that the scripts, which touch several, also work on a Redis Cluster."""

    def __init__(self, client: Redis, prefix: str = "xiaoyu:wechat:"):
        """`client` must decode responses (decode_responses=True)."""
        self._r = client
        self._prefix = prefix
        self._owner = uuid.uuid4().hex  # who claimed a message: for an operator reading Redis
        self._job_ms = int(JOB_TTL * 1000)
        self._pending_ms = int(PENDING_TTL * 1000)
        self._attempt = client.register_script(_ATTEMPT)
        self._finish = client.register_script(_FINISH)
        self._defer = client.register_script(_DEFER)
        self._serve = client.register_script(_SERVE)
        self._add_late = client.register_script(_ADD_LATE)
        self._take_late = client.register_script(_TAKE_LATE)

    def _key(self, openid: str, kind: str, job_key: str = "") -> str:
        return f"{self._prefix}{{{openid}}}:{kind}" + (f":{job_key}" if job_key else "")

    def _msg(self, job: Job) -> str:
        return self._key(job.openid, "msg", job.key)

    def claim(self, job_key: str, openid: str) -> bool:
        claim = self._key(openid, "claim", job_key)
        return bool(self._r.set(claim, self._owner, nx=True, px=self._job_ms))

    def attempt(self, job: Job) -> int:
        return int(self._attempt(keys=[self._msg(job)], args=[self._job_ms]))

    def finish(self, job: Job) -> bool:
        assert job.text is not None
        return bool(self._finish(keys=[self._msg(job)], args=[job.text, int(job.paginate), self._job_ms]))

    def published(self, job: Job) -> tuple[str, bool] | None:
        text, paginate = self._r.hmget(self._msg(job), ["text", "paginate"])
        return None if text is None else (text, paginate == "1")

    def defer(self, job: Job) -> tuple[str, bool] | None:
        text, paginate = self._defer(keys=[self._msg(job)], args=[self._job_ms])
        return None if text is None else (text, paginate == "1")

    def serve(self, job: Job, first: str, rest: list[str] | None) -> str:
        keys = [self._msg(job), self._key(job.openid, "late"), self._key(job.openid, "more")]
        args = [job.key, first, self._job_ms, self._pending_ms, "0" if rest is None else "1", *(rest or [])]
        return self._serve(keys=keys, args=args)

    def add_late(self, job: Job, _restore: bool = False) -> None:
        keys = [self._msg(job), self._key(job.openid, "late")]
        self._add_late(keys=keys, args=[job.key, time.time(), job.openid, job.question, self._pending_ms,
                                        "1" if _restore else "0"])

    def late(self, openid: str) -> list[Job]:
        late = self._key(openid, "late")
        self._r.zremrangebyscore(late, "-inf", time.time() - PENDING_TTL)
        keys = self._r.zrange(late, 0, -1)
        with self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(self._key(openid, "msg", key), ["question", "text", "paginate", "deferred"])
            records = pipe.execute()
        return [
            Job(openid, question or "", key=key, text=text, paginate=paginate != "0", deferred=deferred == "1")
            for key, (question, text, paginate, deferred) in zip(keys, records, strict=True)
        ]

    def take_late(self, job: Job) -> bool:
        keys = [self._msg(job), self._key(job.openid, "late")]
        return bool(self._take_late(keys=keys, args=[job.key, self._job_ms]))

    def restore_late(self, job: Job) -> None:
        self.add_late(job, _restore=True)

    def set_pages(self, openid: str, pages: list[str]) -> None:
        more = self._key(openid, "more")
        with self._r.pipeline() as pipe:  # MULTI: "继续" on another process sees the old pages or the new, not none
            pipe.delete(more)
            if pages:
                pipe.rpush(more, *pages)
                pipe.pexpire(more, self._pending_ms)
            pipe.execute()

    def next_page(self, openid: str) -> str | None:
        more = self._key(openid, "more")
        with self._r.pipeline() as pipe:
            pipe.lpop(more)
            pipe.pexpire(more, self._pending_ms)  # as in memory: the pages wait a day from the last "继续"
            page, _ = pipe.execute()
        return page

    def set_answered(self, openid: str, answer_id: str) -> None:
        self._r.set(self._key(openid, "answered"), answer_id, px=self._pending_ms)

    def answered(self, openid: str) -> str | None:
        return self._r.get(self._key(openid, "answered"))

    def forget(self, openid: str) -> None:
        self._r.delete(*(self._key(openid, kind) for kind in ("late", "more", "answered")))

    def expire(self) -> None:
        pass  # Redis expires the keys; late() drops entries older than PENDING_TTL

    def close(self) -> None:
        self._r.close()
