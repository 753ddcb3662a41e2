"""Maildir and Maildir++ folders, written and read as Dovecot, Postfix and procmail do.

Layout: the root is INBOX; folder `A.B` lives in `ROOT/.A.B/` (names in
modified UTF-7 on disk). A message is `tmp/` -> `new/` -> `cur/NAME:2,FLAGS`;
flags are letters in the name, keywords are letters a-z mapped through
`dovecot-keywords`; UIDs live in `dovecot-uidlist` (see uidlist.py).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import time
from pathlib import Path

from retrieval.mime import utf7
from retrieval.store import flags as F
from retrieval.store import names
from retrieval.store.base import Mailbox, Store, crlf_size
from retrieval.store.errors import (
    MailboxExists,
    MailboxNotFound,
    MessageGone,
    StoreError,
    TemporaryFailure,
)
from retrieval.store.index import Index, MailboxState, Row
from retrieval.store.uidlist import UidList

KEYWORDS_FILE = "dovecot-keywords"
SUBSCRIPTIONS_FILE = "subscriptions"
SUBDIRS = ("cur", "new", "tmp")
_SIZE_RE = re.compile(r",([SW])=(\d+)")
_counter = itertools.count(1)
# Directory mtimes this close to now may still change within the same tick: rescan.
_RACY_WINDOW_NS = 2_000_000_000


def _hostname() -> str:
    # Maildir spec: '/' and ':' in the host part are written as octal escapes.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def unique_name(size: int | None = None, vsize: int | None = None) -> str:
    """A new Maildir base name: time.MusecPpidQn.host,S=size,W=vsize (Dovecot's form)."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    name = f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_hostname()}"
    if size is not None:
        name += f",S={size}"
    if vsize is not None:
        name += f",W={vsize}"
    return name


_DIGITS = re.compile(r"(\d+)")


def delivery_order(name: str) -> list:
    """Sort key for new files: numbers compared as numbers, so `1.M99P..` comes before
    `1.M100P..` (microseconds are not zero-padded), as Dovecot orders them."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(name)]


def split_name(filename: str) -> tuple[str, str]:
    """'base:2,FS' -> ('base', 'FS'); names in new/ have no info part."""
    base, sep, info = filename.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, ""


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tmp(
    maildir: Path, data: bytes, internaldate: float | None, fsync: bool, stem: str | None = None
) -> tuple[str, str]:
    """Write a message into tmp/ under a fresh unique name (or `stem`); return (tmp path, base name)."""
    if stem is None:
        base = unique_name(len(data), crlf_size(data))
    else:
        base = f"{stem},S={len(data)},W={crlf_size(data)}"
    tmp = f"{maildir}/tmp/{base}"  # a string: pathlib costs more than the write on the delivery path
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stem is None:
            raise
        os.unlink(tmp)  # left by a delivery of ours that crashed before the link to new/
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.close(fd)
    if internaldate is not None:
        os.utime(tmp, (internaldate, internaldate))
    return tmp, base


def queue_stem(queue_id: str, arrival: float) -> str:
    """The name a queued message gets in every Maildir it is delivered to: the same on
    every attempt, so a retry after a crash can see that the copy is already there."""
    return f"{int(arrival)}.Q{queue_id}.{_hostname()}"


def holds_stem(maildir: Path, stem: str) -> bool:
    """Whether a message named `stem` is in new/ or cur/ (whatever flags a reader gave it)."""
    prefix = stem + ","
    for sub in ("new", "cur"):
        try:
            names = os.listdir(maildir / sub)
        except FileNotFoundError:
            continue
        if any(name.startswith(prefix) or name.split(":", 1)[0] == stem for name in names):
            return True
    return False


def deliver_file(maildir: Path, data: bytes, fsync: bool = True, stem: str | None = None) -> Path:
    """The MDA path: tmp -> fsync -> new/ (as Postfix local and procmail do)."""
    try:
        tmp, base = write_tmp(maildir, data, None, fsync, stem)
        dest = f"{maildir}/new/{base}"
        try:
            os.link(tmp, dest)
        except FileExistsError:
            if stem is None:
                os.unlink(tmp)
                raise
            # the same queued message delivered before a crash: keep that copy
        except OSError:
            os.unlink(tmp)  # new/ is missing (or full): leave no orphan in tmp/
            raise
        os.unlink(tmp)
        if fsync:
            fsync_dir(f"{maildir}/new")
    except OSError as exc:
        raise TemporaryFailure(f"cannot write to {maildir}: {exc.strerror}") from exc
    return Path(dest)


class Keywords:
    """`dovecot-keywords`: keyword <-> letter a..z, per Maildir folder."""

    def __init__(self, maildir: Path) -> None:
        self.path = maildir / KEYWORDS_FILE
        self._stamp: tuple[int, int] | None = None
        self.names: list[str | None] = []

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self.names = None, []
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        names: list[str | None] = [None] * 26
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                idx, _, word = line.rstrip("\n").partition(" ")
                if idx.isdigit() and int(idx) < 26 and word:
                    names[int(idx)] = word
        while names and names[-1] is None:
            names.pop()
        self.names, self._stamp = names, stamp

    def flags_of(self, letters: str) -> set[str]:
        out = set()
        for ch in letters:
            if "a" <= ch <= "z":
                idx = ord(ch) - ord("a")
                if idx < len(self.names) and self.names[idx]:
                    out.add(self.names[idx])  # type: ignore[arg-type]
        return out

    def letters_of(self, keywords: set[str], create: bool) -> tuple[str, set[str]]:
        """Letters for the keywords, and the keywords that got none (more than 26)."""
        self.refresh()
        letters, unmapped, missing = [], set(), []
        index = {name: i for i, name in enumerate(self.names) if name}
        for word in sorted(keywords):
            if word in index:
                letters.append(chr(ord("a") + index[word]))
            else:
                missing.append(word)
        if missing and create:
            self._add(missing)
            index = {name: i for i, name in enumerate(self.names) if name}
        for word in missing:
            if word in index:
                letters.append(chr(ord("a") + index[word]))
            else:
                unmapped.add(word)
        return "".join(sorted(letters)), unmapped

    def _add(self, words: list[str]) -> None:
        names = list(self.names)
        for word in words:
            if None in names:
                names[names.index(None)] = word
            elif len(names) < 26:
                names.append(word)
        if names == self.names:
            return
        tmp = self.path.with_name(f"{KEYWORDS_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for i, name in enumerate(names):
                if name:
                    f.write(f"{i} {name}\n")
        os.rename(tmp, self.path)
        self.names = names
        self._stamp = None


class MaildirMailbox(Mailbox):
    store: MaildirStore

    def __init__(self, store: MaildirStore, name: str, path: Path, readonly: bool = False) -> None:
        self.path = path
        self._root_str = str(path) + os.sep
        self.uidlist = UidList(path, store.lock_timeout)
        self.keywords_file = Keywords(path)
        super().__init__(store, name, readonly)

    # -- index state -------------------------------------------------------------

    def _open_state(self) -> MailboxState:
        state = self.index.mailbox(self.name)
        if state is not None:
            return state
        self.uidlist.refresh()
        if self.uidlist.exists and self.uidlist.uidvalidity:
            return self.index.create_mailbox(self.name, self.uidlist.uidvalidity, self.uidlist.next_uid)
        return self.index.create_mailbox(self.name, self.index.fresh_uidvalidity())

    def _dir_stamp(self) -> str:
        parts = []
        for sub in ("new", "cur"):
            try:
                parts.append(str(os.stat(self.path / sub).st_mtime_ns))
            except FileNotFoundError:
                raise MailboxNotFound(f"mailbox {self.name} does not exist") from None
        return " ".join(parts)

    def _files_changed(self) -> bool:
        stamp = self._dir_stamp()
        if stamp != self.state.scan_state:
            return True
        now = time.time_ns()
        return any(now - int(t) < _RACY_WINDOW_NS for t in stamp.split())

    # -- scanning ----------------------------------------------------------------

    def _listing(self) -> dict[str, tuple[str, str]]:
        """base name -> (location 'cur/NAME', info letters); cur/ wins over new/."""
        found: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            try:
                entries = os.listdir(self.path / sub)
            except FileNotFoundError:
                raise MailboxNotFound(f"mailbox {self.name} does not exist") from None
            for filename in entries:
                if filename.startswith("."):
                    continue
                base, info = split_name(filename)
                found[base] = (f"{sub}/{filename}", info)
        return found

    def _flags_of(self, info: str, old: frozenset[str] | None) -> frozenset[str]:
        result = {F.FLAG_OF[ch] for ch in info if ch in F.FLAG_OF}
        if any("a" <= ch <= "z" for ch in info):
            self.keywords_file.refresh()
            result |= self.keywords_file.flags_of(info)
        if old:
            # keywords that had no letter (over 26) live only in the index
            self.keywords_file.refresh()
            lettered = set(n for n in self.keywords_file.names if n)
            result |= {f for f in old if F.is_keyword(f) and f not in lettered}
        return frozenset(result)

    def _sync_files(self) -> None:
        stamp = self._dir_stamp()
        listing = self._listing()
        by_key = {row.key: row for row in self._msgs.values()}
        missing = [key for key in by_key if key not in listing]
        if missing:
            # A rename during our listdir can hide a file from both listings: look again.
            listing.update(self._listing())
            missing = [key for key in by_key if key not in listing]
        modseq = 0
        for key in missing:
            modseq = modseq or self._next_modseq()
            self.index.delete(self.state.id, by_key[key].uid, modseq)
        for key, (location, info) in listing.items():
            row = by_key.get(key)
            if row is None:
                continue
            if location != row.location:
                flags = self._flags_of(info, row.flags)
                if flags != row.flags:
                    modseq = modseq or self._next_modseq()
                    self.index.set_flags(self.state.id, row.uid, flags, modseq)
                self.index.set_location(self.state.id, row.uid, location)
                row.location = location
        new_keys = sorted((key for key in listing if key not in by_key), key=delivery_order)
        if new_keys or not self.uidlist.exists:
            self._add_new(new_keys, listing)
        self.state.scan_state = stamp
        self.index.update_mailbox(self.state)

    def _ensure_uidlist(self) -> None:
        """Write dovecot-uidlist if the folder has none yet (a rewrite releases the lock)."""
        self.uidlist.refresh()
        if self.uidlist.exists:
            return
        with self.uidlist.locked() as ul:
            if not ul.exists:
                live = sorted((row.uid, row.key) for row in self._msgs.values())
                ul.create(self.state.uidvalidity, self.state.uidnext, live)

    def _add_new(self, keys: list[str], listing: dict[str, tuple[str, str]]) -> None:
        """Give UIDs to files we have not seen, from dovecot-uidlist where it knows them."""
        self._ensure_uidlist()
        if not keys:
            return
        with self.uidlist.locked() as ul:
            if not ul.exists:
                raise TemporaryFailure(f"{ul.path} vanished; try again")
            if ul.uidvalidity and ul.uidvalidity != self.state.uidvalidity:
                self._adopt_uidvalidity(ul.uidvalidity, ul.next_uid)
                keys = sorted(listing, key=delivery_order)
            assigned: list[tuple[int, str]] = []
            known_uids = set(self._msgs)
            rows: list[Row] = []
            modseq = self._next_modseq()
            for key in keys:
                uid = ul.by_key.get(key)
                if uid is None or uid in known_uids or uid < 1:
                    uid = max(self.state.uidnext, ul.next_uid)
                    assigned.append((uid, key))
                    ul.last_uid = max(ul.last_uid, uid)
                known_uids.add(uid)
                self.state.uidnext = max(self.state.uidnext, uid + 1)
                location, info = listing[key]
                row = self._row_for(key, uid, location, info, modseq)
                if row is not None:
                    rows.append(row)
            ul.append(assigned)
            self.index.insert_many(self.state.id, rows)
            self.index.update_mailbox(self.state)

    def _adopt_uidvalidity(self, uidvalidity: int, uidnext: int) -> None:
        """dovecot-uidlist was recreated elsewhere: its UIDs win, the index starts over."""
        self.index.db.execute("DELETE FROM msg WHERE mailbox=?", (self.state.id,))
        self.state.uidvalidity = uidvalidity
        self.state.uidnext = uidnext
        self.state.first_recent_uid = uidnext
        self.index.update_mailbox(self.state)
        self._msgs.clear()
        self._uids.clear()
        self._modseq = 0
        self._pending.uidvalidity_changed = True

    def _row_for(self, key: str, uid: int, location: str, info: str, modseq: int) -> Row | None:
        path = self._root_str + location  # plain strings: pathlib costs seconds at 100 000 files
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        sizes = dict(_SIZE_RE.findall(key))
        if "W" in sizes:
            size = int(sizes["W"])
        else:
            try:
                with open(path, "rb") as f:
                    size = crlf_size(f.read())
            except FileNotFoundError:
                return None
        return Row(
            uid=uid,
            key=key,
            location=location,
            flags=self._flags_of(info, None),
            size=size,
            internaldate=st.st_mtime,
            savedate=time.time(),
            modseq=modseq,
        )

    # -- reading -----------------------------------------------------------------

    def _read(self, row: Row) -> bytes:
        try:
            with open(self.path / row.location, "rb") as f:
                return f.read()
        except FileNotFoundError:
            location = self.index.location_of(self.state.id, row.uid)
            if location is None or location == row.location:
                raise
            row.location = location
            with open(self.path / location, "rb") as f:
                return f.read()

    def path_of(self, uid: int) -> Path:
        return self.path / self.info(uid).location

    # -- writing -----------------------------------------------------------------

    def _info_for(self, flags: frozenset[str], old_info: str = "") -> str:
        letters = {F.LETTER_OF[f] for f in flags if f in F.LETTER_OF}
        # letters we do not map (P, and others) are kept as they were
        letters |= {ch for ch in old_info if ch.isupper() and ch not in F.FLAG_OF}
        keywords = {f for f in flags if F.is_keyword(f)}
        kw_letters, _unmapped = self.keywords_file.letters_of(keywords, create=True) if keywords else ("", set())
        return "".join(sorted(letters)) + kw_letters

    def _append(self, data: bytes, flags: frozenset[str], internaldate: float) -> int:
        if b"\r\n" in data:
            data = data.replace(b"\r\n", b"\n")
        try:
            tmp, base = write_tmp(self.path, data, internaldate, self.store.fsync)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write message: {exc.strerror}") from exc
        info = self._info_for(flags)
        location = f"cur/{base}:2,{info}"
        try:
            os.rename(tmp, self.path / location)
        except OSError as exc:
            os.unlink(tmp)
            raise TemporaryFailure(f"cannot store message: {exc.strerror}") from exc
        return self._register(base, location, flags)

    def _register(self, base: str, location: str, flags: frozenset[str]) -> int:
        """Give a file we just placed its UID right away (APPEND needs it for APPENDUID)."""
        self._ensure_uidlist()
        with self.uidlist.locked() as ul:
            if not ul.exists:
                raise TemporaryFailure(f"{ul.path} vanished; try again")
            uid = max(self.state.uidnext, ul.next_uid)
            ul.append([(uid, base)])
            self.state.uidnext = uid + 1
            modseq = self._next_modseq()
            row = self._row_for(base, uid, location, location.partition(":2,")[2], modseq)
            if row is None:
                raise MessageGone("message vanished while being stored")
            row.flags = flags
            self.index.insert(self.state.id, row)
            self.index.update_mailbox(self.state)
        return uid

    def _copy_from(self, source: Mailbox, row: Row) -> int:
        if not isinstance(source, MaildirMailbox):
            return super()._copy_from(source, row)
        base = unique_name(*self._sizes(row))
        info = self._info_for(row.flags)
        location = f"cur/{base}:2,{info}"
        try:
            os.link(source.path / row.location, self.path / location)
        except FileNotFoundError:
            raise MessageGone(f"message UID {row.uid} was expunged") from None
        except OSError:
            return super()._copy_from(source, row)  # other filesystem: copy the bytes
        with self.index.write():
            self._refresh()
            uid = self._register(base, location, row.flags)
            self._catch_up()
        return uid

    @staticmethod
    def _sizes(row: Row) -> tuple[int | None, int]:
        sizes = dict(_SIZE_RE.findall(row.key))
        return (int(sizes["S"]) if "S" in sizes else None), row.size

    def _write_flags(self, updates: list[tuple[Row, frozenset[str]]], modseq: int) -> None:
        for row, new_flags in updates:
            location = self._rename_for_flags(row, new_flags)
            if location is None:
                continue  # expunged meanwhile: the next sync reports it
            self.index.set_flags(self.state.id, row.uid, new_flags, modseq)
            self.index.set_location(self.state.id, row.uid, location)

    def _rename_for_flags(self, row: Row, new_flags: frozenset[str]) -> str | None:
        for _attempt in range(3):
            filename = row.location.split("/", 1)[1]
            base, old_info = split_name(filename)
            location = f"cur/{base}:2,{self._info_for(new_flags, old_info)}"
            if location == row.location:
                return location
            try:
                os.rename(self.path / row.location, self.path / location)
                return location
            except FileNotFoundError:
                found = self._find(base)
                if found is None:
                    return None
                row.location = found
        raise TemporaryFailure("message file keeps moving; try again")

    def _find(self, base: str) -> str | None:
        for sub in ("cur", "new"):
            for filename in os.listdir(self.path / sub):
                if filename == base or filename.startswith(base + ":"):
                    return f"{sub}/{filename}"
        return None

    def _expunge(self, rows: list[Row]) -> None:
        modseq = self._next_modseq()
        for row in rows:
            try:
                os.unlink(self.path / row.location)
            except FileNotFoundError:
                found = self._find(row.key)
                if found is not None:
                    os.unlink(self.path / found)
            self.index.delete(self.state.id, row.uid, modseq)
        self._maybe_compact_uidlist()

    def _maybe_compact_uidlist(self) -> None:
        with self.uidlist.locked() as ul:
            live = len(self._msgs)
            if len(ul.by_key) > 1000 and len(ul.by_key) > 2 * live:
                keep = {row.key: row.uid for row in self._msgs.values()}
                ul.rewrite(keep)

    def _claim_new(self, uids: list[int]) -> None:
        for uid in uids:
            row = self._msgs.get(uid)
            if row is None or not row.location.startswith("new/"):
                continue
            filename = row.location[4:]
            location = f"cur/{filename}:2,"
            try:
                os.rename(self.path / row.location, self.path / location)
            except FileNotFoundError:
                continue
            self.index.set_location(self.state.id, uid, location)
            row.location = location


def folder_path(root: Path, name: str) -> Path:
    """Maildir++: INBOX is the root, folder A.B is ROOT/.A.B (modified UTF-7)."""
    name = names.validate(name, MaildirStore.separator)
    if name == "INBOX":
        return root
    return root / ("." + utf7.encode(name))


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir()


class MaildirStore(Store):
    """Maildir++: INBOX at the root, `.Folder.Sub` directories beside cur/new/tmp."""

    separator = "."

    def __init__(self, root: Path, index: Index, lock_timeout: float = 30.0, fsync: bool = True) -> None:
        super().__init__(index, lock_timeout, fsync)
        self.root = root
        self.ensure_maildir(root)

    @staticmethod
    def ensure_maildir(path: Path, folder: bool = False) -> None:
        for sub in SUBDIRS:
            (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        if folder and not (path / "maildirfolder").exists():
            (path / "maildirfolder").touch(mode=0o600)

    def path_of(self, name: str) -> Path:
        return folder_path(self.root, name)

    def list_folders(self) -> list[str]:
        found = ["INBOX"]
        for entry in sorted(os.listdir(self.root)):
            if not entry.startswith(".") or entry in (".", "..") or entry.startswith(".."):
                continue
            if not _is_maildir(self.root / entry):
                continue
            try:
                found.append(utf7.decode(entry[1:]))
            except ValueError:
                continue
        return found

    def exists(self, name: str) -> bool:
        return _is_maildir(self.path_of(name))

    def create(self, name: str, directory: bool = False) -> None:
        path = self.path_of(name)  # Maildir++ has no bare hierarchy levels: always a folder
        if _is_maildir(path):
            raise MailboxExists(f"mailbox {name} already exists")
        self.ensure_maildir(path, folder=True)

    def delete(self, name: str) -> None:
        name = names.validate(name, self.separator)
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        path = self.path_of(name)
        if not _is_maildir(path):
            raise MailboxNotFound(f"mailbox {name} does not exist")
        # Rename first (atomic: the folder vanishes at once), then remove at leisure.
        trash = self.root / f"..retrieval-deleted.{os.getpid()}.{time.time_ns()}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        self.index.drop_mailbox(name)

    def rename(self, old: str, new: str) -> None:
        old = names.validate(old, self.separator)
        new = names.validate(new, self.separator)
        old_path, new_path = self.path_of(old), self.path_of(new)
        if not _is_maildir(old_path):
            raise MailboxNotFound(f"mailbox {old} does not exist")
        if _is_maildir(new_path) or new_path.exists():
            raise MailboxExists(f"mailbox {new} already exists")
        if old == "INBOX":
            self._rename_inbox(new, new_path)
            return
        children = [n for n in self.list_folders() if n.startswith(old + self.separator)]
        os.rename(old_path, new_path)
        for child in children:
            os.rename(self.path_of(child), self.path_of(new + child[len(old) :]))
        with self.index.write():
            self.index.rename_mailbox(old, new)
            self.index.rename_prefix(old + self.separator, new + self.separator)
        prefix = old + self.separator
        self._edit_subscriptions(
            lambda subs: [new + s[len(old) :] if s == old or s.startswith(prefix) else s for s in subs]
        )

    def _rename_inbox(self, new: str, new_path: Path) -> None:
        """RFC 3501: renaming INBOX moves its messages; INBOX stays, empty."""
        self.create(new)
        source = self.open("INBOX")
        dest = self.open(new)
        try:
            source.move(source.uids(), dest)
        finally:
            source.close()
            dest.close()

    def open(self, name: str, readonly: bool = False) -> MaildirMailbox:
        name = names.validate(name, self.separator)
        path = self.path_of(name)
        if not _is_maildir(path):
            raise MailboxNotFound(f"mailbox {name} does not exist")
        if name == "INBOX":
            self.ensure_maildir(path)
        return MaildirMailbox(self, name, path, readonly)

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        if lines and lines[0].startswith("V\t"):
            # Dovecot 2.3 format: "V\t2\n\n" then names with the separator written as TAB
            return [line.replace("\t", self.separator) for line in lines[2:] if line]
        return [line for line in lines if line]

    def _subscriptions_lock_path(self) -> str:
        return str(self.root / ".retrieval-subscriptions.lock")

    def _write_subscriptions(self, names_: list[str]) -> None:
        path = self.root / SUBSCRIPTIONS_FILE
        tmp = path.with_name(f"{SUBSCRIPTIONS_FILE}.{os.getpid()}.tmp")
        tmp.write_text("".join(n + "\n" for n in names_), encoding="utf-8")
        os.rename(tmp, path)
