"""The queue through real processes: accepted mail survives kill -9, is delivered
exactly once, retried, reported on (RFC 3464) and managed with `retrieval queue`."""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Server, Site, run_cli, site_for, wait_until

# a resolver that is not there: every lookup fails at once, temporarily (no real DNS in tests)
NO_DNS = 'dns_servers = ["127.0.0.1:9"]\n'

FAST = """
retry_min = 0.2
retry_max = 0.5
"""


def messages(site: Site, user: str, needle: str | None = None) -> list[bytes]:
    out = []
    for sub in ("new", "cur"):
        folder = site.home(user) / "Maildir" / sub
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                data = path.read_bytes()
                if needle is None or needle.encode() in data:
                    out.append(data)
    return out


def queue_dir(site: Site) -> Path:
    return site.state / "queue"


def queued(site: Site) -> list[str]:
    active = queue_dir(site) / "active"
    return sorted(p.name for p in active.iterdir()) if active.is_dir() else []


def send(server: Server, sender: str, rcpts: list[str], subject: str, **kw) -> dict:  # type: ignore[no-untyped-def]
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        return s.sendmail(sender, rcpts, f"Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nhello\r\n".encode(), **kw)


def site_with(tmp_path: Path, *users: str) -> Site:
    site = Site(tmp_path)
    for user in users:
        site.add_user(user)
    return site


def test_accepted_mail_survives_kill_9_and_arrives_exactly_once(tmp_path):
    site = site_with(tmp_path, "alice")
    server = Server(site, protocols=("smtp",), smtp_extra=FAST)
    rng = random.Random(7)
    subjects = []
    for round_ in range(6):
        server.start()
        subject = f"kill-round-{round_}"
        send(server, "bob@example.org", ["alice@mail.example.test"], subject)
        subjects.append(subject)
        time.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02]))
        server.proc.kill()  # SIGKILL: no cleanup, wherever it was
        server.proc.wait()
    server.start()
    try:
        wait_until(lambda: not queued(site), what="an empty queue")
        for subject in subjects:
            assert len(messages(site, "alice", subject)) == 1, subject
    finally:
        server.stop()


def test_a_lost_log_after_a_crash_does_not_deliver_twice(tmp_path):
    """Alice got her copy, bob's failed; the crash took the log (power loss) - the retry
    finds alice's copy by its queue id and delivers only bob's."""
    site = site_with(tmp_path, "alice", "bob")
    (site.home("bob")).mkdir(parents=True, exist_ok=True)
    broken = site.home("bob") / "Maildir"
    shutil.rmtree(broken, ignore_errors=True)
    broken.write_text("not a folder")
    server = Server(site, protocols=("smtp",), smtp_extra="retry_min = 3600\nretry_max = 3600\n").start()
    try:
        send(server, "carol@example.org", ["alice@localhost", "bob@localhost"], "half-done")
        wait_until(lambda: messages(site, "alice", "half-done"), what="alice's copy")
        (qid,) = wait_until(lambda: queued(site), what="the deferred entry")
        wait_until(lambda: (queue_dir(site) / "log" / qid).exists() and
                   '"attempt"' in (queue_dir(site) / "log" / qid).read_text(), what="the first attempt's end")
    finally:
        server.proc.kill()
        server.proc.wait()
    (queue_dir(site) / "log" / qid).unlink()
    broken.unlink()
    server.start()
    try:
        wait_until(lambda: not queued(site), what="an empty queue")
        assert len(messages(site, "bob", "half-done")) == 1
        assert len(messages(site, "alice", "half-done")) == 1
    finally:
        server.stop()


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def report_parts(message: email.message.EmailMessage) -> tuple[str, list, email.message.Message]:
    assert message.get_content_type() == "multipart/report"
    human, status, returned = message.iter_parts()
    return human.get_content(), list(status.get_payload()), returned


