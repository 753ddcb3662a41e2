"""`dovecot-uidlist`: where a Maildir keeps its UIDs, in Dovecot's own format.

We read and write the very file Dovecot uses, with its lock, so that UIDs
survive the loss of our index, a migration from Dovecot keeps every client's
cache, and Dovecot and retrieval can even serve one Maildir side by side.

    3 V1700000000 N42 G6e1f...
    1 :1700000000.M1P2.host,S=123,W=125
    2 W2048 :1700000001.M5P9.host

Lines are appended under `dovecot-uidlist.lock`; a rewrite writes the new
contents into the lock file and renames it over the list, as Dovecot does.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.store.errors import TemporaryFailure

FILENAME = "dovecot-uidlist"
STALE_AFTER = 120.0


class UidList:
    def __init__(self, maildir: Path, lock_timeout: float = 30.0) -> None:
        self.path = maildir / FILENAME
        self.lock_path = maildir / (FILENAME + ".lock")
        self.lock_timeout = lock_timeout
        self.uidvalidity = 0
        self.header_next = 1
        self.last_uid = 0
        self.guid = ""
        self.by_key: dict[str, int] = {}
        self._ino: int | None = None
        self._offset = 0
        self._locked = False
        self._released = False

    @property
    def exists(self) -> bool:
        return self._ino is not None

    @property
    def next_uid(self) -> int:
        return max(self.header_next, self.last_uid + 1)

    def refresh(self) -> None:
        """Read what changed since last time: the tail, or everything after a rewrite."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            self._reset()
            return
        with f:
            st = os.fstat(f.fileno())
            if st.st_ino != self._ino or st.st_size < self._offset:
                self._reset()
                self._ino = st.st_ino
                data = f.read()
                first, sep, rest = data.partition(b"\n")
                if not sep:
                    return  # header still being written
                self._parse_header(first)
                self._offset = len(first) + 1
                data = rest
            else:
                f.seek(self._offset)
                data = f.read()
        complete = data.rfind(b"\n") + 1
        for line in data[:complete].split(b"\n"):
            self._parse_line(line)
        self._offset += complete

    def _reset(self) -> None:
        self.uidvalidity = 0
        self.header_next = 1
        self.last_uid = 0
        self.guid = ""
        self.by_key = {}
        self._ino = None
        self._offset = 0

    def _parse_header(self, line: bytes) -> None:
        fields = line.decode("ascii", "replace").split()
        if not fields or fields[0] not in ("1", "2", "3"):
            return
        if fields[0] == "1":  # v1: "1 uidvalidity nextuid"
            if len(fields) >= 3 and fields[1].isdigit() and fields[2].isdigit():
                self.uidvalidity, self.header_next = int(fields[1]), int(fields[2])
            return
        for field in fields[1:]:
            tag, value = field[:1], field[1:]
            if tag == "V" and value.isdigit():
                self.uidvalidity = int(value)
            elif tag == "N" and value.isdigit():
                self.header_next = int(value)
            elif tag == "G":
                self.guid = value

    def _parse_line(self, line: bytes) -> None:
        if not line:
            return
        text = line.decode("utf-8", "surrogateescape")
        uid_text, _, rest = text.partition(" ")
        if not uid_text.isdigit():
            return
        colon = rest.find(":")
        if colon >= 0:
            key = rest[colon + 1 :]
        else:  # v1 lines: "uid filename"
            key = rest.split(" ")[-1]
        key = key.split(":2,", 1)[0]
        if not key:
            return
        uid = int(uid_text)
        self.by_key[key] = uid
        if uid > self.last_uid:
            self.last_uid = uid

    # -- writing (only inside locked()) --------------------------------------

    @contextmanager
    def locked(self) -> Iterator[UidList]:
        """Hold Dovecot's dotlock and give an up-to-date view."""
        if self._locked:
            yield self
            return
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                try:
                    age = time.time() - os.stat(self.lock_path).st_mtime
                    if age > STALE_AFTER:
                        os.unlink(self.lock_path)
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise TemporaryFailure(f"timed out waiting for {self.lock_path}") from None
                time.sleep(0.01)
        os.close(fd)
        self._locked = True
        self._released = False
        try:
            self.refresh()
            yield self
        finally:
            self._locked = False
            if not self._released:
                try:
                    os.unlink(self.lock_path)
                except FileNotFoundError:
                    pass

    def create(self, uidvalidity: int, next_uid: int = 1, entries: list[tuple[int, str]] = ()) -> None:  # type: ignore[assignment]
        assert self._locked
        self.uidvalidity = uidvalidity
        self.header_next = next_uid
        self.guid = self.guid or uuid.uuid4().hex
        self._rewrite(entries)

    def append(self, entries: list[tuple[int, str]]) -> None:
        """Record new (uid, key) pairs; uids must be >= next_uid."""
        assert self._locked and not self._released, "append needs the lock (a rewrite released it)"
        if not entries:
            return
        if not self.exists:
            raise AssertionError("append before create")
        text = "".join(f"{uid} :{key}\n" for uid, key in entries)
        with open(self.path, "ab") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        for uid, key in entries:
            self.by_key[key] = uid
            self.last_uid = max(self.last_uid, uid)
        self._offset = size

    def rewrite(self, live: dict[str, int]) -> None:
        """Drop entries of expunged messages (keeps the file small)."""
        assert self._locked
        self._rewrite(sorted((uid, key) for key, uid in live.items()))

    def _rewrite(self, entries: list[tuple[int, str]] | tuple) -> None:
        next_uid = max([self.next_uid] + [uid + 1 for uid, _ in entries])
        lines = [f"3 V{self.uidvalidity} N{next_uid} G{self.guid}\n"]
        lines.extend(f"{uid} :{key}\n" for uid, key in entries)
        data = "".join(lines).encode("utf-8", "surrogateescape")
        # Dovecot's file_dotlock_replace(): the new contents go into the lock file,
        # which is then renamed over the list while we still hold the lock.
        with open(self.lock_path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(self.lock_path, self.path)  # this also releases the lock
        self._released = True
        self._reset()
        self.refresh()
