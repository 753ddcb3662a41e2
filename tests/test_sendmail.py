"""`retrieval sendmail` as local programs use it: Debian's mail(1) (bsd-mailx), cron-style
pipes, -t/-i/-f/-F/-bs/-bp, and the maildrop it leaves for the relay."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import poplib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server, Site, run_cli
from test_smtp_queue import NO_DNS, messages, queued, wait_until


@pytest.fixture
def mta(tmp_path: Path):  # type: ignore[no-untyped-def]
    site = Site(tmp_path)
    site.add_user("alice")
    site.add_user("bob")
    server = Server(site, protocols=("smtp", "imap", "pop3"),
                    smtp_extra=NO_DNS + "retry_min = 3600\nretry_max = 3600\n").start()
    yield server
    server.stop()


def sendmail_link(tmp_path: Path) -> Path:
    """/usr/sbin/sendmail as an admin would make it: a symlink to the `retrieval` command."""
    script = Path(sys.executable).parent / "retrieval"
    if not script.exists():
        found = shutil.which("retrieval")
        if found is None:
            pytest.skip("the retrieval command is not installed (pip install -e .)")
        script = Path(found)
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(script)
    return link


def env_for(server: Server) -> dict:
    return {**os.environ, "RETRIEVAL_CONFIG": str(server.site.config)}


def sendmail(server: Server, *args: str, input: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrieval", "sendmail", *args], input=input, capture_output=True,
                          env=env_for(server), timeout=60)


def test_mail_command_to_a_local_user_is_readable_over_imap_and_pop3(mta, tmp_path):
    if shutil.which("bsd-mailx") is None:
        pytest.skip("Debian's bsd-mailx is not installed (tests/run.sh installs it)")
    link = sendmail_link(tmp_path)
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={link}\n")
    result = subprocess.run(["bsd-mailx", "-s", "hello from mail", "alice"], input=b"hi alice\n",
                            env={**env_for(mta), "MAILRC": str(mailrc), "HOME": str(tmp_path)},
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (data,) = wait_until(lambda: messages(mta.site, "alice", "hello from mail"), what="the delivery")
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Subject"] == "hello from mail"
    assert message["To"] == "alice"
    user = os.getuid()
    assert f"(retrieval, from userid {user})" in message["Received"]
    assert message["Message-ID"] and message["Date"] and message["From"]

    imap = imaplib.IMAP4("127.0.0.1", mta.ports["imap"], timeout=30)
    imap.login("alice", "secret")
    imap.select("INBOX")
    typ, found = imap.search(None, "SUBJECT", '"hello from mail"')
    assert typ == "OK" and len(found[0].split()) == 1
    imap.logout()
    pop = poplib.POP3("127.0.0.1", mta.ports["pop3"], timeout=30)
    pop.user("alice")
    pop.pass_("secret")
    _, lines, _ = pop.retr(1)
    assert b"Subject: hello from mail" in lines and b"hi alice" in lines
    pop.quit()


def test_mail_command_to_a_remote_address_is_queued_for_relaying(mta, tmp_path):
    if shutil.which("bsd-mailx") is None:
        pytest.skip("Debian's bsd-mailx is not installed (tests/run.sh installs it)")
    link = sendmail_link(tmp_path)
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={link}\n")
    result = subprocess.run(["bsd-mailx", "-s", "going out", "friend@elsewhere.example"], input=b"hi\n",
                            env={**env_for(mta), "MAILRC": str(mailrc), "HOME": str(tmp_path)},
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: queued(mta.site), what="the queued message")
    listing = run_cli("queue", "list", "--config", str(mta.site.config), check=True).stdout.decode()
    assert "friend@elsewhere.example" in listing
    mailq = subprocess.run([str(link.with_name("mailq"))] if link.with_name("mailq").exists() else
                           [sys.executable, "-m", "retrieval", "sendmail", "-bp"],
                           capture_output=True, env=env_for(mta), timeout=60)
    assert b"friend@elsewhere.example" in mailq.stdout


def test_dash_t_takes_recipients_from_the_header_and_drops_bcc(mta):
    message = (b"To: alice\nCc: Bob <bob@localhost>\nBcc: alice@mail.example.test\nSubject: dash-t\n\n"
               b"line one\n.\nafter a dot line\n")
    result = sendmail(mta, "-t", "-i", "-f", "robot@example.org", "-F", "Cron Daemon", input=message)
    assert result.returncode == 0, result.stderr
    (alice,) = wait_until(lambda: messages(mta.site, "alice", "dash-t"), what="alice's copy")
    (bob,) = wait_until(lambda: messages(mta.site, "bob", "dash-t"), what="bob's copy")
    for data in (alice, bob):
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert parsed["Bcc"] is None
        assert parsed["Return-Path"] == "<robot@example.org>"
        assert parsed["From"] == '"Cron Daemon" <robot@example.org>' or parsed["From"] == "Cron Daemon <robot@example.org>"
        assert b"line one\n.\nafter a dot line" in data  # -i: a lone dot is text


def test_without_dash_i_a_lone_dot_ends_the_message(mta):
    result = sendmail(mta, "bob", input=b"Subject: dotted\n\nbefore\n.\nafter\n")
    assert result.returncode == 0, result.stderr
    (data,) = wait_until(lambda: messages(mta.site, "bob", "dotted"), what="the delivery")
    assert b"before" in data and b"after" not in data


def test_sendmail_errors_are_sysexits(mta):
    assert sendmail(mta, input=b"Subject: nobody\n\nx\n").returncode == 64  # no recipients
    assert sendmail(mta, "-t", input=b"Subject: nobody\n\nx\n").returncode == 64
    assert sendmail(mta, "-bz", "alice", input=b"x").returncode == 64
    assert sendmail(mta, "bad address@", input=b"Subject: x\n\nx\n").returncode == 65


def test_dash_bs_speaks_smtp_on_stdin_and_stdout(mta):
    conversation = (b"EHLO localhost\r\nMAIL FROM:<cron@mail.example.test>\r\nRCPT TO:<alice@localhost>\r\n"
                    b"RCPT TO:<nosuch@localhost>\r\nDATA\r\nSubject: via-bs\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    result = sendmail(mta, "-bs", input=conversation)
    assert result.returncode == 0, result.stderr
    replies = result.stdout.decode().splitlines()
    assert replies[0].startswith("220 mail.example.test ESMTP")
    assert any(line.startswith("550 5.1.1") for line in replies)
    assert any(line.startswith("250 2.0.0 Ok: queued as ") for line in replies)
    assert replies[-1].startswith("221")
    wait_until(lambda: messages(mta.site, "alice", "via-bs"), what="the delivery")


def test_a_drop_waits_for_the_relay_to_start(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, protocols=("smtp",))
    server.start()
    server.stop()  # the queue folders exist now; the relay is down
    result = subprocess.run([sys.executable, "-m", "retrieval", "sendmail", "alice"], input=b"Subject: waited\n\nx\n",
                            capture_output=True, env={**os.environ, "RETRIEVAL_CONFIG": str(site.config)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(site.state / "queue" / "maildrop")) == 1
    assert not messages(site, "alice", "waited")
    server.start()
    try:
        wait_until(lambda: messages(site, "alice", "waited"), what="the pickup")
        assert os.listdir(site.state / "queue" / "maildrop") == []
    finally:
        server.stop()
