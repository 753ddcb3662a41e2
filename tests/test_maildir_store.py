"""The Maildir backend through the store API, on real folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from retrieval.store import BadMailboxName, MailboxExists, MailboxNotFound
from retrieval.store.maildir import deliver_file, split_name

MSG = b"From: a@example.test\r\nSubject: hello\r\n\r\nbody line\r\n.\r\nFrom the start\r\n"


def listing(path):
    return sorted(os.listdir(path))


def test_append_flags_expunge_round_trip(site):
    store = site.store("alice")
    box = store.open("INBOX")
    u1 = box.append(MSG, ["\\Seen", "$Label1"], internaldate=1_700_000_000)
    u2 = box.append(b"Subject: two\n\nsecond\n")
    assert (u1, u2) == (1, 2)
    assert box.info(u1).flags == {"\\Seen", "$Label1"}
    assert box.info(u1).internaldate == pytest.approx(1_700_000_000)
    # stored with LF line ends, counted and served with CRLF
    assert box.read(u1) == MSG.replace(b"\r\n", b"\n")
    assert box.read_crlf(u1) == MSG
    assert box.info(u1).size == len(MSG)
    changed, refused = box.store_flags([u2], ["\\Deleted", "\\Flagged"], "add")
    assert changed == [u2] and refused == []
    assert box.expunge() == [u2]
    assert box.uids() == [u1]
    store.close()


def test_flag_letters_and_keywords_file_as_dovecot_writes_them(site):
    store = site.store("alice")
    box = store.open("INBOX")
    uid = box.append(b"Subject: x\n\n", ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "$Junk", "Work"])
    name = os.path.basename(box.path_of(uid))
    base, info = split_name(name)
    assert info == "DFRSTab"  # uppercase system letters sorted, then keyword letters
    assert ",S=" in base and ",W=" in base
    keywords = (site.home("alice") / "Maildir" / "dovecot-keywords").read_text()
    assert keywords == "0 $Junk\n1 Work\n"
    box.store_flags([uid], ["$Junk"], "remove")
    assert split_name(os.path.basename(box.path_of(uid)))[1] == "DFRSTb"
    store.close()


def test_uids_survive_restart_and_index_loss(site):
    store = site.store("alice")
    box = store.open("INBOX")
    uids = [box.append(f"Subject: {i}\n\n{i}\n".encode(), ["\\Seen"] if i % 2 else []) for i in range(6)]
    box.store_flags([uids[2]], ["\\Deleted"], "add")
    box.expunge()
    uidvalidity = box.uidvalidity
    expected = {u: box.info(u).flags for u in box.uids()}
    store.close()
    # a new process sees the same UIDs
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from conftest import Site\n"
        "from pathlib import Path\n"
        "s = Site.__new__(Site); s.passwd = Path(%r); s.config = Path(%r)\n"
        "b = s.store('alice').open('INBOX'); print(b.uidvalidity, b.uids())\n"
    ) % (str(site.base.parent / "unused"), str(site.passwd), str(site.config))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split(" ", 1)[0] == str(uidvalidity)
    assert out.strip().endswith(str(sorted(expected)))
    # delete the index: UIDs, UIDVALIDITY and flags come back from the files
    shutil.rmtree(site.state)
    store = site.store("alice")
    box = store.open("INBOX")
    assert box.uidvalidity == uidvalidity
    assert {u: box.info(u).flags for u in box.uids()} == expected
    assert box.append(b"Subject: new\n\n") == max(uids) + 1
    store.close()


def test_mail_written_by_others_is_picked_up(site):
    store = site.store("alice")
    box = store.open("INBOX")
    maildir = site.home("alice") / "Maildir"
    delivered = deliver_file(maildir, b"Subject: from procmail\n\nhi\n")
    changes = box.sync(claim_recent=True)
    assert len(changes.added) == 1
    uid = changes.added[0]
    assert uid in box.recent
    # the session took it: new/ -> cur/ with an empty info part, as Dovecot does
    assert not delivered.exists()
    assert listing(maildir / "cur") == [delivered.name + ":2,"]
    # mutt marks it read by renaming the file
    os.rename(maildir / "cur" / (delivered.name + ":2,"), maildir / "cur" / (delivered.name + ":2,RS"))
    changes = box.sync()
    assert changes.flags == [uid] and box.info(uid).flags == {"\\Seen", "\\Answered"}
    # ...and deletes it
    os.unlink(maildir / "cur" / (delivered.name + ":2,RS"))
    assert box.sync().expunged == [uid]
    assert len(box) == 0
    store.close()


def test_recent_goes_to_one_session_only(site):
    store = site.store("alice")
    first, second = store.open("INBOX"), store.open("INBOX")
    deliver_file(site.home("alice") / "Maildir", b"Subject: r\n\n")
    a = first.sync(claim_recent=True)
    b = second.sync(claim_recent=True)
    assert a.added == b.added and len(a.added) == 1
    assert first.recent == set(a.added) and second.recent == set()
    store.close()


def test_two_views_see_each_others_changes(site):
    store = site.store("alice")
    one, two = store.open("INBOX"), store.open("INBOX")
    uid = one.append(b"Subject: shared\n\n")
    assert two.sync().added == [uid]
    one.store_flags([uid], ["\\Seen", "\\Deleted"], "add")
    assert two.sync().flags == [uid]
    assert two.info(uid).flags == {"\\Seen", "\\Deleted"}
    one.expunge()
    assert two.sync().expunged == [uid]
    store.close()


def test_copy_and_move_keep_flags_and_dates(site):
    store = site.store("alice")
    store.create("Archive")
    inbox, archive = store.open("INBOX"), store.open("Archive")
    u1 = inbox.append(b"Subject: 1\n\n", ["\\Flagged", "$X"], internaldate=1_600_000_000)
    u2 = inbox.append(b"Subject: 2\n\n")
    pairs = inbox.copy([u1], archive)
    assert pairs == [(u1, 1)]
    assert archive.info(1).flags == {"\\Flagged", "$X"}
    assert archive.info(1).internaldate == pytest.approx(1_600_000_000)
    assert archive.read(1) == inbox.read(u1)
    moved = inbox.move([u2], archive)
    assert moved == [(u2, 2)] and inbox.uids() == [u1] and archive.uids() == [1, 2]
    store.close()


def test_folders_create_list_rename_delete_subscribe(site):
    store = site.store("alice")
    for name in ("Sent", "Lists", "Lists.Python", "Brouillons été"):
        store.create(name)
    with pytest.raises(MailboxExists):
        store.create("Sent")
    assert store.list_folders() == ["INBOX", "Brouillons été", "Lists", "Lists.Python", "Sent"]
    # names are modified UTF-7 on disk, exactly as Dovecot writes them
    assert (site.home("alice") / "Maildir" / ".Brouillons &AOk-t&AOk-" / "maildirfolder").exists()
    box = store.open("Lists.Python")
    uid = box.append(b"Subject: py\n\n")
    uidvalidity = box.uidvalidity
    store.subscribe("Lists.Python")
    store.rename("Lists", "Groups")
    assert store.list_folders() == ["INBOX", "Brouillons été", "Groups", "Groups.Python", "Sent"]
    assert store.subscriptions() == ["Groups.Python"]
    renamed = store.open("Groups.Python")
    assert renamed.uids() == [uid] and renamed.uidvalidity == uidvalidity
    store.delete("Sent")
    with pytest.raises(MailboxNotFound):
        store.open("Sent")
    store.close()


def test_rename_inbox_moves_messages(site):
    store = site.store("alice")
    inbox = store.open("INBOX")
    inbox.append(b"Subject: old\n\n")
    store.rename("INBOX", "Old")
    assert len(store.open("Old")) == 1
    assert len(store.open("INBOX")) == 0
    store.close()


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "~root", "x\x00y", "..", ".hidden", "a..b", "a.", "", "INBOX..x"])
def test_bad_names_change_nothing(site, bad):
    store = site.store("alice")
    maildir = site.home("alice") / "Maildir"
    before = listing(maildir)
    with pytest.raises(BadMailboxName):
        store.create(bad)
    with pytest.raises(BadMailboxName):
        store.open(bad)
    assert listing(maildir) == before
    store.close()


def test_dovecot_uidlist_is_imported(site):
    """A Maildir migrated from Dovecot keeps its UIDVALIDITY and UIDs."""
    maildir = site.home("alice") / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1600000000.M1P1.old,S=10,W=12:2,S").write_bytes(b"Subject: a\n\n")
    (maildir / "cur" / "1600000001.M2P1.old,S=10,W=12:2,").write_bytes(b"Subject: b\n\n")
    (maildir / "new" / "1600000002.M3P1.old").write_bytes(b"Subject: c\n\n")
    (maildir / "dovecot-uidlist").write_text(
        "3 V1234567 N41 Gabcdef\n"
        "17 :1600000000.M1P1.old,S=10,W=12\n"
        "40 W12 :1600000001.M2P1.old,S=10,W=12\n"
    )
    store = site.store("alice")
    box = store.open("INBOX")
    assert box.uidvalidity == 1234567
    assert box.uids() == [17, 40, 41]
    assert box.info(17).flags == {"\\Seen"}
    assert box.uidnext == 42
    text = (maildir / "dovecot-uidlist").read_text()
    assert text.endswith("41 :1600000002.M3P1.old\n")
    store.close()


def test_warm_open_reads_no_message_file(site, monkeypatch):
    """With a warm index, opening and listing flags touches no message file (only directories)."""
    import builtins

    maildir = site.home("alice") / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for i in range(300):  # Postfix-style names: no S=/W=, so the cold open must read each file
        (maildir / "new" / f"1700000000.V801I{i}.mx").write_bytes(b"Subject: %d\n\nbody\n" % i)
    store = site.store("alice")
    store.open("INBOX").close()  # cold: reads each file once for its size
    store.close()
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    store = site.store("alice")
    box = store.open("INBOX")
    assert len(box) == 300 and all(isinstance(r.flags, frozenset) for r in box.messages())
    store.close()
    touched = [p for p in opened if "/cur/" in p or "/new/" in p]
    assert touched == []


def test_new_mail_gets_uids_in_delivery_order(site):
    """Microseconds in Maildir names are not zero-padded: M99 came before M100."""
    maildir = site.home("alice") / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    names = ["1700000000.M99P7Q1.mx", "1700000000.M100P7Q2.mx", "1700000000.M1000P7Q3.mx", "1700000001.M5P7Q4.mx"]
    for i, name in enumerate(reversed(names)):
        (maildir / "new" / name).write_bytes(b"Subject: %d\n\n" % (len(names) - 1 - i))
    store = site.store("alice")
    box = store.open("INBOX")
    assert [box.read(uid) for uid in box.uids()] == [b"Subject: %d\n\n" % i for i in range(4)]
    store.close()
