"""Console logins are throttled per account and per IP and hashed off the event loop; forwarded headers are believed
only from configured proxies; every question-shaped endpoint shares the per-client rate limit."""

from __future__ import annotations

import threading

import bcrypt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from assistant.api import create_app
from assistant.config import Settings, StaffSettings, WebSettings
from assistant.services import build_services
from assistant.state.accounts import hash_password
from assistant.state.ratelimit import LoginThrottle
from tests.conftest import make_settings

GOOD = "s3cret-pw"


@pytest.fixture
def console_app(tmp_path, embedder):
    staff = StaffSettings(console_users=f"lin:{hash_password(GOOD, rounds=4)},wang:{hash_password(GOOD, rounds=4)}",
                          login_max_failures=3, login_max_failures_per_ip=5)
    settings = make_settings(tmp_path / "data", staff=staff)
    return create_app(settings, build_services(settings, embedder))


def _login(client: TestClient, name: str, password: str):
    return client.post("/console/login", data={"username": name, "password": password})


def test_repeated_failures_lock_the_account_with_a_chinese_429_even_for_the_right_password(console_app):
    with TestClient(console_app, client=("203.0.113.7", 4000)) as client:
        failures = [_login(client, "lin", "wrong").status_code for _ in range(3)]
        locked = _login(client, "lin", GOOD)
        other = _login(client, "wang", GOOD)

    assert failures == [400, 400, 400]
    assert locked.status_code == 429 and "登录失败次数过多" in locked.json()["detail"]
    assert 1 <= int(locked.headers["retry-after"]) <= 15 * 60
    assert other.status_code == 200  # the lock is per account: a colleague still logs in


def test_a_successful_login_clears_the_accounts_failures(console_app):
    with TestClient(console_app, client=("203.0.113.7", 4000)) as client:
        statuses = [_login(client, "lin", pw).status_code for pw in ("wrong", "wrong", GOOD, "wrong", "wrong")]
        still_open = _login(client, "lin", GOOD)

    assert statuses == [400, 400, 200, 400, 400] and still_open.status_code == 200


def test_one_address_guessing_many_accounts_is_locked_out_per_ip(console_app):
    with TestClient(console_app, client=("198.51.100.9", 4000)) as guesser, \
            TestClient(console_app, client=("203.0.113.7", 4000)) as colleague:
        failures = [_login(guesser, f"user{i}", "wrong").status_code for i in range(5)]
        blocked = _login(guesser, "wang", GOOD)
        allowed = _login(colleague, "wang", GOOD)

    assert failures == [400] * 5 and blocked.status_code == 429 and allowed.status_code == 200


def test_a_multipart_login_form_is_throttled_like_an_urlencoded_one(console_app):
    # Gradio's login page posts FormData (multipart); the throttle must read the account name from it too.
    with TestClient(console_app, client=("203.0.113.7", 4000)) as client:
        multipart = {"username": (None, "lin"), "password": (None, "wrong")}
        failures = [client.post("/console/login", files=multipart).status_code for _ in range(3)]
        locked = client.post("/console/login", files={"username": (None, "lin"), "password": (None, GOOD)})

    assert failures == [400, 400, 400] and locked.status_code == 429


def test_passwords_are_hashed_in_a_worker_thread_not_on_the_event_loop(console_app, monkeypatch):
    threads = []
    real = bcrypt.checkpw

    def spy(password, hashed):  # a spy on the real bcrypt: it still decides
        threads.append(threading.current_thread().name)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    with TestClient(console_app) as client:
        loop_thread = client.portal.call(lambda: threading.current_thread().name)
        assert _login(client, "lin", GOOD).status_code == 200

    assert threads and all(t != loop_thread for t in threads)


def test_the_throttle_counts_within_its_window_only():
    throttle = LoginThrottle(per_account=2, per_ip=10, minutes=1)
    throttle.failed("1.2.3.4", "lin")
    assert throttle.locked("1.2.3.4", "lin") == 0
    throttle.failed("1.2.3.4", "lin")
    assert 1 <= throttle.locked("1.2.3.4", "lin") <= 60
    assert throttle.locked("1.2.3.4", "wang") == 0


# ---- forwarded headers and the shared rate limit -------------------------------------------------------------------
def _limited_app(service, **overrides):
    settings = service.settings.model_copy(update={"web": WebSettings(rate_limit_per_minute=2),
                                                   "staff": StaffSettings(console_enabled=False), **overrides})
    return create_app(settings, service)


def _ask(client: TestClient, forwarded_for: str) -> int:
    return client.post("/api/retrieve", json={"query": "物业费"}, headers={"x-forwarded-for": forwarded_for}).status_code


def test_rotating_x_forwarded_for_does_not_escape_the_rate_limit_by_default(module_services):
    with TestClient(_limited_app(module_services), client=("127.0.0.1", 5000)) as client:
        statuses = [_ask(client, f"10.0.0.{i}") for i in range(3)]

    assert statuses == [200, 200, 429]  # /api/retrieve counts too, and the header is not believed


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(module_services):
    app = _limited_app(module_services, trusted_proxies=["127.0.0.1"])
    with TestClient(app, client=("127.0.0.1", 5000)) as proxy, TestClient(app, client=("192.0.2.1", 5000)) as other:
        first = [_ask(proxy, "10.0.0.1") for _ in range(3)]
        second = _ask(proxy, "10.0.0.2")
        spoofed = [_ask(other, f"10.9.9.{i}") for i in range(3)]  # not a proxy: its header means nothing

    assert first == [200, 200, 429] and second == 200 and spoofed == [200, 200, 429]


def test_trusted_proxies_accept_networks_and_refuse_garbage(monkeypatch):
    monkeypatch.setenv("XIAOYU_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    assert Settings().trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]
    monkeypatch.setenv("XIAOYU_TRUSTED_PROXIES", "not-an-ip")
    with pytest.raises(ValidationError, match="not-an-ip"):
        Settings()
