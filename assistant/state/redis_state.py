"""Per-resident state in Redis, for several `xiaoyu serve` processes on different hosts (XIAOYU_REDIS_URL): sessions,
the question log and the hand-off requests, with the behaviour of their SQLite twins (the contract tests in
tests/test_redis_state.py run against both).

Every key starts with the deployment's prefix ("xiaoyu:…", XIAOYU_REDIS_PREFIX), so that one Redis can hold several
deployments. One Redis server (or a primary with replicas) is assumed, not Redis Cluster: the scripts and
transactions touch keys that would live in different slots."""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from assistant.state.questionlog import (
    AskedQuestion,
    LoggedQuestion,
    QuestionQuery,
    citation_rows,
    turns_json,
    turns_of,
    user_hash,
)
from assistant.state.requests import HelpRequest, owned_by
from assistant.types import Answer, ComposeMode, Evidence, RequestStatus, Turn

_BATCH = 200  # rows read per round trip when walking an index


class RedisUnavailable(ValueError):
    """XIAOYU_REDIS_URL is malformed or nothing answers there: raised at start, not as a 500 on the first question."""


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs: redis://:***@10.0.0.5:6379/0."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:  # unparseable (a bad port): show nothing of it rather than a password
        return "<unparseable URL>"


def unusable(url: str, exc: Exception, what: str = "") -> RedisUnavailable:
    """The error for a URL that failed, its password starred out of the cause too (some causes quote the URL)."""
    cause = str(exc).replace(url, redacted(url))
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        password = None
    if password:
        cause = cause.replace(password, "***")
    return RedisUnavailable(f"XIAOYU_REDIS_URL ({redacted(url)}) is not usable{what}: {cause}")


def connect(url: str, timeout: float = 10.0) -> redis.Redis:
    """A client for `url` that has answered a PING. decode_responses: every value this module stores is text."""
    try:
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=min(5.0, timeout),
                                      socket_timeout=timeout, health_check_interval=30)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise unusable(url, exc) from None  # not chained: the cause's own message could carry the password
    return client


def shared_secret(client: redis.Redis, prefix: str) -> str:
    """install_secret() for several hosts: the first process to start sets it (SET NX), every other one reads that
    one, so that all hosts hash a user id the same way."""
    key = f"{prefix}:install-secret"
    client.set(key, secrets.token_hex(32), nx=True)
    return str(client.get(key))


def _num(value: float) -> str:
    return repr(float(value))  # repr round-trips: a float read back compares equal to the one written


