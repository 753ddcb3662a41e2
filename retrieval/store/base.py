"""The store API every protocol uses, and the view logic both backends share.

A `Mailbox` is one session's (or one process's) view of a folder. Writes go
to the files and the index; every view learns about every change, its own
and others', by catching up with the index by modseq. `sync()` first brings
the index up to date with the files (mail delivered by procmail, flags set
by mutt), then returns what changed since the view last asked.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

from retrieval.mime.message import to_crlf
from retrieval.store import flags as F
from retrieval.store.errors import MailboxNotFound, MessageGone
from retrieval.store.index import Index, MailboxState, Row

MessageInfo = Row
_SUBSCRIPTIONS_MUTEX = threading.Lock()


@dataclass
class Changes:
    """What a view has not been told yet, in UIDs."""

    added: list[int] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    uidvalidity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.expunged or self.flags or self.uidvalidity_changed)


@dataclass
class FolderStatus:
    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int


class Mailbox(ABC):
    """A view of one folder; not thread-safe (one per session or per thread)."""

    def __init__(self, store: Store, name: str, readonly: bool = False) -> None:
        self.store = store
        self.name = name
        self.readonly = readonly
        self.index: Index = store.index
        self._msgs: dict[int, Row] = {}
        self._uids: list[int] = []
        self._modseq = 0
        self._pending = Changes()
        self.recent: set[int] = set()
        self.closed = False
        self._headers_to_cache: list[tuple[bytes, int, int]] = []
        with self.index.write():
            self.state = self._open_state()
            self._sync_files_locked()
            self._catch_up()
        self._pending = Changes()  # a fresh view has nothing to report

    # -- what backends provide -------------------------------------------------

    @abstractmethod
    def _open_state(self) -> MailboxState:
        """Find or create the index row for this folder (inside a write txn)."""

    @abstractmethod
    def _files_changed(self) -> bool:
        """Cheap check (a stat or two) whether the files may differ from the index."""

    @abstractmethod
    def _sync_files(self) -> None:
        """Bring the index up to date with the files (inside a write txn, view caught up)."""

    @abstractmethod
    def _read(self, row: Row) -> bytes:
        """The message as a client sees it (stored line ends; may be bare LF)."""

    @abstractmethod
    def _append(self, data: bytes, flags: frozenset[str], internaldate: float) -> int:
        """Store one message, give it a UID and an index row (inside a write txn)."""

    @abstractmethod
    def _write_flags(self, updates: list[tuple[Row, frozenset[str]]], modseq: int) -> None:
        """Make the files and the index say the new flags (inside a write txn)."""

    @abstractmethod
    def _expunge(self, rows: list[Row]) -> None:
        """Remove messages from the files and the index (inside a write txn), recording the
        deletions under a modseq taken with `_next_modseq()` only once the backend has
        synced: a sync can index new mail under newer modseqs first."""

    def _claim_new(self, uids: list[int]) -> None:
        """Hook: a session took these messages as \\Recent (Maildir moves new/ to cur/)."""

    # -- reading ---------------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        return self.state.uidvalidity

    @property
    def uidnext(self) -> int:
        return self.state.uidnext

    @property
    def highestmodseq(self) -> int:
        return self.state.highestmodseq

    def __len__(self) -> int:
        return len(self._uids)

    def uids(self) -> list[int]:
        return list(self._uids)

    def messages(self) -> list[Row]:
        return [self._msgs[uid] for uid in self._uids]

    def info(self, uid: int) -> Row:
        try:
            return self._msgs[uid]
        except KeyError:
            raise MessageGone(f"message UID {uid} no longer exists") from None

    def __contains__(self, uid: int) -> bool:
        return uid in self._msgs

    def read(self, uid: int) -> bytes:
        """Message bytes as stored (line ends as written: usually LF)."""
        row = self.info(uid)
        try:
            return self._read(row)
        except (FileNotFoundError, MessageGone):
            # Catch up, but keep what this brings (new mail, expunges, flags) pending
            # for the caller's next sync(): sync() here would hand it to nobody.
            self._sync_pending()
            if uid not in self._msgs:
                raise MessageGone(f"message UID {uid} was expunged") from None
            return self._read(self._msgs[uid])

    def read_header(self, uid: int) -> bytes:
        """The header block (with its blank line), cached in the index: clients ask for
        headers of every message again and again (Thunderbird's first sync)."""
        self.info(uid)
        cached = self.index.header(self.state.id, uid)
        if cached is not None:
            return bytes(cached)
        data = self.read(uid)
        header = data[: header_end(data)]
        if len(header) <= MAX_CACHED_HEADER:
            self._headers_to_cache.append((header, self.state.id, uid))
            if len(self._headers_to_cache) >= 500:
                self.flush_header_cache()
        return header

    def flush_header_cache(self) -> None:
        """Write cached headers in one transaction (a first sync reads 100 000 of them)."""
        if self._headers_to_cache:
            pending, self._headers_to_cache = self._headers_to_cache, []
            self.index.set_headers(pending)

    def read_crlf(self, uid: int) -> bytes:
        """Message bytes with CRLF line ends, as the protocols send them."""
        return to_crlf(self.read(uid))

    def keywords(self) -> list[str]:
        """Keywords in use in this folder (for FLAGS / PERMANENTFLAGS)."""
        found: set[str] = set()
        for row in self._msgs.values():
            found.update(f for f in row.flags if F.is_keyword(f))
        return sorted(found)

    def status(self) -> FolderStatus:
        rows = self.messages()
        return FolderStatus(
            messages=len(rows),
            recent=sum(1 for r in rows if r.uid >= self.state.first_recent_uid) + len(self.recent),
            unseen=sum(1 for r in rows if F.SEEN not in r.flags),
            uidnext=self.state.uidnext,
            uidvalidity=self.state.uidvalidity,
            highestmodseq=self.state.highestmodseq,
            size=sum(r.size for r in rows),
        )

    # -- syncing ---------------------------------------------------------------

    def sync(self, claim_recent: bool = False) -> Changes:
        """Pick up changes from the files and other sessions; return and forget them."""
        self._sync_pending(claim_recent)
        changes, self._pending = self._pending, Changes()
        return changes

    def _sync_pending(self, claim_recent: bool = False) -> None:
        """Pick up changes into the view; they stay pending until sync() returns them."""
        with self.index.write():
            self._refresh()
            if self._files_changed():
                self._sync_files()
                self._catch_up()
            if claim_recent and not self.readonly:
                self._claim_recent()

    def _sync_files_locked(self) -> None:
        self._refresh()
        if self._files_changed():  # a warm open of an unchanged folder lists no directory
            self._sync_files()

    def _refresh(self) -> None:
        """Re-read this folder's index row and catch up (inside a write txn)."""
        state = self.index.mailbox(self.name)
        if state is None:
            raise MailboxNotFound(f"mailbox {self.name} was deleted")
        if state.uidvalidity != self.state.uidvalidity or state.id != self.state.id:
            self._msgs.clear()
            self._uids.clear()
            self._modseq = 0
            self.recent.clear()
            self._pending = Changes(uidvalidity_changed=True)
        self.state = state
        self._catch_up()

    def _catch_up(self) -> None:
        """Apply index changes newer than this view's modseq."""
        since = self._modseq
        seen = since
        for uid, modseq in self.index.expunged_since(self.state.id, since):
            seen = max(seen, modseq)
            if uid in self._msgs:
                del self._msgs[uid]
                pos = bisect.bisect_left(self._uids, uid)
                del self._uids[pos]
                self.recent.discard(uid)
                self._pending.expunged.append(uid)
        for row in self.index.rows(self.state.id, since):
            seen = max(seen, row.modseq)
            if row.uid in self._msgs:
                old = self._msgs[row.uid]
                self._msgs[row.uid] = row
                if old.flags != row.flags:
                    self._pending.flags.append(row.uid)
            else:
                self._msgs[row.uid] = row
                bisect.insort(self._uids, row.uid)
                self._pending.added.append(row.uid)
        # Only what was really seen: a modseq allocated for a write still in progress
        # (an mbox rewrite syncs first) must not be skipped.
        self._modseq = seen

    def _claim_recent(self) -> None:
        first = self.state.first_recent_uid
        pos = bisect.bisect_left(self._uids, first)
        claimed = self._uids[pos:]
        if claimed:
            self.recent.update(claimed)
            self._claim_new(claimed)
        if self.state.first_recent_uid != self.state.uidnext:
            self.state.first_recent_uid = self.state.uidnext
            self.index.update_mailbox(self.state)

    def _next_modseq(self) -> int:
        self.state.highestmodseq += 1
        self.index.update_mailbox(self.state)
        return self.state.highestmodseq

    def _assign_uid(self) -> int:
        uid = self.state.uidnext
        self.state.uidnext += 1
        self.index.update_mailbox(self.state)
        return uid

    # -- writing -----------------------------------------------------------------

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> int:
        """Store a message; return its UID. Line ends may be CRLF or LF."""
        self._check_writable()
        clean = frozenset(F.canonical(f) for f in flags if f != F.RECENT)
        when = time.time() if internaldate is None else internaldate
        with self.index.write():
            self._refresh()
            uid = self._append(data, clean, when)
            self._catch_up()
        return uid

    def store_flags(
        self, uids: Iterable[int], flags: Iterable[str], mode: str = "set", unchanged_since: int | None = None
    ) -> tuple[list[int], list[int]]:
        """mode: set / add / remove. Return (uids changed, uids refused by unchanged_since)."""
        self._check_writable()
        wanted = frozenset(F.canonical(f) for f in flags if f != F.RECENT)
        if mode not in ("set", "add", "remove"):
            raise ValueError(mode)
        with self.index.write():
            self._refresh()
            updates: list[tuple[Row, frozenset[str]]] = []
            refused: list[int] = []
            for uid in uids:
                row = self._msgs.get(uid)
                if row is None:
                    continue
                if unchanged_since is not None and row.modseq > unchanged_since:
                    refused.append(uid)
                    continue
                if mode == "set":
                    new = wanted
                elif mode == "add":
                    new = row.flags | wanted
                else:
                    new = row.flags - wanted
                if new != row.flags:
                    updates.append((row, new))
            if updates:
                self._write_flags(updates, self._next_modseq())
                self._catch_up()
        return [row.uid for row, _ in updates], refused

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only those in `uids` when given)."""
        self._check_writable()
        with self.index.write():
            self._refresh()
            candidates = self._uids if uids is None else sorted(set(uids) & self._msgs.keys())
            rows = [self._msgs[u] for u in candidates if F.DELETED in self._msgs[u].flags]
            if rows:
                self._expunge(rows)
                self._catch_up()
        return [r.uid for r in rows]

    def copy(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Copy messages (flags and INTERNALDATE kept); return (source uid, new uid) pairs."""
        dest._check_writable()
        pairs: list[tuple[int, int]] = []
        for uid in sorted(set(uids)):
            row = self._msgs.get(uid)
            if row is None:
                continue
            new_uid = dest._copy_from(self, row)
            pairs.append((uid, new_uid))
        return pairs

    def _copy_from(self, source: Mailbox, row: Row) -> int:
        """Backends may do better (Maildir hard-links)."""
        return self.append(source.read(row.uid), row.flags, row.internaldate)

    def move(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Copy then expunge the originals, whatever their \\Deleted flag."""
        self._check_writable()
        pairs = self.copy(uids, dest)
        if pairs:
            with self.index.write():
                self._refresh()
                rows = [self._msgs[s] for s, _ in pairs if s in self._msgs]
                if rows:
                    self._expunge(rows)
                    self._catch_up()
        return pairs

    def _check_writable(self) -> None:
        if self.readonly:
            from retrieval.store.errors import StoreError

            raise StoreError("mailbox is read-only")

    def close(self) -> None:
        self.flush_header_cache()
        self.closed = True


class Store(ABC):
    """One user's folders."""

    separator: str = "."

    def __init__(self, index: Index, lock_timeout: float = 30.0, fsync: bool = True) -> None:
        self.index = index
        self.lock_timeout = lock_timeout
        self.fsync = fsync

    @abstractmethod
    def list_folders(self) -> list[str]:
        """Every selectable folder, INBOX first."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def create(self, name: str, directory: bool = False) -> None:
        """`directory`: only a level of hierarchy, where the format has such a thing (mbox)."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def rename(self, old: str, new: str) -> None: ...

    @abstractmethod
    def open(self, name: str, readonly: bool = False) -> Mailbox: ...

    @abstractmethod
    def subscriptions(self) -> list[str]: ...

    @abstractmethod
    def _write_subscriptions(self, names: list[str]) -> None: ...

    @abstractmethod
    def _subscriptions_lock_path(self) -> str: ...

    def _edit_subscriptions(self, edit) -> None:  # type: ignore[no-untyped-def]
        """Read-modify-write under a lock: sessions in threads and processes subscribe at once."""
        import fcntl

        with _SUBSCRIPTIONS_MUTEX:
            fd = os.open(self._subscriptions_lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                names = self.subscriptions()
                new = edit(names)
                if new != names:
                    self._write_subscriptions(new)
            finally:
                os.close(fd)

    def subscribe(self, name: str) -> None:
        self._edit_subscriptions(lambda names: names if name in names else names + [name])

    def unsubscribe(self, name: str) -> None:
        self._edit_subscriptions(lambda names: [n for n in names if n != name])

    def status(self, name: str) -> FolderStatus:
        box = self.open(name, readonly=True)
        try:
            return box.status()
        finally:
            box.close()

    def close(self) -> None:
        self.index.close()


MAX_CACHED_HEADER = 256 * 1024


def header_end(data: bytes) -> int:
    """Offset just past the blank line that ends the header (len(data) if there is none)."""
    if data.startswith(b"\n"):
        return 1
    if data.startswith(b"\r\n"):
        return 2
    ends = [p + n for p, n in ((data.find(b"\n\n"), 2), (data.find(b"\n\r\n"), 3)) if p >= 0]
    return min(ends) if ends else len(data)


def crlf_size(data: bytes) -> int:
    """Octets of `to_crlf(data)` without building it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")
