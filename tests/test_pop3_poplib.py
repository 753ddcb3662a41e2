"""POP3 over real sockets with Python's poplib: plain, STLS and POP3S, Maildir and mbox."""

from __future__ import annotations

import poplib
import socket
import ssl
import time

import pytest

from conftest import Server, Site

DOTS = b"Subject: dots\n\n.\n..\n.leading dot\nFrom the start\n>From quoted\nend\n"
EIGHT_BIT = "Subject: 8bit\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGrüße, ça va? 日本語\n".encode()
NO_NEWLINE = b"Subject: no final newline\n\nlast line without newline"
CRLF_MSG = b"Subject: crlf\r\n\r\nline one\r\nline two\r\n"


def pop(server: Server) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)


def login(server: Server, user: str = "alice", password: str = "secret") -> poplib.POP3:
    p = pop(server)
    p.user(user)
    p.pass_(password)
    return p


def expected_lines(data: bytes) -> list[bytes]:
    """What poplib hands back for a message: CRLF lines, dots unstuffed."""
    text = data.replace(b"\r\n", b"\n")
    lines = text.split(b"\n")
    if text.endswith(b"\n"):
        lines = lines[:-1]
    return lines


def test_retrieve_tricky_messages(pop_server):
    site = pop_server.site
    big = b"Subject: big\nContent-Type: application/octet-stream\n\n" + (b"A" * 76 + b"\n") * 70000  # ~5 MB
    messages = [DOTS, EIGHT_BIT, NO_NEWLINE, CRLF_MSG, big]
    for data in messages:
        site.deliver("alice", data)
    p = login(pop_server)
    count, total = p.stat()
    assert count == len(messages)
    listing = dict(line.split() for line in p.list()[1])
    assert sum(int(v) for v in listing.values()) == total
    for number, data in enumerate(messages, 1):
        response, lines, octets = p.retr(number)
        assert response == b"+OK %s octets" % listing[str(number).encode()]
        # Return-Path and Delivered-To were added by the MDA
        assert lines[0].startswith(b"Return-Path:") and lines[1].startswith(b"Delivered-To:")
        assert lines[2:] == expected_lines(data)
        # LIST size is exactly the octets of the message as sent (CRLF, before dot-stuffing)
        sent = b"".join(line + b"\r\n" for line in lines)
        if not data.endswith(b"\n") and pop_server.layout == "maildir":
            sent = sent[:-2]  # the terminator's CRLF; an mbox stores a final newline (format rule)
        assert len(sent) == int(listing[str(number).encode()])
    p.quit()


def test_top_and_uidl(pop_server):
    pop_server.site.deliver("alice", b"Subject: top\n\none\ntwo\nthree\n")
    p = login(pop_server)
    _, lines, _ = p.top(1, 2)
    assert lines[-3:] == [b"", b"one", b"two"]
    _, lines, _ = p.top(1, 0)
    assert lines[-1] == b"" and b"one" not in lines
    uid_line = p.uidl(1)
    uidvalidity = pop_server.site.store("alice").open("INBOX").uidvalidity
    assert uid_line == b"+OK 1 %08X%08X" % (1, uidvalidity)
    assert p.uidl()[1] == [b"1 %08X%08X" % (1, uidvalidity)]
    p.quit()


def test_uidl_stable_across_restart_and_index_rebuild(pop_server):
    import shutil

    for i in range(3):
        pop_server.site.deliver("alice", b"Subject: %d\n\n" % i)
    p = login(pop_server)
    before = p.uidl()[1]
    p.quit()
    pop_server.stop()
    shutil.rmtree(pop_server.site.state)
    pop_server.start()
    p = login(pop_server)
    assert p.uidl()[1] == before
    p.quit()


def test_dele_then_drop_deletes_nothing(pop_server):
    for i in range(3):
        pop_server.site.deliver("alice", b"Subject: %d\n\n" % i)
    p = login(pop_server)
    p.dele(1)
    p.dele(2)
    p.sock.shutdown(socket.SHUT_RDWR)  # connection dropped: no UPDATE state
    p.sock.close()
    time.sleep(0.5)
    p = login(pop_server)
    assert p.stat()[0] == 3
    p.dele(1)
    p.rset()
    p.quit()
    p = login(pop_server)
    assert p.stat()[0] == 3
    p.quit()


def test_dele_quit_while_mda_delivers_keeps_new_mail(pop_server):
    site = pop_server.site
    for i in range(5):
        site.deliver("alice", b"Subject: old %d\n\n" % i)
    p = login(pop_server)
    count, _ = p.stat()
    for n in range(1, count + 1):
        p.retr(n)
        p.dele(n)
    for i in range(5):  # arrives during the session: not in it, and never lost
        site.deliver("alice", b"Subject: new %d\n\n" % i)
    assert p.stat()[0] == 0
    p.quit()
    p = login(pop_server)
    assert p.stat()[0] == 5
    subjects = [p.top(n, 0)[1] for n in range(1, 6)]
    assert all(any(line.startswith(b"Subject: new") for line in s) for s in subjects)
    p.quit()


