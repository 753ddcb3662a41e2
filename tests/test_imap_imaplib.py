"""IMAP over real sockets with Python's imaplib, over Maildir and mbox."""

from __future__ import annotations

import imaplib
import re
import socket
import time

import pytest

from conftest import Server, Site

MSG = b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: Hello\r\nMessage-ID: <1@x>\r\nDate: Thu, 01 Jan 2026 10:00:00 +0000\r\n\r\nHello Alice.\r\nSecond line.\r\n"


def connect(server: Server) -> imaplib.IMAP4:
    return imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)


def login(server: Server) -> imaplib.IMAP4:
    m = connect(server)
    m.login("alice", "secret")
    return m


def test_capabilities_and_login(imap_server):
    m = connect(imap_server)
    caps = m.capabilities
    assert "IMAP4REV1" in caps and "STARTTLS" in caps and "AUTH=PLAIN" in caps and "LITERAL+" in caps
    typ, data = m.login("alice", "secret")
    assert typ == "OK" and b"CAPABILITY" in data[0]
    typ, data = m.capability()
    for cap in (b"UIDPLUS", b"MOVE", b"IDLE", b"NAMESPACE", b"CONDSTORE", b"QRESYNC", b"SPECIAL-USE", b"ESEARCH"):
        assert cap in data[0]
    m.logout()


def test_wrong_password(imap_server):
    m = connect(imap_server)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("alice", "wrong")
    m.logout()


def test_special_folders_created_on_first_login(imap_server):
    m = login(imap_server)
    typ, data = m.list()
    listing = b"\n".join(data)
    for name, use in ((b"Drafts", b"\\Drafts"), (b"Sent", b"\\Sent"), (b"Trash", b"\\Trash"), (b"Junk", b"\\Junk")):
        assert re.search(rb"\(.*" + re.escape(use) + rb".*\) \"[./]\" \"?" + name, listing), listing
    assert b"INBOX" in listing
    m.logout()


def test_append_select_fetch_store_search(imap_server):
    m = login(imap_server)
    typ, data = m.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(1_700_000_000), MSG)
    assert typ == "OK" and b"APPENDUID" in data[0]
    typ, data = m.select("INBOX")
    assert data == [b"1"]
    typ, data = m.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    text = data[0]
    assert b"UID 1" in text and b"\\Flagged" in text and b"RFC822.SIZE %d" % len(MSG) in text
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: Hello\r\n\r\n"
    typ, data = m.fetch("1", "(BODY.PEEK[]<0.10>)")
    assert data[0][1] == MSG[:10]
    typ, data = m.fetch("1", "(BODY.PEEK[]<10.65536>)")
    assert data[0][1] == MSG[10:]
    typ, data = m.fetch("1", "(ENVELOPE)")
    assert b'"Hello"' in data[0] and b'"bob" "example.test"' in data[0]
    typ, data = m.search(None, "FLAGGED")
    assert data == [b"1"]
    typ, data = m.search(None, "UNSEEN")
    assert data == [b"1"]
    typ, data = m.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"Hello Alice.\r\nSecond line.\r\n" and b"\\Seen" in data[0][0] or b"\\Seen" in data[1]
    typ, data = m.search(None, "SEEN")
    assert data == [b"1"]
    typ, data = m.store("1", "+FLAGS", "(\\Answered $Label1)")
    assert b"\\Answered" in data[0] and b"$Label1" in data[0]
    typ, data = m.uid("SEARCH", "KEYWORD", "$Label1")
    assert data == [b"1"]
    typ, data = m.search(None, "SUBJECT", "hello")
    assert data == [b"1"]
    typ, data = m.search(None, "BODY", '"second LINE"')
    assert data == [b"1"]
    m.close()
    m.logout()


