"""Worker processes ([server] workers = N) and the graceful stop, with real signals.

Which worker serves a connection is read from /proc: the server end of the TCP
connection is a socket inode, and exactly one process holds an fd on it.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Server, Site, site_for

WAIT = 30.0  # seconds: generous upper bounds for things that happen at once on an idle machine


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields after the last ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def wait_for(condition, what: str, timeout: float = WAIT):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serving_pid(sock: socket.socket, pids: set[int]) -> int | None:
    """The worker holding the server end of this client connection."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if local.endswith(f":{server_port:04X}") and remote.endswith(f":{client_port:04X}"):
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


def start(site: Site, workers: int = 2, protocols=("imap",), timeout: float = 10) -> Server:  # type: ignore[no-untyped-def]
    server = Server(site, protocols=protocols)
    site.config.write_text(site.config.read_text().replace(
        "workers = 1", f"workers = {workers}\nshutdown_timeout = {timeout}"))
    server.start()
    if workers > 1:
        wait_for(lambda: site.base.joinpath("server.log").read_text().count("serving: pid") >= workers,
                 "the workers to serve")
    return server


def login(server: Server) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=WAIT)
    m.login("alice", "secret")
    return m


def sessions_on_two_workers(server: Server, workers: set[int]) -> dict[int, imaplib.IMAP4]:
    """Log in until each of two workers serves one session; the spare ones log out."""
    found: dict[int, imaplib.IMAP4] = {}
    spare = []
    for _ in range(200):
        m = login(server)
        pid = wait_for(lambda: serving_pid(m.sock, workers), "the serving worker")
        if pid in found:
            spare.append(m)  # kept open: an idle worker is then likelier to take the next one
        else:
            found[pid] = m
        if len(found) == 2:
            break
    for m in spare:
        m.logout()
    assert len(found) == 2, "every connection went to one worker"
    return found


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.add_user("alice")
    return s


def test_both_workers_serve_and_a_killed_worker_is_restarted(site):
    server = start(site)
    try:
        parent = server.proc.pid
        workers = children(parent)
        assert len(workers) == 2
        sessions = sessions_on_two_workers(server, workers)
        victim, survivor = sorted(sessions)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: (children(parent) - {victim}) if len(children(parent) - {victim}) == 2 else None,
                            "a new worker")
        assert survivor in replaced
        wait_for(lambda: site.base.joinpath("server.log").read_text().count("serving: pid") >= 3,
                 "the new worker to serve")
        # the survivor's session is untouched; the service answers new clients
        assert sessions[survivor].select("INBOX")[0] == "OK"
        for _ in range(6):
            m = login(server)
            assert m.select("INBOX")[0] == "OK"
            m.logout()
        assert "died: killed by signal 9" in server.log.read_text()
        sessions[survivor].logout()
    finally:
        server.stop()


def _expect(m: imaplib.IMAP4, wanted: bytes) -> list[bytes]:
    """Untagged lines until one holding `wanted` (the socket timeout bounds the wait)."""
    seen = []
    while True:
        line = m.readline()
        assert line, f"connection closed; got {seen}"
        seen.append(line)
        if wanted in line:
            return seen


@pytest.mark.parametrize("layout", ["maildir", "mbox"])
def test_idle_in_one_worker_hears_changes_made_in_another(tmp_path, layout):
    site = site_for(tmp_path, layout)
    site.add_user("alice")
    server = start(site)
    try:
        workers = children(server.proc.pid)
        watcher, writer = sessions_on_two_workers(server, workers).values()
        assert watcher.select("INBOX")[1] == [b"0"]
        watcher.send(b"I1 IDLE\r\n")
        assert watcher.readline().startswith(b"+ ")
        # new mail
        assert writer.append("INBOX", None, None, b"Subject: from the other worker\r\n\r\nhi\r\n")[0] == "OK"
        _expect(watcher, b"* 1 EXISTS")
        # flags
        writer.select("INBOX")
        assert writer.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert b"\\Flagged" in _expect(watcher, b"FETCH")[-1]
        # expunge
        assert writer.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert writer.expunge()[0] == "OK"
        _expect(watcher, b"* 1 EXPUNGE")
        watcher.send(b"DONE\r\n")
        assert _expect(watcher, b"I1 ")[-1].startswith(b"I1 OK")
        watcher.logout()
        writer.logout()
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_says_bye_to_idle_sessions_and_exits_0(site, workers):
    server = start(site, workers=workers)
    try:
        pids = children(server.proc.pid) | {server.proc.pid}
        m = login(server)
        m.select("INBOX")
        m.send(b"I1 IDLE\r\n")
        assert m.readline().startswith(b"+ ")
        server.proc.send_signal(signal.SIGTERM)
        assert m.readline() == b"* BYE Server shutting down.\r\n"
        assert m.readline() == b""  # and closed
        assert server.proc.wait(WAIT) == 0
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), "every process to exit")
        # nobody listens any more
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=5).close()
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_pop3_deletions_are_not_committed_by_a_server_stop(site, workers):
    site.deliver("alice", b"Subject: keep me\n\nbody\n")
    site.deliver("alice", b"Subject: me too\n\nbody\n")
    server = start(site, workers=workers, protocols=("pop3",))
    try:
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=WAIT)
        p.user("alice")
        p.pass_("secret")
        assert p.stat()[0] == 2
        p.dele(1)
        server.proc.send_signal(signal.SIGTERM)
        # unsolicited: the client reads it as the answer to its next command
        assert p.file.readline() == b"-ERR [SYS/TEMP] Server shutting down; no message was deleted.\r\n"
        assert server.proc.wait(WAIT) == 0
        p.close()
        server.start()
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=WAIT)
        p.user("alice")
        p.pass_("secret")
        assert p.stat()[0] == 2
        p.quit()
    finally:
        server.stop()


