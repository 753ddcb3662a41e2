"""Shared fixtures: real folders, real config files, the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def run_cli(*args: str, input: bytes | None = None, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `retrieval ...` as a real process (the installed entry point's module)."""
    return subprocess.run(
        [sys.executable, "-m", "retrieval", *args],
        input=input,
        capture_output=True,
        check=check,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


class Site:
    """A complete small installation in a temp folder: config, passwd-file, homes."""

    def __init__(self, base: Path, mail_location: str = "maildir:~/Maildir") -> None:
        self.base = base
        self.passwd = base / "passwd"
        self.state = base / "state"
        self.config = base / "retrieval.toml"
        self.mail_location = mail_location
        self.write_config()

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f"""
[server]
hostname = "mail.example.test"
state_dir = "{self.state}"

[auth]
passwd_file = "{self.passwd}"
allow_plaintext = true
default_scheme = "SHA512-CRYPT"

[store]
mail_location = "{self.mail_location}"
{extra}
"""
        )

    def home(self, user: str) -> Path:
        return self.base / "home" / user

    def add_user(self, user: str, password: str = "secret", scheme: str = "PLAIN") -> None:
        """PLAIN by default: store tests need users, not slow hashes (auth tests test those)."""
        from retrieval.auth.passwd import add_user

        home = self.home(user)
        home.mkdir(parents=True, exist_ok=True)
        add_user(self.passwd, user, password, scheme=scheme, home=str(home))

    def store(self, user: str):  # type: ignore[no-untyped-def]
        from retrieval.auth.passwd import PasswdFile
        from retrieval.config import load_config
        from retrieval.store import open_user_store

        config = load_config(self.config)
        record = PasswdFile(self.passwd).lookup(user)
        assert record is not None
        return open_user_store(config, record)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.add_user("alice")
    return s


@pytest.fixture
def mbox_site(tmp_path: Path) -> Site:
    spool = tmp_path / "spool"
    spool.mkdir()
    s = Site(tmp_path, f"mbox:~/mail:INBOX={spool}/%u")
    s.add_user("alice")
    return s