def test_delay_warning_then_failure_report_when_the_queue_gives_up(tmp_path):
    site = site_with(tmp_path, "alice", "bob")
    broken = site.home("alice") / "Maildir"
    shutil.rmtree(broken, ignore_errors=True)
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("not a folder")
    server = Server(site, protocols=("smtp",), smtp_extra=FAST + "delay_warning = 1\nmax_queue_lifetime = 3\n").start()
    try:
        send(server, "bob@mail.example.test", ["alice@localhost"], "doomed", rcpt_options=[])
        send(server, "", ["alice@localhost"], "doomed-null")  # a null sender gets no report
        wait_until(lambda: not queued(site), timeout=40, what="the queue to give up")
        wait_until(lambda: len(messages(site, "bob")) >= 2, what="two reports")
        reports = [parse(m) for m in messages(site, "bob")]
        subjects = sorted(r["Subject"] for r in reports)
        assert subjects == ["Delayed Mail (still being retried)", "Undelivered Mail Returned to Sender"]
        for report in reports:
            assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
            assert report["Auto-Submitted"] == "auto-replied"
            assert report["Return-Path"] == "<>"
            human, fields, returned = report_parts(report)
            recipient = fields[1]
            assert recipient["Final-Recipient"] == "rfc822; alice@localhost"
            if report["Subject"].startswith("Undelivered"):
                assert recipient["Action"] == "failed" and recipient["Status"].startswith("5.")
                assert returned.get_content_type() == "message/rfc822"
                assert "Subject: doomed" in returned.as_string()
            else:
                assert recipient["Action"] == "delayed" and recipient["Status"].startswith("4.")
                assert recipient["Will-Retry-Until"]
                assert returned.get_content_type() == "text/rfc822-headers"
        assert not any("doomed-null" in r.as_string() for r in reports)
    finally:
        server.stop()


