"""Debian's own Dovecot and our store on one Maildir, both ways.

Dovecot writes (IMAP APPEND/STORE/EXPUNGE/CREATE/SUBSCRIBE, and dovecot-lda
into new/); we open the same Maildir and must see what its clients saw: the
same UIDVALIDITY, UIDs, flags and keywords, folders, subscriptions, bytes,
sizes and dates. Then we write (append, flags, keywords, a folder, an
expunge) and a restarted Dovecot must see our UIDs and flags: that is what
`dovecot-uidlist` and `dovecot-keywords` in Dovecot's format buy a migration.

Dovecot runs privately (tests/dovecot_helper.py); every wait has a deadline
and the module fixture always stops it.
"""

from __future__ import annotations

import imaplib
import re
import subprocess
import time

import pytest

from conftest import Site
from dovecot_helper import PrivateDovecot, unavailable_reason

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"needs Debian's Dovecot: {_REASON}")

LDA = "/usr/lib/dovecot/dovecot-lda"
BROUILLONS_UTF7 = "Brouillons &AOk-t&AOk-"  # "Brouillons été" as IMAP and Maildir++ spell it
DATE = 1_600_000_000  # an INTERNALDATE given with APPEND


def msg(subject: str, body: str = "hello\r\n") -> bytes:
    return (
        f"From: Ann <ann@example.test>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n{body}"
    ).encode()


BIG_BODY = "".join(f"line {i:05d} " + "x" * 60 + "\r\n" for i in range(1200))  # ~85 KB
UTF8_BODY = "Grüße, ça va ? 日本語\r\n.\r\nFrom the start of a line\r\n"

# (folder, message, flags at APPEND, date)
APPENDS = [
    ("INBOX", msg("one"), r"(\Seen)", DATE),
    ("INBOX", msg("two"), r"(\Flagged \Answered $Forwarded)", None),
    ("INBOX", msg("three"), r"(\Draft Work)", None),
    ("INBOX", msg("four, to be expunged"), None, None),
    ("INBOX", msg("five", BIG_BODY), r"(\Seen \Flagged Work $Forwarded)", None),
    ("INBOX", msg("six", UTF8_BODY).replace(b"Subject", b"Content-Type: text/plain; charset=utf-8\r\nSubject"), None, None),
    ("Lists.Python", msg("py one"), r"(\Seen)", None),
    ("Lists.Python", msg("py two"), r"(\Answered Work)", None),
    (BROUILLONS_UTF7, msg("draft"), r"(\Draft \Seen)", None),
]


def ok(result: tuple) -> list:
    typ, data = result
    assert typ == "OK", data
    return data


def parse_fetch(data: list) -> dict[int, dict]:
    """UID FETCH (UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[]) -> {uid: {...}}."""
    out: dict[int, dict] = {}
    for item in data:
        if not isinstance(item, tuple):
            continue  # the closing b")"
        head, body = item
        uid = int(re.search(rb"UID (\d+)", head).group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", head).group(1).decode().split()
        out[uid] = {
            "flags": frozenset(f for f in flags if f != "\\Recent"),
            "size": int(re.search(rb"RFC822\.SIZE (\d+)", head).group(1)),
            "internaldate": time.mktime(imaplib.Internaldate2tuple(head)),
            "body": body,
        }
    return out


def parse_list(data: list) -> list[tuple[set[str], str]]:
    """LIST/LSUB lines -> [(attributes, name as sent, mUTF-7)]."""
    out = []
    for line in data:
        if line is None:
            continue
        if isinstance(line, tuple):  # a name sent as a literal
            head, literal = line
            attrs = re.match(rb"\(([^)]*)\)", head).group(1).decode().split()
            out.append((set(attrs), literal.decode()))
            continue
        m = re.match(rb'\(([^)]*)\) (?:"(?:\\.|.)"|NIL) (.*)$', line)
        name = m.group(2).decode()
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out.append((set(m.group(1).decode().split()), name))
    return out


def mutf7_decode(name: str) -> str:
    from retrieval.mime import utf7

    return utf7.decode(name)


def snapshot(imap: imaplib.IMAP4, folder: str) -> dict:
    """What a Dovecot client sees in a folder."""
    ok(imap.select(f'"{folder}"' if " " in folder else folder, readonly=True))
    uidvalidity = int(imap.response("UIDVALIDITY")[1][0])
    uidnext = int(imap.response("UIDNEXT")[1][0])
    data = ok(imap.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])"))
    messages = parse_fetch(data) if data != [None] else {}
    ok(imap.close())
    return {"uidvalidity": uidvalidity, "uidnext": uidnext, "messages": messages}


def selectable(imap: imaplib.IMAP4) -> list[str]:
    names = [
        mutf7_decode(name)
        for attrs, name in parse_list(ok(imap.list('""', "*")))
        if not {"\\noselect", "\\nonexistent"} & {a.lower() for a in attrs}
    ]
    return sorted(names, key=lambda n: (n != "INBOX", n))