def test_sigterm_lets_a_message_in_transfer_finish_then_says_421(site):
    server = start(site, workers=2, protocols=("smtp",))
    try:
        s = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=WAIT)
        s.ehlo("client.example.test")
        assert s.mail("sender@example.test")[0] == 250
        assert s.rcpt("alice@mail.example.test")[0] == 250
        assert s.docmd("DATA")[0] == 354
        s.send(b"Subject: sent while stopping\r\n\r\nfirst line\r\n")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: 1 open session(s)" in server.log.read_text(), "the worker to start draining")
        s.send(b"last line\r\n.\r\n")
        code, reply = s.getreply()
        assert code == 250, reply
        code, reply = s.getreply()
        assert (code, reply[:5]) == (421, b"4.3.2"), reply
        assert server.proc.wait(WAIT) == 0
        s.close()
    finally:
        server.stop()
    # the 250 promised it: delivered, or in the queue for the next start (exactly once)
    places = [*site.home("alice").joinpath("Maildir").glob("*/*"), *site.state.joinpath("queue").rglob("*")]
    holding = [p for p in places if p.is_file() and b"sent while stopping" in p.read_bytes()]
    assert len(holding) == 1, holding


def test_sigterm_lets_an_append_in_transfer_finish_then_says_bye(site):
    server = start(site)
    try:
        sock = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=WAIT)
        f = sock.makefile("rb")
        assert f.readline().startswith(b"* OK")
        sock.sendall(b"a LOGIN alice secret\r\n")
        assert f.readline().startswith(b"a OK")
        message = b"Subject: appended while stopping\r\n\r\n" + b"x" * 5000 + b"\r\n"
        sock.sendall(b"b APPEND INBOX {%d}\r\n" % len(message))
        assert f.readline().startswith(b"+ ")
        sock.sendall(message[:1000])
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: 1 open session(s)" in server.log.read_text(), "the worker to start draining")
        sock.sendall(message[1000:] + b"\r\n")
        assert f.readline().startswith(b"b OK")
        assert f.readline() == b"* BYE Server shutting down.\r\n"
        assert f.readline() == b""
        assert server.proc.wait(WAIT) == 0
        sock.close()
    finally:
        server.stop()
    box = site.store("alice").open("INBOX")
    assert [box.read_crlf(row.uid) for row in box.messages()] == [message]


def test_a_worker_dying_young_again_and_again_is_restarted_after_growing_pauses(site):
    server = start(site)
    try:
        parent = server.proc.pid
        known = children(parent)
        victim = min(known)
        for pause in ("0.5", "1", "2"):
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: f"restarting in {pause} s" in server.log.read_text(), f"a pause of {pause} s")
            new = wait_for(lambda: children(parent) - known, "the restarted worker")
            known |= new
            victim = new.pop()
        # the service never stopped answering
        m = login(server)
        assert m.select("INBOX")[0] == "OK"
        m.logout()
    finally:
        server.stop()


def test_a_worker_that_cannot_start_stops_the_server(site):
    server = Server(site, protocols=("imap",))
    site.config.write_text(site.config.read_text().replace(
        "workers = 1", 'workers = 2\nuser = "no-such-user-here"'))
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", "--config", str(site.config)],
                            stdout=open(server.log, "ab"), stderr=subprocess.STDOUT)
    assert proc.wait(WAIT * 2) == 1
    log = server.log.read_text()
    assert "a worker failed while starting" in log and "no-such-user-here" in log


def test_a_session_still_busy_after_the_shutdown_timeout_is_cut(site):
    server = start(site, workers=2, protocols=("smtp",), timeout=1)
    try:
        s = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=WAIT)
        s.ehlo("client.example.test")
        assert s.mail("sender@example.test")[0] == 250
        assert s.rcpt("alice@mail.example.test")[0] == 250
        assert s.docmd("DATA")[0] == 354
        s.send(b"Subject: never finished\r\n\r\n")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(WAIT) == 0
        assert "cutting 1 session(s) still busy after 1 s" in server.log.read_text()
        try:  # cut (a reset) without a reply: the message is not ours
            assert s.sock.recv(100) == b""
        except ConnectionResetError:
            pass
        s.close()
    finally:
        server.stop()
    assert not any(b"never finished" in p.read_bytes() for p in site.base.rglob("*") if p.is_file() and p.suffix != ".log")
