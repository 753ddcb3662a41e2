"""The per-user index: a SQLite (WAL) cache of what the mail files say.

Files are the truth: every row here can be rebuilt by scanning the folders,
except UIDs and modseqs, which are also written where the files keep them
(`dovecot-uidlist` for Maildir, `X-UID` headers for mbox). Several processes
may share one index; SQLite's write lock (BEGIN IMMEDIATE) serializes syncs.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS mailbox(
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    first_recent_uid INTEGER NOT NULL,
    scan_state TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS msg(
    mailbox INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    location TEXT NOT NULL,
    flags TEXT NOT NULL,
    size INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    savedate REAL NOT NULL,
    modseq INTEGER NOT NULL,
    header BLOB,
    PRIMARY KEY(mailbox, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS msg_modseq ON msg(mailbox, modseq);
CREATE TABLE IF NOT EXISTS expunged(
    mailbox INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged(mailbox, modseq);
"""


@dataclass
class Row:
    """One message as the index knows it.

    `key` identifies the message across renames (Maildir base name, or mbox
    identity); `location` says where its bytes are (Maildir `cur/NAME:2,FS`,
    or mbox `from_offset header_offset end_offset`).
    """

    uid: int
    key: str
    location: str
    flags: frozenset[str]
    size: int
    internaldate: float
    savedate: float
    modseq: int


@dataclass
class MailboxState:
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    first_recent_uid: int
    scan_state: str


def new_uidvalidity() -> int:
    """Dovecot uses the creation time; keep that convention (fits 32 bits until 2106)."""
    return int(time.time()) & 0xFFFFFFFF or 1


