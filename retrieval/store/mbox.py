"""mbox folders, shared with Postfix, procmail, mutt and Dovecot.

INBOX is usually `/var/mail/USER`; other folders are files under `~/mail`
(`/` separator). Reading takes a shared fcntl lock; writing takes the dotlock
and an exclusive fcntl lock, exactly as Postfix local(8) and procmail do.

New mail appended by anyone is found by scanning only the new tail. Flag
changes are kept in the index and written into the file (Status, X-Status,
X-Keywords, X-UID, X-IMAPbase, as Dovecot writes them) by `flush()`, which
runs at expunge and when the last view closes: like Dovecot's lazy writes,
so that marking 100 messages read in a 1 GB mbox is not 100 rewrites. A
rewrite goes to a new file that is fsynced and renamed over the old one
under the lock: at no instant is a message missing on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from retrieval.mime import utf7
from retrieval.store import flags as F
from retrieval.store import names
from retrieval.store.base import Mailbox, Store
from retrieval.store.errors import (
    MailboxExists,
    MailboxNotFound,
    MessageGone,
    StoreError,
    TemporaryFailure,
)
from retrieval.store.index import Index, MailboxState, Row
from retrieval.store.location import UserLocation
from retrieval.store.locking import LockTimeout, MboxLock
from retrieval.store.mboxfile import (
    MboxEntry,
    client_message,
    client_size_crlf,
    format_for_append,
    read_raw,
    rewrite_headers,
    scan_file,
    separator_padding,
    split_header,
)

SUBSCRIPTIONS_FILE = ".subscriptions"
_TEMP_PREFIX = ".retrieval-rewrite."
_RACY_WINDOW_NS = 2_000_000_000
_NOT_FOLDERS = (".lock", ".tmp")


def _stat_state(st: os.stat_result) -> dict[str, int]:
    return {"ino": st.st_ino, "size": st.st_size, "mtime": st.st_mtime_ns}


def _identity(entry: MboxEntry, header: bytes) -> str:
    """What identifies a message across rewrites by others: From_ line + header
    without our status fields (those change with every flag write)."""
    from retrieval.store.mboxfile import HIDDEN_HEADERS

    digest = hashlib.sha1(entry.from_line)
    for line in header.split(b"\n"):
        name = line.split(b":", 1)[0].strip().lower()
        if name not in HIDDEN_HEADERS:
            digest.update(line)
    return digest.hexdigest()[:24]


def _location(entry: MboxEntry) -> str:
    return f"{entry.from_offset} {entry.header_offset} {entry.end_offset}"


def _offsets(location: str) -> tuple[int, int, int]:
    a, b, c = location.split()
    return int(a), int(b), int(c)


def _preserve_owner(src: os.stat_result, path: str) -> None:
    os.chmod(path, src.st_mode & 0o7777)
    if os.getuid() == 0:
        os.chown(path, src.st_uid, src.st_gid)


def deliver_mbox(
    path: Path, message: bytes, sender: str, lock_timeout: float = 30.0, fsync: bool = True,
    unless_holds: bytes | None = None,
) -> bool:
    """The MDA path: lock like Postfix, append, fsync; on failure truncate back.

    `unless_holds`: skip the append when the file already contains these bytes
    (a queued message's trace id, when retrying after a crash). Returns whether
    it appended."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    data = format_for_append(message, sender=sender, when=time.time())
    try:
        with MboxLock(path, exclusive=True, timeout=lock_timeout) as lock:
            if unless_holds and _file_holds(lock.fd, unless_holds):
                return False
            _append_locked(lock.fd, data, fsync)
            return True
    except LockTimeout as exc:
        raise TemporaryFailure(f"{path} is locked: {exc}") from exc


def _file_holds(fd: int, needle: bytes, chunk: int = 1 << 20) -> bool:
    """Whether the file contains `needle` (read in chunks; only crash recovery asks)."""
    offset, keep = 0, b""
    while True:
        block = os.pread(fd, chunk, offset)
        if not block:
            return False
        if needle in keep + block:
            return True
        keep = block[-len(needle):]
        offset += len(block)


def _append_locked(fd: int, data: bytes, fsync: bool) -> tuple[int, int]:
    """Append at the end, after separator padding; return (offset of From_, new size)."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 2, max(0, size - 2)) if size else b""
    payload = separator_padding(tail) + data
    start = size + len(payload) - len(data)
    try:
        view = memoryview(payload)
        offset = size
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        os.ftruncate(fd, size)  # nothing half-written stays behind
        raise TemporaryFailure(f"cannot append: {exc.strerror}") from exc
    return start, size + len(payload)


class UidLog:
    """`ROOT/.imap/FOLDER/retrieval-uidlist`: which UID each message got, append-only.

    An mbox has nowhere to keep a UID until the file is rewritten (X-UID), and
    mail that an MDA appended may never be: without this log, losing the index
    would renumber those messages and make every POP3/IMAP client download
    them again. Like Dovecot's `~/mail/.imap/`, it lives beside the folders.

        V1700000000
        1 3f2a...   (uid, message identity)
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[int, dict[str, list[int]]]:
        """(uidvalidity or 0, identity -> UIDs in order)."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return 0, {}
        lines = text.split("\n")
        if not lines or not lines[0].startswith("V") or not lines[0][1:].isdigit():
            return 0, {}
        by_key: dict[str, list[int]] = {}
        for line in lines[1:]:
            uid, _, key = line.partition(" ")
            if uid.isdigit() and key:
                by_key.setdefault(key, []).append(int(uid))
        return int(lines[0][1:]), by_key

    def start(self, uidvalidity: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(f"V{uidvalidity}\n", encoding="ascii")
        os.rename(tmp, self.path)

    def validity(self) -> int:
        """Only the first line: the log may hold a line per message ever delivered."""
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                first = f.readline().strip()
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return int(first[1:]) if first.startswith("V") and first[1:].isdigit() else 0

    def add(self, uidvalidity: int, pairs: list[tuple[int, str]]) -> None:
        if not pairs:
            return
        if self.validity() != uidvalidity:
            self.start(uidvalidity)
        with open(self.path, "a", encoding="ascii") as f:
            f.write("".join(f"{uid} {key}\n" for uid, key in pairs))


def mbox_path(location: UserLocation, name: str) -> Path:
    return MboxStore.path_for(location.root, location.inbox, name)


class MboxMailbox(Mailbox):
    store: MboxStore

    def __init__(self, store: MboxStore, name: str, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.uidlog = UidLog(store.control_dir(name) / "retrieval-uidlist")
        self._recovered: dict[str, list[int]] = {}
        super().__init__(store, name, readonly)

    # -- state -------------------------------------------------------------------

    def _scan_info(self) -> dict[str, int]:
        try:
            return json.loads(self.state.scan_state) if self.state.scan_state else {}
        except ValueError:
            return {}

    def _save_scan_info(self, info: dict[str, int]) -> None:
        self.state.scan_state = json.dumps(info, sort_keys=True)
        self.index.update_mailbox(self.state)

    def _open_state(self) -> MailboxState:
        state = self.index.mailbox(self.name)
        if state is not None:
            return state
        # No index: recover UIDVALIDITY and UIDs from the file's X-IMAPbase/X-UID
        # headers, and from our UID log for what was never rewritten.
        logged_validity, self._recovered = self.uidlog.read()
        base = self._read_imapbase()
        uidvalidity, uidnext = self.index.fresh_uidvalidity(), 1
        if base is not None:
            uidvalidity, uidnext = base
            if logged_validity != uidvalidity:
                self._recovered = {}
        elif logged_validity:
            uidvalidity = logged_validity
        if self._recovered:
            uidnext = max(uidnext, 1 + max(max(uids) for uids in self._recovered.values()))
        return self.index.create_mailbox(self.name, uidvalidity, uidnext)

    def _read_imapbase(self) -> tuple[int, int] | None:
        try:
            with open(self.path, "rb") as f:
                for entry in scan_file(f, 0, chunk_size=64 * 1024):
                    return entry.imapbase
        except FileNotFoundError:
            return None
        return None

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            if self.name == "INBOX":
                return None  # /var/mail/USER appears with the first delivery
            raise MailboxNotFound(f"mailbox {self.name} does not exist") from None

    def _files_changed(self) -> bool:
        st = self._stat()
        info = self._scan_info()
        if st is None:
            return bool(info.get("size"))
        if _stat_state(st) != {k: info.get(k) for k in ("ino", "size", "mtime")}:
            return True
        return time.time_ns() - st.st_mtime_ns < _RACY_WINDOW_NS

    # -- scanning -----------------------------------------------------------------

    def _sync_files(self) -> None:
        st = self._stat()
        info = self._scan_info()
        if st is None:
            if self._msgs:
                modseq = self._next_modseq()
                for uid in list(self._msgs):
                    self.index.delete(self.state.id, uid, modseq)
            self._save_scan_info({})
            return
        try:
            with MboxLock(self.path, exclusive=False, timeout=self.store.lock_timeout) as lock:
                self._sync_locked(lock.fd, info)
        except LockTimeout as exc:
            raise TemporaryFailure(f"{self.path} is locked: {exc}") from exc

    def _sync_locked(self, fd: int, info: dict[str, int]) -> None:
        st = os.fstat(fd)
        same_file = info.get("ino") == st.st_ino and st.st_size >= info.get("size", 0)
        if same_file and info.get("size") == st.st_size and info.get("mtime") == st.st_mtime_ns:
            if time.time_ns() - st.st_mtime_ns >= _RACY_WINDOW_NS:
                return
        with os.fdopen(os.dup(fd), "rb") as f:
            if same_file and self._tail_intact(f, info):
                self._scan_tail(f, info.get("scanned", 0))
            else:
                self._rescan(f)
        new_info = _stat_state(st)
        new_info["scanned"] = st.st_size
        new_info["tail"] = self._tail_mark(fd, st.st_size)
        new_info["dirty"] = info.get("dirty", 0) if same_file else 0
        self._save_scan_info(new_info)

    @staticmethod
    def _tail_mark(fd: int, size: int) -> int:
        """A checksum of the last bytes we scanned: an in-place rewrite (mutt) changes it."""
        data = os.pread(fd, 256, max(0, size - 256))
        return int.from_bytes(hashlib.sha1(data).digest()[:6], "big")

    def _tail_intact(self, f, info: dict[str, int]) -> bool:  # type: ignore[no-untyped-def]
        scanned = info.get("scanned", 0)
        if not scanned:
            return not self._msgs
        return self._tail_mark(f.fileno(), scanned) == info.get("tail")

    def _entries(self, f, start: int) -> list[tuple[MboxEntry, str, int, frozenset[str]]]:  # type: ignore[no-untyped-def]
        """Scan from `start`: each entry with its identity, client size and stored flags."""
        out = []
        for entry in scan_file(f, start):
            if entry.pseudo:
                continue
            raw = read_raw(f, entry)
            header, _ = split_header(raw)
            size = client_size_crlf(client_message(raw))
            flags = frozenset(entry.flags) | frozenset(entry.keywords)
            out.append((entry, _identity(entry, header), size, flags))
        return out

    def _scan_tail(self, f, start: int) -> None:  # type: ignore[no-untyped-def]
        entries = self._entries(f, start)
        if entries:
            self._add_entries(entries)

    def _add_entries(
        self, entries: list[tuple[MboxEntry, str, int, frozenset[str]]], trusted_below: int = 0
    ) -> None:
        """Index new messages. X-UID headers are believed only while recovering a lost
        index (increasing and below X-IMAPbase's uidnext): anyone can send a message
        with an X-UID header, and procmail stores it as it is."""
        modseq = self._next_modseq()
        floor = 1 if trusted_below else self.state.uidnext
        used = set(self._msgs)
        logged: list[tuple[int, str]] = []
        for entry, key, size, flags in entries:
            uid = entry.uid
            if uid is None or not trusted_below or uid < floor or uid >= trusted_below or uid in used:
                uid = None
            if uid is None and self._recovered.get(key):
                candidate = self._recovered[key].pop(0)
                if candidate not in used:
                    uid = candidate
            if uid is None:
                uid = max(self.state.uidnext, floor)
                logged.append((uid, key))
            used.add(uid)
            floor = uid + 1 if trusted_below else floor
            self.state.uidnext = max(self.state.uidnext, uid + 1)
            date = entry.date if entry.date is not None else time.time()
            self.index.insert(
                self.state.id,
                Row(uid, key, _location(entry), flags, size, float(date), time.time(), modseq),
            )
        self.index.update_mailbox(self.state)
        self.uidlog.add(self.state.uidvalidity, logged)

    def _rescan(self, f) -> None:  # type: ignore[no-untyped-def]
        """The file was rewritten by someone else (or is new to us): match what we knew."""
        entries = self._entries(f, 0)
        base = entries[0][0].imapbase if entries else None
        if base is not None and base[0] != self.state.uidvalidity and self._msgs:
            # Someone (Dovecot) gave the folder other UIDs: theirs win.
            self.index.db.execute("DELETE FROM msg WHERE mailbox=?", (self.state.id,))
            self.state.uidvalidity = base[0]
            self.state.uidnext = base[1]
            self.state.first_recent_uid = base[1]
            self._msgs.clear()
            self._uids.clear()
            self._modseq = 0
            self._pending.uidvalidity_changed = True
        if base is not None and base[0] == self.state.uidvalidity:
            self.state.uidnext = max(self.state.uidnext, base[1])
        dirty = bool(self._scan_info().get("dirty"))
        by_uid = dict(self._msgs)
        by_key: dict[str, list[Row]] = {}
        for row in sorted(self._msgs.values(), key=lambda r: r.uid):
            by_key.setdefault(row.key, []).append(row)
        matched: set[int] = set()
        unmatched: list[tuple[MboxEntry, str, int, frozenset[str]]] = []
        modseq = 0
        for item in entries:
            entry, key, size, flags = item
            row = None
            if entry.uid is not None and entry.uid in by_uid and by_uid[entry.uid].key == key:
                row = by_uid[entry.uid]
            elif by_key.get(key):
                row = next((r for r in by_key[key] if r.uid not in matched), None)
            if row is None or row.uid in matched:
                unmatched.append(item)
                continue
            matched.add(row.uid)
            self.index.set_location(self.state.id, row.uid, _location(entry))
            if flags != row.flags and not dirty:
                modseq = modseq or self._next_modseq()
                self.index.set_flags(self.state.id, row.uid, flags, modseq)
        gone = [uid for uid in self._msgs if uid not in matched]
        if gone:
            modseq = modseq or self._next_modseq()
            for uid in gone:
                self.index.delete(self.state.id, uid, modseq)
        if unmatched:
            recovering = not self._msgs and base is not None and base[0] == self.state.uidvalidity
            self._add_entries(unmatched, trusted_below=base[1] if recovering and base else 0)
        self._recovered = {}
        self.index.update_mailbox(self.state)

    # -- reading -------------------------------------------------------------------

    def _read(self, row: Row) -> bytes:
        # Offsets and the file they belong to, read together from the index: a
        # rewrite by another session moves them without telling this view.
        found = self.index.db.execute(
            "SELECT msg.location, mailbox.scan_state FROM msg JOIN mailbox ON mailbox.id = msg.mailbox"
            " WHERE msg.mailbox=? AND msg.uid=?",
            (self.state.id, row.uid),
        ).fetchone()
        if found is None:
            raise MessageGone(f"message UID {row.uid} was expunged")
        location, scan_state = found
        info = json.loads(scan_state) if scan_state else {}
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_ino != info.get("ino") or st.st_size < info.get("size", 0):
                raise MessageGone("mbox was rewritten; resync")  # base.read() syncs and retries
            _, start, end = _offsets(location)
            f.seek(start)
            raw = f.read(end - start)
        return client_message(raw)

    # -- writing ---------------------------------------------------------------------

    def _exclusive(self) -> MboxLock:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        return MboxLock(self.path, exclusive=True, timeout=self.store.lock_timeout)

    def _locked_sync(self, fd: int) -> None:
        """Catch up with the file while we hold the write lock."""
        self._sync_locked(fd, self._scan_info())
        self._catch_up()

    def _append(self, data: bytes, flags: frozenset[str], internaldate: float) -> int:
        try:
            with self._exclusive() as lock:
                self._locked_sync(lock.fd)
                uid = self._assign_uid()
                system = [f for f in flags if not F.is_keyword(f)]
                keywords = sorted(f for f in flags if F.is_keyword(f))
                payload = format_for_append(
                    data, sender="MAILER-DAEMON", when=internaldate, flags=system, keywords=keywords, uid=uid
                )
                start, new_size = _append_locked(lock.fd, payload, self.store.fsync)
                with os.fdopen(os.dup(lock.fd), "rb") as f:
                    entries = self._entries(f, start)
                entry, key, size, _ = entries[0]
                self.uidlog.add(self.state.uidvalidity, [(uid, key)])
                self.index.insert(
                    self.state.id,
                    Row(uid, key, _location(entry), flags, size, internaldate, time.time(), self._next_modseq()),
                )
                info = self._scan_info()
                st = os.fstat(lock.fd)
                info.update(_stat_state(st), scanned=new_size, tail=self._tail_mark(lock.fd, new_size))
                self._save_scan_info(info)
        except LockTimeout as exc:
            raise TemporaryFailure(f"{self.path} is locked: {exc}") from exc
        return uid

    def _write_flags(self, updates: list[tuple[Row, frozenset[str]]], modseq: int) -> None:
        for row, new_flags in updates:
            self.index.set_flags(self.state.id, row.uid, new_flags, modseq)
        info = self._scan_info()
        info["dirty"] = 1
        self._save_scan_info(info)

    def _expunge(self, rows: list[Row]) -> None:
        self._rewrite(drop={r.uid for r in rows})

    def flush(self) -> None:
        """Write flag changes kept in the index into the file (CHECK, close)."""
        if self.readonly or not self._scan_info().get("dirty"):
            return
        with self.index.write():
            self._refresh()
            if self._scan_info().get("dirty"):
                self._rewrite(drop=set())

    def close(self) -> None:
        if not self.closed:
            try:
                self.flush()
            finally:
                super().close()

    def _rewrite(self, drop: set[int]) -> None:
        """New file with the kept messages and current flags; fsync; rename over the old."""
        try:
            with self._exclusive() as lock:
                self._locked_sync(lock.fd)
                # after the sync, which may have indexed new mail under newer modseqs
                modseq = self._next_modseq() if drop else 0
                old = os.fstat(lock.fd)
                tmp = self.path.with_name(f"{_TEMP_PREFIX}{self.path.name}.{os.getpid()}")
                rows = self.index.rows(self.state.id)  # fresh: the sync above may have moved offsets
                keep = sorted((r for r in rows if r.uid not in drop), key=lambda r: _offsets(r.location)[0])
                dropped = [r.uid for r in rows if r.uid in drop]
                locations: dict[int, str] = {}
                try:
                    with open(lock.fd, "rb", closefd=False) as src, open(tmp, "wb") as out:
                        first = True
                        for row in keep:
                            from_offset, header_offset, end = _offsets(row.location)
                            src.seek(from_offset)
                            from_line = src.read(header_offset - from_offset)
                            raw = src.read(end - header_offset)
                            system = [f for f in row.flags if not F.is_keyword(f)]
                            keywords = sorted(f for f in row.flags if F.is_keyword(f))
                            imapbase = (self.state.uidvalidity, self.state.uidnext) if first else None
                            body = rewrite_headers(raw, flags=system, keywords=keywords, uid=row.uid, imapbase=imapbase)
                            start = out.tell()
                            out.write(from_line)
                            header_at = out.tell()
                            out.write(body)
                            if not body.endswith(b"\n"):
                                out.write(b"\n")
                            locations[row.uid] = f"{start} {header_at} {out.tell()}"
                            out.write(b"\n")
                            first = False
                        out.flush()
                        if self.store.fsync:
                            os.fsync(out.fileno())
                    _preserve_owner(old, str(tmp))
                    os.rename(tmp, self.path)
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
                    raise
                if self.store.fsync:
                    from retrieval.store.maildir import fsync_dir

                    fsync_dir(self.path.parent)
                for uid in dropped:
                    self.index.delete(self.state.id, uid, modseq)
                for uid, location in locations.items():
                    self.index.set_location(self.state.id, uid, location)
                st = os.stat(self.path)
                with open(self.path, "rb") as f:
                    mark = self._tail_mark(f.fileno(), st.st_size)
                info = _stat_state(st)
                info.update(scanned=st.st_size, tail=mark, dirty=0)
                self._save_scan_info(info)
        except LockTimeout as exc:
            raise TemporaryFailure(f"{self.path} is locked: {exc}") from exc
        except OSError as exc:
            raise TemporaryFailure(f"cannot rewrite {self.path}: {exc.strerror}") from exc


class MboxStore(Store):
    """Folders as mbox files under a root directory; INBOX at the spool path."""

    separator = "/"

    def __init__(self, root: Path, inbox: Path | None, index: Index, lock_timeout: float = 30.0, fsync: bool = True) -> None:
        super().__init__(index, lock_timeout, fsync)
        self.root = root
        self.inbox = inbox or root / "inbox"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @staticmethod
    def path_for(root: Path, inbox: Path | None, name: str) -> Path:
        name = names.validate(name, MboxStore.separator)
        if name == "INBOX":
            return inbox or root / "inbox"
        return root.joinpath(*(utf7.encode(part) for part in name.split(MboxStore.separator)))

    def path_of(self, name: str) -> Path:
        return self.path_for(self.root, self.inbox, name)

    def control_dir(self, name: str) -> Path:
        """Per-folder files of ours beside the folders, as Dovecot's `.imap/` (hidden from LIST)."""
        name = names.validate(name, self.separator)
        return self.root.joinpath(".imap", *(utf7.encode(part) for part in name.split(self.separator)))

    def list_folders(self) -> list[str]:
        found = ["INBOX"]
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root)
            for filename in sorted(filenames):
                if filename.startswith(".") or filename.endswith(_NOT_FOLDERS):
                    continue
                if rel == Path(".") and filename == "inbox" and self.inbox == self.root / "inbox":
                    continue
                try:
                    parts = [utf7.decode(p) for p in (*rel.parts, filename)]
                except ValueError:
                    continue
                found.append(self.separator.join(parts))
        return found[:1] + sorted(found[1:])

    def exists(self, name: str) -> bool:
        path = self.path_of(name)
        return path.is_file() or (name.upper() == "INBOX")

    def create(self, name: str, directory: bool = False) -> None:
        """A file for messages, or (`directory`, from "CREATE name/") a folder for children only:
        an mbox file cannot hold both, as in Dovecot's mbox (\\NoInferiors)."""
        path = self.path_of(name)
        if path.exists() or names.validate(name, self.separator) == "INBOX":
            raise MailboxExists(f"mailbox {name} already exists")
        parent = path.parent
        while parent != self.root and parent != parent.parent:
            if parent.is_file():
                raise StoreError(f"mailbox {name} can't be created: its parent holds messages (mbox)")
            parent = parent.parent
        if directory:
            path.mkdir(parents=True, mode=0o700)
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise MailboxExists(f"mailbox {name} already exists") from None

    def delete(self, name: str) -> None:
        name = names.validate(name, self.separator)
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        path = self.path_of(name)
        if path.is_dir():
            try:
                path.rmdir()
            except OSError:
                raise StoreError(f"mailbox {name} has children; delete them first") from None
        elif path.is_file():
            with MboxLock(path, exclusive=True, timeout=self.lock_timeout):
                os.unlink(path)
            try:
                (self.control_dir(name) / "retrieval-uidlist").unlink()
            except FileNotFoundError:
                pass
        else:
            raise MailboxNotFound(f"mailbox {name} does not exist")
        self.index.drop_mailbox(name)

    def rename(self, old: str, new: str) -> None:
        old = names.validate(old, self.separator)
        new = names.validate(new, self.separator)
        old_path, new_path = self.path_of(old), self.path_of(new)
        if new == "INBOX" or new_path.exists():
            raise MailboxExists(f"mailbox {new} already exists")
        if old == "INBOX":
            self.create(new)
            source, dest = self.open("INBOX"), self.open(new)
            try:
                source.move(source.uids(), dest)
            finally:
                source.close()
                dest.close()
            return
        if not old_path.exists():
            raise MailboxNotFound(f"mailbox {old} does not exist")
        new_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(old_path, new_path)
        old_control, new_control = self.control_dir(old), self.control_dir(new)
        if old_control.exists():
            new_control.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(old_control, new_control)
        with self.index.write():
            self.index.rename_mailbox(old, new)
            self.index.rename_prefix(old + self.separator, new + self.separator)

    def open(self, name: str, readonly: bool = False) -> MboxMailbox:
        name = names.validate(name, self.separator)
        path = self.path_of(name)
        if name != "INBOX" and not path.is_file():
            raise MailboxNotFound(f"mailbox {name} does not exist")
        return MboxMailbox(self, name, path, readonly)

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line]

    def _subscriptions_lock_path(self) -> str:
        return str(self.root / ".subscriptions.lock")

    def _write_subscriptions(self, names_: list[str]) -> None:
        path = self.root / SUBSCRIPTIONS_FILE
        tmp = path.with_name(f"{SUBSCRIPTIONS_FILE}.{os.getpid()}.tmp")
        tmp.write_text("".join(n + "\n" for n in names_), encoding="utf-8")
        os.rename(tmp, path)
