"""Real MDAs deliver while our store reads, flags and expunges.

Debian's procmail and maildrop write into a Maildir and into an mbox spool
file, one process per message as Postfix runs them, while this process (an
IMAP session) and a second process (another server worker) keep the folder
open: syncing, reading every new message, setting flags, marking a subset
``\\Deleted`` and expunging it, over and over until the deliveries end.
Afterwards every delivered message is present exactly once (except those we
expunged), byte-for-byte as sent, no temporary or lock file is left behind,
and a fresh store built from the files alone (index deleted) gives every
message the UID it had.

What the MDAs do, as checked here (Debian 12: procmail 3.23pre, maildrop 2.9.3):

* procmail, Maildir (``DEFAULT=$HOME/Maildir/``): ``tmp/`` -> ``new/``, the
  message byte for byte (no final newline added, no From_ line).
* procmail, mbox: dotlock ``<mbox>.lock`` (link(2) of a temp file, retried
  every LOCKSLEEP seconds, 8 by default, 1 here), then an fcntl ``F_WRLCK``
  from the current end of the file.  It writes the From_ line from ``-f``,
  quotes mboxo style (only ``From `` lines get a ``>``), adds a final
  newline if missing, and adds the separating empty line only when the
  message does not already end in one.
* maildrop, Maildir (``to "$HOME/Maildir/"``): ``tmp/`` -> ``new/``, a final
  newline is added if missing.
* maildrop, mbox: dotlock (``<pid>.0.<host>`` linked to ``<mbox>.lock``,
  retried every LOCKSLEEP seconds, 5 by default, 1 here) then fcntl
  ``F_SETLKW`` ``F_WRLCK`` over the whole file: maildrop's liblock is built
  with fcntl on Debian, not flock, so it excludes our shared fcntl read
  lock and our dotlock+fcntl write lock exactly as Dovecot's
  ``mbox_write_locks = dotlock fcntl`` expects.  (Dovecot's docs insist all
  programs touching an mbox use the same lock methods; had it been flock
  only, nothing would have kept a delivery out of our rewrite.)  It quotes
  mboxrd style (every ``>*From `` line gets one more ``>``), so its mbox
  round-trips every body exactly.  While it waits for a dotlock, maildrop
  spins in ``sigprocmask`` (a CPU hog on a 2-core machine), so its runs are
  smaller here.

Known, documented ambiguity (mboxfile.py): we read mbox as mboxrd (one ``>``
removed from every ``>+From `` line).  For an mboxo writer (procmail,
Postfix) a body line that really began with ``>From `` therefore comes back
without its ``>``; lines beginning with ``From `` round-trip.  The checks
below expect exactly that for procmail's mbox, and exact bodies elsewhere.

Seen while writing this (not failures): with four procmails appending back
to back, our mbox sync, which polls for its fcntl lock (F_SETLK with a
backoff up to 0.1 s), can wait seconds behind MDAs sleeping in F_SETLKW,
and it holds the SQLite write transaction meanwhile, so the other process's
sync waits too; hence the mbox runs expunge about once a second, not after
every read.  A batch of new Maildir files gets UIDs in file-name order, not
delivery order (maildrop's ``M<usec>`` is not zero-padded; Dovecot compares
the seconds and microseconds numerically).
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import ROOT, Site  # noqa: E402

from retrieval.store.base import crlf_size  # noqa: E402

SENDER = "sender@example.org"
ID_RE = re.compile(rb"^X-Test-Id: (\S+)\r?$", re.M)
SEEN, FLAGGED, DELETED, LABEL = "\\Seen", "\\Flagged", "\\Deleted", "$Label1"


# --------------------------------------------------------------------------
# the four combinations


@dataclass(frozen=True)
class Combo:
    mda: str  # procmail | maildrop
    fmt: str  # maildir | mbox

    @property
    def name(self) -> str:
        return f"{self.mda}-{self.fmt}"

    @property
    def quoting(self) -> str | None:
        """How the MDA quotes From_ lines in an mbox body."""
        if self.fmt != "mbox":
            return None
        return "mboxo" if self.mda == "procmail" else "mboxrd"

    @property
    def exact(self) -> bool:
        """The stored message is the input byte for byte."""
        return self.mda == "procmail" and self.fmt == "maildir"


PROCMAIL_MAILDIR = Combo("procmail", "maildir")
PROCMAIL_MBOX = Combo("procmail", "mbox")
MAILDROP_MAILDIR = Combo("maildrop", "maildir")
MAILDROP_MBOX = Combo("maildrop", "mbox")
ALL = [PROCMAIL_MAILDIR, PROCMAIL_MBOX, MAILDROP_MAILDIR, MAILDROP_MBOX]


class Setup:
    """A site with user alice, the MDA's rc/filter file, and the delivery command."""

    def __init__(self, base: Path, combo: Combo) -> None:
        if shutil.which(combo.mda) is None:
            pytest.skip(f"{combo.mda} is not installed (apt-get install {combo.mda})")
        self.combo = combo
        self.base = base
        if combo.fmt == "maildir":
            self.site = Site(base)
        else:
            (base / "spool").mkdir()
            self.site = Site(base, f"mbox:~/mail:INBOX={base / 'spool'}/%u")
        self.site.add_user("alice")
        self.home = self.site.home("alice")
        self.maildir = self.home / "Maildir"
        self.mbox = base / "spool" / "alice"
        target = f"{self.maildir}/" if combo.fmt == "maildir" else str(self.mbox)
        if combo.fmt == "maildir":
            for sub in ("cur", "new", "tmp"):
                (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        if combo.mda == "procmail":
            self.rc = base / "procmailrc"
            # A trailing slash makes DEFAULT a Maildir; a plain path is an mbox that
            # procmail dotlocks ($DEFAULT.lock) and fcntl-locks by itself.
            self.rc.write_text(f"SHELL=/bin/sh\nLOCKSLEEP=1\nDEFAULT={target}\n")
            self.command = [shutil.which("procmail"), "-f", SENDER, "-m", str(self.rc)]  # type: ignore[list-item]
        else:
            self.rc = base / "mailfilter"
            # Manual mode (a filter file argument), as root: `maildrop -d alice` would need
            # alice in /etc/passwd.  maildrop refuses a filter file that others can read
            # or that another user owns.
            self.rc.write_text(f'LOCKSLEEP=1\nto "{target}"\n')
            os.chmod(self.rc, 0o600)
            self.command = [shutil.which("maildrop"), "-f", SENDER, str(self.rc)]  # type: ignore[list-item]
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "LOGNAME": "alice"}
        self.outgoing = base / "outgoing"
        self.outgoing.mkdir()
        self.sent: dict[str, bytes] = {}

    def write_messages(self, numbers: range) -> list[Path]:
        paths = []
        for n in numbers:
            tid, data = make_message(self.combo.name, n)
            self.sent[tid] = data
            path = self.outgoing / f"{n}.eml"
            path.write_bytes(data)
            paths.append(path)
        return paths

    def deliver_one(self, path: Path) -> None:
        with open(path, "rb") as f:
            proc = subprocess.run(self.command, stdin=f, env=self.env, cwd=self.base, capture_output=True, timeout=60)
        assert proc.returncode == 0, f"{self.combo.mda} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"

    def start_loop(self, paths: list[Path], tag: str) -> subprocess.Popen:
        """A shell loop running the MDA once per message, as Postfix's local(8) would."""
        listing = self.base / f"loop-{tag}.list"
        listing.write_text("".join(f"{p}\n" for p in paths))
        script = 'while IFS= read -r f; do "$@" < "$f"; echo "$? $f"; done'
        with open(listing, "rb") as stdin, open(self.base / f"loop-{tag}.out", "wb") as out, open(
            self.base / f"loop-{tag}.err", "wb"
        ) as err:
            return subprocess.Popen(
                ["sh", "-c", script, "sh", *self.command], stdin=stdin, stdout=out, stderr=err, env=self.env, cwd=self.base
            )

    def loop_results(self, tag: str) -> tuple[list[str], str]:
        """(ids delivered with exit code 0, description of every failure)."""
        done, failed = [], []
        for line in (self.base / f"loop-{tag}.out").read_text().splitlines():
            rc, _, path = line.partition(" ")
            n = int(Path(path).stem)
            if rc == "0":
                done.append(test_id(self.combo.name, n))
            else:
                failed.append(f"message {n}: exit {rc}")
        err = (self.base / f"loop-{tag}.err").read_text(errors="replace")
        return done, "; ".join(failed) + (f"; stderr: {err[-2000:]}" if err and failed else "")

    def index_dir(self) -> Path:
        return self.site.state / "index"

    def leftovers(self) -> list[str]:
        """Lock files, temp files of any writer, and Maildir tmp/ entries."""
        found = []
        for dirpath, _dirs, files in os.walk(self.base):
            if Path(dirpath) == self.outgoing or Path(dirpath).is_relative_to(self.site.state):
                continue
            for name in files:
                if ".lock" in name or ".retrieval-rewrite." in name or name.endswith(".tmp"):
                    found.append(os.path.join(dirpath, name))
        if self.combo.fmt == "maildir":
            found += [f"tmp/{n}" for n in os.listdir(self.maildir / "tmp")]
        else:
            found += [f"spool/{n}" for n in os.listdir(self.mbox.parent) if n != "alice"]
        return found