def test_copy_move_expunge_with_uidplus(imap_server):
    m = login(imap_server)
    for i in range(3):
        m.append("INBOX", None, None, MSG.replace(b"Hello", b"Hello %d" % i))
    m.select("INBOX")
    typ, data = m.copy("1:2", "Trash")
    assert typ == "OK" and re.search(rb"COPYUID \d+ 1:2 1:2", data[0])
    typ, data = m.uid("MOVE", "3", "Archive")
    assert typ == "OK"
    typ, data = m.select("INBOX")
    assert data == [b"2"]
    m.store("1", "+FLAGS", "\\Deleted")
    typ, data = m.expunge()
    assert data == [b"1"]
    typ, data = m.status("Trash", "(MESSAGES UIDNEXT UNSEEN)")
    assert b"MESSAGES 2" in data[0] and b"UIDNEXT 3" in data[0]
    typ, data = m.status("Archive", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    m.logout()


def test_other_sessions_hear_of_changes(imap_server):
    a, b = login(imap_server), login(imap_server)
    a.append("INBOX", None, None, MSG)
    a.select("INBOX")
    b.select("INBOX")
    a.append("INBOX", None, None, MSG)
    b.untagged_responses.clear()
    typ, data = b.noop()
    assert b.untagged_responses.get("EXISTS") == [b"2"]
    a.store("1", "+FLAGS", "\\Deleted")
    a.expunge()
    b.untagged_responses.clear()
    b.noop()
    assert b.untagged_responses.get("EXPUNGE") == [b"1"]
    a.logout()
    b.logout()


def test_idle_hears_mda_delivery_within_a_second(imap_server):
    m = login(imap_server)
    m.select("INBOX")
    sock = m.socket()
    tag = b"I1"
    sock.sendall(tag + b" IDLE\r\n")
    assert m.readline().startswith(b"+")
    started = time.monotonic()
    imap_server.site.deliver("alice", MSG)
    sock.settimeout(5)
    line = m.readline()
    elapsed = time.monotonic() - started
    assert line == b"* 1 EXISTS\r\n"
    assert elapsed < 1.0, f"IDLE took {elapsed:.2f} s to announce new mail"
    sock.sendall(b"DONE\r\n")
    while True:
        line = m.readline()
        if line.startswith(tag):
            break
    assert line.startswith(b"I1 OK")
    m.logout()


@pytest.mark.parametrize("name", ["../../etc", "a/../../b", "~root", "..", ".hidden", "a..b"])
def test_bad_mailbox_names_get_no(imap_server, name):
    m = login(imap_server)
    assert m.create('"' + name + '"')[0] == "NO"
    assert m.select('"' + name + '"')[0] == "NO"
    assert m.rename("INBOX", '"' + name + '"')[0] == "NO"
    m.logout()


def test_nul_in_mailbox_name_is_refused(imap_server):
    m = login(imap_server)
    sock = m.socket()
    sock.sendall(b"N1 CREATE {7+}\r\nfoo\x00bar\r\n")
    line = m.readline()
    assert line.startswith(b"N1 NO") or line.startswith(b"N1 BAD")
    m.logout()


def test_malformed_commands_get_bad_with_tag(imap_server):
    sock = socket.create_connection(("127.0.0.1", imap_server.ports["imap"]), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"a1 FETCH\r\na2 LOGIN\r\na3 NOOP\r\n")
    lines = [f.readline() for _ in range(3)]
    assert lines[0].startswith(b"a1 BAD") and lines[1].startswith(b"a2 BAD") and lines[2].startswith(b"a3 OK")
    sock.sendall(b"a4 " + b"X" * 70000 + b"\r\na5 NOOP\r\n")
    assert f.readline().startswith(b"a4 BAD")
    assert f.readline().startswith(b"a5 OK")
    sock.close()


def test_huge_literal_is_refused_without_reading_it(imap_server):
    m = login(imap_server)
    sock = m.socket()
    sock.sendall(b"A1 APPEND INBOX {999999999}\r\n")
    line = m.readline()
    assert line.startswith(b"A1 NO [TOOBIG]") or line.startswith(b"A1 NO")
    sock.sendall(b"A2 NOOP\r\n")
    assert m.readline().startswith(b"A2 OK")
    m.logout()


def test_dropped_connection_mid_append_leaves_nothing(imap_server):
    sock = socket.create_connection(("127.0.0.1", imap_server.ports["imap"]), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"a1 LOGIN alice secret\r\n")
    assert f.readline().startswith(b"a1 OK")
    sock.sendall(b"a2 APPEND INBOX {1000}\r\n")
    assert f.readline().startswith(b"+")
    sock.sendall(b"Subject: partial\r\n\r\n" + b"x" * 100)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    time.sleep(0.5)
    m = login(imap_server)
    typ, data = m.select("INBOX")
    assert data == [b"0"]
    m.logout()


def test_tls_only_mode(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, allow_plaintext=False, protocols=("imap",)).start()
    try:
        m = connect(server)
        assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            m.login("alice", "secret")
        m.starttls(ssl_context=server.ssl_context())
        m.login("alice", "secret")
        m.logout()
        s = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(), timeout=30)
        s.login("alice", "secret")
        s.logout()
    finally:
        server.stop()
