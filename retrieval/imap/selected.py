"""The selected mailbox as one client knows it: sequence numbers, what it was told.

The store's view (`box`) is always current; the client's numbering may lag
behind it, because EXPUNGE may only be announced at certain moments (RFC 3501
7.4.1: never during FETCH, STORE, SEARCH). `updates()` turns what changed
into the untagged responses the client is owed, and brings the numbering up
to date.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from retrieval.imap.wire import flag_list, seqset
from retrieval.store import Mailbox
from retrieval.store import flags as F


class Selected:
    def __init__(self, box: Mailbox, readonly: bool, condstore: bool, qresync: bool) -> None:
        self.box = box
        self.readonly = readonly
        self.condstore = condstore or qresync
        self.qresync = qresync
        box.sync(claim_recent=not readonly)
        self.uids: list[int] = box.uids()  # sequence number - 1 -> UID
        self.pending_expunge: set[int] = set()
        self.pending_flags: set[int] = set()
        self.told: dict[int, frozenset[str]] = {}  # flags last sent by FETCH/STORE
        self.search_saved: list[int] = []  # SEARCHRES "$"

    # -- numbering --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        pos = bisect.bisect_left(self.uids, uid)
        if pos < len(self.uids) and self.uids[pos] == uid:
            return pos + 1
        return None

    def uid_of(self, seq: int) -> int:
        return self.uids[seq - 1]

    def recent(self, uid: int) -> bool:
        if self.readonly:  # EXAMINE sees \Recent without taking it (RFC 3501 6.3.2)
            return uid >= self.box.state.first_recent_uid
        return uid in self.box.recent

    def recent_count(self) -> int:
        return sum(1 for uid in self.uids if self.recent(uid))

    def flags_of(self, uid: int) -> frozenset[str]:
        if uid in self.box:
            return self.box.info(uid).flags
        return self.told.get(uid, frozenset())

    def flags_with_recent(self, uid: int) -> list[str]:
        flags = F.sort_flags(self.flags_of(uid))
        return flags + [F.RECENT] if self.recent(uid) else flags

    # -- updates ------------------------------------------------------------------

    def collect(self) -> None:
        """Take what the store saw since last time (others' and our own changes)."""
        changes = self.box.sync(claim_recent=not self.readonly)
        if changes.uidvalidity_changed:
            # Someone recreated the UID list: the client must start over (RFC 3501 2.3.1.1).
            self.pending_expunge.update(self.uids)
        self.pending_expunge.update(u for u in changes.expunged if self.seq_of(u) is not None)
        self.pending_flags.update(changes.flags)

    def updates(self, allow_expunge: bool) -> bytes:
        self.collect()
        out: list[bytes] = []
        if allow_expunge and self.pending_expunge:
            gone = sorted(self.pending_expunge)
            self.pending_expunge.clear()
            if self.qresync:
                out.append(b"* VANISHED " + seqset(gone) + b"\r\n")
                for uid in gone:
                    pos = self.seq_of(uid)
                    if pos is not None:
                        del self.uids[pos - 1]
            else:
                for uid in gone:
                    pos = self.seq_of(uid)
                    if pos is not None:
                        out.append(b"* %d EXPUNGE\r\n" % pos)
                        del self.uids[pos - 1]
            for uid in gone:
                self.told.pop(uid, None)
                self.pending_flags.discard(uid)
        last = self.uids[-1] if self.uids else 0
        current = self.box._uids  # the view's sorted UIDs, read without a copy
        new = current[bisect.bisect_right(current, last):]
        if new:
            self.uids.extend(new)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % self.recent_count())
        for uid in sorted(self.pending_flags):
            seq = self.seq_of(uid)
            if seq is None or uid not in self.box or uid in self.pending_expunge:
                continue
            flags = self.box.info(uid).flags
            if self.told.get(uid) == flags:
                continue
            out.append(self.fetch_flags_line(seq, uid, include_uid=self.qresync))
        self.pending_flags.clear()
        return b"".join(out)

    def fetch_flags_line(self, seq: int, uid: int, include_uid: bool) -> bytes:
        """`* n FETCH (FLAGS (...) [UID u] [MODSEQ (m)])`, remembering what was told."""
        self.told[uid] = self.flags_of(uid)
        items = [b"FLAGS " + flag_list(self.flags_with_recent(uid))]
        if include_uid:
            items.append(b"UID %d" % uid)
        if self.condstore and uid in self.box:
            items.append(b"MODSEQ (%d)" % self.box.info(uid).modseq)
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"

    # -- the rest -------------------------------------------------------------------

    def enable_condstore(self) -> bytes:
        """RFC 7162 3.1: the first CONDSTORE-enabling command while selected gets HIGHESTMODSEQ."""
        if self.condstore:
            return b""
        self.condstore = True
        return b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % self.box.highestmodseq

    def box_flush(self) -> None:
        flush = getattr(self.box, "flush", None)
        if flush is not None and not self.readonly:
            flush()

    def watch_paths(self) -> list[Path]:
        """Where a change shows up on disk: the folder's files and the index."""
        paths: list[Path] = []
        box = self.box
        if hasattr(box, "uidlist"):  # Maildir
            paths += [box.path / "new", box.path / "cur"]  # type: ignore[attr-defined]
        else:
            paths.append(box.path.parent)  # type: ignore[attr-defined]
        paths.append(box.index.path.parent)
        return paths

    def close(self) -> None:
        self.box.close()
