"""Real IMAP clients against `retrieval serve`: imapclient, mbsync, offlineimap,
fetchmail, getmail6, curl, mutt (under tmux) and a byte-exact Thunderbird replay.

Every client talks to a real server process (the `imap_server` fixture) and
every result is checked on both sides: what the client got or left behind,
and what our store (`site.store('alice')`) holds afterwards.

What the clients do, as observed here (Debian 12: imapclient 4.1, isync 1.4.4,
offlineimap3 8.0.0, fetchmail 6.4.37, getmail 6.18.11, curl 7.88.1, mutt 2.2.12,
tmux 3.3a):

* Most of them log in with AUTHENTICATE CRAM-MD5 (offered because the
  passwd-file holds PLAIN passwords), answering after a ``+`` continuation:
  mbsync, fetchmail, curl and mutt; imapclient's ``plain_login`` does the same with PLAIN.
* imapclient 4.1's ``fetch()`` wants message ids it can turn into ints (not
  ``"1:*"``), and ``move()`` drops the untagged ``OK [COPYUID ...]`` that RFC 6851
  puts before the EXPUNGEs; imaplib keeps it as an untagged ``COPYUID`` response.
* mbsync 1.4 adds an ``X-TUID:`` line to the header of every message it copies,
  either way; a message flagged ``T`` locally is ``\\Deleted`` + expunged on the
  server with ``Expunge Both``.
* offlineimap creates every level of a nested local folder name on the server
  and then wants each level to be a local Maildir; when one is not it fails, and
  multithreaded (without ``-d``) it then hangs instead of exiting.  Its STARTTLS
  verifies no certificate and can hang (a thread race in imaplib2, see the
  test), so it runs over IMAPS.
* fetchmail polls ``localhost`` (it matches DNS names, not IP SANs) and reads
  the password from ``$HOME/.netrc``; it fetches ``RFC822.HEADER`` then
  ``BODY.PEEK[TEXT]``, then ``STORE +FLAGS (\\Seen)`` when keeping, or
  ``+FLAGS (\\Seen \\Deleted)`` and EXPUNGE after every message when not.
* getmail6 adds ``X-getmail-retrieved-from-mailbox:`` at the end of the header;
  its Maildir destination refuses to deliver as root, so as root the
  destination belongs to ``nobody`` (as in test_pop3_clients.py).
* curl fetches ``BODY[]`` (not PEEK), so what it reads becomes ``\\Seen``.
* mutt is driven with tmux ``send-keys`` and read with ``capture-pane``.
  Debian's mutt (GNU SASL) sends ``AUTHENTICATE CRAM-MD5 `` with a trailing
  space when the server has SASL-IR: no initial response, as Dovecot reads it
  (the test at the end checks the exchange byte for byte).
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import Server, wait_until

TIMEOUT = 90  # seconds, for any one client run

PLAIN = (
    b"From: Bob Example <bob@example.test>\n"
    b"To: Alice <alice@example.test>\n"
    b"Subject: Hello Alice\n"
    b"Message-ID: <plain-1@example.test>\n"
    b"Date: Thu, 01 Jan 2026 10:00:00 +0000\n"
    b"\n"
    b"Hello Alice.\n"
    b"Second line.\n"
)
MULTIPART = (
    b"From: Carol <carol@example.test>\n"
    b"To: alice@example.test\n"
    b"Cc: Dave <dave@example.test>\n"
    b"Subject: Report attached\n"
    b"Message-ID: <multi-2@example.test>\n"
    b"Date: Fri, 02 Jan 2026 11:30:00 +0100\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\n'
    b"\n"
    b"preamble\n"
    b"--XYZ\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"See the report.\n"
    b"--XYZ\n"
    b"Content-Type: application/pdf; name=report.pdf\n"
    b"Content-Transfer-Encoding: base64\n"
    b'Content-Disposition: attachment; filename="report.pdf"\n'
    b"\n"
    b"JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg==\n"
    b"--XYZ--\n"
)
UTF8 = (
    "From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.test>\n"
    "To: alice@example.test\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\n"
    "Message-ID: <utf8-3@example.test>\n"
    "Date: Sat, 03 Jan 2026 09:15:00 +0000\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Schöne Grüße, ça va? 日本語のテキスト\n"
).encode()
MESSAGES = [PLAIN, MULTIPART, UTF8]


def numbered(n: int, subject: str = "Numbered") -> bytes:
    return (
        f"From: sender{n}@example.test\nTo: alice@example.test\nSubject: {subject} {n}\n"
        f"Message-ID: <n{n}@example.test>\nDate: Sun, 04 Jan 2026 12:00:{n % 60:02d} +0000\n\n"
        f"Body of message {n}.\n"
    ).encode()


def _big() -> bytes:
    import random

    payload = base64.encodebytes(random.Random(7).randbytes(150_000))  # ~200 KB, 76-column lines
    return (
        b"From: big@example.test\nTo: alice@example.test\nSubject: Big attachment\n"
        b"Message-ID: <big@example.test>\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b0undary"\n\n'
        b"--b0undary\nContent-Type: text/plain\n\nsee the attachment\n"
        b"--b0undary\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        b'Content-Disposition: attachment; filename="blob.bin"\n\n' + payload + b"--b0undary--\n"
    )


BIG = _big()
RETRIEVE = MESSAGES + [BIG]


# -- helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def server_log_clean(imap_server):
    """Whatever the clients did, the server logged no traceback."""
    yield
    log = imap_server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Unhandled" not in log, log[-4000:]


maildir_only = pytest.mark.parametrize("imap_server", ["maildir"], indirect=True)


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package: see tests/run.sh)")
    return path


def run(
    cmd: list[str], *, env: dict | None = None, input: bytes | None = None, ok: tuple[int, ...] = (0,),
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=TIMEOUT, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{shlex.join(cmd)} did not finish in {TIMEOUT} s\n--- stdout\n"
            + (exc.stdout or b"").decode(errors="replace")[-4000:]
            + "\n--- stderr\n"
            + (exc.stderr or b"").decode(errors="replace")[-4000:]
        ) from None
    if proc.returncode not in ok:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {proc.returncode}\n--- stdout\n"
            + proc.stdout.decode(errors="replace")[-4000:]
            + "\n--- stderr\n"
            + proc.stderr.decode(errors="replace")[-4000:]
        )
    return proc


def deliver(server: Server, messages: list[bytes]) -> None:
    for data in messages:
        server.site.deliver("alice", data)


def subject(data: bytes) -> bytes:
    m = re.search(rb"^Subject: ([^\r\n]*)", data, re.M)
    assert m, data[:200]
    return m.group(1)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def strip_trace(data: bytes) -> bytes:
    """The message without the Return-Path:/Delivered-To:/Received: lines our MDA or a client put on top."""
    text = lf(data)
    while True:
        m = re.match(rb"(?i)(return-path|delivered-to|received):[^\n]*\n([ \t][^\n]*\n)*", text)
        if not m:
            return text
        text = text[m.end():]


class StoreView:
    """What the server's store holds: {folder: [(uid, flags, message bytes), ...]}."""

    def __init__(self, server: Server) -> None:
        self.folders: dict[str, list[tuple[int, frozenset[str], bytes]]] = {}
        self.internaldate: dict[tuple[str, int], float] = {}
        store = server.site.store("alice")
        try:
            for name in store.list_folders():
                box = store.open(name, readonly=True)
                try:
                    rows = []
                    for row in box.messages():
                        rows.append((row.uid, frozenset(row.flags), box.read(row.uid)))
                        self.internaldate[(name, row.uid)] = row.internaldate
                    self.folders[name] = rows
                finally:
                    box.close()
        finally:
            store.close()

    def subjects(self, folder: str) -> list[bytes]:
        return sorted(subject(data) for _, _, data in self.folders[folder])

    def flags_by_subject(self, folder: str) -> dict[bytes, frozenset[str]]:
        return {subject(data): flags for _, flags, data in self.folders[folder]}

    def by_subject(self, folder: str) -> dict[bytes, bytes]:
        return {subject(data): data for _, _, data in self.folders[folder]}


