"""The webhook's outbox: a hand-off request's notification survives a restart, a crash mid-send and a receiver that is
down, is sent by one of several processes, and never twice once it was accepted. Real stores (SQLite in tmp_path, a
real redis-server) and a real HTTP receiver on loopback; time is waited on with deadlines, never slept as a check."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import sqlite3
import time
from collections.abc import Callable

import pytest

from assistant.config import RequestSettings, Settings
from assistant.services import build_services
from assistant.state.redis_state import RedisRequestStore, connect
from assistant.state.requests import HelpRequest, RequestStore
from assistant.state.webhook import DAY, SIGNATURE_HEADER, Webhook
from assistant.types import Channel
from tests.conftest import WebhookReceiver, _free_port

QUESTION = "调解协议怎么申请司法确认？"


class Clock:
    """Dates the requests and their claims: a lease runs out by moving it, not by waiting."""

    def __init__(self, now: float = 1_750_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hook():
    """(url, up): the webhook URL, and `up(statuses)` to start its receiver there; it is down until then."""
    port = _free_port()
    made: list[WebhookReceiver] = []

    def up(statuses=(200,)) -> WebhookReceiver:
        made.append(WebhookReceiver(statuses, port))
        return made[-1]

    yield f"http://127.0.0.1:{port}/hooks/xiaoyu", up
    for r in made:
        r.close()


@pytest.fixture
def webhooks():
    """Makes Webhooks and closes them after the test, as a stopping process would."""
    made: list[Webhook] = []

    def make(url: str, store, **kwargs) -> Webhook:
        made.append(Webhook(url, store, _payload, **{"attempts": 2, "backoff": 0.01, "timeout": 5.0, **kwargs}))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture(params=["sqlite", "redis"])
def stores(request, tmp_path) -> Callable[..., RequestStore | RedisRequestStore]:
    """`stores(clock)` opens the request store as a new process would: a new connection to the same SQLite file, or a
    new client of the same Redis database."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def open_store(clock: Callable[[], float] = time.time) -> RequestStore | RedisRequestStore:
        if url is None:
            return RequestStore(tmp_path / "requests.sqlite3", clock)
        return RedisRequestStore(connect(url), "test", clock)

    return open_store


def _payload(r: HelpRequest) -> dict:
    return {"id": r.id, "status": r.status.value, "message": r.message}


def _open(store, message: str = "请联系我") -> HelpRequest:
    return store.add("web", "web:s1", message, "", [], notify=True)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # polling a condition with a deadline, not a timing assertion
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.01)


# ---- the store's outbox: one contract, both implementations ----------------------------------------------------------
def test_a_notification_is_claimed_by_one_caller_until_it_is_released_or_its_lease_runs_out(stores):
    clock = Clock()
    store, other_process = stores(clock), stores(clock)
    request = _open(store)
    assert (request.notified, request.notify_attempts) == (False, 0)
    assert [r.id for r in other_process.unnotified(7 * DAY)] == [request.id]

    claimed = store.claim_notification(request.id, lease=100)
    assert claimed is not None and claimed.notify_lease == clock.now + 100
    assert other_process.claim_notification(request.id, lease=100, due_only=False) is None  # held: nobody else
    assert [r.id for r in other_process.unnotified(7 * DAY)] == [request.id]  # still undelivered

    assert not other_process.release_notification(request.id, clock.now + 5, 1, 0)  # not the claim's token
    assert store.release_notification(request.id, claimed.notify_lease, attempts=2, retry_in=30)
    assert not store.release_notification(request.id, claimed.notify_lease, 2, 30)  # given back once
    assert other_process.claim_notification(request.id, lease=100) is None  # its next round is not due yet
    clock.now += 30
    again = other_process.claim_notification(request.id, lease=100)
    assert again is not None and again.notify_attempts == 2

    clock.now += 100  # that process died mid-send: its lease runs out, and another takes over
    taken = store.claim_notification(request.id, lease=100)
    assert taken is not None
    assert store.mark_notified(request.id, attempts=1)
    assert not other_process.mark_notified(request.id, attempts=1)
    assert not other_process.release_notification(request.id, again.notify_lease, 2, 0)  # the dead one's, late
    delivered = other_process.get(request.id)
    assert delivered is not None and (delivered.notified, delivered.notify_attempts) == (True, 3)
    assert store.unnotified(7 * DAY) == []
    assert store.claim_notification(request.id, lease=100, due_only=False) is None


