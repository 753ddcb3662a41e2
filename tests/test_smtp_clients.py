"""SMTP over real sockets with real clients (smtplib, swaks), read back over IMAP and POP3."""

from __future__ import annotations

import email
import imaplib
import poplib
import re
import smtplib
import socket
import time
import ssl
import subprocess
import threading
import uuid
from email.message import EmailMessage

import pytest

from conftest import Server, Site

SMALL_LIMIT = 100_000


@pytest.fixture(scope="module", params=["maildir", "mbox"])
def mta(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    """SMTP (25/587/465 style), IMAP and POP3 on one server; users alice and bob (password secret).

    Loopback is *not* in mynetworks here, so that relaying from the tests' own address is refused."""
    base = tmp_path_factory.mktemp(f"mta-{request.param}")
    if request.param == "maildir":
        site = Site(base)
    else:
        (base / "spool").mkdir()
        site = Site(base, f"mbox:~/mail:INBOX={base}/spool/%u")
    site.add_user("alice")
    site.add_user("bob")
    store = site.store("alice")
    store.create("Lists")
    store.close()
    server = Server(site, protocols=("smtp", "imap", "pop3"),
                    smtp_extra=f'mynetworks = ["192.0.2.0/24"]\nmax_message_size = {SMALL_LIMIT}').start()
    yield server
    server.stop()


def unique(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def message(subject: str, sender: str = "bob@example.org", to: str = "alice@mail.example.test",
            body: str = "Hello Alice.\n", headers: bool = True) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    if headers:
        msg["Date"] = email.utils.formatdate()
        msg["Message-ID"] = email.utils.make_msgid()
    msg.set_content(body)
    return msg


def imap_fetch(server: Server, subject: str, folder: str = "INBOX", user: str = "alice") -> bytes:
    """The message, once the queue has delivered it (a 250 means queued, delivery follows)."""
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    try:
        m.login(user, "secret")
        deadline = time.monotonic() + 20
        while True:
            m.select(folder)
            typ, data = m.search(None, "SUBJECT", f'"{subject}"')
            assert typ == "OK"
            numbers = data[0].split()
            if numbers or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(numbers) == 1, f"{subject!r} found {len(numbers)} times in {folder}"
        typ, fetched = m.fetch(numbers[0], "(BODY.PEEK[])")
        assert typ == "OK"
        return fetched[0][1]
    finally:
        m.logout()


def imap_count(server: Server, subject: str, folder: str = "INBOX", user: str = "alice") -> int:
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    try:
        m.login(user, "secret")
        m.select(folder)
        return len(m.search(None, "SUBJECT", f'"{subject}"')[1][0].split())
    finally:
        m.logout()


def pop3_fetch(server: Server, subject: str, user: str = "alice") -> bytes:
    imap_fetch(server, subject, user=user)  # delivered by now
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    try:
        p.user(user)
        p.pass_("secret")
        count, _ = p.stat()
        for number in range(count, 0, -1):
            _, lines, _ = p.retr(number)
            data = b"\r\n".join(lines) + b"\r\n"
            if f"Subject: {subject}".encode() in data:
                return data
        raise AssertionError(f"{subject!r} not in the POP3 maildrop")
    finally:
        p.quit()


def check_trace(data: bytes, sender: str, recipient: str | None, protocol: str) -> None:
    """recipient None: a message for several recipients, whose trace names none (as Postfix's)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith(f"Return-Path: <{sender}>\r\n")
    for_clause = rf"\r\n\tfor <{re.escape(recipient)}>" if recipient else ""
    received = re.search(r"^Received: from (\S+) \((\S+) \[127\.0\.0\.1\]\)\r\n(?:\t\(using TLS[^)]+\)\r\n)?"
                         r"\tby mail\.example\.test \(retrieval\) with (\S+) id ([0-9A-Z]+)"
                         rf"{for_clause}; \w\w\w, \d\d \w\w\w \d{{4}} \d\d:\d\d:\d\d [+-]\d{{4}}\r$",
                         head, re.M)
    assert received, head
    assert received.group(3) == protocol


def raw(server: Server, port: str = "smtp") -> tuple[socket.socket, "Reader"]:
    sock = socket.create_connection(("127.0.0.1", server.ports[port]), timeout=30)
    reader = Reader(sock)
    assert reader.reply().startswith("220 mail.example.test ESMTP")
    return sock, reader


class Reader:
    """Read whole SMTP replies (multi-line ones joined) from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            assert line, "connection closed"
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return "\n".join(lines)


# -- smtplib ------------------------------------------------------------------------------


def test_smtplib_on_the_mx_port_delivers_readable_over_imap_and_pop3(mta):
    subject = unique("plain")
    with smtplib.SMTP("127.0.0.1", mta.ports["smtp"], timeout=30) as s:
        code, ehlo = s.ehlo("client.example")
        assert code == 250 and b"PIPELINING" in ehlo and b"ENHANCEDSTATUSCODES" in ehlo
        refused = s.send_message(message(subject, body="Hello Alice.\n.leading dot\n..two\n"))
        assert refused == {}
    data = imap_fetch(mta, subject)
    check_trace(data, "bob@example.org", "alice@mail.example.test", "ESMTP")
    assert data.endswith(b"Hello Alice.\r\n.leading dot\r\n..two\r\n")
    assert b"Received: from client.example (localhost [127.0.0.1])" in data
    popped = pop3_fetch(mta, subject)
    check_trace(popped, "bob@example.org", "alice@mail.example.test", "ESMTP")
    assert popped.endswith(b"Hello Alice.\r\n.leading dot\r\n..two\r\n")


def test_smtplib_starttls_and_auth_on_submission(mta):
    subject = unique("submission")
    with smtplib.SMTP("127.0.0.1", mta.ports["submission"], timeout=30) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail("alice@mail.example.test", ["bob@localhost"], b"Subject: x\r\n\r\nx\r\n")
        assert refused.value.smtp_code == 530 and b"5.7.0 Authentication required" in refused.value.smtp_error
        s.starttls(context=mta.ssl_context())
        s.ehlo()
        assert "auth" in s.esmtp_features and "starttls" not in s.esmtp_features
        s.login("alice", "secret")
        # no Date and no Message-ID: the submission service adds them
        s.send_message(message(subject, sender="alice@mail.example.test", to="bob@localhost", headers=False))
    data = imap_fetch(mta, subject, user="bob")
    check_trace(data, "alice@mail.example.test", "bob@localhost", "ESMTPSA")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"\r\nMessage-ID: <[0-9A-Z]+@mail\.example\.test>\r\n", head)
    assert re.search(rb"\r\nDate: \w\w\w, \d\d \w\w\w \d{4} ", head)
    assert b"(using TLSv1.3 with cipher " in head or b"(using TLSv1.2 with cipher " in head


def test_smtp_ssl_on_submissions_verifies_the_certificate(mta):
    subject = unique("submissions")
    with smtplib.SMTP_SSL("localhost", mta.ports["submissions"], context=mta.ssl_context(), timeout=30) as s:
        s.ehlo()
        assert "starttls" not in s.esmtp_features and "PLAIN" in s.esmtp_features["auth"]
        s.login("bob", "secret")
        s.sendmail("bob@mail.example.test", ["alice+lists@mail.example.test"], message(subject).as_bytes())
    data = imap_fetch(mta, subject, folder="Lists")
    check_trace(data, "bob@mail.example.test", "alice+lists@mail.example.test", "ESMTPSA")
    # a client that does not trust the certificate does not get in
    with pytest.raises(ssl.SSLError):
        smtplib.SMTP_SSL("localhost", mta.ports["submissions"], context=ssl.create_default_context(), timeout=30)


def test_unknown_user_and_relay_are_refused(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["smtp"], timeout=30) as s:
        s.ehlo()
        s.mail("bob@example.org")
        assert s.rcpt("nobody@mail.example.test") == (550, b"5.1.1 No such user here")
        assert s.rcpt("friend@elsewhere.example") == (554, b"5.7.1 Relay access denied")
        assert s.rcpt("alice@localhost") == (250, b"2.1.5 Ok")
        assert s.rcpt("postmaster") == (250, b"2.1.5 Ok")
        s.rset()
        # authenticated: relaying is allowed
        s.login("alice", "secret")
        s.mail("alice@mail.example.test")
        assert s.rcpt("friend@elsewhere.example") == (250, b"2.1.5 Ok")


def test_oversize_message_refused_at_mail_and_during_data(mta):
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (SMALL_LIMIT // 1000 + 5)
    with smtplib.SMTP("127.0.0.1", mta.ports["smtp"], timeout=30) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail("bob@example.org", ["alice@localhost"], big)  # smtplib declares SIZE=
        assert refused.value.smtp_code == 552 and refused.value.smtp_error == b"5.3.4 Message size exceeds fixed limit"
    sock, r = raw(mta)
    with sock:
        sock.sendall(b"EHLO c\r\nMAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
        assert [r.reply()[:3] for _ in range(4)] == ["250", "250", "250", "354"]
        sock.sendall(big + b".\r\n")
        assert r.reply() == "552 5.3.4 Message size exceeds fixed limit"
        sock.sendall(b"NOOP\r\n")
        assert r.reply() == "250 2.0.0 Ok"


def test_bad_commands_over_the_wire(mta):
    sock, r = raw(mta)
    with sock:
        sock.sendall(b"EHLO c\r\n")
        r.reply()
        for command, expected in [
            (b"BOGUS", "500 5.5.2 Error: command not recognized"),
            (b"MAIL FROM:<broken", "501 5.1.7 Bad sender address syntax"),
            (b"MAIL FROM:<a@b.example> FOO=1", "555 5.5.4 Unsupported option: FOO"),
            (b"RCPT TO:<alice@localhost>", "503 5.5.1 Error: need MAIL command"),
            (b"VRFY alice", "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"),
            (b"X" * 2000, "500 5.5.2 Error: line too long"),
        ]:
            sock.sendall(command + b"\r\n")
            assert r.reply() == expected
        sock.sendall(b"QUIT\r\n")
        assert r.reply() == "221 2.0.0 Bye"


def test_pipelined_mail_rcpt_rcpt_data_in_one_packet(mta):
    subject = unique("pipelined")
    sock, r = raw(mta)
    with sock:
        sock.sendall(b"EHLO c\r\n")
        assert "PIPELINING" in r.reply()
        sock.sendall(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
                     b"RCPT TO:<nobody@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        assert [r.reply() for _ in range(5)] == [
            "250 2.1.0 Ok", "250 2.1.5 Ok", "550 5.1.1 No such user here", "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
        ]
        # the message, the end of data and the next transaction in one packet too
        second = unique("bdat")
        chunk = f"Subject: {second}\r\n\r\nx\r\n".encode()
        sock.sendall(f"Subject: {subject}\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\n".encode()
                     + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n")
        assert r.reply().startswith("250 2.0.0 Ok: queued as ")
        assert r.reply() == "250 2.1.0 Ok" and r.reply() == "250 2.1.5 Ok"
        assert r.reply().startswith("250 2.0.0 Ok: queued as ")
        assert r.reply() == "221 2.0.0 Bye"
    check_trace(imap_fetch(mta, subject), "bob@example.org", None, "ESMTP")
    check_trace(imap_fetch(mta, subject, user="bob"), "bob@example.org", None, "ESMTP")
    assert imap_fetch(mta, second).startswith(b"Return-Path: <>\r\n")


def test_parallel_clients(mta):
    subject = unique("parallel")
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", mta.ports["smtp"], timeout=30) as s:
                for j in range(3):
                    s.sendmail("bob@example.org", ["alice@localhost"], f"Subject: {subject} {i}.{j}\r\n\r\nx\r\n".encode())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    deadline = time.monotonic() + 20
    while imap_count(mta, subject) < 24 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert imap_count(mta, subject) == 24


# -- swaks -----------------------------------------------------------------------------------


def swaks(*args: str) -> str:
    result = subprocess.run(["swaks", "--timeout", "30", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("pipeline", [False, True])
def test_swaks_to_a_local_user(mta, pipeline):
    subject = unique("swaks")
    out = swaks("--server", f"127.0.0.1:{mta.ports['smtp']}", "--from", "carol@example.org",
                "--to", "alice@mail.example.test", "--header", f"Subject: {subject}",
                *(["--pipeline"] if pipeline else []))
    assert "250 2.0.0 Ok: queued as" in out
    if pipeline:
        # MAIL, RCPT and DATA went out before the first of their replies came back
        sent = [line for line in out.splitlines() if line.startswith((" -> ", "<-  "))]
        mail = next(i for i, line in enumerate(sent) if line.startswith(" -> MAIL FROM"))
        assert sent[mail + 1].startswith(" -> RCPT TO") and sent[mail + 2] == " -> DATA"
    data = imap_fetch(mta, subject)
    check_trace(data, "carol@example.org", "alice@mail.example.test", "ESMTP")
    assert b"X-Mailer: swaks" in data


def test_swaks_starttls_and_auth_on_submission(mta):
    subject = unique("swaks-tls")
    out = swaks("--server", f"127.0.0.1:{mta.ports['submission']}", "--tls", "--tls-verify",
                "--tls-ca-path", str(mta.cert), "--auth", "LOGIN", "--auth-user", "alice",
                "--auth-password", "secret", "--from", "alice@mail.example.test", "--to", "bob@localhost",
                "--header", f"Subject: {subject}", "--pipeline")
    assert "235 2.7.0 Authentication successful" in out and "250 2.0.0 Ok: queued as" in out
    check_trace(imap_fetch(mta, subject, user="bob"), "alice@mail.example.test", "bob@localhost", "ESMTPSA")
    out = swaks("--server", f"127.0.0.1:{mta.ports['submissions']}", "--tls-on-connect",
                "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "secret",
                "--from", "bob@mail.example.test", "--to", "alice@localhost", "--header", f"Subject: {subject}-465")
    assert "250 2.0.0 Ok: queued as" in out
    check_trace(imap_fetch(mta, f"{subject}-465"), "bob@mail.example.test", "alice@localhost", "ESMTPSA")


def test_swaks_refused_recipient_exits_non_zero(mta):
    result = subprocess.run(["swaks", "--server", f"127.0.0.1:{mta.ports['smtp']}", "--to", "nobody@localhost"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "550 5.1.1 No such user here" in result.stdout


# -- without plaintext authentication ----------------------------------------------------------


def test_auth_before_starttls_refused_unless_plaintext_allowed(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, allow_plaintext=False, protocols=("smtp",)).start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
            s.ehlo()
            # CRAM-MD5 needs no TLS (these users' passwords allow it); PLAIN and LOGIN do
            assert s.esmtp_features["auth"].split() == ["CRAM-MD5"] and "starttls" in s.esmtp_features
            assert s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==") == (530, b"5.7.0 Must issue a STARTTLS command first")
            assert s.docmd("MAIL", "FROM:<alice@mail.example.test>") == (530, b"5.7.0 Must issue a STARTTLS command first")
            s.starttls(context=server.ssl_context())
            s.ehlo()
            s.login("alice", "secret")
            s.sendmail("alice@mail.example.test", ["alice@localhost"], b"Subject: after tls\r\n\r\nx\r\n")
        # port 25 style: no AUTH before TLS either, but mail for local users flows
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo()
            assert "PLAIN" not in s.esmtp_features["auth"]
            s.sendmail("bob@example.org", ["alice@localhost"], b"Subject: mx\r\n\r\nx\r\n")
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                s.ehlo_or_helo_if_needed()
                s.esmtp_features["auth"] = "PLAIN"
                s.login("alice", "secret")
            assert err.value.smtp_code == 530
    finally:
        server.stop()
    store = site.store("alice")
    try:
        assert len(store.open("INBOX").messages()) == 2
    finally:
        store.close()