def imap_login(server: Server):  # type: ignore[no-untyped-def]
    import imaplib

    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    m.login("alice", "secret")
    return m


# -- imapclient ------------------------------------------------------------------


def test_imapclient_starttls_imaps_fetch_idle_move_condstore_search(imap_server):
    from imapclient import IMAPClient
    from imapclient import imapclient as ic

    server = imap_server
    deliver(server, MESSAGES)
    ctx = ssl.create_default_context(cafile=str(server.cert))
    sep = "." if server.layout == "maildir" else "/"

    # STARTTLS on the plain port: the capability list before and after
    c = IMAPClient("localhost", port=server.ports["imap"], ssl=False, timeout=30)
    assert b"STARTTLS" in c.capabilities()
    c.starttls(ctx)
    assert isinstance(c._imap.sock, ssl.SSLSocket)
    assert c._imap.sock.getpeercert()["subjectAltName"]
    c.plain_login("alice", "secret")  # AUTHENTICATE PLAIN, the response after the "+" continuation
    assert b"STARTTLS" not in c.capabilities() and b"CONDSTORE" in c.capabilities()
    assert c.folder_status("INBOX", ["MESSAGES", "UNSEEN"]) == {b"MESSAGES": 3, b"UNSEEN": 3}
    c.logout()

    # IMAPS, the certificate verified by name
    c = IMAPClient("localhost", port=server.ports["imaps"], ssl=True, ssl_context=ctx, timeout=30)
    c.normalise_times = False  # aware datetimes, as sent
    c.login("alice", "secret")
    assert c.id_({"name": "imapclient"})
    assert c.namespace().personal == (("", sep),)

    # folders with their special-use flags
    folders = {name: flags for flags, delim, name in c.list_folders()}
    assert {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive"} <= set(folders)
    for name, use in (("Drafts", ic.DRAFTS), ("Sent", ic.SENT), ("Trash", ic.TRASH), ("Junk", ic.JUNK)):
        assert use in folders[name], (name, folders[name])
        assert c.find_special_folder(use) == name
    assert c.find_special_folder(ic.ARCHIVE) == "Archive"
    assert all(delim == sep.encode() for _, delim, _ in c.list_folders())
    c.create_folder(f"Projects{sep}2026")
    assert (f"Projects{sep}2026") in {name for _, _, name in c.list_folders()}

    # SELECT, FETCH: what the client parsed against the store
    sel = c.select_folder("INBOX")
    assert sel[b"EXISTS"] == 3 and sel[b"UIDNEXT"] == 4 and b"READ-WRITE" in sel
    uids = c.search("ALL")
    assert uids == [1, 2, 3]
    data = c.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[]"])
    view = StoreView(server)
    stored = {uid: body for uid, _, body in view.folders["INBOX"]}
    for uid in uids:
        assert data[uid][b"BODY[]"] == crlf(stored[uid])
        assert data[uid][b"RFC822.SIZE"] == len(crlf(stored[uid]))
        assert data[uid][b"FLAGS"] == (b"\\Recent",)  # this session is the first to see them
        got = data[uid][b"INTERNALDATE"]
        assert abs(got.timestamp() - view.internaldate[("INBOX", uid)]) < 1.0, (got, uid)
    env = data[1][b"ENVELOPE"]
    assert env.subject == b"Hello Alice" and env.message_id == b"<plain-1@example.test>"
    assert (env.from_[0].name, env.from_[0].mailbox, env.from_[0].host) == (b"Bob Example", b"bob", b"example.test")
    assert env.date == datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
    env = data[2][b"ENVELOPE"]
    assert env.cc[0].mailbox == b"dave" and env.subject == b"Report attached"
    body = data[2][b"BODYSTRUCTURE"]
    assert body.is_multipart
    parts, subtype = body[0], body[1]
    assert subtype == b"mixed" and len(parts) == 2
    assert parts[0][:2] == (b"text", b"plain") and parts[0][2] == (b"charset", b"us-ascii")
    assert parts[1][:2] == (b"application", b"pdf") and parts[1][5] == b"base64"
    plain = data[1][b"BODYSTRUCTURE"]
    assert not plain.is_multipart and plain[:2] == (b"text", b"plain")
    assert data[3][b"ENVELOPE"].subject == b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?="

    # SEARCH with CHARSET UTF-8 (an encoded-word subject, an 8-bit body)
    assert c.search(["SUBJECT", "Grüße"], charset="UTF-8") == [3]
    assert c.search(["BODY", "日本語"], charset="UTF-8") == [3]
    assert c.search(["FROM", "Jürgen"], charset="UTF-8") == [3]
    assert c.search(["TEXT", "report"], charset="UTF-8") == [2]
    assert c.search(["SUBJECT", "köln", "NOT", "SEEN"], charset="UTF-8") == [3]

    # flags the client sets are in the store
    c.add_flags([1], [ic.SEEN, ic.FLAGGED])
    c.add_flags([2], ["$Work"])
    flags = StoreView(server).flags_by_subject("INBOX")
    assert flags[b"Hello Alice"] == {"\\Seen", "\\Flagged"}
    assert flags[b"Report attached"] == {"$Work"}

    # CONDSTORE: a read-only select gives HIGHESTMODSEQ, CHANGEDSINCE gives only what changed
    sel = c.select_folder("INBOX", readonly=True)
    assert b"READ-ONLY" in sel
    modseq = sel[b"HIGHESTMODSEQ"]
    other = IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=ctx, timeout=30)
    other.login("alice", "secret")
    other.select_folder("INBOX")
    other.add_flags([3], [ic.ANSWERED])
    changed = c.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
    assert list(changed) == [3], changed
    assert set(changed[3][b"FLAGS"]) - {ic.RECENT} == {ic.ANSWERED} and changed[3][b"MODSEQ"][0] > modseq
    assert c.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {changed[3][b'MODSEQ'][0]}"]) == {}
    assert StoreView(server).flags_by_subject("INBOX")[subject(UTF8)] == {"\\Answered"}

    # IDLE: a delivery by the MDA is announced
    other.idle()
    deliver(server, [numbered(4, "Delivered while idling")])
    responses = other.idle_check(timeout=10)
    other.idle_done()
    assert (4, b"EXISTS") in responses, responses
    assert other.fetch([4], ["ENVELOPE"])[4][b"ENVELOPE"].subject == b"Delivered while idling 4"

    # MOVE with COPYUID (the untagged OK before the EXPUNGE)
    c.select_folder("INBOX")
    archive_next = c.folder_status("Archive", ["UIDNEXT", "UIDVALIDITY"])
    c._imap.untagged_responses.clear()
    c.move([2, 4], "Archive")
    copyuid = c._imap.untagged_responses.get("COPYUID")
    assert copyuid, c._imap.untagged_responses
    validity, src, dst = copyuid[0].split()
    assert int(validity) == archive_next[b"UIDVALIDITY"] and src == b"2,4"
    first = archive_next[b"UIDNEXT"]
    assert dst == b"%d:%d" % (first, first + 1)
    assert c.search("ALL") == [1, 3]
    c.select_folder("Archive", readonly=True)
    moved = c.fetch([first, first + 1], ["FLAGS", "ENVELOPE"])
    assert set(moved[first][b"FLAGS"]) - {ic.RECENT} == {b"$Work"}
    assert moved[first + 1][b"ENVELOPE"].subject == b"Delivered while idling 4"
    other.logout()
    c.logout()

    view = StoreView(server)
    assert view.subjects("INBOX") == sorted([b"Hello Alice", subject(UTF8)])
    assert view.subjects("Archive") == [b"Delivered while idling 4", b"Report attached"]
    assert view.flags_by_subject("Archive")[b"Report attached"] == {"$Work"}
    assert lf(view.by_subject("Archive")[b"Report attached"]).endswith(MULTIPART)
    assert f"Projects{sep}2026" in view.folders