def test_notify_success_gets_a_delivery_report_and_never_gets_none(tmp_path):
    site = site_with(tmp_path, "alice", "bob")
    server = Server(site, protocols=("smtp",), smtp_extra=FAST).start()
    try:
        send(server, "bob@mail.example.test", ["alice@localhost"], "tell-me", mail_options=["RET=HDRS", "ENVID=e-1"],
             rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice@Example.org"])
        (report,) = wait_until(lambda: messages(site, "bob"), what="the success report")
        report = parse(report)
        assert report["Subject"] == "Successful Mail Delivery Report"
        _, fields, _ = report_parts(report)
        assert fields[0]["Original-Envelope-Id"] == "e-1"
        assert fields[1]["Action"] == "delivered" and fields[1]["Status"] == "2.0.0"
        assert fields[1]["Original-Recipient"] == "rfc822; Alice@Example.org"
        send(server, "bob@mail.example.test", ["alice@localhost"], "dont-tell", rcpt_options=["NOTIFY=NEVER"])
        wait_until(lambda: messages(site, "alice", "dont-tell"), what="the delivery")
        wait_until(lambda: not queued(site), what="an empty queue")
        time.sleep(0.5)
        assert len(messages(site, "bob")) == 1
    finally:
        server.stop()


def test_relayed_mail_waits_in_the_queue_while_dns_fails(tmp_path):
    """Allowed relaying is accepted and queued; a DNS failure is temporary, so it stays."""
    site = site_with(tmp_path, "alice")
    server = Server(site, protocols=("smtp",), smtp_extra=NO_DNS + "retry_min = 3600\nretry_max = 3600\n").start()
    try:
        send(server, "alice@mail.example.test", ["friend@elsewhere.example"], "outgoing")
        (qid,) = wait_until(lambda: queued(site), what="the queued message")
        log = queue_dir(site) / "log" / qid
        wait_until(lambda: log.exists() and '"attempt"' in log.read_text(), what="the first attempt")
        assert '"4.4.3"' in log.read_text()
        meta = json.loads((queue_dir(site) / "active" / qid).read_bytes().split(b"\n", 1)[0])
        assert meta["recipients"][0]["address"] == "friend@elsewhere.example"
    finally:
        server.stop()


@pytest.mark.parametrize("n", [1])
def test_queue_admin_commands(tmp_path, n):
    site = site_with(tmp_path, "alice")
    broken = site.home("alice") / "Maildir"
    shutil.rmtree(broken, ignore_errors=True)
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("not a folder")
    server = Server(site, protocols=("smtp",), smtp_extra="retry_min = 3600\nretry_max = 3600\n").start()
    config = str(site.config)
    try:
        send(server, "bob@example.org", ["alice@localhost"], "admin-one")
        send(server, "bob@example.org", ["alice@localhost"], "admin-two")
        first, second = wait_until(lambda: len(queued(site)) == 2 and queued(site), what="two queued")
        wait_until(lambda: all((queue_dir(site) / "log" / q).exists() for q in (first, second)), what="attempts")
        listing = run_cli("queue", "list", "--config", config, check=True).stdout.decode()
        assert first in listing and second in listing and "alice@localhost" in listing
        assert "bob@example.org" in listing and "Requests" in listing  # mailq's summary line
        shown = run_cli("queue", "show", first, "--config", config, check=True).stdout.decode()
        assert "Subject: admin-" in shown and "sender: bob@example.org" in shown
        assert run_cli("queue", "show", "NOSUCHID", "--config", config).returncode == 1
        assert run_cli("queue", "hold", first, "--config", config).returncode == 0
        assert queued(site) == [second]
        assert "(held)" in run_cli("queue", "list", "--config", config, check=True).stdout.decode()
        assert run_cli("queue", "delete", second, "--config", config).returncode == 0
        assert queued(site) == []
        broken.unlink()
        assert run_cli("queue", "release", first, "--config", config).returncode == 0
        assert run_cli("queue", "flush", "--config", config).returncode == 0
        wait_until(lambda: messages(site, "alice", "admin-one"), what="the released message")
        assert not messages(site, "alice", "admin-two")
        wait_until(lambda: not queued(site), what="an empty queue")
        assert "Mail queue is empty" in run_cli("queue", "list", "--config", config, check=True).stdout.decode()
    finally:
        server.stop()


@pytest.mark.parametrize("action", ["junk", "reject"])
def test_the_content_filter_files_spam_into_junk_or_refuses_it(tmp_path, action):
    site = site_with(tmp_path, "alice")
    store = site.store("alice")
    store.create("Junk")
    store.close()
    script = tmp_path / "filter.sh"
    script.write_text('#!/bin/sh\n# spamc -E style: spam when the message mentions viagra\n'
                      'msg=$(cat)\nprintf "X-Spam-Flag: %s\\r\\n%s\\r\\n" "$(echo "$msg" | grep -qi viagra && echo YES || echo NO)" "$msg"\n'
                      'echo "$msg" | grep -qi viagra && exit 1\nexit 0\n')
    script.chmod(0o755)
    server = Server(site, protocols=("smtp",),
                    smtp_extra=f'content_filter = "{script}"\ncontent_filter_action = "{action}"\n').start()
    try:
        send(server, "bob@example.org", ["alice@localhost"], "clean-one")
        if action == "reject":
            with pytest.raises(smtplib.SMTPDataError) as refused:
                send(server, "bob@example.org", ["alice@localhost"], "buy viagra")
            assert refused.value.smtp_code == 550
        else:
            send(server, "bob@example.org", ["alice@localhost"], "buy viagra")
        (clean,) = wait_until(lambda: messages(site, "alice", "clean-one"), what="the clean message")
        assert b"X-Spam-Flag: NO" in clean
        wait_until(lambda: not queued(site), what="an empty queue")
        assert not messages(site, "alice", "viagra")  # not in INBOX
        junk = site.home("alice") / "Maildir" / ".Junk"
        in_junk = [p.read_bytes() for sub in ("new", "cur") for p in (junk / sub).iterdir()]
        if action == "junk":
            assert len(in_junk) == 1 and b"X-Spam-Flag: YES" in in_junk[0]
        else:
            assert in_junk == []
    finally:
        server.stop()


def test_check_reports_queue_trouble(tmp_path):
    site = site_with(tmp_path, "alice")
    from retrieval.config import load_config
    from retrieval.smtp.delivery import queue_for

    queue = queue_for(load_config(site.config))
    queue.create()
    assert run_cli("check", "--config", str(site.config)).stdout.endswith(b": OK\n")
    (queue.root / "maildrop").chmod(0o700)
    (queue.root / "corrupt" / "2TKFBADBADBAD").write_bytes(b"garbage")
    out = run_cli("check", "--config", str(site.config))
    text = (out.stdout + out.stderr).decode()
    assert out.returncode != 0
    assert "mode is not 1733" in text and "1 unreadable queue file" in text


def test_two_worker_processes_share_the_queue_without_doubles(tmp_path):
    """Each worker runs a queue runner; the lock on each queue file keeps them apart,
    also for sendmail drops both see."""
    site = site_with(tmp_path, "alice")
    server = Server(site, protocols=("smtp",))
    site.config.write_text(site.config.read_text().replace("workers = 1", "workers = 2"))
    server.start()
    try:
        wait_until(lambda: server.log.read_text().count("serving: pid") >= 2, what="two workers")
        for i in range(12):
            send(server, "bob@example.org", ["alice@localhost"], f"two-workers-{i}")
            subprocess.run([sys.executable, "-m", "retrieval", "sendmail", "alice"], input=f"Subject: dropped-{i}\n\nx\n".encode(),
                           env={**os.environ, "RETRIEVAL_CONFIG": str(site.config)}, check=True, timeout=60)
        wait_until(lambda: len(messages(site, "alice")) >= 24 and not queued(site), what="every delivery")
        time.sleep(1.5)  # a second pickup round: nothing more may arrive
        for i in range(12):
            assert len(messages(site, "alice", f"two-workers-{i}\n")) == 1
            assert len(messages(site, "alice", f"dropped-{i}\n")) == 1
    finally:
        server.stop()


def test_a_queue_file_is_locked_before_it_appears_in_active(tmp_path):
    """enqueue_locked: what another runner (a worker's scan) can see, it cannot take until the
    accepting thread lets go; then it can, and the file is the message."""
    from retrieval.smtp.queue import Queue, QueuedRecipient, new_meta

    queue = Queue(tmp_path / "queue")
    queue.create()
    meta = new_meta("bob@example.org", [QueuedRecipient("alice@localhost")])
    fd = queue.enqueue_locked(meta, b"Subject: locked\r\n\r\nhi\r\n")
    try:
        assert queue.ids("active") == [meta.id]
        assert queue.ids("tmp") == []
        assert queue.lock(meta.id) is None  # held: another runner keeps off
    finally:
        os.close(fd)
    other = queue.lock(meta.id)
    assert other is not None
    os.close(other)
    read_meta, data = queue.read(meta.id)
    assert read_meta == meta and data == b"Subject: locked\r\n\r\nhi\r\n"


def test_a_delivery_into_a_maildir_without_new_makes_it_and_leaves_no_tmp_file(tmp_path):
    """The INBOX is made when a delivery finds it missing (not checked before every copy), and a
    copy whose link into new/ failed does not stay behind in tmp/."""
    from retrieval.store.deliver import EX_OK, deliver_message
    from retrieval.store.location import for_user, parse_mail_location

    home = tmp_path / "home"
    location = for_user(parse_mail_location("maildir:~/Maildir"), "alice", str(home))
    (home / "Maildir" / "tmp").mkdir(parents=True)  # half a Maildir: no new/, no cur/
    result = deliver_message(location, "alice", b"Subject: half\n\nhi\n", sender="bob@example.org",
                             queued=("QID1", 1700000000.0))
    assert result.code == EX_OK, result.message
    assert os.listdir(home / "Maildir" / "tmp") == []
    (name,) = os.listdir(home / "Maildir" / "new")
    assert name.startswith("1700000000.QQID1.")
    assert (home / "Maildir" / "cur").is_dir()
    fresh = for_user(parse_mail_location("maildir:~/Maildir"), "carol", str(tmp_path / "carol"))  # nothing there
    assert deliver_message(fresh, "carol", b"Subject: first\n\nhi\n").code == EX_OK
    assert len(os.listdir(tmp_path / "carol" / "Maildir" / "new")) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the server gives users' files to their uid")
@pytest.mark.parametrize("layout", ["maildir", "mbox"])
def test_as_root_delivered_mail_belongs_to_the_users_uid(tmp_path, layout):
    """Postfix's local(8) leaves a user's mail owned by that user; so do we, running as root
    for passwd-file users that have their own uid/gid."""
    from retrieval.auth.passwd import add_user

    site = site_for(tmp_path, layout)
    home = site.home("dora")
    home.mkdir(parents=True)
    add_user(site.passwd, "dora", "secret", scheme="PLAIN", uid=4321, gid=4322, home=str(home))
    server = Server(site, protocols=("smtp",)).start()
    try:
        send(server, "bob@example.org", ["dora@localhost", "dora+nosuch@localhost"], "owned")
        wait_until(lambda: not queued(site), what="the delivery")
        if layout == "maildir":
            maildir = home / "Maildir"
            paths = [maildir, maildir / "new", maildir / "cur", maildir / "tmp", *(maildir / "new").iterdir()]
            assert len(list((maildir / "new").iterdir())) == 1
        else:
            paths = [tmp_path / "spool" / "dora"]
        for path in paths:
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (4321, 4322), path
    finally:
        server.stop()
