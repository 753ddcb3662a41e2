"""Session log lines and the fail2ban filter of docs/fail2ban.md, against real logins.

Each protocol's failed logins come from their own loopback address (127.0.0.2-4), the
successful ones from 127.0.0.5, so the test can check which address the filter finds.
"""

from __future__ import annotations

import base64
import configparser
import imaplib
import io
import os
import poplib
import re
import shutil
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, Server, Site

IMAP_IP, POP3_IP, SMTP_IP, GOOD_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
GOOD_PASSWORD = "C0rrect-Horse-91"
BAD_PASSWORDS = {"imap": "Wr0ng-imap-7f3a", "pop3": "Wr0ng-pop3-a1b2", "smtp": "Wr0ng-smtp-c3d4"}
FORGED = "x rip=192.0.2.99"  # a user name that tries to make the filter ban someone else


def filter_text() -> str:
    """The filter file exactly as docs/fail2ban.md shows it."""
    doc = (ROOT / "docs" / "fail2ban.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", doc, re.S)
    found = [b for b in blocks if b.startswith("# /etc/fail2ban/filter.d/retrieval.conf\n")]
    assert len(found) == 1, "docs/fail2ban.md must show the filter file once"
    return found[0]


def failregex() -> re.Pattern[str]:
    """The documented failregex as a Python regex (<HOST> an address, <F-USER> a group)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(filter_text())
    pattern = parser["Definition"]["failregex"].strip()
    assert "<HOST>" in pattern
    pattern = pattern.replace("<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)")
    pattern = pattern.replace("<F-USER>", "(?P<user>").replace("</F-USER>", ")")
    return re.compile(pattern)


def _from(cls, source: str):  # type: ignore[no-untyped-def]
    """An imaplib/poplib client class whose connection leaves from `source`."""

    class Bound(cls):  # type: ignore[misc, valid-type]
        def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
            return socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))

    return Bound


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    site = Site(tmp_path)
    site.add_user("carol", GOOD_PASSWORD)
    server = Server(site, protocols=("imap", "pop3", "smtp")).start()
    yield server
    server.stop()


def _wait_for(server: Server, predicate, what: str) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while True:
        text = server.log.read_text(errors="replace")
        if predicate(text):
            return text
        assert time.monotonic() < deadline, f"{what} never logged:\n{text[-4000:]}"
        time.sleep(0.05)


def _failed_logins(server: Server) -> int:
    """Wrong passwords and unknown users over each protocol; returns how many attempts."""
    attempts = 0
    imap = _from(imaplib.IMAP4, IMAP_IP)("127.0.0.1", server.ports["imap"], timeout=30)
    for user in ("carol", "nosuchuser"):
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(user, BAD_PASSWORDS["imap"])
        attempts += 1
    # a quoted name with a space and a fake rip=: logged encoded, counted against the real address
    typ, _ = imap._simple_command("LOGIN", f'"{FORGED}"', f'"{BAD_PASSWORDS["imap"]}"')
    assert typ == "NO"
    attempts += 1
    imap.logout()

    pop = _from(poplib.POP3, POP3_IP)("127.0.0.1", server.ports["pop3"], timeout=30)
    pop.user("carol")
    with pytest.raises(poplib.error_proto):
        pop.pass_(BAD_PASSWORDS["pop3"])
    attempts += 1
    pop.quit()

    smtp = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30, source_address=(SMTP_IP, 0))
    smtp.starttls(context=server.ssl_context())
    smtp.ehlo()
    smtp.user, smtp.password = "carol", BAD_PASSWORDS["smtp"]
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.auth("PLAIN", smtp.auth_plain)  # one mechanism: one attempt
    attempts += 1
    smtp.quit()
    return attempts


def _good_logins(server: Server) -> None:
    imap = _from(imaplib.IMAP4, GOOD_IP)("127.0.0.1", server.ports["imap"], timeout=30)
    imap.starttls(ssl_context=server.ssl_context())
    imap.login("carol", GOOD_PASSWORD)
    imap.select("INBOX")
    imap.logout()
    pop = _from(poplib.POP3, GOOD_IP)("127.0.0.1", server.ports["pop3"], timeout=30)
    pop.stls(context=server.ssl_context())
    pop.user("carol")
    pop.pass_(GOOD_PASSWORD)
    assert pop.stat()[0] == 1
    pop.retr(1)
    pop.dele(1)
    pop.quit()
    smtp = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30, source_address=(GOOD_IP, 0))
    smtp.starttls(context=server.ssl_context())
    smtp.login("carol", GOOD_PASSWORD)
    smtp.quit()


def test_failed_logins_match_the_documented_filter_and_nothing_else(server):
    server.site.deliver("carol", b"Subject: one\n\nhello\n")
    attempts = _failed_logins(server)
    _good_logins(server)
    text = _wait_for(server, lambda t: t.count("event=auth-failed") == attempts
                     and t.count("event=login ") == 3 and t.count("event=disconnect rip=127.0.0.5") >= 3,
                     "every login and disconnect")
    lines = text.splitlines()
    regex = failregex()
    matched = [(line, regex.search(line)) for line in lines]
    hits = [(line, m) for line, m in matched if m]
    # every failed attempt, and nothing else, with the client's real address
    assert len(hits) == attempts, "\n".join(line for line, _ in hits)
    assert all("event=auth-failed" in line for line, _ in hits)
    by_ip = sorted(m.group("host") for _, m in hits)
    assert by_ip == sorted([IMAP_IP] * 3 + [POP3_IP] + [SMTP_IP]), by_ip
    assert {m.group("user") for _, m in hits} == {"carol", "nosuchuser", "x%20rip%3D192.0.2.99"}
    assert " rip=192.0.2.99" not in text

    # one session id per connection, on every line of it, and the login lines say who and how
    logins = [line for line in lines if "event=login " in line]
    assert {re.search(r"proto=(\w+)", line).group(1) for line in logins} == {"imap", "pop3", "smtp"}
    assert all("rip=127.0.0.5" in line and "user=carol" in line for line in logins), logins
    # smtplib prefers CRAM-MD5 (offered: carol's hash is PLAIN); imaplib and poplib send the password
    assert sorted(re.search(r"method=(\S+)", line).group(1) for line in logins) == ["cram-md5", "password", "password"]
    assert all(re.search(r"tls=TLSv1\.[23]\b", line) for line in logins), logins
    pop_session = re.search(r"proto=pop3 session=(\S+) event=login ", text).group(1)
    pop_lines = [line for line in lines if f"session={pop_session} " in line]
    assert [re.search(r"event=(\S+)", line).group(1) for line in pop_lines] == ["connect", "starttls", "login", "disconnect"]
    assert "user=carol reason=closed" in pop_lines[-1] and "fetched=1 deleted=1" in pop_lines[-1], pop_lines[-1]
    imap_session = re.search(r"proto=imap session=(\S+) event=login ", text).group(1)
    imap_events = [re.search(r"event=(\S+)", line).group(1) for line in lines if f"session={imap_session} " in line]
    assert imap_events == ["connect", "starttls", "login", "disconnect"]
    assert len({re.search(r"session=(\S+)", line).group(1) for line in lines if "event=connect" in line}) == \
        text.count("event=connect")

    # no password, in clear or inside a SASL PLAIN blob, anywhere in the log
    for password in [GOOD_PASSWORD, *BAD_PASSWORDS.values()]:
        assert password not in text
        for user in ("carol", "nosuchuser"):
            blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            assert blob not in text

    # fail2ban itself agrees, on the same file and the same filter
    f2b = shutil.which("fail2ban-regex")
    if f2b is None:
        pytest.skip("fail2ban-regex is absent (apt-get install fail2ban; tests/run.sh installs it)")
    filter_file = server.site.base / "retrieval-filter.conf"
    filter_file.write_text(filter_text())
    result = subprocess.run([f2b, "-o", "ip", str(server.log), str(filter_file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.split()) == by_ip, result.stdout + result.stderr
    # the same lines as fail2ban's systemd backend sees them (it rebuilds "date host ident[pid]: MESSAGE")
    journal = server.site.base / "journal.log"
    journal.write_text("".join(f"Nov 28 05:17:23 mail retrieval[4242]: {line.split('] ', 1)[1]}\n"
                               for line in lines if "] proto=" in line))
    result = subprocess.run([f2b, "-o", "ip", str(journal), str(filter_file)], capture_output=True, text=True, timeout=120)
    assert sorted(result.stdout.split()) == by_ip, result.stdout + result.stderr


def test_journald_lines_carry_a_priority_and_no_timestamp(tmp_path, monkeypatch):
    """Under systemd, $JOURNAL_STREAM names the stream journald reads; lines then start with <N>."""
    from twisted.logger import Logger, LogPublisher

    from retrieval.logline import observer, under_journald

    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(stream)
        with open(tmp_path / "other", "w") as other:
            assert not under_journald(other)  # a redirected stderr is not journald's
        publisher = LogPublisher(observer(stream))
        log = Logger(namespace="retrieval.test", observer=publisher)
        log.info("proto=imap session=abc event=connect rip=192.0.2.1")
        log.warn("disk {what}", what="almost full")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("a job")
    lines = path.read_text().splitlines()
    assert lines[0] == "<6>proto=imap session=abc event=connect rip=192.0.2.1"
    assert lines[1] == "<4>disk almost full"
    assert lines[2] == "<2>a job" and any("ZeroDivisionError" in line for line in lines[3:])
    assert all(line.startswith("<2>") for line in lines[2:])

    monkeypatch.delenv("JOURNAL_STREAM")
    stream = io.StringIO()
    publisher = LogPublisher(observer(stream))
    Logger(namespace="retrieval.test", observer=publisher).info("hello")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[retrieval\.test#info\] hello\n", stream.getvalue())


def test_client_chosen_values_cannot_add_fields():
    from retrieval.logline import clean, format_line

    line = format_line("imap", "s1", "auth-failed", "203.0.113.9", user='a b=c "d"\r\nproto=pop3 %', tls="no")
    assert line == "proto=imap session=s1 event=auth-failed rip=203.0.113.9 user=a%20b%3Dc%20%22d%22%0D%0Aproto%3Dpop3%20%25 tls=no"
    assert clean("ü") == "%C3%BC" and clean("") == "-" and clean("x" * 500).endswith("...")
    assert len(clean("x" * 500)) == 131


def test_smtp_message_line():
    """The per-message line the SMTP adapter writes: the queue id, envelope and outcome, cleaned."""
    from twisted.logger import Logger, LogPublisher

    from retrieval.logline import SessionLog, observer

    stream = io.StringIO()
    log = Logger(namespace="retrieval.smtp", observer=LogPublisher(observer(stream, journald=True)))
    slog = SessionLog("smtp", log, transport=None, count_bytes=False)
    slog.user = "carol"
    slog.message("4XyZ", "bob@example.net", ["carol@example.org", "x y@example.org"], 1234, 250)
    line = stream.getvalue()
    assert re.fullmatch(r"<6>proto=smtp session=\S{8} event=message rip=- id=4XyZ user=carol "
                        r"from=<bob@example.net> to=<carol@example.org>,<x%20y@example.org> size=1234 result=250\n", line), line