# -- mbsync (isync) -----------------------------------------------------------------


def seed_server(server: Server) -> str:
    """INBOX: the three MESSAGES (1 \\Seen, 2 \\Flagged); Projects<sep>2026 with one message;
    Sent with one. Returns the server's hierarchy separator."""
    sep = "." if server.layout == "maildir" else "/"
    deliver(server, MESSAGES)
    m = imap_login(server)
    m.select("INBOX")
    assert m.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
    assert m.store("2", "+FLAGS", "(\\Flagged)")[0] == "OK"
    assert m.create(f"Projects{sep}2026")[0] == "OK"
    assert m.append(f"Projects{sep}2026", "(\\Seen)", None, crlf(numbered(10, "Project plan")))[0] == "OK"
    assert m.append("Sent", "(\\Seen)", None, crlf(numbered(11, "Sent earlier")))[0] == "OK"
    m.logout()
    return sep


def maildir_messages(folder: Path) -> dict[bytes, tuple[str, bytes, Path]]:
    """{subject: (maildir info flags, bytes, path)} of a local Maildir folder (cur and new)."""
    found: dict[bytes, tuple[str, bytes, Path]] = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).iterdir():
            data = path.read_bytes()
            flags = path.name.split(":2,", 1)[1] if ":2," in path.name else ""
            found[subject(data)] = (flags, data, path)
    return found


def maildir_set_flags(path: Path, flags: str) -> Path:
    """Rename a Maildir message to carry these flags (into cur/, as a MUA does)."""
    base = path.name.split(":2,", 1)[0]
    new = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    path.rename(new)
    return new


def drop_tuid(data: bytes) -> bytes:
    """mbsync 1.4 puts an `X-TUID:` line at the end of the header of every message it copies."""
    return re.sub(rb"(?m)^X-TUID: [^\r\n]*\r?\n", b"", data, count=1)


def make_maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def write_new(folder: Path, name: str, data: bytes) -> None:
    (folder / "tmp" / name).write_bytes(data)
    (folder / "tmp" / name).rename(folder / "new" / name)


IMAP_TO_MAILDIR = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D", "\\Deleted": "T"}