def _opt(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _rows(client: redis.Redis, keys: Iterable[str]) -> list[dict[str, str]]:
    """HGETALL of each key in one round trip; a key deleted meanwhile gives {} (callers skip it)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return pipe.execute()


# ---- sessions ----------------------------------------------------------------------------------------------------
class RedisSessionStore:
    """Sessions (see sessions.py) as a list of JSON turns per key plus an "issued" marker, both expiring with PEXPIRE:
    Redis forgets an idle session itself, and any host can continue a conversation another host started."""

    def __init__(self, client: redis.Redis, prefix: str, max_turns: int = 12, ttl_seconds: float = 7 * 24 * 3600):
        self._r = client
        self._prefix = prefix
        self.max_turns = max_turns
        self.ttl_seconds = ttl_seconds
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    def _turns(self, key: str) -> str:
        return f"{self._prefix}:turns:{key}"

    def _issued(self, key: str) -> str:
        return f"{self._prefix}:issued:{key}"

    def issue(self, namespace: str) -> str:
        session_id = secrets.token_urlsafe(16)  # 128 bits: a capability, not guessable
        self._r.set(self._issued(f"{namespace}:{session_id}"), "1", px=self._ttl_ms, nx=True)
        return session_id

    def is_issued(self, key: str) -> bool:
        # PEXPIRE both checks and slides: it answers 0 for a key that was never issued or has expired.
        return bool(self._r.pexpire(self._issued(key), self._ttl_ms))

    def history(self, key: str) -> list[Turn]:
        return [Turn(**json.loads(t)) for t in self._r.lrange(self._turns(key), -self.max_turns, -1)]

    def append(self, key: str, *turns: Turn) -> None:
        if not turns:
            return
        name = self._turns(key)
        pipe = self._r.pipeline(transaction=True)  # MULTI: a concurrent reader never sees the list unbounded
        pipe.rpush(name, *(json.dumps({"role": t.role, "content": t.content}, ensure_ascii=False) for t in turns))
        pipe.ltrim(name, -self.max_turns, -1)
        pipe.pexpire(name, self._ttl_ms)  # the conversation lives ttl_seconds after its last turn, like SQLite's
        pipe.execute()

    def reset(self, key: str) -> None:
        self._r.delete(self._turns(key), self._issued(key))


# ---- question log ------------------------------------------------------------------------------------------------
# Rates an answer only if its row still exists: a purge between the lookup and the write must not leave a stub row.
_RATE = """
local id = redis.call('GET', KEYS[1])
if not id then return 0 end
local row = ARGV[1] .. id
if redis.call('EXISTS', row) == 0 then return 0 end
redis.call('HSET', row, 'rating', ARGV[2], 'comment', ARGV[3], 'rated_at', ARGV[4])
return 1
"""


class RedisQuestionLog:
    """The question log (see questionlog.py) with one hash per row, ids from INCR, and two sorted sets: by id (the
    order recent() reads, newest first, as SQLite's ORDER BY id DESC) and by time (purge and asked read ranges).

    recent() applies its filters while walking newest first, _BATCH rows per round trip, and stops after MAX_SCAN
    rows. That is fine while the retention window holds up to about MAX_SCAN questions (a district's assistant logs
    hundreds a day): past that, a filter that rarely matches sees only the newest MAX_SCAN rows. Unfiltered reads,
    get() and by_answer() cost the same at any size."""

    MAX_SCAN = 20_000

    def __init__(self, client: redis.Redis, prefix: str, salt: str, clock: Callable[[], float] = time.time):
        self._r = client
        self._p = f"{prefix}:q"
        self._salt = salt
        self._clock = clock
        self._rate = client.register_script(_RATE)

    def _row(self, question_id: int | str) -> str:
        return f"{self._p}:{question_id}"

    def _answer(self, answer_id: str) -> str:
        return f"{self._p}:answer:{answer_id}"

    def hash_user(self, user: str | None) -> str:
        return user_hash(self._salt, user)

    def record(self, channel: str, user: str | None, question: str, answer: Answer, latency_ms: float,
               evidence: Evidence | None = None, condensed_with: Sequence[Turn] = ()) -> int:
        citations = citation_rows(answer)
        question_id = int(self._r.incr(f"{self._p}:next"))  # one sequence for every host
        ts = self._clock()
        row: dict[str, str] = {
            "ts": _num(ts), "channel": str(channel), "user_hash": self.hash_user(user), "question": question,
            "query": answer.query, "answer": answer.text, "refused": str(int(answer.refused)),
            "mode": str(answer.mode), "citations": json.dumps(citations, ensure_ascii=False),
            "latency_ms": _num(latency_ms), "notes": "; ".join(answer.notes),
            "evidence": evidence.reason if evidence else "", "comment": "", "condensed_with": turns_json(condensed_with),
        }
        if evidence:
            row |= {"dense_top": _num(evidence.dense_top), "overlap": _num(evidence.overlap)}
        if answer.answer_id:
            row["answer_id"] = answer.answer_id
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._row(question_id), mapping=row)
        pipe.zadd(f"{self._p}:ids", {str(question_id): question_id})
        pipe.zadd(f"{self._p}:ts", {str(question_id): ts})
        if answer.answer_id:
            pipe.set(self._answer(answer.answer_id), question_id)
        pipe.execute()
        return question_id

    def rate(self, answer_id: str, rating: str, comment: str = "") -> bool:
        return bool(self._rate(keys=[self._answer(answer_id)],
                               args=[f"{self._p}:", rating, comment, _num(self._clock())]))

    def by_answer(self, answer_id: str) -> LoggedQuestion | None:
        question_id = self._r.get(self._answer(answer_id))
        return self.get(int(question_id)) if question_id else None

    def get(self, question_id: int) -> LoggedQuestion | None:
        row = self._r.hgetall(self._row(question_id))
        return _logged(int(question_id), row) if row else None

    def purge(self, before: float) -> int:
        deleted = 0
        while ids := self._r.zrangebyscore(f"{self._p}:ts", "-inf", f"({_num(before)}", start=0, num=1000):
            answers = self._r.pipeline(transaction=False)
            for i in ids:
                answers.hget(self._row(i), "answer_id")
            answer_keys = [self._answer(a) for a in answers.execute() if a]
            pipe = self._r.pipeline(transaction=True)
            for i in ids:
                pipe.delete(self._row(i))
            if answer_keys:
                pipe.delete(*answer_keys)
            pipe.zrem(f"{self._p}:ids", *ids)
            pipe.zrem(f"{self._p}:ts", *ids)
            # Count the rows this call deleted: two hosts purging at once must not both report them.
            deleted += sum(pipe.execute()[:len(ids)])
        return deleted

    def _newest_first(self) -> Iterator[tuple[int, dict[str, str]]]:
        for start in range(0, self.MAX_SCAN, _BATCH):
            ids = self._r.zrevrange(f"{self._p}:ids", start, start + _BATCH - 1)
            for i, row in zip(ids, _rows(self._r, (self._row(i) for i in ids)), strict=True):
                if row:  # purged between the two reads
                    yield int(i), row
            if len(ids) < _BATCH:
                return

    def recent(self, query: QuestionQuery = QuestionQuery()) -> list[LoggedQuestion]:
        """Newest first."""
        q = query
        found: list[LoggedQuestion] = []
        if q.limit == 0:
            return found
        for question_id, row in self._newest_first():
            refused, channel = row["refused"] == "1", row["channel"]
            if q.refused is not None and refused != q.refused:
                continue
            if q.channel and channel != q.channel:
                continue
            if q.below_confidence is not None:
                dense_top = _opt(row.get("dense_top"))
                if refused or dense_top is None or not dense_top < q.below_confidence:
                    continue
            if channel in q.exclude_channels or (q.contains and q.contains not in row["question"]):
                continue
            found.append(_logged(question_id, row))
            if len(found) == q.limit:
                break
        return found

    def asked(self, since: float, until: float, exclude_channels: tuple[str, ...] = ()) -> list[AskedQuestion]:
        """As QuestionLog.asked: oldest first, small talk left out. Reads the whole range (the report's weeks)."""
        ids = self._r.zrangebyscore(f"{self._p}:ts", _num(since), _num(until))
        asked = []
        for start in range(0, len(ids), _BATCH):
            batch = ids[start:start + _BATCH]
            pipe = self._r.pipeline(transaction=False)
            for i in batch:
                pipe.hmget(self._row(i), "ts", "channel", "question", "refused", "mode", "rating")
            for i, (ts, channel, question, refused, mode, rating) in zip(batch, pipe.execute(), strict=True):
                if ts is None or channel in exclude_channels or (mode == ComposeMode.TEMPLATE and refused == "0"):
                    continue
                asked.append(AskedQuestion(int(i), float(ts), channel, question, refused == "1", rating == "down"))
        return sorted(asked, key=lambda a: (a.ts, a.id))


def _logged(question_id: int, row: dict[str, str]) -> LoggedQuestion:
    return LoggedQuestion(
        id=question_id, ts=float(row["ts"]), channel=row["channel"], user_hash=row.get("user_hash", ""),
        question=row["question"], query=row.get("query", ""), answer=row["answer"], refused=row["refused"] == "1",
        mode=row.get("mode", ""), citations=json.loads(row.get("citations", "[]")),
        latency_ms=float(row["latency_ms"]), notes=row.get("notes", ""), dense_top=_opt(row.get("dense_top")),
        overlap=_opt(row.get("overlap")), evidence=row.get("evidence", ""), answer_id=row.get("answer_id"),
        rating=row.get("rating"), comment=row.get("comment", ""), rated_at=_opt(row.get("rated_at")),
        condensed_with=turns_of(row.get("condensed_with")))


# ---- hand-off requests -------------------------------------------------------------------------------------------
# KEYS: the row, the closed-by-update index, the new status's queue, then every status's queue.
# ARGV: reply, status, now, id, the closed status.
# One script, so that the delivered flag is decided on the reply it replaces (a same reply keeps it), as SQLite's
# UPDATE … CASE does, and the request moves between queues in the same step.
_REPLY = """
local old = redis.call('HMGET', KEYS[1], 'reply', 'created_at')
if not old[2] then return 0 end
if old[1] ~= ARGV[1] then redis.call('HSET', KEYS[1], 'delivered', '0') end
redis.call('HSET', KEYS[1], 'reply', ARGV[1], 'status', ARGV[2], 'updated_at', ARGV[3])
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[4]) end
redis.call('ZADD', KEYS[3], old[2], ARGV[4])
if ARGV[2] == ARGV[5] then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) else redis.call('ZREM', KEYS[2], ARGV[4]) end
return 1
"""
# Marks this reply delivered only if it is still the one the caller saw (updated_at) and nobody marked it already.
_MARK_DELIVERED = """
local v = redis.call('HMGET', KEYS[1], 'updated_at', 'delivered')
if v[1] == ARGV[1] and v[2] == '0' then
  redis.call('HSET', KEYS[1], 'delivered', '1')
  return 1
end
return 0
"""
# The webhook's outbox (requests.py). KEYS[1]: the row. A missing 'notified' (a row from before the outbox) reads as
# delivered, as SQLite's added column defaults to 1.
# ARGV: now, the lease's end, 1 to claim only a due one. Claims the sending if nobody holds it: a claim is the lease's
# end written in one step with the check, so of two processes claiming at once, one wins.
_CLAIM_NOTIFICATION = """
local v = redis.call('HMGET', KEYS[1], 'notified', 'notify_lease', 'notify_after')
if v[1] ~= '0' then return 0 end
local now = tonumber(ARGV[1])
if tonumber(v[2] or '0') > now then return 0 end
if ARGV[3] == '1' and tonumber(v[3] or '0') > now then return 0 end
redis.call('HSET', KEYS[1], 'notify_lease', ARGV[2])
return 1
"""
# KEYS: the row, the outbox index. ARGV: attempts, id.
_MARK_NOTIFIED = """
if redis.call('HGET', KEYS[1], 'notified') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'notified', '1', 'notify_lease', '0')
redis.call('HINCRBY', KEYS[1], 'notify_attempts', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""
# KEYS: the row. ARGV: the claim's token (its lease, as written), the next round's time, attempts.
_RELEASE_NOTIFICATION = """
local v = redis.call('HMGET', KEYS[1], 'notified', 'notify_lease')
if v[1] ~= '0' or v[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'notify_lease', '0', 'notify_after', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'notify_attempts', ARGV[3])
return 1
"""


class RedisRequestStore:
    """Hand-off requests (see requests.py): one hash per request, a sorted set per status by creation time (the staff
    queue, oldest first, ties by id as in SQLite), one of the closed ones by last update (purge), a set per session
(undelivered) and the webhook's outbox, a sorted set of the unnotified ones by creation time."""

    def __init__(self, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.time):
        self._r = client
        self._p = f"{prefix}:req"
        self._clock = clock
        self._reply = client.register_script(_REPLY)
        self._mark = client.register_script(_MARK_DELIVERED)
        self._claim = client.register_script(_CLAIM_NOTIFICATION)
        self._notified = client.register_script(_MARK_NOTIFIED)
        self._release = client.register_script(_RELEASE_NOTIFICATION)
        self._outbox = f"{self._p}:unnotified"

    def _row(self, request_id: str) -> str:
        return f"{self._p}:{request_id}"

    def _queue(self, status: RequestStatus | None) -> str:
        return f"{self._p}:status:{status.value}" if status else f"{self._p}:all"

    def _session(self, session_key: str) -> str:
        return f"{self._p}:session:{session_key}"

    def add(self, channel: str, session_key: str, message: str, contact: str, history: list[Turn],
            answer_id: str | None = None, notify: bool = False) -> HelpRequest:
        request_id = secrets.token_urlsafe(9)
        now = _num(self._clock())
        row = {"id": request_id, "created_at": now, "updated_at": now, "channel": str(channel),
               "session_key": session_key, "message": message, "contact": contact,
               "history": json.dumps([{"role": t.role, "content": t.content} for t in history], ensure_ascii=False),
               "status": RequestStatus.OPEN.value, "reply": "", "delivered": "0", "notified": "0" if notify else "1",
               "notify_attempts": "0", "notify_after": _num(0), "notify_lease": _num(0)}
        if answer_id:
            row["answer_id"] = answer_id
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._row(request_id), mapping=row)
        pipe.zadd(self._queue(None), {request_id: float(now)})
        pipe.zadd(self._queue(RequestStatus.OPEN), {request_id: float(now)})
        pipe.sadd(self._session(session_key), request_id)
        if notify:
            pipe.zadd(self._outbox, {request_id: float(now)})
        pipe.execute()
        return _request(row)

    def get(self, request_id: str) -> HelpRequest | None:
        row = self._r.hgetall(self._row(request_id))
        return _request(row) if row else None

    def owned(self, request_id: str, session_key: str) -> HelpRequest | None:
        return owned_by(self.get(request_id), session_key)

    def queue(self, status: RequestStatus | None = None, limit: int = 200) -> list[HelpRequest]:
        """Oldest first: a queue is worked from its front."""
        if limit == 0:
            return []
        ids = self._r.zrange(self._queue(status), 0, limit - 1 if limit > 0 else -1)
        return [_request(row) for row in _rows(self._r, map(self._row, ids)) if row]

    def reply(self, request_id: str, reply: str, status: RequestStatus) -> HelpRequest | None:
        queues = [self._queue(s) for s in RequestStatus]
        done = self._reply(keys=[self._row(request_id), f"{self._p}:closed", self._queue(status), *queues],
                           args=[reply, status.value, _num(self._clock()), request_id, RequestStatus.CLOSED.value])
        return self.get(request_id) if done else None

    def undelivered(self, session_key: str) -> list[HelpRequest]:
        ids = self._r.smembers(self._session(session_key))
        found = [_request(row) for row in _rows(self._r, map(self._row, ids)) if row]
        return sorted((r for r in found if r.reply and not r.delivered), key=lambda r: (r.updated_at, r.id))

    def mark_delivered(self, request_id: str, updated_at: float) -> bool:
        return bool(self._mark(keys=[self._row(request_id)], args=[_num(updated_at)]))

    def purge_closed(self, before: float) -> int:
        """Delete closed requests last touched before `before`. Each one in a WATCH/MULTI transaction: a reply that
        reopens it meanwhile wins, and the request stays."""
        deleted = 0
        candidates = self._r.zrangebyscore(f"{self._p}:closed", "-inf", f"({_num(before)}")
        for request_id in candidates:
            deleted += self._r.transaction(lambda pipe, i=request_id: self._delete_if_closed(pipe, i, before),
                                           self._row(request_id), value_from_callable=True)
        return deleted

    def _delete_if_closed(self, pipe: Any, request_id: str, before: float) -> int:
        status, updated_at, session_key = pipe.hmget(self._row(request_id), "status", "updated_at", "session_key")
        if status != RequestStatus.CLOSED.value or updated_at is None or not float(updated_at) < before:
            return 0
        pipe.multi()
        pipe.delete(self._row(request_id))
        for queue in (self._queue(None), self._queue(RequestStatus.CLOSED), f"{self._p}:closed"):
            pipe.zrem(queue, request_id)
        pipe.srem(self._session(session_key), request_id)
        pipe.zrem(self._outbox, request_id)
        return 1

    # ---- the webhook's outbox (see RequestStore) -------------------------------------------------------------------
    def unnotified(self, max_age: float, limit: int = 100) -> list[HelpRequest]:
        # Older ones stay in the index (a wider window still finds them, as in SQLite) until retention purges them.
        ids = self._r.zrangebyscore(self._outbox, _num(self._clock() - max_age), "+inf", start=0, num=limit)
        found = [_request(row) for row in _rows(self._r, map(self._row, ids)) if row]
        return sorted((r for r in found if not r.notified), key=lambda r: (r.created_at, r.id))

    def claim_notification(self, request_id: str, lease: float, due_only: bool = True) -> HelpRequest | None:
        now = self._clock()
        claimed = self._claim(keys=[self._row(request_id)], args=[_num(now), _num(now + lease), int(due_only)])
        return self.get(request_id) if claimed else None

    def mark_notified(self, request_id: str, attempts: int) -> bool:
        return bool(self._notified(keys=[self._row(request_id), self._outbox], args=[attempts, request_id]))

    def release_notification(self, request_id: str, lease_token: float, attempts: int, retry_in: float) -> bool:
        return bool(self._release(keys=[self._row(request_id)],
                                  args=[_num(lease_token), _num(self._clock() + retry_in), attempts]))


def _request(row: dict[str, str]) -> HelpRequest:
    history = tuple(Turn(t["role"], t["content"]) for t in json.loads(row["history"]))
    return HelpRequest(
        id=row["id"], created_at=float(row["created_at"]), updated_at=float(row["updated_at"]), channel=row["channel"],
        session_key=row["session_key"], answer_id=row.get("answer_id"), message=row["message"],
        contact=row.get("contact", ""), history=history, status=RequestStatus(row["status"]),
        reply=row.get("reply", ""), delivered=row.get("delivered") == "1", notified=row.get("notified", "1") == "1",
        notify_attempts=int(row.get("notify_attempts", "0")), notify_after=float(row.get("notify_after", "0")),
        notify_lease=float(row.get("notify_lease", "0")))
