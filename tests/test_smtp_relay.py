"""Relaying end to end: our server takes mail over SMTP, queues it and sends it to the
destination's MX hosts (a DNS server and SMTP sinks of tests/smtp_peers.py on 127.0.0.x)."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time

import pytest

from conftest import Server, Site, run_cli
from smtp_peers import RemotePeers, mx_zone
from test_smtp_queue import messages, queued, wait_until

FAST = "retry_min = 0.3\nretry_max = 0.6\n"
SLOW = "retry_min = 3600\nretry_max = 3600\n"


@pytest.fixture
def peers(tmp_path):  # type: ignore[no-untyped-def]
    with RemotePeers(tmp_path, mx_zone("example.test", [(10, "127.0.0.2"), (20, "127.0.0.3")])) as peers:
        yield peers


def relay(tmp_path, peers: RemotePeers, extra: str = FAST) -> Server:  # type: ignore[no-untyped-def]
    site = Site(tmp_path)
    site.add_user("bob")
    return Server(site, protocols=("smtp",), smtp_extra=peers.smtp_config(command_timeout=5, connect_timeout=2) + extra)


def send(server: Server, sender: str, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail(sender, rcpts, f"Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nhello\r\n.leading dot\r\n".encode())


def test_the_best_mx_gets_the_mail_with_our_trace_header(tmp_path, peers):
    best, second = peers.sink("127.0.0.2"), peers.sink("127.0.0.3")
    server = relay(tmp_path, peers).start()
    try:
        send(server, "bob@mail.example.test", ["friend@example.test", "other@example.test"], "to-the-best")
        (got,) = wait_until(best.messages, what="the best MX's copy")
        assert got.sender == "bob@mail.example.test"
        assert sorted(got.recipients) == ["friend@example.test", "other@example.test"]  # one transaction
        assert got.data.startswith(b"Received: from ")
        assert b"by mail.example.test (retrieval) with ESMTP id " in got.data
        assert got.data.endswith(b"\r\nhello\r\n.leading dot\r\n")  # dot-stuffed and unstuffed byte-exact
        assert second.messages() == []
        wait_until(lambda: not queued(server.site), what="an empty queue")
    finally:
        server.stop()


def test_the_next_mx_when_the_first_is_down_or_refuses(tmp_path, peers):
    peers.down("127.0.0.2")
    second = peers.sink("127.0.0.3")
    server = relay(tmp_path, peers).start()
    try:
        send(server, "bob@mail.example.test", ["friend@example.test"], "first-down")
        wait_until(lambda: second.messages(), what="the second MX's copy")
        peers.sink("127.0.0.2", greeting=421)
        send(server, "bob@mail.example.test", ["friend@example.test"], "first-421")
        wait_until(lambda: len(second.messages()) == 2, what="the second copy")
        assert peers.sink("127.0.0.2").messages() == []
    finally:
        server.stop()


def test_all_mx_down_queues_and_retries_then_delivers_once(tmp_path, peers):
    peers.down("127.0.0.2")
    peers.down("127.0.0.3")
    server = relay(tmp_path, peers, extra=SLOW).start()
    try:
        send(server, "bob@mail.example.test", ["friend@example.test"], "all-down")
        (qid,) = wait_until(lambda: queued(server.site), what="the queued message")
        log = server.site.state / "queue" / "log" / qid
        wait_until(lambda: log.exists() and '"attempt"' in log.read_text(), what="a failed attempt")
        listing = run_cli("queue", "list", "--config", str(server.site.config), check=True).stdout.decode()
        assert qid in listing and "friend@example.test" in listing and "(" in listing  # the deferral reason
        best = peers.sink("127.0.0.2")
        run_cli("queue", "flush", "--config", str(server.site.config), check=True)
        wait_until(lambda: best.messages(), what="the retried delivery")
        wait_until(lambda: not queued(server.site), what="an empty queue")
        assert len(best.messages()) == 1
    finally:
        server.stop()


def test_kill_9_between_data_and_relaying_delivers_exactly_once(tmp_path, peers):
    peers.down("127.0.0.2")
    peers.down("127.0.0.3")
    server = relay(tmp_path, peers, extra=SLOW).start()
    send(server, "bob@mail.example.test", ["friend@example.test"], "killed")
    wait_until(lambda: queued(server.site), what="the queued message")
    server.proc.kill()
    server.proc.wait()
    best = peers.sink("127.0.0.2")
    server.start()
    try:
        wait_until(lambda: best.messages(), what="delivery after the restart")
        wait_until(lambda: not queued(server.site), what="an empty queue")
        assert len(best.messages()) == 1 and b"Subject: killed" in best.messages()[0].data
    finally:
        server.stop()


def test_a_5xx_from_the_remote_bounces_to_the_sender_with_its_reply(tmp_path, peers):
    sink = peers.sink("127.0.0.2", rcpt={"nosuch@example.test": 550})
    server = relay(tmp_path, peers).start()
    try:
        send(server, "bob@mail.example.test", ["nosuch@example.test", "friend@example.test"], "partly")
        wait_until(lambda: sink.messages(), what="the good recipient's copy")
        assert sink.messages()[0].recipients == ["friend@example.test"]
        (report,) = wait_until(lambda: messages(server.site, "bob"), what="the failure report")
        report = email.message_from_bytes(report, policy=email.policy.default)
        assert report["Subject"] == "Undelivered Mail Returned to Sender"
        _, status, returned = report.iter_parts()
        per_recipient = list(status.get_payload())[1]
        assert per_recipient["Final-Recipient"] == "rfc822; nosuch@example.test"
        assert per_recipient["Action"] == "failed" and per_recipient["Status"].startswith("5.")
        assert "mx-127-0-0-2.example.test" in per_recipient["Remote-MTA"]
        assert per_recipient["Diagnostic-Code"].startswith("smtp; 550")
        assert "Subject: partly" in returned.as_string()
    finally:
        server.stop()


def test_relayhost_takes_everything(tmp_path, peers):
    smarthost = peers.sink("127.0.0.4")
    peers.sink("127.0.0.2")
    server = relay(tmp_path, peers, extra=FAST + f'relayhost = "[127.0.0.4]:{peers.smtp_port}"\n').start()
    try:
        send(server, "bob@mail.example.test", ["friend@example.test", "x@elsewhere.example"], "via-smarthost")
        (got,) = wait_until(smarthost.messages, what="the smarthost's copy")
        assert sorted(got.recipients) == ["friend@example.test", "x@elsewhere.example"]
        assert peers.sink("127.0.0.2").messages() == []
    finally:
        server.stop()


@pytest.mark.parametrize("peer_dsn", [True, False])
def test_notify_success_is_passed_on_or_answered_with_a_relayed_report(tmp_path, peers, peer_dsn):
    """RFC 3461 5.2.2: a next hop offering DSN gets NOTIFY and reports itself; one that does
    not makes us send the "relayed" report."""
    sink = peers.sink("127.0.0.2", dsn=peer_dsn)
    server = relay(tmp_path, peers).start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("bob@mail.example.test", ["friend@example.test"], b"Subject: notify\r\n\r\nx\r\n",
                       rcpt_options=["NOTIFY=SUCCESS"])
        (got,) = wait_until(sink.messages, what="the relayed copy")
        wait_until(lambda: not queued(server.site), what="an empty queue")
        if peer_dsn:
            assert "NOTIFY=SUCCESS" in " ".join(got.rcpt_params)
            time.sleep(1)
            assert messages(server.site, "bob") == []
        else:
            (report,) = wait_until(lambda: messages(server.site, "bob"), what="the relayed report")
            report = email.message_from_bytes(report, policy=email.policy.default)
            _, status, _ = report.iter_parts()
            assert list(status.get_payload())[1]["Action"] == "relayed"
    finally:
        server.stop()