@pytest.mark.parametrize("tls", ["IMAPS", "STARTTLS"])
def test_mbsync_both_ways(imap_server, tmp_path, tls):
    binary = need("mbsync")
    server = imap_server
    sep = seed_server(server)
    home = tmp_path / "mbsync-home"
    home.mkdir()
    local = tmp_path / "mbsync-local"
    local.mkdir()
    port = server.ports["imaps" if tls == "IMAPS" else "imap"]
    # STARTTLS: the password only as SASL PLAIN; IMAPS: whatever mbsync likes best (CRAM-MD5 is offered)
    mechs = "AuthMechs PLAIN\n" if tls == "STARTTLS" else ""
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"""
IMAPAccount ours
Host localhost
Port {port}
User alice
Pass secret
SSLType {tls}
CertificateFile {server.cert}
{mechs}
IMAPStore ours-remote
Account ours

MaildirStore ours-local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ours
Far :ours-remote:
Near :ours-local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
CopyArrivalDate yes
"""
    )
    env = {**os.environ, "HOME": str(home)}

    def mbsync() -> str:
        proc = run([binary, "-V", "-c", str(config), "-a"], env=env)
        return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")

    # 1. server -> local: messages (bytes and flags), folders
    log = mbsync()
    assert "Connection is now encrypted" in log, log
    assert ("SASL mechanism PLAIN" if tls == "STARTTLS" else "SASL mechanism CRAM-MD5") in log, log
    view = StoreView(server)
    inbox = maildir_messages(local / "INBOX")
    assert sorted(inbox) == view.subjects("INBOX")
    for subj, stored in view.by_subject("INBOX").items():
        assert drop_tuid(inbox[subj][1]) == lf(stored), subj  # mbsync stores LF line ends
    flags = view.flags_by_subject("INBOX")
    for subj, (mflags, _, _) in inbox.items():
        assert set(mflags) == {IMAP_TO_MAILDIR[f] for f in flags[subj] if f in IMAP_TO_MAILDIR}, (subj, mflags)
    assert inbox[b"Hello Alice"][0] == "S" and inbox[b"Report attached"][0] == "F"
    project = maildir_messages(local / "Projects" / "2026")
    assert list(project) == [b"Project plan 10"] and project[b"Project plan 10"][0] == "S"
    assert list(maildir_messages(local / "Sent")) == [b"Sent earlier 11"]
    for name in ("Drafts", "Trash", "Junk", "Archive"):
        assert maildir_messages(local / name) == {}

    # 2. local changes: flag one, delete one (trashed, expunged), a new message, a new folder
    utf8_subject = subject(UTF8)
    maildir_set_flags(inbox[utf8_subject][2], "FS")
    maildir_set_flags(inbox[b"Report attached"][2], "FT")
    write_new(local / "INBOX", "1767225600.P1Q1.localhost", numbered(20, "Written locally"))
    lists = make_maildir(local / "Lists" / "Python")
    write_new(lists, "1767225601.P1Q2.localhost", numbered(21, "In a new folder"))
    maildir_set_flags(lists / "new" / "1767225601.P1Q2.localhost", "S")
    log = mbsync()

    view = StoreView(server)
    assert view.subjects("INBOX") == sorted([b"Hello Alice", utf8_subject, b"Written locally 20"])
    flags = view.flags_by_subject("INBOX")
    assert flags[utf8_subject] == {"\\Seen", "\\Flagged"}
    assert flags[b"Hello Alice"] == {"\\Seen"}
    assert flags[b"Written locally 20"] == frozenset()
    assert lf(drop_tuid(view.by_subject("INBOX")[b"Written locally 20"])) == numbered(20, "Written locally")
    new_folder = f"Lists{sep}Python"
    assert new_folder in view.folders, sorted(view.folders)
    assert view.subjects(new_folder) == [b"In a new folder 21"]
    assert view.flags_by_subject(new_folder)[b"In a new folder 21"] == {"\\Seen"}
    assert lf(drop_tuid(view.by_subject(new_folder)[b"In a new folder 21"])) == numbered(21, "In a new folder")
    assert view.subjects(f"Projects{sep}2026") == [b"Project plan 10"]
    # the local side agrees (the trashed message is gone there too)
    assert sorted(maildir_messages(local / "INBOX")) == view.subjects("INBOX")

    # 3. nothing left to do: a third run changes nothing on either side
    before = {name: [(uid, flags) for uid, flags, _ in rows] for name, rows in view.folders.items()}
    mbsync()
    after = {name: [(uid, flags) for uid, flags, _ in rows] for name, rows in StoreView(server).folders.items()}
    assert after == before
    assert sorted(maildir_messages(local / "INBOX")) == view.subjects("INBOX")


# -- offlineimap3 -----------------------------------------------------------------


