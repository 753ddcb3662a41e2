"""The access table, DNSBL, HELO checks and greet pause over real sockets (smtplib, swaks, raw sockets).

All of 127.0.0.0/8 is loopback on Linux, so each test talks from its own
source address: 127.0.0.1 is on the test DNSBL, 127.0.0.2 is rejected by the
access table, 127.0.0.3 may relay by it, 127.0.0.4 is a plain stranger.
`mynetworks` holds none of them, so the table and the lists decide."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import Server, Site

HERE = Path(__file__).resolve().parent

ACCESS = """\
# the test server's access table
127.0.0.2                REJECT
127.0.0.3                RELAY
From:spammer@example.com REJECT
From:dropme@example.com  DISCARD
To:partner.example       RELAY
"""


class DnsServer:
    """tests/dnsbl_server.py in a subprocess, answering from `records`."""

    def __init__(self, base: Path, records: dict[str, str], servfail: list[str]) -> None:
        spec = base / "dns.json"
        spec.write_text(json.dumps({"records": records, "servfail": servfail}))
        self.log = base / "dns-queries.log"
        self.log.write_text("")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "dnsbl_server.py"), str(spec), str(self.log)],
                                     stdout=subprocess.PIPE, stderr=open(base / "dns.err", "w"), text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("port "), line
        self.port = int(line.split()[1])

    def queries(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def mx(tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("antispam")
    dns = DnsServer(base, {"1.0.0.127.zen.test": "127.0.0.2",
                           "7.0.0.127.zen.test": "127.255.255.254",  # Spamhaus: "your resolver may not ask"
                           "8.0.0.127.zen.test": "192.0.2.1"},  # a resolver that rewrites NXDOMAIN
                    servfail=["broken.test"])
    site = Site(base)
    site.add_user("alice")
    (base / "access").write_text(ACCESS)
    server = Server(site, protocols=("smtp",), smtp_extra=(
        f'mynetworks = ["10.9.9.0/24"]\naccess = "access"\ndnsbl = ["broken.test", "zen.test"]\n'
        f'dns_servers = ["127.0.0.1:{dns.port}"]\nhelo_checks = true\nmax_recipients = 3\n'))
    server.start()
    server.dns = dns  # type: ignore[attr-defined]
    yield server
    server.stop()
    dns.stop()


def smtp_from(server: Server, source: str, port: str = "smtp") -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.ports[port], timeout=30, source_address=(source, 0))
    s.ehlo("client.example.org")
    return s


def inbox_subjects(site: Site, user: str = "alice") -> list[bytes]:
    store = site.store(user)
    try:
        box = store.open("INBOX")
        return [line for row in box.messages() for line in box.read_crlf(row.uid).split(b"\r\n")
                if line.startswith(b"Subject: ")]
    finally:
        store.close()


def test_a_rejected_client_network_hears_it_at_mail(mx):
    with smtp_from(mx, "127.0.0.2") as s:
        assert s.mail("bob@example.org") == (550, b"5.7.1 Client host [127.0.0.2] rejected: Access denied")
        assert s.rcpt("alice@mail.example.test") == (503, b"5.5.1 Error: need MAIL command")
    # swaks too: a clear error, and a failure exit status
    result = subprocess.run(["swaks", "--server", f"127.0.0.1:{mx.ports['smtp']}", "--local-interface", "127.0.0.2",
                             "--helo", "client.example.org", "--from", "bob@example.org",
                             "--to", "alice@mail.example.test", "--timeout", "30"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "<** 550 5.7.1 Client host [127.0.0.2] rejected: Access denied" in result.stdout


def test_a_rejected_sender(mx):
    with smtp_from(mx, "127.0.0.4") as s:
        code, text = s.mail("Spammer@Example.COM")
        assert (code, text) == (550, b"5.7.1 <Spammer@Example.COM>: Sender address rejected: Access denied")
        assert s.mail("bob@example.org") == (250, b"2.1.0 Ok")
        assert s.rcpt("alice@mail.example.test") == (250, b"2.1.5 Ok")


def test_relay_granted_by_the_table(mx):
    with smtp_from(mx, "127.0.0.4") as s:
        s.mail("bob@example.org")
        assert s.rcpt("friend@elsewhere.example") == (554, b"5.7.1 Relay access denied")
        assert s.rcpt("friend@partner.example") == (250, b"2.1.5 Ok")  # To:partner.example RELAY
    with smtp_from(mx, "127.0.0.3") as s:  # a RELAY client
        s.mail("bob@example.org")
        assert s.rcpt("friend@elsewhere.example") == (250, b"2.1.5 Ok")
        s.rset()  # (no DATA: nothing goes to the queue)


def test_discarded_sender_is_accepted_and_dropped(mx):
    dropped, kept = f"dropped-{uuid.uuid4().hex[:8]}", f"kept-{uuid.uuid4().hex[:8]}"
    with smtp_from(mx, "127.0.0.4") as s:
        assert s.sendmail("dropme@example.com", ["alice@mail.example.test"], f"Subject: {dropped}\r\n\r\nx\r\n") == {}
        assert s.sendmail("bob@example.org", ["alice@mail.example.test"], f"Subject: {kept}\r\n\r\nx\r\n") == {}
    # delivery runs from the queue after the 250: wait for the second message, then the first is surely not coming
    deadline = time.monotonic() + 30
    while f"Subject: {kept}".encode() not in (subjects := inbox_subjects(mx.site)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"Subject: {kept}".encode() in subjects and f"Subject: {dropped}".encode() not in subjects
    assert "discarded <alice@mail.example.test>: " in Path(mx.log).read_text()


def test_dnsbl_listed_client_is_refused_at_rcpt_and_the_answer_is_cached(mx):
    for _ in range(2):
        with smtp_from(mx, "127.0.0.1") as s:
            assert s.mail("bob@example.org") == (250, b"2.1.0 Ok")
            assert s.rcpt("alice@mail.example.test") == (
                554, b"5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.test")
    # one question per zone for both connections; the broken zone's failure counted as "not listed"
    asked = mx.dns.queries()
    assert asked.count("1.0.0.127.zen.test A") == 1, asked
    assert "1.0.0.127.broken.test A" in asked
    # a client that is on no list, with one list failing: its mail goes through
    with smtp_from(mx, "127.0.0.4") as s:
        s.mail("bob@example.org")
        assert s.rcpt("alice@mail.example.test") == (250, b"2.1.5 Ok")
    assert "4.0.0.127.zen.test A" in mx.dns.queries()
    # answers that are no listing
    for source in ("127.0.0.7", "127.0.0.8"):
        with smtp_from(mx, source) as s:
            s.mail("bob@example.org")
            assert s.rcpt("alice@mail.example.test") == (250, b"2.1.5 Ok")
    assert "refused our query" in Path(mx.log).read_text()


def test_authenticated_clients_are_exempt_from_the_dnsbl(mx):
    with smtp_from(mx, "127.0.0.1", "submission") as s:
        s.login("alice", "secret")
        s.mail("alice@mail.example.test")
        assert s.rcpt("alice@mail.example.test") == (250, b"2.1.5 Ok")


def test_helo_checks_at_rcpt(mx):
    for helo, reply in [
        ("localhost", (550, b"5.7.1 <localhost>: Helo command rejected: need fully-qualified hostname")),
        ("mail.example.test", (550, b"5.7.1 <mail.example.test>: Helo command rejected: You are not me")),
        ("bad_name!", (501, b"5.5.2 <bad_name!>: Helo command rejected: Invalid name")),
        ("[127.0.0.4]", (250, b"2.1.5 Ok")),
    ]:
        with smtplib.SMTP("127.0.0.1", mx.ports["smtp"], timeout=30, source_address=("127.0.0.4", 0)) as s:
            assert s.ehlo(helo)[0] == 250
            assert s.mail("bob@example.org") == (250, b"2.1.0 Ok")
            assert s.rcpt("alice@mail.example.test") == reply, helo


def test_the_table_is_reread_when_it_changes(mx):
    access = mx.site.base / "access"
    with smtp_from(mx, "127.0.0.6") as s:
        assert s.mail("bob@example.org")[0] == 250
    access.write_text(ACCESS + "127.0.0.6 ERROR:4.7.1:450 Come back later\n")
    try:
        with smtp_from(mx, "127.0.0.6") as s:
            assert s.mail("bob@example.org") == (450, b"4.7.1 Come back later")
    finally:
        access.write_text(ACCESS)
    with smtp_from(mx, "127.0.0.6") as s:
        assert s.mail("bob@example.org")[0] == 250
    assert "reloaded" in Path(mx.log).read_text()


def test_a_host_name_key_waits_for_the_confirmed_name(mx):
    # 127.0.0.1 is "localhost" forwards and backwards; the table learns a name key while the server runs
    access = mx.site.base / "access"
    access.write_text(ACCESS + "Connect:localhost ERROR:5.7.1:550 Not from localhost\n")
    try:
        with smtp_from(mx, "127.0.0.1") as s:
            assert s.mail("bob@example.org") == (550, b"5.7.1 Not from localhost")
        with smtp_from(mx, "127.0.0.4") as s:  # no name: its IP decides
            assert s.mail("bob@example.org") == (250, b"2.1.0 Ok")
    finally:
        access.write_text(ACCESS)


def test_the_recipient_limit(mx):
    with smtp_from(mx, "127.0.0.4") as s:
        s.mail("bob@example.org")
        for _ in range(3):
            assert s.rcpt("alice@mail.example.test") == (250, b"2.1.5 Ok")
        assert s.rcpt("alice@mail.example.test") == (452, b"4.5.3 Error: too many recipients")


# -- greet pause ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paused(tmp_path_factory):  # type: ignore[no-untyped-def]
    site = Site(tmp_path_factory.mktemp("greet"))
    site.add_user("alice")
    (site.base / "access").write_text("127.0.0.9 OK\n")
    server = Server(site, protocols=("smtp",),
                    smtp_extra='mynetworks = ["127.0.0.5/32"]\ngreet_pause = 2\naccess = "access"\n').start()
    yield server
    server.stop()


def test_a_client_that_talks_before_the_greeting_is_dropped(paused):
    sock = socket.create_connection(("127.0.0.1", paused.ports["smtp"]), timeout=30)
    with sock:
        sock.sendall(b"EHLO bot.example\r\nMAIL FROM:<bot@example.org>\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data == b"554 5.5.0 Error: talked before the greeting\r\n"
    assert "talked before the greeting" in Path(paused.log).read_text()


def test_a_patient_client_gets_the_banner_and_trusted_ones_need_no_patience(paused):
    with smtplib.SMTP("127.0.0.1", paused.ports["smtp"], timeout=30) as s:  # smtplib waits for the banner
        assert s.ehlo("client.example.org")[0] == 250
        assert s.sendmail("bob@example.org", ["alice@mail.example.test"], b"Subject: patient\r\n\r\nx\r\n") == {}
    # mynetworks and clients the access table calls OK are exempt: talking at once is no offence
    for source in ("127.0.0.5", "127.0.0.9"):
        sock = socket.create_connection(("127.0.0.1", paused.ports["smtp"]), timeout=30, source_address=(source, 0))
        with sock:
            sock.sendall(b"EHLO client.example.org\r\nQUIT\r\n")
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"220 mail.example.test ESMTP")
            lines = [reader.readline() for _ in range(20)]
        assert b"221 2.0.0 Bye\r\n" in lines
    # submission is not paused: mail clients are not bots
    sock = socket.create_connection(("127.0.0.1", paused.ports["submission"]), timeout=30)
    with sock:
        sock.sendall(b"EHLO client.example.org\r\n")
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        assert reader.readline().startswith(b"250-")