def subscribed(imap: imaplib.IMAP4) -> list[str]:
    return sorted(mutf7_decode(name) for _attrs, name in parse_list(ok(imap.lsub('""', "*"))))


def ours(store, folder: str) -> dict:
    box = store.open(folder, readonly=True)
    try:
        return {
            "uidvalidity": box.uidvalidity,
            "uidnext": box.uidnext,
            "messages": {
                row.uid: {
                    "flags": row.flags,
                    "size": row.size,
                    "internaldate": row.internaldate,
                    "body": box.read_crlf(row.uid),
                }
                for row in box.messages()
            },
        }
    finally:
        box.close()


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot():
    dv = PrivateDovecot()
    try:
        yield dv
    finally:
        dv.close()  # stops Dovecot (SIGTERM, then SIGKILL after a deadline) and removes its dir


def make_site(dv: PrivateDovecot, user: str) -> Site:
    """Our side: a Site whose user's home is the Dovecot user's home."""
    base = dv.base / f"site-{user}"
    base.mkdir()
    site = Site(base)
    site.add_user(user, "secret")
    dv.add_user(user, "secret", home=site.home(user))
    return site


@pytest.fixture(scope="module")
def written_by_dovecot(dovecot: PrivateDovecot):
    """Alice's Maildir as Dovecot left it, and what Dovecot's clients saw (Dovecot stopped)."""
    site = make_site(dovecot, "alice")
    dovecot.start()
    imap = dovecot.imap("alice")
    try:
        ok(imap.create("Lists.Python"))
        ok(imap.create(f'"{BROUILLONS_UTF7}"'))
        ok(imap.subscribe("Lists.Python"))
        ok(imap.subscribe("INBOX"))
        for folder, data, flags, date in APPENDS:
            when = imaplib.Time2Internaldate(date) if date else None
            ok(imap.append(f'"{folder}"' if " " in folder else folder, flags, when, data))
        ok(imap.select("INBOX"))
        ok(imap.uid("STORE", "1", "+FLAGS", r"(\Answered)"))
        ok(imap.uid("STORE", "2", "-FLAGS", r"($Forwarded)"))
        ok(imap.uid("STORE", "2", "+FLAGS", r"(Work)"))
        ok(imap.uid("STORE", "3", "-FLAGS", r"(\Draft)"))
        ok(imap.uid("STORE", "4", "+FLAGS", r"(\Deleted)"))
        ok(imap.expunge())
        ok(imap.close())
        # local delivery: lands in new/, with a UID in dovecot-uidlist but no info part
        delivered = subprocess.run(
            [LDA, "-c", str(dovecot.conf), "-d", "alice", "-f", "ann@example.test"],
            input=msg("delivered by dovecot-lda").replace(b"\r\n", b"\n"),
            capture_output=True,
            timeout=30,
        )
        assert delivered.returncode == 0, delivered.stderr
        seen = {folder: snapshot(imap, folder) for folder in ("INBOX", "Lists.Python", BROUILLONS_UTF7)}
        folders = selectable(imap)
        subscriptions = subscribed(imap)
        imap.logout()
    finally:
        dovecot.stop()
    assert not dovecot.errors(), dovecot.errors()
    maildir = site.home("alice") / "Maildir"
    assert list((maildir / "new").iterdir()), "dovecot-lda should have left its message in new/"
    return site, seen, folders, subscriptions


# -- Dovecot wrote it, we read it ---------------------------------------------------


def test_dovecot_saw_what_we_did(written_by_dovecot):
    """Sanity of the scenario itself, so the comparisons below compare something."""
    _site, seen, folders, subscriptions = written_by_dovecot
    inbox = seen["INBOX"]["messages"]
    assert sorted(inbox) == [1, 2, 3, 5, 6, 7]
    assert inbox[1]["flags"] == {"\\Seen", "\\Answered"}
    assert inbox[2]["flags"] == {"\\Flagged", "\\Answered", "Work"}
    assert inbox[5]["flags"] == {"\\Seen", "\\Flagged", "Work", "$Forwarded"}
    assert folders == ["INBOX", "Brouillons été", "Lists.Python"]
    assert subscriptions == ["INBOX", "Lists.Python"]


@pytest.mark.parametrize("folder", ["INBOX", "Lists.Python", BROUILLONS_UTF7])
def test_same_uidvalidity_uids_flags_and_bytes(written_by_dovecot, folder):
    site, seen, _folders, _subs = written_by_dovecot
    expected = seen[folder]
    store = site.store("alice")
    try:
        got = ours(store, mutf7_decode(folder))
    finally:
        store.close()
    assert got["uidvalidity"] == expected["uidvalidity"]
    assert sorted(got["messages"]) == sorted(expected["messages"])
    assert got["uidnext"] == expected["uidnext"]
    for uid, want in expected["messages"].items():
        have = got["messages"][uid]
        assert have["flags"] == want["flags"], f"UID {uid}"
        assert have["body"] == want["body"], f"UID {uid}"
        assert have["size"] == want["size"], f"UID {uid}"
        assert abs(have["internaldate"] - want["internaldate"]) < 1.0, f"UID {uid}"