def test_the_outbox_holds_only_requests_opened_with_a_webhook_within_the_resend_window(stores):
    clock = Clock()
    store = stores(clock)
    old = _open(store, "八天前")
    clock.now += DAY
    without_webhook = store.add("web", "web:s1", "没有配置 webhook", "", [])
    clock.now += 7 * DAY
    recent = _open(store, "刚才")

    assert without_webhook.notified and store.claim_notification(without_webhook.id, 100) is None
    assert [r.id for r in store.unnotified(7 * DAY)] == [recent.id]
    assert [r.id for r in store.unnotified(9 * DAY)] == [old.id, recent.id]


def test_an_old_request_file_gets_the_outbox_columns_and_its_requests_count_as_notified(tmp_path):
    path = tmp_path / "requests.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the release before the outbox made it
        db.executescript("""
            CREATE TABLE requests (id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL,
                channel TEXT NOT NULL, session_key TEXT NOT NULL, answer_id TEXT, message TEXT NOT NULL,
                contact TEXT NOT NULL DEFAULT '', history TEXT NOT NULL DEFAULT '[]', status TEXT NOT NULL,
                reply TEXT NOT NULL DEFAULT '', delivered INTEGER NOT NULL DEFAULT 0);
            INSERT INTO requests (id, created_at, updated_at, channel, session_key, message, status)
                VALUES ('old1', 1750000000.0, 1750000000.0, 'web', 'web:s1', '旧留言', 'open');""")
    db.close()
    clock = Clock(1_750_000_100.0)
    store = RequestStore(path, clock)

    old = store.get("old1")
    assert old is not None and old.notified and old.message == "旧留言"  # its webhook was tried when it was opened
    assert store.unnotified(7 * DAY) == []
    new = _open(store)
    assert [r.id for r in RequestStore(path, clock).unnotified(7 * DAY)] == [new.id]  # a second open migrates nothing


def test_a_redis_request_from_before_the_outbox_counts_as_notified(redis_url):
    client = connect(redis_url)
    client.hset("test:req:old1", mapping={"id": "old1", "created_at": "1750000000.0", "updated_at": "1750000000.0",
                                          "channel": "web", "session_key": "web:s1", "message": "旧留言",
                                          "history": "[]", "status": "open", "reply": "", "delivered": "0"})
    store = RedisRequestStore(client, "test", Clock(1_750_000_100.0))

    old = store.get("old1")
    assert old is not None and old.notified and old.notify_attempts == 0
    assert store.claim_notification("old1", 100, due_only=False) is None