# --------------------------------------------------------------------------
# messages


def test_id(combo_name: str, n: int) -> str:
    return f"{combo_name}-{n}"


test_id.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test

_WORDS = b"alpha beta gamma delta mail store index sync expunge flag From from > >From lorem ipsum".split()


def _line_pool() -> list[bytes]:
    rng = random.Random(0)
    pool = [b""] * 40  # paragraph breaks
    pool += [b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12))) for _ in range(460)]
    return pool


_POOL = _line_pool()
_POOL_AVG = sum(len(line) + 1 for line in _POOL) // len(_POOL)
_FROM_LINES = [
    b"From the start of a line",
    b">From once quoted",
    b">>From twice quoted",
    b"From bob@example.org  Mon Jan  1 00:00:00 2024",  # looks exactly like a separator
]


def make_message(combo_name: str, n: int) -> tuple[str, bytes]:
    """Message n: unique X-Test-Id; size, From_ lines, final newline and line ends vary with n.

    n % 40 == 0: over 100 KB; n % 3 == 1: body lines starting "From " / ">From ";
    n % 4 == 2: no final newline; n % 50 == 7: CRLF line ends."""
    rng = random.Random(f"{combo_name}/{n}")
    tid = test_id(combo_name, n)
    header = (
        b"From: Sender <%s>\n"
        b"To: alice@example.test\n"
        b"Subject: interop message %d\n"
        b"Message-ID: <%d.%d@example.org>\n"
        b"X-Test-Id: %s\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
    ) % (SENDER.encode(), n, n, rng.randrange(10**9), tid.encode())
    target = rng.randint(100_000, 160_000) if n % 40 == 0 else rng.randint(20, 6_000)
    lines = rng.choices(_POOL, k=max(1, target // _POOL_AVG))
    while sum(map(len, lines)) + len(lines) < target:
        lines += rng.choices(_POOL, k=50)
    if n % 3 == 1:
        for quoted in _FROM_LINES:
            lines.insert(rng.randint(0, len(lines)), quoted)
        lines.insert(0, b"From the very first body line")
        lines.append(b"From the very last line")
    if not lines[-1]:
        lines[-1] = b"end"  # a trailing empty line is the mbox separator's, not the message's
    body = b"\n".join(lines)
    if n % 4 != 2:
        body += b"\n"
    data = header + b"\n" + body
    if n % 50 == 7:
        data = data.replace(b"\n", b"\r\n")
    return tid, data


def find_id(data: bytes) -> str:
    m = ID_RE.search(data.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n") + b"\n")
    assert m is not None, f"message without X-Test-Id: {data[:300]!r}"
    return m.group(1).decode()


def _normalized(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n")
    return data if data.endswith(b"\n") else data + b"\n"


def expected_view(sent: bytes, combo: Combo) -> bytes:
    """What a client must see (LF, final newline ensured) for what was sent."""
    data = _normalized(sent)
    if combo.quoting == "mboxo":
        # "From " was quoted to ">From " by procmail and comes back; a line that was
        # ">From " was not quoted and loses its ">" (mboxrd reading, see module doc).
        header, sep, body = data.partition(b"\n\n")
        data = header + sep + re.sub(rb"(?m)^>(>*From )", rb"\1", body)
    return data


def check_message(got: bytes, sent: bytes, combo: Combo) -> None:
    """Header and body as sent (modulo what the MDA is documented to change above)."""
    if combo.exact:
        if got != sent:
            raise AssertionError(f"{find_id(sent)}: stored bytes differ from the input: {_first_diff(got, sent)}")
        return
    want = expected_view(sent, combo)
    have = _normalized(got)
    if have != want:
        raise AssertionError(f"{find_id(sent)}: message corrupted: {_first_diff(have, want)}")


def _first_diff(got: bytes, want: bytes) -> str:
    i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
    return f"len {len(got)} vs {len(want)}, first difference at {i}: got {got[max(0, i - 40):i + 40]!r}, want {want[max(0, i - 40):i + 40]!r}"


def wanted_flags(tid: str) -> frozenset[str]:
    """The flags the reader sets on a message: a function of its number."""
    n = int(tid.rsplit("-", 1)[1])
    flags = set()
    if n % 3 == 0:
        flags.add(SEEN)
    if n % 5 == 0:
        flags |= {FLAGGED, LABEL}
    return frozenset(flags)


def to_expunge(tid: str) -> bool:
    return int(tid.rsplit("-", 1)[1]) % 7 == 0


# --------------------------------------------------------------------------
# the session that reads, flags and expunges while mail arrives


class Reader:
    """One IMAP-session-like view: learns of new mail by sync(), reads it all,
    flags some, marks every 7th \\Deleted and expunges those now and then."""

    def __init__(self, box, setup: Setup) -> None:  # type: ignore[no-untyped-def]
        self.box = box
        self.setup = setup
        self.uid_of: dict[str, int] = {}
        self.id_of: dict[int, str] = {}
        self.expunged_uids: set[int] = set()
        self.expunged_ids: set[str] = set()
        self.deleted: set[int] = set()
        self.rng = random.Random(1)
        self.reads = 0
        self.expunges = 0

    def step(self, expunge: bool) -> None:
        changes = self.box.sync(claim_recent=True)
        assert not changes.uidvalidity_changed, "UIDVALIDITY changed under the session"
        lost = [u for u in changes.expunged if u not in self.expunged_uids]
        assert not lost, f"messages vanished that nobody expunged: {[self.id_of.get(u) for u in lost]}"
        by_flags: dict[frozenset[str], list[int]] = {}
        for uid in changes.added:
            data = self.box.read(uid)
            self.reads += 1
            tid = find_id(data)
            assert tid in self.setup.sent, f"unknown message {tid}"
            assert tid not in self.uid_of, f"{tid} appeared twice: UIDs {self.uid_of[tid]} and {uid}"
            check_message(data, self.setup.sent[tid], self.setup.combo)
            self.uid_of[tid] = uid
            self.id_of[uid] = tid
            flags = wanted_flags(tid) | ({DELETED} if to_expunge(tid) else frozenset())
            if flags:
                by_flags.setdefault(frozenset(flags), []).append(uid)
        for flags, uids in by_flags.items():
            changed, _ = self.box.store_flags(uids, flags, "add")
            assert sorted(changed) == sorted(uids)
            if DELETED in flags:
                self.deleted.update(uids)
        # messages read earlier must still read right (mbox offsets move with every rewrite);
        # the view may already hold messages a write caught up with, reported by the next sync()
        known = [u for u in self.box.uids() if u in self.id_of]
        for uid in self.rng.sample(known, min(3, len(known))):
            check_message(self.box.read(uid), self.setup.sent[self.id_of[uid]], self.setup.combo)
        if expunge and self.deleted:
            gone = self.box.expunge(sorted(self.deleted))
            assert sorted(gone) == sorted(self.deleted)
            self.expunges += 1
            self.expunged_uids.update(gone)
            self.expunged_ids.update(self.id_of[u] for u in gone)
            self.deleted.clear()


FOLLOWER = r"""
import json, select, sys
from retrieval.auth.passwd import PasswdFile
from retrieval.config import load_config
from retrieval.store import MessageGone, open_user_store
import re
ID_RE = re.compile(rb"^X-Test-Id: (\S+)\r?$", re.M)
store = open_user_store(load_config(sys.argv[1]), PasswdFile(sys.argv[2]).lookup("alice"))
box = store.open("INBOX")
uid_of, id_of, errors, gone, syncs = {}, {}, [], [], 0
def step():
    global syncs
    changes = box.sync(claim_recent=True)
    syncs += 1
    for uid in changes.expunged:
        tid = id_of.pop(uid, None)
        if tid is not None:
            del uid_of[tid]
    for uid in changes.added:
        try:
            data = box.read(uid)
        except MessageGone as exc:
            gone.append([uid, str(exc)])
            continue
        tid = ID_RE.search(data.split(b"\n\n", 1)[0] + b"\n").group(1).decode()
        if tid in uid_of and uid_of[tid] != uid:
            errors.append(f"{tid} under two UIDs {uid_of[tid]} and {uid}")
        if id_of.get(uid, tid) != tid:
            errors.append(f"UID {uid} is {id_of[uid]} and {tid}")
        uid_of[tid], id_of[uid] = uid, tid
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.05)[0]:
    step()
sys.stdin.readline()
step()
unreported = sorted(set(box.uids()) - set(id_of))
if unreported:
    errors.append(f"UIDs in the view that sync() never reported as new: {unreported}")
print(json.dumps({"uids": uid_of, "errors": errors, "gone": gone, "syncs": syncs, "uidvalidity": box.uidvalidity}), flush=True)
store.close()
"""


def start_follower(setup: Setup) -> subprocess.Popen:
    """A second server process with the same folder open (its own index connection)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, str(setup.site.config), str(setup.site.passwd)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        raise AssertionError(f"follower did not start: {line!r} {proc.stderr.read().decode(errors='replace')}")  # type: ignore[union-attr]
    return proc


def stop_follower(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(b"stop\n", timeout=60)
    assert proc.returncode == 0, f"follower failed: {err.decode(errors='replace')[-3000:]}"
    return json.loads(out.decode())


# --------------------------------------------------------------------------
# the concurrent run


def run_concurrent(tmp_path: Path, combo: Combo, loops: int, per_loop: int, expunge_every: float, poll: float = 0.02) -> None:
    setup = Setup(tmp_path, combo)
    batches = [setup.write_messages(range(k * per_loop, (k + 1) * per_loop)) for k in range(loops)]
    follower = start_follower(setup)
    store = setup.site.store("alice")
    box = store.open("INBOX")
    reader = Reader(box, setup)
    started = time.time()
    procs = [setup.start_loop(paths, str(k)) for k, paths in enumerate(batches)]
    deadline = time.monotonic() + 170
    last_expunge = time.monotonic()
    try:
        while True:
            finished = all(p.poll() is not None for p in procs)
            now = time.monotonic()
            reader.step(expunge=now - last_expunge >= expunge_every)
            if now - last_expunge >= expunge_every:
                last_expunge = now
            if finished:
                break
            assert now < deadline, "deliveries did not finish within 170 s"
            time.sleep(poll)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    delivery_time = time.time() - started
    delivered: list[str] = []
    for k in range(loops):
        done, failures = setup.loop_results(str(k))
        assert not failures, f"{combo.mda} failed: {failures}"
        delivered += done
    assert len(delivered) == loops * per_loop == len(set(delivered))

    # the deliveries are over: pick up the last ones, expunge what is still marked
    reader.step(expunge=True)
    reader.step(expunge=True)
    assert reader.expunges >= 3, f"only {reader.expunges} expunges ran during the deliveries"
    expected = set(delivered) - reader.expunged_ids
    assert reader.expunged_ids == {t for t in delivered if to_expunge(t)}
    final = {}
    for uid in box.uids():
        data = box.read(uid)
        tid = find_id(data)
        assert tid not in final, f"{tid} is in the folder twice"
        check_message(data, setup.sent[tid], combo)
        final[tid] = uid
        row = box.info(uid)
        assert row.flags == wanted_flags(tid), f"{tid}: flags {set(row.flags)}, want {set(wanted_flags(tid))}"
        assert started - 5 <= row.internaldate <= time.time() + 5, f"{tid}: INTERNALDATE {row.internaldate}"
    assert final.keys() == expected, (
        f"missing {sorted(expected - final.keys())[:20]}, unexpected {sorted(final.keys() - expected)[:20]}"
    )
    assert final == {t: u for t, u in reader.uid_of.items() if t in expected}, "UIDs changed during the run"

    # the second process saw the same folder
    other = stop_follower(follower)
    assert not other["errors"], other["errors"][:10]
    live = {u: why for u, why in other["gone"] if u in reader.id_of and reader.id_of[u] in expected}
    assert not live, f"the second process could not read messages that were never expunged: {live}"
    assert other["uidvalidity"] == box.uidvalidity
    assert other["uids"] == final, (
        f"the second process disagrees: it lacks {sorted(set(final.items()) - set(other['uids'].items()))[:10]},"
        f" has more {sorted(set(other['uids'].items()) - set(final.items()))[:10]}"
    )

    uidvalidity = box.uidvalidity
    box.close()  # mbox: lazy flag writes reach the file now
    store.close()
    assert not setup.leftovers(), f"left behind: {setup.leftovers()[:20]}"
    if combo.fmt == "mbox":
        from retrieval.store.mboxfile import scan

        entries = scan(setup.mbox.read_bytes())
        assert len(entries) == len(expected)
        assert all(e.sender == SENDER and e.date is not None and e.uid for e in entries)
    else:
        files = os.listdir(setup.maildir / "new") + os.listdir(setup.maildir / "cur")
        assert len(files) == len(expected)

    # the files alone (index deleted) give every message the same UID and flags
    shutil.rmtree(setup.index_dir())
    store = setup.site.store("alice")
    box = store.open("INBOX")
    assert box.uidvalidity == uidvalidity
    fresh = {}
    for uid in box.uids():
        data = box.read(uid)
        tid = find_id(data)
        check_message(data, setup.sent[tid], combo)
        fresh[tid] = uid
        assert box.info(uid).flags == wanted_flags(tid), f"{tid}: flags after rebuild {set(box.info(uid).flags)}"
    assert fresh == final, "a rebuilt index gives other UIDs"
    store.close()
    print(
        f"\n{combo.name}: {len(delivered)} deliveries in {delivery_time:.1f} s, {reader.reads} reads, "
        f"{reader.expunges} expunges ({len(reader.expunged_ids)} messages), follower {other['syncs']} syncs"
    )


@pytest.mark.parametrize(
    "combo, loops, per_loop, expunge_every, poll",
    [
        # 2 000 deliveries into each format with procmail, 300 with maildrop.  An mbox
        # expunge rewrites the whole file (about 14 MB here) under the dotlock, and
        # every dotlock collision costs an MDA a LOCKSLEEP second: once a second, then.
        (PROCMAIL_MAILDIR, 4, 500, 0.0, 0.02),
        (PROCMAIL_MBOX, 4, 500, 1.0, 0.1),
        (MAILDROP_MAILDIR, 3, 100, 0.0, 0.02),
        (MAILDROP_MBOX, 3, 100, 1.0, 0.1),
    ],
    ids=lambda v: v.name if isinstance(v, Combo) else None,
)
def test_deliveries_while_reading_and_expunging(tmp_path, combo, loops, per_loop, expunge_every, poll):
    run_concurrent(tmp_path, combo, loops, per_loop, expunge_every, poll)


# --------------------------------------------------------------------------
# the MDAs wait for our locks


@pytest.mark.parametrize("combo", [PROCMAIL_MBOX, MAILDROP_MBOX], ids=lambda c: c.name)
@pytest.mark.parametrize("exclusive", [True, False], ids=["our-write-lock", "our-read-lock"])
def test_mda_waits_for_our_mbox_lock(tmp_path, combo, exclusive):
    """Our write lock (dotlock + fcntl) and our read lock (shared fcntl only) keep
    the MDA out of the mbox until released; then it delivers at once (LOCKSLEEP=1)."""
    from retrieval.store.locking import MboxLock

    setup = Setup(tmp_path, combo)
    (first, second) = setup.write_messages(range(1, 3))
    setup.deliver_one(first)
    size = setup.mbox.stat().st_size
    with MboxLock(setup.mbox, exclusive=exclusive, timeout=10):
        with open(second, "rb") as f:
            proc = subprocess.Popen(setup.command, stdin=f, env=setup.env, cwd=setup.base, stderr=subprocess.PIPE)
        time.sleep(0.8)
        assert proc.poll() is None and setup.mbox.stat().st_size == size, f"{combo.mda} wrote while we held the lock"
        if not exclusive:
            # it got the dotlock and sleeps in F_SETLKW on our shared fcntl lock
            assert (setup.mbox.parent / "alice.lock").exists()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    store = setup.site.store("alice")
    box = store.open("INBOX")
    assert sorted(find_id(box.read(u)) for u in box.uids()) == sorted(setup.sent)
    store.close()
    assert not setup.leftovers(), setup.leftovers()


# --------------------------------------------------------------------------
# two store bugs these runs found, pinned down one step at a time


def test_a_read_that_resyncs_keeps_new_mail_pending(tmp_path):
    """procmail delivers, another session indexes the new message, mutt renames a
    file we are about to read: the read catches up by itself, and the session's
    next sync() must still report the new message and the flag change (the read
    used to call sync() and throw what it returned away)."""
    setup = Setup(tmp_path, PROCMAIL_MAILDIR)
    first, second = setup.write_messages(range(1, 3))
    setup.deliver_one(first)
    store_a, store_b = setup.site.store("alice"), setup.site.store("alice")
    a, b = store_a.open("INBOX"), store_b.open("INBOX")
    (u1,) = a.uids()  # a fresh view knows it already; claiming it moves it to cur/
    a.sync(claim_recent=True)
    setup.deliver_one(second)
    (u2,) = b.sync().added
    location = a.info(u1).location
    assert location.startswith("cur/") and location.endswith(":2,")
    os.rename(setup.maildir / location, setup.maildir / (location + "S"))  # mutt marks it read
    check_message(a.read(u1), setup.sent[test_id(PROCMAIL_MAILDIR.name, 1)], PROCMAIL_MAILDIR)
    changes = a.sync()
    assert changes.added == [u2] and changes.flags == [u1]
    assert a.info(u1).flags == {SEEN}
    store_a.close()
    store_b.close()


def test_an_expunge_that_finds_new_mail_leaves_the_view(tmp_path):
    """The mbox rewrite of an expunge first indexes what procmail appended since
    the last sync; the expunged messages must still leave the expunging view (they
    used to be recorded under an older modseq than the new mail and stayed)."""
    setup = Setup(tmp_path, PROCMAIL_MBOX)
    first, second = setup.write_messages(range(1, 3))
    setup.deliver_one(first)
    store = setup.site.store("alice")
    box = store.open("INBOX")
    (u1,) = box.uids()
    box.store_flags([u1], [DELETED], "add")
    setup.deliver_one(second)
    assert box.expunge() == [u1]
    changes = box.sync()
    assert changes.expunged == [u1] and len(changes.added) == 1
    assert box.uids() == changes.added
    check_message(box.read(changes.added[0]), setup.sent[test_id(PROCMAIL_MBOX.name, 2)], PROCMAIL_MBOX)
    store.close()


# --------------------------------------------------------------------------
# ten messages, one at a time: what exactly the MDA wrote and what we make of it


@pytest.mark.parametrize("combo", ALL, ids=lambda c: c.name)
def test_ten_messages(tmp_path, combo):
    setup = Setup(tmp_path, combo)
    numbers = range(1, 11)  # 1, 4, 7, 10: From_ lines; 2, 6, 10: no final newline; 7: CRLF
    before = time.time()
    for path in setup.write_messages(numbers):
        setup.deliver_one(path)
    after = time.time()
    if combo.fmt == "mbox":
        raw = setup.mbox.read_bytes()
        from_lines = re.findall(rb"(?m)^From \S+ .*$", raw)
        assert len(from_lines) == 10
        assert all(line.startswith(b"From " + SENDER.encode() + b" ") for line in from_lines)
        # how each MDA quotes body lines on disk
        if combo.quoting == "mboxo":
            assert b"\n>From the start of a line\n" in raw and b"\n>From once quoted\n" in raw
            assert b"\n>>From twice quoted\n" in raw and b"\n>>>From" not in raw
        else:
            assert b"\n>From the start of a line\n" in raw and b"\n>>From once quoted\n" in raw
            assert b"\n>>>From twice quoted\n" in raw
        assert b"\nFrom the start" not in raw and b"\nFrom bob@example.org  Mon Jan" not in raw
    store = setup.site.store("alice")
    box = store.open("INBOX")
    uid_of = {find_id(box.read(u)): u for u in box.uids()}
    # UIDs in delivery order is not promised: a batch of new Maildir files is
    # numbered in file-name order (maildrop's "M<usec>" is not zero-padded)
    assert sorted(uid_of) == sorted(test_id(combo.name, n) for n in numbers)
    uids = [uid_of[test_id(combo.name, n)] for n in numbers]
    for uid, n in zip(uids, numbers):
        tid = test_id(combo.name, n)
        data = box.read(uid)
        check_message(data, setup.sent[tid], combo)
        row = box.info(uid)
        assert row.flags == frozenset()
        # mbox: from procmail's/maildrop's From_ line (whole seconds); Maildir: the file's mtime
        assert before - 1 <= row.internaldate <= after + 1, f"INTERNALDATE {row.internaldate} not in [{before}, {after}]"
        assert row.size == crlf_size(data)
        assert box.read_crlf(uid).replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")
    if combo.quoting == "mboxo":
        # the ambiguity, spelled out: ">From once quoted" comes back unquoted
        assert b"\n>From once quoted\n" not in box.read(uids[0]) and b"\nFrom once quoted\n" in box.read(uids[0])
    else:
        assert b"\n>From once quoted\n" in box.read(uids[0]) and b"\n>>From twice quoted\n" in box.read(uids[0])
    assert box.status().recent == 10

    box.store_flags(uids[:3], [SEEN, "\\Answered"], "add")
    box.store_flags(uids[3:5], [FLAGGED, LABEL], "add")
    box.store_flags([uids[5]], [DELETED], "add")
    assert box.expunge() == [uids[5]]
    box.close()
    store.close()
    if combo.fmt == "mbox":
        raw = setup.mbox.read_bytes()
        assert raw.count(b"\nStatus: RO\n") == 3 and raw.count(b"\nX-Status: A\n") == 3
        assert raw.count(b"\nX-Status: F\n") == 2 and raw.count(b"\nX-Keywords: $Label1\n") == 2
        assert b"X-IMAPbase: " in raw and raw.count(b"\nX-UID: ") == 9

    # one more delivery after our rewrite / renames, then a fresh index from the files
    extra = setup.write_messages(range(11, 12))
    setup.deliver_one(extra[0])
    shutil.rmtree(setup.index_dir())
    store = setup.site.store("alice")
    box = store.open("INBOX")
    got = {find_id(box.read(u)): (u, box.info(u).flags) for u in box.uids()}
    want = {}
    for i, uid in enumerate(uids):
        flags: frozenset[str] = frozenset()
        if i < 3:
            flags = frozenset({SEEN, "\\Answered"})
        elif i < 5:
            flags = frozenset({FLAGGED, LABEL})
        elif i == 5:
            continue
        want[test_id(combo.name, numbers[i])] = (uid, flags)
    want[test_id(combo.name, 11)] = (max(uids) + 1, frozenset())
    assert got == want
    for uid in box.uids():
        data = box.read(uid)
        check_message(data, setup.sent[find_id(data)], combo)
    store.close()
    assert not setup.leftovers(), setup.leftovers()
