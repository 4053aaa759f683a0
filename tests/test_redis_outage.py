"""Redis stopping after start (scaled out): residents get a clear 503 they may retry, never a 500, and the rate limit
does not take questions down with it. A redis-server of this test's own, so stopping it harms no other test."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from assistant.api import create_app
from assistant.config import StaffSettings, WebSettings
from assistant.services import build_services
from tests.conftest import make_settings, start_redis


@pytest.fixture
def own_redis(tmp_path):
    proc, url = start_redis(tmp_path)
    yield proc, f"{url}/0"
    proc.kill()
    proc.wait(timeout=30)


def test_a_redis_outage_after_start_is_a_503_with_a_message_not_a_500(own_redis, kb_data_dir, embedder, tmp_path):
    proc, url = own_redis
    data_dir = tmp_path / "data"
    shutil.copytree(kb_data_dir, data_dir)
    settings = make_settings(data_dir, redis_url=url, web=WebSettings(rate_limit_per_minute=5),
                             staff=StaffSettings(console_enabled=False))
    services = build_services(settings, embedder)
    with TestClient(create_app(settings, services), raise_server_exceptions=False) as client:
        assert client.post("/api/chat", json={"question": "物业费怎么交？"}).status_code == 200
        proc.kill()
        proc.wait(timeout=30)
        res = client.post("/api/chat", json={"question": "物业费怎么交？", "session_id": "x" * 22})
        assert res.status_code == 503, res.text
        assert "稍后再试" in res.json()["detail"]