# ---- the webhook over the outbox ---------------------------------------------------------------------------------
def test_every_post_names_the_request_in_a_delivery_header_and_keeps_the_signature(stores, hook, webhooks):
    url, up = hook
    receiver = up(statuses=(503, 200))
    store = stores()
    webhook = webhooks(url, store, secret="hook-secret-42")
    request = _open(store)

    webhook.notify(request)
    assert webhook.drain(30)

    assert receiver.deliveries() == [request.id, request.id]  # a retry is the same delivery
    for headers, body in receiver.received:
        expected = "sha256=" + hmac.new(b"hook-secret-42", body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
        assert json.loads(body) == {"event": "request.opened", "id": request.id, "status": "open",
                                    "message": "请联系我"}
    done = store.get(request.id)
    assert done is not None and (done.notified, done.notify_attempts) == (True, 2)


def test_a_request_opened_while_the_receiver_is_down_is_delivered_once_after_a_restart(stores, hook, webhooks):
    url, up = hook
    store = stores()
    first = webhooks(url, store)
    request = _open(store)
    first.notify(request)
    assert first.drain(30)  # a round of two refused connections
    failed = store.get(request.id)
    assert failed is not None and (failed.notified, failed.notify_attempts) == (False, 2)
    first.close()  # the process stops; its next round (a minute away) never comes

    receiver = up()
    after_restart = stores()
    second = webhooks(url, after_restart)  # its start sends the outbox at once, not at the next round
    wait_until(lambda: receiver.deliveries() == [request.id])
    assert second.drain(30)
    delivered = after_restart.get(request.id)
    assert delivered is not None and (delivered.notified, delivered.notify_attempts) == (True, 3)

    third = webhooks(url, stores())  # and the start after that has nothing to send
    assert third.drain(30)
    assert receiver.deliveries() == [request.id]


def test_a_delivered_notification_is_never_resent_after_a_restart(stores, hook, webhooks):
    url, up = hook
    receiver = up()
    clock = Clock()
    store = stores(clock)
    first = webhooks(url, store)
    delivered = _open(store, "已送达")
    first.notify(delivered)
    wait_until(lambda: receiver.deliveries() == [delivered.id])
    assert first.drain(30)
    first.close()

    clock.now += DAY  # every lease and retry time long past, still inside the resend window
    restarted = stores(clock)
    later = _open(restarted, "重启后才打开、无人通知")  # the process that opened it died before sending
    webhooks(url, restarted, sweep_seconds=0.05)
    # Sweeps (at start, then periodic) take the oldest first: the delivered one would have gone before this one.
    wait_until(lambda: later.id in receiver.deliveries())
    assert receiver.deliveries() == [delivered.id, later.id]


def test_a_notification_claimed_by_a_process_that_crashed_is_sent_once_its_lease_runs_out(stores, hook, webhooks):
    url, up = hook
    receiver = up()
    clock = Clock()
    store = stores(clock)
    request = _open(store)
    crashed = store.claim_notification(request.id, lease=120)  # claimed, then the process died mid-send
    assert crashed is not None

    webhook = webhooks(url, stores(clock), sweep_seconds=0.05)
    assert webhook.drain(30)  # the start sweep: the claim is still live, so it is not this process's to send
    assert receiver.deliveries() == []

    clock.now += 121
    wait_until(lambda: receiver.deliveries() == [request.id])  # a periodic sweep takes it over
    assert webhook.drain(30)
    wait_until(lambda: (r := store.get(request.id)) is not None and r.notified)
    assert receiver.deliveries() == [request.id]


def test_two_webhooks_on_one_store_send_each_notification_once(stores, hook, webhooks):
    url, up = hook
    receiver = up()
    store = stores()
    waiting = [_open(store, f"停机时留下的第{i}条") for i in range(10)]  # opened by a process that died before sending

    a_store, b_store = stores(), stores()
    a, b = webhooks(url, a_store), webhooks(url, b_store)  # two processes start together, sweeping the same outbox
    fresh = [_open(a_store, f"新留言{i}") for i in range(10)]
    for request in fresh:  # each told of every new one: the most a race can do
        a.notify(request)
        b.notify(request)
    assert a.drain(30) and b.drain(30)

    expected = sorted(r.id for r in waiting + fresh)
    assert sorted(receiver.deliveries()) == expected  # every one, none twice
    assert store.unnotified(7 * DAY) == []


def test_requests_older_than_the_resend_window_are_not_sent_at_start(stores, hook, webhooks):
    url, up = hook
    receiver = up()
    clock = Clock()
    store = stores(clock)
    stale = _open(store, "八天前，接收方一直没开")
    clock.now += 8 * DAY
    recent = _open(store, "昨天")

    webhook = webhooks(url, stores(clock), max_age=7 * DAY)
    assert webhook.drain(30)

    assert receiver.deliveries() == [recent.id]
    given_up = store.get(stale.id)
    assert given_up is not None and not given_up.notified  # given up, and still in the staff queue
    assert stale.id in {r.id for r in store.queue()}


# ---- through the services, as `xiaoyu serve` builds them -------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_request_opened_at_the_desk_while_the_receiver_is_down_reaches_it_after_a_restart(
        backend, request, kb_data_dir, embedder, tmp_path, hook):
    url, up = hook
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    redis = {"redis_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    settings = Settings(data_dir=data_dir, requests=RequestSettings(webhook_url=url, webhook_attempts=2,
                                                                   webhook_backoff=0.01), **redis)
    services = build_services(settings, embedder)
    asked = services.chat.ask(QUESTION, channel=Channel.WEB, start_session=True)
    opened = services.desk.open(asked.session_id, "请联系我", contact="138****0000")
    assert services.desk._webhook.drain(30)  # the test's one look inside: the refused round is over
    services.desk._webhook.close()

    receiver = up()
    restarted = build_services(settings, embedder)
    wait_until(lambda: receiver.deliveries() == [opened.id])
    assert restarted.desk._webhook.drain(30)
    restarted.desk._webhook.close()
    body = json.loads(receiver.received[0][1])
    assert body["event"] == "request.opened" and body["id"] == opened.id and body["message"] == "请联系我"
    assert body["history"][0] == {"role": "user", "content": QUESTION}

    again = build_services(settings, embedder)
    assert again.desk._webhook.drain(30)
    again.desk._webhook.close()
    assert receiver.deliveries() == [opened.id]
