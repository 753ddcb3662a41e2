"""`retrieval demo`: a working setup in one folder, so a new user can try a client at once."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"

WELCOME = b"""From: retrieval <postmaster@localhost>
To: demo@localhost
Subject: Welcome to retrieval
Message-ID: <welcome@retrieval.demo>
Date: Thu, 01 Jan 2026 00:00:00 +0000
Content-Type: text/plain; charset=utf-8

This message was delivered by `retrieval deliver` when the demo was set up.
Log in as demo / demo on 127.0.0.1: IMAP 10143 (STARTTLS) or 10993 (TLS),
POP3 10110 (STLS) or 10995 (TLS); send mail to demo@localhost on SMTP 10025,
or submit on 10587 (STARTTLS, AUTH) or 10465 (TLS).
"""


def write_demo(directory: Path) -> Path:
    """Create (or keep) the demo folder; return the config path. Safe to run again."""
    from retrieval.auth.passwd import PasswdFile, add_user
    from retrieval.net.certs import make_self_signed
    from retrieval.store.deliver import deliver_message
    from retrieval.store.location import for_user, parse_mail_location

    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "retrieval.toml"
    template = resources.files("retrieval").joinpath("demo.toml").read_text(encoding="utf-8")
    config_path.write_text(template.replace("@DIR@", str(directory)), encoding="utf-8")
    cert, key = directory / "certs" / "server.pem", directory / "certs" / "server.key"
    if not cert.exists() or not key.exists():
        make_self_signed(cert, key, "localhost")
    passwd_path = directory / "passwd"
    home = directory / "home" / DEMO_USER
    if PasswdFile(passwd_path).lookup(DEMO_USER) is None:
        add_user(passwd_path, DEMO_USER, DEMO_PASSWORD, scheme="BLF-CRYPT", home=str(home))
        home.mkdir(parents=True, exist_ok=True)
        location = for_user(parse_mail_location("maildir:~/Maildir"), DEMO_USER, str(home))
        deliver_message(location, DEMO_USER, WELCOME, sender="postmaster@localhost")
    (directory / "state").mkdir(exist_ok=True)
    return config_path