class Index:
    """One SQLite connection to a user's index; not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
        self._retry_busy(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._depth = 0
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # every login opens the index: skip the schema once it is there
        with self.write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),)
            )
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @staticmethod
    def _retry_busy(action) -> None:  # type: ignore[no-untyped-def]
        """Switching to WAL returns SQLITE_BUSY at once (no busy handler) while another
        process creates the same index: wait and try again."""
        deadline = time.monotonic() + 60
        while True:
            try:
                action()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # -- mailboxes ---------------------------------------------------------

    def mailbox(self, name: str) -> MailboxState | None:
        row = self.db.execute(
            "SELECT id, name, uidvalidity, uidnext, highestmodseq, first_recent_uid, scan_state"
            " FROM mailbox WHERE name=?",
            (name,),
        ).fetchone()
        return MailboxState(*row) if row else None

    def fresh_uidvalidity(self) -> int:
        """A UIDVALIDITY never given before by this index: a folder deleted and created
        again within the same second must not look like the old one (RFC 3501 2.3.1.1)."""
        with self.write():
            row = self.db.execute("SELECT value FROM meta WHERE key='last_uidvalidity'").fetchone()
            last = int(row[0]) if row else 0
            value = max(new_uidvalidity(), last + 1)
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('last_uidvalidity', ?)", (str(value),))
        return value

    def create_mailbox(self, name: str, uidvalidity: int, uidnext: int = 1) -> MailboxState:
        with self.write():
            self.db.execute(
                "INSERT INTO mailbox(name, uidvalidity, uidnext, highestmodseq, first_recent_uid)"
                " VALUES(?, ?, ?, 1, ?)",
                (name, uidvalidity, uidnext, uidnext),
            )
        state = self.mailbox(name)
        assert state is not None
        return state

    def drop_mailbox(self, name: str) -> None:
        with self.write():
            state = self.mailbox(name)
            if state is None:
                return
            for table in ("msg", "expunged"):
                self.db.execute(f"DELETE FROM {table} WHERE mailbox=?", (state.id,))
            self.db.execute("DELETE FROM mailbox WHERE id=?", (state.id,))

    def rename_mailbox(self, old: str, new: str) -> None:
        with self.write():
            self.db.execute("DELETE FROM mailbox WHERE name=?", (new,))
            self.db.execute("UPDATE mailbox SET name=? WHERE name=?", (new, old))

    def rename_prefix(self, old_prefix: str, new_prefix: str) -> None:
        """Rename every mailbox under old_prefix (children of a renamed folder)."""
        with self.write():
            rows = self.db.execute(
                "SELECT name FROM mailbox WHERE substr(name, 1, ?) = ?", (len(old_prefix), old_prefix)
            ).fetchall()
            for (name,) in rows:
                self.rename_mailbox(name, new_prefix + name[len(old_prefix) :])

    def update_mailbox(self, state: MailboxState) -> None:
        self.db.execute(
            "UPDATE mailbox SET uidvalidity=?, uidnext=?, highestmodseq=?, first_recent_uid=?, scan_state=?"
            " WHERE id=?",
            (
                state.uidvalidity,
                state.uidnext,
                state.highestmodseq,
                state.first_recent_uid,
                state.scan_state,
                state.id,
            ),
        )

    # -- messages ----------------------------------------------------------

    def rows(self, mailbox_id: int, since_modseq: int = 0) -> list[Row]:
        cur = self.db.execute(
            "SELECT uid, key, location, flags, size, internaldate, savedate, modseq FROM msg"
            " WHERE mailbox=? AND modseq>? ORDER BY +uid",  # "+": let SQLite use msg_modseq
            (mailbox_id, since_modseq),
        )
        return [Row(u, k, loc, frozenset(f.split()) if f else frozenset(), s, d, sd, m) for u, k, loc, f, s, d, sd, m in cur]

    def expunged_since(self, mailbox_id: int, since_modseq: int) -> list[tuple[int, int]]:
        """(uid, modseq) of messages expunged after `since_modseq`."""
        return self.db.execute(
            "SELECT uid, modseq FROM expunged WHERE mailbox=? AND modseq>? ORDER BY uid", (mailbox_id, since_modseq)
        ).fetchall()

    def insert(self, mailbox_id: int, row: Row) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO msg(mailbox, uid, key, location, flags, size, internaldate, savedate, modseq)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                mailbox_id,
                row.uid,
                row.key,
                row.location,
                " ".join(sorted(row.flags)),
                row.size,
                row.internaldate,
                row.savedate,
                row.modseq,
            ),
        )

    def insert_many(self, mailbox_id: int, rows: list[Row]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO msg(mailbox, uid, key, location, flags, size, internaldate, savedate, modseq)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (mailbox_id, r.uid, r.key, r.location, " ".join(sorted(r.flags)), r.size, r.internaldate,
                 r.savedate, r.modseq)
                for r in rows
            ],
        )

    def set_flags(self, mailbox_id: int, uid: int, flags: frozenset[str], modseq: int) -> None:
        self.db.execute(
            "UPDATE msg SET flags=?, modseq=? WHERE mailbox=? AND uid=?",
            (" ".join(sorted(flags)), modseq, mailbox_id, uid),
        )

    def set_location(self, mailbox_id: int, uid: int, location: str) -> None:
        self.db.execute("UPDATE msg SET location=? WHERE mailbox=? AND uid=?", (location, mailbox_id, uid))

    def location_of(self, mailbox_id: int, uid: int) -> str | None:
        row = self.db.execute("SELECT location FROM msg WHERE mailbox=? AND uid=?", (mailbox_id, uid)).fetchone()
        return row[0] if row else None

    def delete(self, mailbox_id: int, uid: int, modseq: int) -> None:
        self.db.execute("DELETE FROM msg WHERE mailbox=? AND uid=?", (mailbox_id, uid))
        self.db.execute("INSERT INTO expunged(mailbox, uid, modseq) VALUES(?, ?, ?)", (mailbox_id, uid, modseq))

    def count(self, mailbox_id: int) -> int:
        return self.db.execute("SELECT count(*) FROM msg WHERE mailbox=?", (mailbox_id,)).fetchone()[0]

    def header(self, mailbox_id: int, uid: int) -> bytes | None:
        row = self.db.execute("SELECT header FROM msg WHERE mailbox=? AND uid=?", (mailbox_id, uid)).fetchone()
        return row[0] if row else None

    def set_headers(self, items: list[tuple[bytes, int, int]]) -> None:
        """(header, mailbox id, uid) triples, in one transaction."""
        with self.write():
            self.db.executemany("UPDATE msg SET header=? WHERE mailbox=? AND uid=?", items)


def index_path(state_dir: Path, user: str, explicit_dir: Path | None) -> Path:
    """Where a user's index lives: INDEX= from mail_location, else state_dir/index/USER."""
    if explicit_dir is not None:
        return explicit_dir / "retrieval.index.sqlite"
    safe = user.replace("/", "_").replace(os.sep, "_")
    if safe.startswith("."):
        safe = "_" + safe
    return state_dir / "index" / safe / "retrieval.index.sqlite"
