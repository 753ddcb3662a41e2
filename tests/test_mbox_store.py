"""The mbox backend through the store API, on real files, with Postfix-style writers."""

from __future__ import annotations

import os
import shutil

import pytest

from retrieval.store import BadMailboxName, MailboxNotFound
from retrieval.store.mbox import deliver_mbox

MSG = b"From: a@example.test\r\nSubject: hello\r\n\r\nbody line\r\nFrom the start\r\n>From quoted\r\n"


def spool(site):
    return site.base / "spool" / "alice"


def test_append_read_flags_expunge(mbox_site):
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    u1 = box.append(MSG, ["\\Seen", "$Label1"], internaldate=1_700_000_000)
    u2 = box.append(b"Subject: two\n\nsecond\n")
    assert (u1, u2) == (1, 2)
    # the client sees the message as given (LF-stored, CRLF-served), From_ lines unquoted
    assert box.read_crlf(u1) == MSG
    assert box.info(u1).size == len(MSG)
    assert box.info(u1).internaldate == pytest.approx(1_700_000_000)
    raw = spool(mbox_site).read_bytes()
    assert raw.startswith(b"From MAILER-DAEMON  ")
    assert b"\n>From the start\n>>From quoted\n" in raw  # mboxrd quoting on disk
    box.store_flags([u2], ["\\Deleted"], "add")
    assert box.expunge() == [u2]
    raw = spool(mbox_site).read_bytes()
    assert b"second" not in raw
    # status headers as Dovecot writes them, hidden from clients
    assert b"X-IMAPbase: %d " % box.uidvalidity in raw
    assert b"X-UID: 1\n" in raw and b"X-Keywords: $Label1\n" in raw and b"Status: RO\n" in raw
    assert b"X-UID" not in box.read(u1) and b"Status:" not in box.read(u1)
    store.close()


def test_lazy_flag_writes_reach_the_file_on_close(mbox_site):
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    uid = box.append(b"Subject: x\n\n")
    box.store_flags([uid], ["\\Flagged", "\\Answered"], "add")
    box.close()
    assert b"X-Status: AF\n" in spool(mbox_site).read_bytes()
    store.close()


def test_mail_appended_by_an_mda_is_found_in_the_tail(mbox_site):
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    first = box.append(b"Subject: ours\n\n")
    assert box.sync().added == [first]  # a view hears of its own appends too (IMAP sends EXISTS)
    # Postfix-style delivery: From_ line, mboxo quoting, blank line separator
    with open(spool(mbox_site), "ab") as f:
        f.write(b"From bob@example.test  Thu Jan  1 10:00:00 2026\nSubject: postfix\n\n>From quoted\nbye\n\n")
    deliver_mbox(spool(mbox_site), b"Subject: ours too\n\nFrom here\n", "carol@example.test")
    changes = box.sync(claim_recent=True)
    assert changes.added == [first + 1, first + 2]
    assert box.read(first + 1) == b"Subject: postfix\n\nFrom quoted\nbye\n"
    assert box.read(first + 2) == b"Subject: ours too\n\nFrom here\n"
    assert box.recent == {first + 1, first + 2} | {first}
    store.close()


def test_spoofed_x_uid_from_outside_is_ignored(mbox_site):
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    box.append(b"Subject: 1\n\n")
    box.sync()
    with open(spool(mbox_site), "ab") as f:
        f.write(b"From evil@example.test  Thu Jan  1 10:00:00 2026\nX-UID: 4000000000\nSubject: evil\n\n\n")
    assert box.sync().added == [2]
    assert box.uidnext == 3
    store.close()


def test_uids_survive_index_loss(mbox_site):
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    uids = [box.append(f"Subject: {i}\n\n{i}\n".encode(), ["\\Seen"] if i % 2 else []) for i in range(5)]
    box.store_flags([uids[0]], ["\\Deleted"], "add")
    box.expunge()
    deliver_mbox(spool(mbox_site), b"Subject: late\n\n", "bob@example.test")
    box.sync()
    expected = {u: box.info(u).flags for u in box.uids()}
    uidvalidity = box.uidvalidity
    box.close()
    store.close()
    shutil.rmtree(mbox_site.state)
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    assert box.uidvalidity == uidvalidity
    assert {u: box.info(u).flags for u in box.uids()} == expected
    store.close()


def test_external_rewrite_keeps_uids(mbox_site):
    """mutt expunges by rewriting the file: the others keep their UIDs."""
    store = mbox_site.store("alice")
    box = store.open("INBOX")
    for i in range(4):
        deliver_mbox(spool(mbox_site), f"Subject: {i}\nMessage-ID: <{i}@x>\n\nbody {i}\n".encode(), "bob@x")
    box.sync()
    assert box.uids() == [1, 2, 3, 4]
    raw = spool(mbox_site).read_bytes()
    parts = raw.split(b"\n\nFrom ")
    rewritten = b"\n\nFrom ".join(parts[:1] + parts[2:])  # drop message 2
    tmp = spool(mbox_site).with_suffix(".new")
    tmp.write_bytes(rewritten)
    os.rename(tmp, spool(mbox_site))
    changes = box.sync()
    assert changes.expunged == [2]
    assert box.uids() == [1, 3, 4]
    assert box.read(3).endswith(b"body 2\n")
    store.close()


def test_folders(mbox_site):
    store = mbox_site.store("alice")
    store.create("Sent")
    store.create("Lists/Python")
    store.create("Brouillons été")
    assert store.list_folders() == ["INBOX", "Brouillons été", "Lists/Python", "Sent"]
    assert (mbox_site.home("alice") / "mail" / "Brouillons &AOk-t&AOk-").is_file()
    box = store.open("Lists/Python")
    box.append(b"Subject: py\n\n")
    store.rename("Lists/Python", "Groups/Python")
    assert len(store.open("Groups/Python")) == 1
    store.delete("Sent")
    with pytest.raises(MailboxNotFound):
        store.open("Sent")
    for bad in ("../../etc/passwd", "~root", "a\x00b", "x/../y"):
        with pytest.raises(BadMailboxName):
            store.create(bad)
    store.subscribe("Groups/Python")
    assert store.subscriptions() == ["Groups/Python"]
    store.close()


def test_copy_between_mbox_folders(mbox_site):
    store = mbox_site.store("alice")
    store.create("Archive")
    inbox, archive = store.open("INBOX"), store.open("Archive")
    uid = inbox.append(MSG, ["\\Flagged", "$X"], internaldate=1_600_000_000)
    assert inbox.copy([uid], archive) == [(uid, 1)]
    assert archive.read(1) == inbox.read(uid)
    assert archive.info(1).flags == {"\\Flagged", "$X"}
    assert archive.info(1).internaldate == pytest.approx(1_600_000_000)
    store.close()