def test_internaldate_given_at_append(written_by_dovecot):
    site, seen, _folders, _subs = written_by_dovecot
    store = site.store("alice")
    try:
        assert store.open("INBOX").info(1).internaldate == pytest.approx(DATE)
    finally:
        store.close()
    assert seen["INBOX"]["messages"][1]["internaldate"] == pytest.approx(DATE)


def test_same_folders_and_subscriptions(written_by_dovecot):
    site, _seen, folders, subscriptions = written_by_dovecot
    store = site.store("alice")
    try:
        assert store.list_folders() == folders
        assert sorted(store.subscriptions()) == subscriptions
    finally:
        store.close()


def test_reading_leaves_dovecots_files_alone(written_by_dovecot):
    """Opening Dovecot's folders must not rewrite its uidlist or keywords."""
    site, _seen, _folders, _subs = written_by_dovecot
    maildir = site.home("alice") / "Maildir"
    watched = [maildir / "dovecot-uidlist", maildir / "dovecot-keywords", maildir / ".Lists.Python" / "dovecot-uidlist"]
    before = {p: p.read_bytes() for p in watched}
    store = site.store("alice")
    try:
        for name in store.list_folders():
            store.open(name).sync()
    finally:
        store.close()
    assert {p: p.read_bytes() for p in watched} == before


# -- we wrote it, Dovecot reads it ------------------------------------------------------


def test_dovecot_sees_our_uids_flags_and_keywords(dovecot: PrivateDovecot):
    site = make_site(dovecot, "bob")
    dovecot.start()
    try:
        imap = dovecot.imap("bob")
        ok(imap.append("INBOX", r"(\Seen Work)", None, msg("d1")))
        ok(imap.append("INBOX", None, None, msg("d2")))
        ok(imap.append("INBOX", None, None, msg("d3")))
        before = snapshot(imap, "INBOX")
        imap.logout()
    finally:
        dovecot.stop()

    store = site.store("bob")
    try:
        inbox = store.open("INBOX")
        assert inbox.uidvalidity == before["uidvalidity"]
        ours_uid = inbox.append(msg("ours", UTF8_BODY), ["\\Flagged", "Personal", "Work"], internaldate=DATE)
        assert ours_uid == before["uidnext"] == 4
        inbox.store_flags([1], ["\\Answered", "$Forwarded"], "add")
        inbox.store_flags([1], ["Work"], "remove")
        inbox.store_flags([2], ["\\Deleted"], "add")
        assert inbox.expunge() == [2]
        store.create("Archive")
        archive = store.open("Archive")
        archive_uid = archive.append(msg("archived"), ["\\Seen", "\\Draft"])
        archive_uidvalidity = archive.uidvalidity
        store.subscribe("Archive")
        mine = ours(store, "INBOX")
    finally:
        store.close()

    dovecot.chown_tree(site.home("bob"))  # we wrote as root; in production we run as the mail user
    dovecot.start()  # a restarted Dovecot
    try:
        imap = dovecot.imap("bob")
        after = snapshot(imap, "INBOX")
        archived = snapshot(imap, "Archive")
        folders = selectable(imap)
        subscriptions = subscribed(imap)
        # Dovecot's next UID follows ours
        data = ok(imap.append("INBOX", None, None, msg("after ours")))
        appenduid = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        imap.logout()
    finally:
        dovecot.stop()
    assert not dovecot.errors(), dovecot.errors()

    assert after["uidvalidity"] == before["uidvalidity"]
    assert sorted(after["messages"]) == [1, 3, ours_uid]
    assert after["uidnext"] == ours_uid + 1
    assert after["messages"][1]["flags"] == {"\\Seen", "\\Answered", "$Forwarded"}
    assert after["messages"][3]["flags"] == frozenset()
    assert after["messages"][ours_uid]["flags"] == {"\\Flagged", "Personal", "Work"}
    assert after["messages"][ours_uid]["body"] == msg("ours", UTF8_BODY)
    assert after["messages"][ours_uid]["internaldate"] == pytest.approx(DATE)
    for uid, want in mine["messages"].items():
        assert after["messages"][uid]["size"] == want["size"]
        assert after["messages"][uid]["body"] == want["body"]
    assert archived["uidvalidity"] == archive_uidvalidity
    assert list(archived["messages"]) == [archive_uid]
    assert archived["messages"][archive_uid]["flags"] == {"\\Seen", "\\Draft"}
    assert folders == ["INBOX", "Archive"]
    assert "Archive" in subscriptions
    assert appenduid is not None
    assert (int(appenduid.group(1)), int(appenduid.group(2))) == (before["uidvalidity"], ours_uid + 1)

    # and we see Dovecot's message under the UID it gave
    store = site.store("bob")
    try:
        box = store.open("INBOX")
        assert box.uids() == [1, 3, ours_uid, ours_uid + 1]
        assert box.read_crlf(ours_uid + 1) == msg("after ours")
    finally:
        store.close()