def test_retrieved_messages_are_seen(pop_server):
    pop_server.site.deliver("alice", b"Subject: a\n\n")
    pop_server.site.deliver("alice", b"Subject: b\n\n")
    p = login(pop_server)
    p.retr(2)
    p.quit()
    box = pop_server.site.store("alice").open("INBOX")
    uids = box.uids()
    assert "\\Seen" not in box.info(uids[0]).flags
    assert "\\Seen" in box.info(uids[1]).flags


def test_two_sessions_on_one_mailbox(pop_server):
    pop_server.site.deliver("alice", b"Subject: a\n\n")
    first = login(pop_server)
    second = pop(pop_server)
    second.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_("secret")
    second.quit()
    first.quit()
    third = login(pop_server)  # the lock went away with the first session
    assert third.stat()[0] == 1
    third.quit()


def test_bad_credentials_and_bad_commands(pop_server):
    p = pop(pop_server)
    p.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    p.user("nobody")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("secret")
    with pytest.raises(poplib.error_proto):
        p._shortcmd("STAT")
    with pytest.raises(poplib.error_proto, match="too long"):
        p._shortcmd("NOOP " + "x" * 300)
    p.quit()


def test_too_many_bad_commands_disconnects(pop_server):
    sock = socket.create_connection(("127.0.0.1", pop_server.ports["pop3"]), timeout=10)
    sock.recv(100)
    sock.sendall(b"BOGUS\r\n" * 20)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b"Too many invalid commands" in data
    assert data.count(b"-ERR") <= 11


def test_pipelining_several_commands_in_one_packet(pop_server):
    for i in range(3):
        pop_server.site.deliver("alice", b"Subject: %d\n\nbody\n" % i)
    sock = socket.create_connection(("127.0.0.1", pop_server.ports["pop3"]), timeout=10)
    sock.recv(100)
    sock.sendall(b"USER alice\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nLIST 3\r\nQUIT\r\n")
    data = b""
    while not data.endswith(b"+OK Logging out, messages deleted.\r\n") and not data.endswith(b"Logging out.\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"+OK\r\n+OK Logged in.\r\n+OK 3 ")
    assert data.count(b"Subject: ") == 2 and b"+OK 3 " in data


def test_pop3s_and_stls(pop_server):
    pop_server.site.deliver("alice", b"Subject: tls\n\n")
    ctx = pop_server.ssl_context()
    p = poplib.POP3_SSL("127.0.0.1", pop_server.ports["pop3s"], context=ctx, timeout=30)
    assert "STLS" not in p.capa()
    p.user("alice")
    p.pass_("secret")
    assert p.stat()[0] == 1
    assert p.sock.version() in ("TLSv1.2", "TLSv1.3")
    p.quit()
    p = pop(pop_server)
    assert "STLS" in p.capa()
    p.stls(context=ctx)
    assert "STLS" not in p.capa()
    p.user("alice")
    p.pass_("secret")
    assert p.stat()[0] == 1
    p.quit()


def test_auth_plain_login_with_initial_response(pop_server):
    import base64

    p = pop(pop_server)
    assert p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode()).startswith(b"+OK")
    p.quit()
    p = pop(pop_server)
    assert p._shortcmd("AUTH LOGIN").startswith(b"+ ")
    assert p._shortcmd(base64.b64encode(b"alice").decode()).startswith(b"+ ")
    assert p._shortcmd(base64.b64encode(b"secret").decode()).startswith(b"+OK")
    p.quit()
    p = pop(pop_server)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0nope").decode())
    p.quit()


def test_tls_only_mode_refuses_plaintext_login(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, allow_plaintext=False).start()
    try:
        p = pop(server)
        capa = p.capa()
        assert "USER" not in capa and "STLS" in capa and "PLAIN" not in capa.get("SASL", [])
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication disallowed"):
            p.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            p._shortcmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        p.stls(context=server.ssl_context())
        assert "USER" in p.capa()
        p.user("alice")
        p.pass_("secret")
        p.quit()
    finally:
        server.stop()


def test_login_with_hashes_checked_off_the_reactor(pop_server):
    """SHA512-CRYPT runs in a worker process, bcrypt in a thread: both log in."""
    pop_server.site.add_user("bob", "s3cret", scheme="SHA512-CRYPT")
    pop_server.site.add_user("carol", "pw", scheme="BLF-CRYPT")
    for user, password in (("bob", "s3cret"), ("carol", "pw")):
        p = login(pop_server, user, password)
        assert p.stat() == (0, 0)
        p.quit()
