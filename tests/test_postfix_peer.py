"""Postfix as a peer: a private Postfix (tests/postfix_helper.py) receives into a Maildir, and
relays to our SMTP server (Postfix as the client, STARTTLS when offered), whose delivery we
read back over our IMAP."""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
import smtplib
import time

import pytest
from conftest import Server, Site
from postfix_helper import PrivatePostfix, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def message(subject: str, to: str, sender: str = "bob@postfix.test") -> bytes:
    body = "".join(f"line {i} of the body, with a dot at the start of the next line\r\n.{i}\r\n" for i in range(50))
    return (
        f"From: Bob <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@postfix.test>\r\n\r\n{body}"
    ).encode()


@pytest.fixture
def postfix():
    with PrivatePostfix() as pf:
        yield pf


@pytest.fixture
def ours(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    site.add_user("carol")
    server = Server(site, protocols=("smtp", "imap")).start()
    yield server
    server.stop()


def imap_messages(server: Server, user: str) -> list[bytes]:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    try:
        client.login(user, "secret")
        client.select("INBOX", readonly=True)
        typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [item[1] for item in data if isinstance(item, tuple)]
    finally:
        client.logout()


def test_private_postfix_delivers_into_its_maildir_and_refuses_unknown_users(postfix):
    postfix.add_mailbox("bob")
    postfix.start()
    data = message("to bob", "bob@postfix.test", sender="alice@example.test")
    with postfix.smtp() as s:
        assert s.sendmail("alice@example.test", ["bob@postfix.test"], data) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            s.sendmail("alice@example.test", ["nobody@postfix.test"], data)
    assert "nobody@postfix.test" in str(refused.value) and "550" in str(refused.value)
    [path] = postfix.wait_for_mail("bob", 1)
    stored = path.read_bytes()
    assert stored.startswith(b"Return-Path: <alice@example.test>\n")
    assert b"Delivered-To: bob@postfix.test\n" in stored
    # Postfix stores LF line ends; the body came through unchanged, dots unstuffed
    assert stored.endswith(data.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n"))
    assert postfix.queue_size() == 0
    assert postfix.errors() == []


def test_postfix_relays_to_our_server_over_starttls_and_imap_reads_it(postfix, ours):
    postfix.relayhost = f"[127.0.0.1]:{ours.ports['smtp']}"
    postfix.start()
    data = message("relayed by postfix", "alice@mail.example.test")
    with postfix.smtp() as s:  # Postfix accepts (it relays for mynetworks) and queues
        assert s.sendmail("bob@postfix.test", ["alice@mail.example.test", "carol@mail.example.test"], data) == {}
    for user in ("alice", "carol"):
        folder = ours.site.home(user) / "Maildir" / "new"
        assert len(_wait(lambda: list(folder.glob("*")) if folder.is_dir() else [], 1)) == 1
        [fetched] = imap_messages(ours, user)
        parsed = email.message_from_bytes(fetched, policy=email.policy.default)
        assert parsed["Subject"] == "relayed by postfix"
        assert parsed["Return-Path"] == "<bob@postfix.test>"
        received = parsed.get_all("Received")
        # ours on top (STARTTLS used: ESMTPS), Postfix's below it
        assert re.search(r"from postfix\.test .*by mail\.example\.test \(retrieval\) with ESMTPS", " ".join(received[0].split()))
        assert "by postfix.test (Postfix)" in received[1]
        body = fetched.split(b"\r\n\r\n", 1)[1]
        assert body == data.split(b"\r\n\r\n", 1)[1]
    assert postfix.queue_size() == 0
    sent = [line for line in postfix.log_lines() if " status=sent " in line and "relay=127.0.0.1" in line]
    assert len(sent) == 2, postfix.log_tail()


def test_our_rejection_reaches_the_sender_as_postfix_bounce(postfix, ours):
    """Our 550 for an unknown user makes Postfix bounce the message to its (local) sender."""
    postfix.add_mailbox("bob")
    postfix.relayhost = f"[127.0.0.1]:{ours.ports['smtp']}"
    postfix.start()
    with postfix.smtp() as s:
        assert s.sendmail("bob@postfix.test", ["nosuchuser@mail.example.test"], message("lost", "x")) == {}
    [bounce] = postfix.wait_for_mail("bob", 1)
    text = bounce.read_text(errors="replace")
    assert "Undelivered Mail Returned to Sender" in text
    assert "nosuchuser@mail.example.test" in text
    assert re.search(r"550[ -]5\.1\.1", text), text
    assert not (ours.site.home("nosuchuser")).exists()
    assert postfix.queue_size() == 0


def _wait(probe, count: int, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_we_relay_to_postfix_through_the_queue(postfix, tmp_path):
    """Ours as the client: mail for Postfix's domain goes out of our queue (relayhost) and
    lands in Postfix's Maildir byte for byte."""
    postfix.add_mailbox("bob")
    postfix.start()
    (tmp_path / "ours").mkdir()
    site = Site(tmp_path / "ours")
    site.add_user("alice")
    server = Server(site, protocols=("smtp",),
                    smtp_extra=f'relayhost = "[127.0.0.1]:{postfix.port}"\nretry_min = 0.5\nretry_max = 1\n').start()
    try:
        data = message("from ours to postfix", "bob@postfix.test", sender="alice@mail.example.test")
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("alice@mail.example.test", ["bob@postfix.test"], data)
        (path,) = postfix.wait_for_mail("bob")
        got = path.read_bytes()
        parsed = email.message_from_bytes(got, policy=email.policy.default)
        assert parsed["Subject"] == "from ours to postfix"
        assert parsed["Return-Path"] == "<alice@mail.example.test>"
        received = [str(v) for v in parsed.get_all("Received")]
        assert any("by mail.example.test (retrieval)" in r for r in received)  # our trace, below Postfix's
        body = got.split(b"\n\n", 1)[1].replace(b"\n", b"\r\n")
        assert body == data.split(b"\r\n\r\n", 1)[1]  # dot lines and all, byte for byte
        assert not (site.state / "queue" / "active").exists() or not list((site.state / "queue" / "active").iterdir())
    finally:
        server.stop()