def test_offlineimap_sync_then_local_changes_back(imap_server, tmp_path):
    binary = need("offlineimap")
    server = imap_server
    sep = seed_server(server)
    local = tmp_path / "oi-local"
    local.mkdir()
    meta = tmp_path / "oi-meta"
    meta.mkdir()
    # IMAPS only: offlineimap's STARTTLS (imaplib2 3.05) verifies no certificate (its
    # starttls() gets no CA file), and it races with itself: its reader thread handles the
    # TLS 1.3 session tickets while its writer thread sends CAPABILITY on the same SSL
    # object, and a few runs in a hundred the command never reaches the wire (strace of the
    # server: the handshake, the tickets, then nothing read) and offlineimap waits forever.
    config = tmp_path / "offlineimaprc"
    config.write_text(
        f"""
[general]
accounts = ours
metadata = {meta}

[Account ours]
localrepository = ours-local
remoterepository = ours-remote

[Repository ours-local]
type = Maildir
localfolders = {local}
sep = /

[Repository ours-remote]
type = IMAP
remotehost = localhost
remoteport = {server.ports['imaps']}
remoteuser = alice
remotepass = secret
ssl = yes
sslcacertfile = {server.cert}
"""
    )
    env = {**os.environ, "HOME": str(tmp_path)}

    def offlineimap(*extra: str) -> str:
        proc = run([binary, "-c", str(config), "-u", "basic", "-o", *extra], env=env)
        log = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        assert "ERROR" not in log and "Traceback" not in log, log
        return log

    # 1. first sync (single-threaded, with the protocol log): everything arrives, byte for
    # byte, with its flags
    log = offlineimap("-d", "imap")
    assert "LOGIN" in log and "STARTTLS" not in log, log[-3000:]
    assert "Copy message UID 3 (3/3) ours-remote:INBOX -> ours-local:INBOX" in log, log
    view = StoreView(server)
    for folder in ("INBOX", f"Projects{sep}2026", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        got = maildir_messages(local / folder.replace(sep, "/"))
        stored = view.by_subject(folder)
        assert sorted(got) == sorted(stored), folder
        flags = view.flags_by_subject(folder)
        for subj, (mflags, data, _) in got.items():
            assert lf(data) == lf(stored[subj]), (folder, subj)
            assert set(mflags) == {IMAP_TO_MAILDIR[f] for f in flags[subj] if f in IMAP_TO_MAILDIR}, (subj, mflags)

    # 2. local changes: a flag, a deletion, a new message, a new folder
    inbox = maildir_messages(local / "INBOX")
    maildir_set_flags(inbox[b"Report attached"][2], "FRS")
    inbox[b"Hello Alice"][2].unlink()
    write_new(local / "INBOX", "1767225600.P2Q1.localhost", numbered(30, "Offline draft"))
    # (a top-level one: offlineimap creates every level of a nested name on the server, and then
    # wants each level to be a local Maildir too)
    write_new(make_maildir(local / "Newsletters"), "1767225601.P2Q2.localhost", numbered(31, "Local list"))
    log = offlineimap()
    assert "Deleting 1 messages" in log or "Deleting 1 message" in log, log

    view = StoreView(server)
    utf8_subject = subject(UTF8)
    assert view.subjects("INBOX") == sorted([b"Report attached", utf8_subject, b"Offline draft 30"])
    flags = view.flags_by_subject("INBOX")
    assert flags[b"Report attached"] == {"\\Flagged", "\\Answered", "\\Seen"}
    assert flags[utf8_subject] == frozenset()
    uploaded = view.by_subject("INBOX")[b"Offline draft 30"]
    # offlineimap adds an `X-OfflineIMAP:` header only when it cannot learn the new UID (no UIDPLUS)
    assert b"X-OfflineIMAP" not in uploaded
    assert lf(uploaded) == numbered(30, "Offline draft")
    assert view.subjects("Newsletters") == [b"Local list 31"]
    # and the local side learnt the server's UIDs for what it uploaded
    names = [p.name for _, _, p in maildir_messages(local / "INBOX").values()]
    assert all(",U=" in name for name in names), names


# -- fetchmail and getmail6 -------------------------------------------------------------


def check_retrieved(files: list[Path], delivered: list[bytes], added: bytes | None = None) -> None:
    """Each delivered message arrived exactly once, byte for byte below the trace headers
    (and without the one header line `added` that the client put at the end of the header)."""
    by_subject = {subject(data): data for data in delivered}
    got = {}
    for path in files:
        data = strip_trace(path.read_bytes())
        if added is not None:
            end = data.index(b"\n\n") + 1
            assert data[:end].endswith(added), (path, data[:end])
            data = data[: end - len(added)] + data[end:]
        key = subject(data)
        assert key in by_subject and key not in got, (path, data[:300])
        got[key] = data
    assert sorted(got) == sorted(by_subject)
    for key, data in got.items():
        assert data == lf(by_subject[key]), f"{key!r} differs"


class Fetchmail:
    """fetchmail from the command line only: HOME is a temp dir holding .netrc, no rcfile."""

    def __init__(self, server: Server, base: Path) -> None:
        self.binary = need("fetchmail")
        self.server = server
        self.home = base / "fm-home"
        self.home.mkdir()
        netrc = self.home / ".netrc"
        netrc.write_text("machine localhost\nlogin alice\npassword secret\n")
        netrc.chmod(0o600)
        self.mda = base / "fm-mda.py"
        self.mda.write_text(
            "import os, sys\n"
            "out, data, n = sys.argv[1], sys.stdin.buffer.read(), 1\n"
            "while True:\n"
            "    try:\n"
            "        fd = os.open(os.path.join(out, '%04d.eml' % n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n"
            "        break\n"
            "    except FileExistsError:\n"
            "        n += 1\n"
            "os.write(fd, data)\n"
            "os.close(fd)\n"
        )
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "FETCHMAILHOME": str(self.home),
            "FETCHMAILUSER": pwd.getpwuid(os.getuid()).pw_name,  # as root, the MDA runs as this user
        }

    def run(self, out: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        out.mkdir(exist_ok=True)
        mda = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.mda))} {shlex.quote(str(out))}"
        cmd = [
            self.binary, "--nodetach", "--nosyslog", "-v", "--norewrite",
            "--pidfile", str(self.home / "fetchmail.pid"),  # as root it is /var/run's otherwise
            "--protocol", "IMAP", "--username", "alice",
            "--ssl", "--port", str(self.server.ports["imaps"]),
            "--sslcertck", "--sslcertfile", str(self.server.cert),
            "--mda", mda,
            *args,
            "localhost",
        ]  # fmt: skip
        proc = run(cmd, env=self.env, ok=ok)
        return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def test_fetchmail_imaps_keep_then_delete(imap_server, tmp_path):
    server = imap_server
    deliver(server, RETRIEVE)
    fm = Fetchmail(server, tmp_path)

    # 1. --keep --all: everything arrives, everything stays (now \Seen)
    kept = tmp_path / "kept"
    log = fm.run(kept, "--keep", "--all")
    assert "SSL/TLS: using protocol TLSv1." in log, log[-3000:]
    # CRAM-MD5 is offered (the passwd-file holds PLAIN passwords), and fetchmail takes it
    assert "IMAP> A0001 AUTHENTICATE CRAM-MD5" in log and "IMAP< A0001 OK" in log, log[-3000:]
    assert f"{len(RETRIEVE)} messages for alice at localhost" in log, log[-3000:]
    assert log.count("not flushed") == len(RETRIEVE), log[-3000:]
    check_retrieved(sorted(kept.iterdir()), RETRIEVE)
    view = StoreView(server)
    assert view.subjects("INBOX") == sorted(subject(m) for m in RETRIEVE)
    assert all("\\Seen" in flags for flags in view.flags_by_subject("INBOX").values())
    assert all("\\Deleted" not in flags for flags in view.flags_by_subject("INBOX").values())

    # 2. without --keep (and with LOGIN): everything again, each one deleted and expunged at once
    flushed = tmp_path / "flushed"
    log = fm.run(flushed, "--all", "--auth", "password")
    assert "IMAP> A0001 LOGIN" in log, log[-3000:]
    assert log.count(" flushed") - log.count("not flushed") == len(RETRIEVE), log[-3000:]
    assert log.count("STORE 1 +FLAGS (\\Seen \\Deleted)") == len(RETRIEVE), log[-3000:]
    check_retrieved(sorted(flushed.iterdir()), RETRIEVE)
    assert StoreView(server).folders["INBOX"] == []

    # 3. nothing left: fetchmail says so (exit 1)
    empty = tmp_path / "empty"
    log = fm.run(empty, "--all", ok=(1,))
    assert "No mail for alice at localhost" in log, log[-3000:]
    assert list(empty.iterdir()) == []


@pytest.fixture
def maildir_dest():
    """A destination Maildir getmail's delivery child can write: owned by `nobody` when we are root."""
    base = Path(tempfile.mkdtemp(prefix="getmail-dest-"))
    user = None
    if os.geteuid() == 0:
        user = "nobody"
        record = pwd.getpwnam(user)

    def make(name: str) -> tuple[Path, str | None]:
        path = base / name
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True)
        if user is not None:
            for p in [base, path, *(path / s for s in ("cur", "new", "tmp"))]:
                os.chown(p, record.pw_uid, record.pw_gid)
        return path, user

    yield make
    shutil.rmtree(base, ignore_errors=True)


def getmail(server: Server, base: Path, dest: Path, user: str | None, delete: bool) -> str:
    binary = need("getmail")
    rcdir = base / f"getmail-{dest.name}"
    rcdir.mkdir()
    (rcdir / "getmailrc").write_text(
        f"""
[retriever]
type = SimpleIMAPSSLRetriever
server = 127.0.0.1
port = {server.ports['imaps']}
username = alice
password = secret
mailboxes = ("INBOX",)
ca_certs = {server.cert}
timeout = 30

[destination]
type = Maildir
path = {dest}/
{f'user = {user}' if user else ''}

[options]
delete = {'true' if delete else 'false'}
read_all = true
verbose = 2
"""
    )
    proc = run([binary, "--getmaildir", str(rcdir), "--rcfile", "getmailrc"], env={**os.environ, "HOME": str(rcdir)})
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


GETMAIL_ADDED = b"X-getmail-retrieved-from-mailbox: INBOX\n"


def test_getmail_imaps_keep_then_delete(imap_server, tmp_path, maildir_dest):
    server = imap_server
    deliver(server, RETRIEVE)
    octets = sum(len(crlf(data)) for _, _, data in StoreView(server).folders["INBOX"])

    kept, user = maildir_dest("kept")
    log = getmail(server, tmp_path, kept, user, delete=False)
    assert f"{len(RETRIEVE)} messages ({octets} bytes) retrieved" in log, log[-3000:]
    assert list((kept / "tmp").iterdir()) == [] and list((kept / "cur").iterdir()) == []
    check_retrieved(sorted((kept / "new").iterdir()), RETRIEVE, GETMAIL_ADDED)
    view = StoreView(server)
    assert view.subjects("INBOX") == sorted(subject(m) for m in RETRIEVE)

    deleted, user = maildir_dest("deleted")
    log = getmail(server, tmp_path, deleted, user, delete=True)
    assert f"{len(RETRIEVE)} messages ({octets} bytes) retrieved" in log, log[-3000:]
    check_retrieved(sorted((deleted / "new").iterdir()), RETRIEVE, GETMAIL_ADDED)
    assert StoreView(server).folders["INBOX"] == []


