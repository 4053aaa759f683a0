"""Who may use the staff console and the admin API: bcrypt-hashed staff passwords and the admin bearer token."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from functools import cache
from pathlib import Path

import bcrypt

ACCOUNTS_FILE = "console-users.txt"
FIRST_USER = "admin"
# bcrypt only reads the first 72 bytes; a longer password would silently match its own prefix, so refuse it.
MAX_PASSWORD_BYTES = 72


@cache
def _dummy_hash() -> bytes:
    # Checked when a login names no known account, so that a wrong name costs as long as a wrong password.
    return bcrypt.hashpw(b"not-a-password", bcrypt.gensalt())


class AccountError(ValueError):
    """A malformed account setting or password; the message names what is wrong."""


def hash_password(password: str, rounds: int = 12) -> str:
    raw = password.encode("utf-8")
    if not password.strip():
        raise AccountError("密码不能为空")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise AccountError(f"密码太长（{len(raw)} 字节），bcrypt 最多使用 {MAX_PASSWORD_BYTES} 字节")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=rounds)).decode("ascii")


def parse_accounts(spec: str) -> dict[str, str]:
    """"lin:$2b$12$…,wang:$2b$12$…" → {"lin": "$2b$12$…", "wang": "$2b$12$…"} (commas or newlines separate)."""
    accounts = {}
    lines = [line for line in spec.splitlines() if not line.strip().startswith("#")]
    for entry in ",".join(lines).split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, hashed = entry.partition(":")
        name, hashed = name.strip(), hashed.strip()
        if not sep or not name or not hashed.startswith("$2"):
            shown = name or entry[:20]
            raise AccountError(f"工作台账号格式错误：{shown!r} 应写成 用户名:bcrypt哈希（用 `xiaoyu hash-password` 生成）")
        accounts[name] = hashed
    return accounts


class StaffAccounts:
    def __init__(self, accounts: dict[str, str]):
        if not accounts:
            raise AccountError("没有任何工作台账号")
        self._accounts = dict(accounts)

    @property
    def names(self) -> list[str]:
        return sorted(self._accounts)

    def check(self, name: str, password: str) -> bool:
        """Gradio's login callback: True only for a known name with its password."""
        raw = (password or "").encode("utf-8")
        hashed = self._accounts.get((name or "").strip())
        if len(raw) > MAX_PASSWORD_BYTES:
            return False
        try:
            ok = bcrypt.checkpw(raw, hashed.encode("ascii") if hashed else _dummy_hash())
        except ValueError:  # a hash that is not bcrypt: the account can't log in, the console stays up
            return False
        return ok and hashed is not None

    @classmethod
    def load(cls, spec: str, data_dir: Path, announce: Callable[[str], None]) -> StaffAccounts:
        """Accounts from settings; else the ones saved in data_dir; else make one now and announce its password.

        The generated password is shown once and never stored: only its hash is written, so there is no default
        password to ship or to leak from the data dir."""
        if spec.strip():
            return cls(parse_accounts(spec))
        path = data_dir / ACCOUNTS_FILE
        if path.is_file():
            return cls(parse_accounts(path.read_text(encoding="utf-8")))
        password = secrets.token_urlsafe(12)
        hashed = hash_password(password)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process started at the same moment and made the account
            return cls(parse_accounts(path.read_text(encoding="utf-8")))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"# 工作台账号（用户名:bcrypt哈希）。设置 XIAOYU_CONSOLE_USERS 后此文件不再使用。\n{FIRST_USER}:{hashed}\n")
        announce(
            f"工作台 /console 还没有配置账号，已生成一个：用户名 {FIRST_USER}  密码 {password}\n"
            f"（密码只显示这一次；文件 {path} 只保存它的哈希。正式部署请用 `xiaoyu hash-password` 生成哈希，"
            f"写入 XIAOYU_CONSOLE_USERS。）"
        )
        return cls({FIRST_USER: hashed})


def token_matches(configured: str, authorization: str | None) -> bool:
    """Compare a presented token with the configured admin token in constant time."""
    if not configured or not authorization:
        return False
    return hmac.compare_digest(configured.encode("utf-8"), authorization.encode("utf-8"))