# -- curl ----------------------------------------------------------------------------


def test_curl_fetch_list_search_append(imap_server, tmp_path):
    curl = need("curl")
    server = imap_server
    deliver(server, RETRIEVE)
    stored = {uid: data for uid, _, data in StoreView(server).folders["INBOX"]}
    assert sorted(stored) == [1, 2, 3, 4]
    base = [curl, "--silent", "--show-error", "--cacert", str(server.cert), "--user", "alice:secret"]
    imaps = f"imaps://127.0.0.1:{server.ports['imaps']}"
    imap = f"imap://127.0.0.1:{server.ports['imap']}"

    # FETCH BODY[] by UID over IMAPS: exactly the stored message with CRLF line ends
    for uid, data in stored.items():
        got = run([*base, f"{imaps}/INBOX;UID={uid}"]).stdout
        assert got == crlf(data), uid
    # a section, and the same by name over STARTTLS (required)
    got = run([*base, f"{imaps}/INBOX;UID=1;SECTION=TEXT"]).stdout
    assert got == b"Hello Alice.\r\nSecond line.\r\n"
    proc = run([*base, "--ssl-reqd", "--verbose", f"imap://localhost:{server.ports['imap']}/INBOX;UID=2"])
    assert proc.stdout == crlf(stored[2])
    assert b"STARTTLS" in proc.stderr and b"SSL certificate verify ok" in proc.stderr, proc.stderr[-3000:]
    assert b"AUTHENTICATE CRAM-MD5" in proc.stderr  # a SASL exchange with a continuation
    got = run([*base, "--ssl-reqd", f"{imap}/INBOX;UID=4"]).stdout
    assert got == crlf(stored[4]) and len(got) > 200_000
    # curl's FETCH is BODY[] (not PEEK): the messages are \Seen now
    assert all("\\Seen" in f for f in StoreView(server).flags_by_subject("INBOX").values())

    # LIST of everything
    got = run([*base, f"{imaps}/"]).stdout.decode()
    names = sorted(re.findall(r'^\* LIST \([^)]*\) "[./]" "?([^"\r\n]+)"?\r$', got, re.M))
    assert names == sorted(["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]), got
    assert re.search(r'^\* LIST \([^)]*\\Sent[^)]*\) "[./]" "?Sent"?\r$', got, re.M), got

    # SEARCH via the URL query, and a custom command (EXAMINE) via --request
    got = run([*base, f"{imaps}/INBOX?SUBJECT%20report"]).stdout
    assert got == b"* SEARCH 2\r\n"
    got = run([*base, "--request", "EXAMINE INBOX", f"{imaps}/"]).stdout
    assert b"* 4 EXISTS\r\n" in got and b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n" in got, got

    # APPEND (an upload) into Sent
    sent = tmp_path / "sent.eml"
    sent.write_bytes(crlf(numbered(40, "Uploaded by curl")))
    run([*base, "--upload-file", str(sent), f"{imaps}/Sent"])
    view = StoreView(server)
    assert view.subjects("Sent") == [b"Uploaded by curl 40"]
    assert crlf(view.folders["Sent"][0][2]) == sent.read_bytes()

    # a wrong password, an untrusted certificate: refused
    proc = run([curl, "--silent", "--cacert", str(server.cert), "--user", "alice:wrong", f"{imaps}/INBOX;UID=1"],
               ok=(67,))
    assert proc.stdout == b""
    from retrieval.net.certs import make_self_signed

    other = tmp_path / "other.pem"
    make_self_signed(other, tmp_path / "other.key", "localhost")
    proc = run([curl, "--silent", "--cacert", str(other), "--user", "alice:secret", f"{imaps}/INBOX;UID=1"], ok=(60,))
    assert proc.stdout == b""


# -- mutt under tmux -------------------------------------------------------------------


class Tmux:
    """One tmux server of our own (its own socket), one session running one program."""

    def __init__(self, binary: str, socket_dir: Path) -> None:
        self.binary = binary
        self.socket = socket_dir / "tmux.sock"

    def __call__(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        return run([self.binary, "-S", str(self.socket), *args], ok=ok)

    def start(self, command: str, env: dict[str, str]) -> None:
        wrapped = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + command
        self("new-session", "-d", "-s", "T", "-x", "200", "-y", "50", wrapped)
        self("set-option", "-t", "T", "remain-on-exit", "on")  # a crash stays readable

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "T").stdout.decode("utf-8", errors="replace")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "T", *keys)

    def wait(self, predicate: Callable[[str], object], what: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; the screen:\n{text}")
            time.sleep(0.2)

    def wait_text(self, *needles: str, timeout: float = 15.0) -> str:
        return self.wait(lambda text: all(n in text for n in needles), repr(needles), timeout)

    def dead(self) -> bool:
        proc = self("list-panes", "-t", "T", "-F", "#{pane_dead}", ok=(0, 1))
        return proc.returncode != 0 or proc.stdout.strip() == b"1"

    def kill(self) -> None:
        self("kill-server", ok=(0, 1))


def index_line(screen: str, subj: str) -> str:
    lines = [line for line in screen.splitlines() if subj in line]
    assert len(lines) == 1, (subj, screen)
    return lines[0]


def test_mutt_under_tmux_read_flag_copy_delete(imap_server, tmp_path):
    mutt = need("mutt")
    tmux_binary = need("tmux")
    server = imap_server
    deliver(server, MESSAGES)
    home = tmp_path / "mutt-home"
    home.mkdir()
    muttrc = home / "muttrc"
    muttrc.write_text(
        f"""
set folder = "imaps://alice@localhost:{server.ports['imaps']}/"
set spoolfile = "+INBOX"
set imap_pass = "secret"
set ssl_ca_certificates_file = "{server.cert}"
set certificate_file = "{home}/certificates"
set ssl_force_tls = yes
set header_cache = ""
set message_cachedir = ""
set record = ""
set move = no
set delete = yes
set quit = yes
set confirmappend = no
set confirmcreate = no
set mark_old = no
set wait_key = no
set sleep_time = 0
set help = no
set sort = date
set mail_check = 1
set timeout = 1
set charset = "utf-8"
"""
    )
    sock_dir = Path(tempfile.mkdtemp(prefix="tmux-"))  # a short path for the socket
    tmux = Tmux(tmux_binary, sock_dir)
    env = {"HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    try:
        # -d 2: a debug log in $HOME/.muttdebug0, with the IMAP commands
        tmux.start(f"{shlex.quote(mutt)} -n -d 2 -F {shlex.quote(str(muttrc))}", env)
        utf8_subject = "Grüße aus Köln"  # the encoded word, decoded by mutt

        # the index: every subject, the new ones marked N
        screen = tmux.wait_text("Hello Alice", "Report attached", utf8_subject, "Msgs:3")
        assert " N " in index_line(screen, "Report attached"), screen
        # it logged in with GNU SASL's CRAM-MD5: "AUTHENTICATE CRAM-MD5 " (see the last test)
        debug = (home / ".muttdebug0").read_text(errors="replace")
        assert re.search(r"> a\d+ AUTHENTICATE CRAM-MD5", debug), debug[-3000:]

        # a delivery while mutt is open shows up (mutt polls every second)
        deliver(server, [numbered(50, "Arrived while open")])
        tmux.wait_text("Arrived while open 50", "Msgs:4")

        # open the multipart message: headers and the text part on screen
        tmux.keys("2", "Enter")
        tmux.keys("Enter")
        screen = tmux.wait_text("See the report.", "report.pdf", "Subject: Report attached")
        assert "Cc: Dave <dave@example.test>" in screen
        tmux.keys("i")  # back to the index
        screen = tmux.wait_text("Msgs:4", "Arrived while open 50")
        assert " N " not in index_line(screen, "Report attached")

        # copy it to Archive (mutt suggests =carol: clear the line first)
        tmux.keys("C")
        tmux.wait_text("Copy to mailbox")
        tmux.keys("C-u", "=Archive", "Enter")
        wait_until(lambda: StoreView(server).folders.get("Archive"), what="the copy in Archive", timeout=15.0)

        # flag the first, delete the third, then sync ($): the deletion is expunged
        tmux.keys("1", "Enter", "F")
        tmux.wait_text("Flag:1")
        assert "!" in index_line(tmux.screen(), "Hello Alice")
        tmux.keys("3", "Enter", "d")
        tmux.wait_text("Del:1")
        tmux.keys("$")
        tmux.wait(lambda s: "Msgs:3" in s and "Del:" not in s and utf8_subject not in s, "the expunge")

        view = StoreView(server)
        assert view.subjects("INBOX") == sorted([b"Hello Alice", b"Report attached", b"Arrived while open 50"])
        flags = view.flags_by_subject("INBOX")
        assert flags[b"Hello Alice"] == {"\\Flagged"}
        assert flags[b"Report attached"] == {"\\Seen"}
        assert flags[b"Arrived while open 50"] == frozenset()
        assert view.subjects("Archive") == [b"Report attached"]
        assert view.flags_by_subject("Archive")[b"Report attached"] == {"\\Seen"}
        assert lf(view.by_subject("Archive")[b"Report attached"]) == lf(view.by_subject("INBOX")[b"Report attached"])

        # quit: mutt exits (nothing left to ask: delete and move are settled)
        tmux.keys("q")
        wait_until(tmux.dead, what="mutt to exit", timeout=15.0)
    finally:
        tmux.kill()
        shutil.rmtree(sock_dir, ignore_errors=True)


# -- Thunderbird, replayed byte for byte ----------------------------------------------


class Wire:
    """A bare IMAPS connection: send exact bytes, read responses with their literals."""

    def __init__(self, server: Server) -> None:
        raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=30)
        self.sock = server.ssl_context().wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.tag = 0
        self.greeting = self.file.readline()
        self.tagged: list[bytes] = []

    def response(self) -> tuple[bytes, list[bytes]]:
        """One server response: its text (literals left as {n}) and its literals."""
        text = b""
        literals: list[bytes] = []
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), (text, line)
            text += line
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m is None:
                return text, literals
            literal = self.file.read(int(m.group(1)))
            assert len(literal) == int(m.group(1))
            literals.append(literal)

    def next_tag(self) -> bytes:
        self.tag += 1
        return b"%d" % self.tag

    def finish(self, tag: bytes) -> list[tuple[bytes, list[bytes]]]:
        """Read up to the tagged reply, which must be OK; return the untagged responses."""
        untagged = []
        while True:
            text, literals = self.response()
            if text.startswith(tag + b" "):
                assert text.startswith(tag + b" OK "), text
                self.tagged.append(text)
                return untagged
            assert text.startswith(b"* "), text
            untagged.append((text, literals))

    def command(self, line: bytes) -> list[tuple[bytes, list[bytes]]]:
        tag = self.next_tag()
        self.sock.sendall(tag + b" " + line + b"\r\n")
        return self.finish(tag)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


TB_HEADERS = (
    "From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
    "Content-Type Reply-To"
)
TB_HEADER_FETCH = b"(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (" + TB_HEADERS.encode() + b")])"


def header_fields(message: bytes, names: list[str]) -> bytes:
    """What BODY[HEADER.FIELDS (names)] holds: those fields in message order, then the blank line."""
    text = crlf(message)
    header = text[: text.index(b"\r\n\r\n") + 2]
    wanted = {n.lower().encode() for n in names}
    fields = re.findall(rb"[^ \t\r\n][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", header)
    return b"".join(f for f in fields if f.split(b":", 1)[0].strip().lower() in wanted) + b"\r\n"


def test_thunderbird_replay(imap_server):
    server = imap_server
    deliver(server, [PLAIN, MULTIPART, UTF8, BIG])
    sent_message = crlf(
        b"From: Alice <alice@example.test>\nTo: Bob <bob@example.test>\nSubject: Re: Hello Alice\n"
        b"Message-ID: <tb-sent@example.test>\nIn-Reply-To: <plain-1@example.test>\n"
        b"Date: Mon, 05 Jan 2026 08:00:00 +0000\nUser-Agent: Mozilla Thunderbird\n"
        b"Content-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n"
        b"Hi Bob,\n\nthanks!\n"
    )
    tb = Wire(server)
    try:
        assert tb.greeting.startswith(b"* OK [CAPABILITY ")
        caps = tb.command(b"capability")
        assert b"AUTH=PLAIN" in caps[0][0]

        # AUTHENTICATE PLAIN without SASL-IR: Thunderbird waits for the continuation
        tag = tb.next_tag()
        tb.sock.sendall(tag + b" authenticate PLAIN\r\n")
        assert tb.file.readline() == b"+ \r\n"
        tb.sock.sendall(base64.b64encode(b"\x00alice\x00secret") + b"\r\n")
        tb.finish(tag)
        assert b"[CAPABILITY " in tb.tagged[-1] and b"CONDSTORE" in tb.tagged[-1]

        got = tb.command(b'ID ("name" "Thunderbird" "version" "128.0")')
        assert got[0][0].startswith(b"* ID (")
        got = tb.command(b"NAMESPACE")
        assert got[0][0] in (b'* NAMESPACE (("" ".")) NIL NIL\r\n', b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        got = tb.command(b'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)')
        listing = b"".join(text for text, _ in got)
        for name, use in (("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash"), ("Junk", "\\Junk"),
                          ("Archive", "\\Archive")):
            assert re.search(rb"\* LIST \([^)]*\\Subscribed[^)]*\) \"[./]\" \"?" + name.encode(), listing), listing
            assert re.search(rb"\* LIST \([^)]*" + re.escape(use.encode()) + rb"[^)]*\) \"[./]\" \"?" + name.encode(),
                             listing), listing

        got = tb.command(b"SELECT INBOX (CONDSTORE)")
        select = b"".join(text for text, _ in got)
        assert b"* 4 EXISTS\r\n" in select and b"[HIGHESTMODSEQ " in select and b"[UIDVALIDITY " in select
        assert tb.tagged[-1].startswith(b"%d OK [READ-WRITE]" % tb.tag)

        # the first header sync
        view = StoreView(server)
        stored = {uid: data for uid, _, data in view.folders["INBOX"]}
        got = tb.command(b"UID fetch 1:* " + TB_HEADER_FETCH)
        assert len(got) == 4
        for text, literals in got:
            uid = int(re.search(rb"UID (\d+)", text).group(1))
            assert re.search(rb"RFC822\.SIZE %d\b" % len(crlf(stored[uid])), text), text
            assert re.search(rb"FLAGS \(\\Recent\)", text), text
            assert literals == [header_fields(stored[uid], TB_HEADERS.split())], uid
        assert b"Subject: Big attachment\r\n" in got[3][1][0]

        # the big one, in 64 KiB chunks until a short one
        big_uid = 4
        whole = crlf(stored[big_uid])
        assert len(whole) > 200_000
        chunks = []
        offset = 0
        while True:
            got = tb.command(b"UID fetch %d (UID RFC822.SIZE BODY.PEEK[]<%d.65536>)" % (big_uid, offset))
            (text, literals), = got
            assert b"BODY[]<%d> {" % offset in text and b"RFC822.SIZE %d" % len(whole) in text, text
            chunks.append(literals[0])
            offset += len(literals[0])
            if len(literals[0]) < 65536:
                break
        assert len(chunks) == 4
        assert b"".join(chunks) == whole

        # STATUS polling of another folder while INBOX is selected
        status_cmd = b'STATUS "Archive" (UIDNEXT MESSAGES UNSEEN RECENT HIGHESTMODSEQ)'
        got = tb.command(status_cmd)
        status = rb"\* STATUS \"?Archive\"? \(UIDNEXT %d MESSAGES %d UNSEEN %d RECENT %d HIGHESTMODSEQ \d+\)\r\n"
        assert re.fullmatch(status % (1, 0, 0, 0), got[0][0]), got
        other = imap_login(server)
        assert other.append("Archive", None, None, crlf(numbered(60, "Archived elsewhere")))[0] == "OK"
        other.logout()
        got = tb.command(status_cmd)
        assert re.fullmatch(status % (2, 1, 1, 1), got[0][0]), got

        # IDLE, a delivery, DONE
        tag = tb.next_tag()
        tb.sock.sendall(tag + b" IDLE\r\n")
        assert tb.file.readline().startswith(b"+ ")
        deliver(server, [numbered(61, "Arrived during IDLE")])
        tb.sock.settimeout(10)
        assert tb.response()[0] == b"* 5 EXISTS\r\n"
        tb.sock.sendall(b"DONE\r\n")
        tb.finish(tag)
        tb.sock.settimeout(30)
        got = tb.command(b"UID fetch 5:* " + TB_HEADER_FETCH)
        assert len(got) == 1 and b"Subject: Arrived during IDLE 61\r\n" in got[0][1][0]

        # delete = move to Trash
        got = tb.command(b"UID MOVE 2 Trash")
        texts = [text for text, _ in got]
        assert re.match(rb"\* OK \[COPYUID \d+ 2 1\]", texts[0]), texts
        assert b"* 2 EXPUNGE\r\n" in texts

        # the sent message into Sent (a synchronizing literal)
        tag = tb.next_tag()
        tb.sock.sendall(tag + b" APPEND Sent (\\Seen) {%d}\r\n" % len(sent_message))
        assert tb.file.readline().startswith(b"+ ")
        tb.sock.sendall(sent_message + b"\r\n")
        tb.finish(tag)
        assert re.match(rb"%s OK \[APPENDUID \d+ 1\]" % tag, tb.tagged[-1]), tb.tagged[-1]

        got = tb.command(b"NOOP")
        got = tb.command(b"logout")
        assert got[0][0].startswith(b"* BYE")
    finally:
        tb.close()

    assert all(re.match(rb"\d+ OK ", t) for t in tb.tagged) and len(tb.tagged) == tb.tag
    view = StoreView(server)
    expected = [b"Hello Alice", subject(UTF8), b"Big attachment", b"Arrived during IDLE 61"]
    assert view.subjects("INBOX") == sorted(expected)
    assert view.subjects("Trash") == [b"Report attached"]
    assert view.subjects("Archive") == [b"Archived elsewhere 60"]
    assert view.subjects("Sent") == [b"Re: Hello Alice"]
    assert view.flags_by_subject("Sent")[b"Re: Hello Alice"] == {"\\Seen"}
    assert crlf(view.by_subject("Sent")[b"Re: Hello Alice"]) == sent_message
    # BODY.PEEK everywhere: nothing became \Seen in INBOX
    assert all(flags == frozenset() for flags in view.flags_by_subject("INBOX").values())


# -- mutt's AUTHENTICATE, byte for byte ---------------------------------------------------


@maildir_only
def test_authenticate_with_a_trailing_space_as_mutt_sends_it(imap_server):
    """mutt with GNU SASL under SASL-IR: 'AUTHENTICATE CRAM-MD5 ' (trailing space, nothing after)."""
    import hashlib
    import hmac

    sock = socket.create_connection(("127.0.0.1", imap_server.ports["imap"]), timeout=10)
    try:
        f = sock.makefile("rb")
        assert b"AUTH=CRAM-MD5" in f.readline()
        sock.sendall(b"a0000 AUTHENTICATE CRAM-MD5 \r\n")
        line = f.readline()
        assert line.startswith(b"+ ") and line.endswith(b"\r\n"), line
        challenge = base64.b64decode(line[2:].strip())
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().encode()
        sock.sendall(base64.b64encode(b"alice " + digest) + b"\r\n")
        assert f.readline().startswith(b"a0000 OK [CAPABILITY ")
    finally:
        sock.close()
