"""The mail queue on disk: what the relay accepted and has not yet delivered.

Everything here is BLOCKING file work (fsync); the server calls it in threads.

Layout under `[smtp] queue_dir` (default STATE_DIR/queue), after Postfix's:

    tmp/        files being written; what a crash leaves here was never confirmed
    active/ID   one file per accepted message: a JSON line (the envelope), then
                the message as received (CRLF). Written in tmp/, fsynced, renamed
                here and the directory fsynced: that rename is the commit point,
                made before the client hears 250. Never changed afterwards.
    log/ID      what happened to it since, as JSON lines appended: done,
                failed and deferred targets, attempts, warnings sent
    hold/ID     messages the admin put on hold (`retrieval queue hold`)
    maildrop/   `retrieval sendmail` drops files here (mode 1733) for the relay
    corrupt/    queue files that cannot be read, kept for the admin

A message leaves the queue when every recipient is final: its log is removed
first, then the queue file. A crash in between leaves a queue file without
log, which is retried: local copies carry the queue id in their name, so a
retry finds them and does not deliver twice (store/deliver.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.smtp.local import new_queue_id
from retrieval.store.maildir import fsync_dir

FORMAT = 1
_SUBDIRS = ("tmp", "active", "log", "hold", "corrupt")


class QueueError(Exception):
    """A queue file that cannot be read: moved to corrupt/ by the caller."""


@dataclass(frozen=True)
class QueuedRecipient:
    address: str
    notify: tuple[str, ...] | None = None  # RFC 3461 NOTIFY; None: not given
    orcpt: str | None = None  # "rfc822;addr" as given

    def to_json(self) -> dict:
        return {"address": self.address, "notify": list(self.notify) if self.notify is not None else None,
                "orcpt": self.orcpt}

    @classmethod
    def from_json(cls, data: dict) -> QueuedRecipient:
        notify = data.get("notify")
        return cls(str(data["address"]), tuple(notify) if notify is not None else None, data.get("orcpt"))


@dataclass(frozen=True)
class Meta:
    """The envelope of a queued message, as accepted."""

    id: str
    sender: str  # "" for the null sender
    recipients: tuple[QueuedRecipient, ...]
    arrival: float
    envid: str | None = None
    ret: str | None = None  # "FULL" / "HDRS" / None
    smtputf8: bool = False
    body: str | None = None  # "8BITMIME" / "7BIT" / None
    client: str = ""  # who handed it to us, for logs: "ip name" or "uid 1000"
    junk: bool = False  # the content filter said spam and the site files it into Junk
    origin: str = "smtp"  # "smtp", "sendmail", "report"

    def to_json(self) -> str:
        data = {
            "v": FORMAT, "id": self.id, "sender": self.sender,
            "recipients": [r.to_json() for r in self.recipients], "arrival": self.arrival,
            "envid": self.envid, "ret": self.ret, "smtputf8": self.smtputf8, "body": self.body,
            "client": self.client, "junk": self.junk, "origin": self.origin,
        }
        return json.dumps(data, ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: bytes) -> Meta:
        try:
            data = json.loads(line)
            if data.get("v") != FORMAT:
                raise QueueError(f"unknown queue file version {data.get('v')!r}")
            return cls(
                id=str(data["id"]), sender=str(data["sender"]),
                recipients=tuple(QueuedRecipient.from_json(r) for r in data["recipients"]),
                arrival=float(data["arrival"]), envid=data.get("envid"), ret=data.get("ret"),
                smtputf8=bool(data.get("smtputf8")), body=data.get("body"), client=str(data.get("client", "")),
                junk=bool(data.get("junk")), origin=str(data.get("origin", "smtp")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise QueueError(f"bad envelope line: {exc}") from exc


@dataclass
class Outcome:
    """The last word on one target: (code, status, text) and the remote host if any."""

    code: int
    status: str
    text: str
    mta: str | None = None
    time: float = 0.0
    dsn: bool = False  # relayed to a host that took the DSN request on (RFC 3461 section 5.2.2)

    @property
    def final(self) -> bool:
        return self.code < 400 or self.code >= 500


@dataclass
class State:
    """The log of one message, replayed."""

    done: dict[str, tuple[str, Outcome]] = field(default_factory=dict)  # target key -> (recipient, 2xx)
    failed: dict[str, tuple[str, Outcome]] = field(default_factory=dict)  # target key -> (recipient, 5xx)
    deferred: dict[str, tuple[str, Outcome]] = field(default_factory=dict)  # target key -> (recipient, 4xx)
    final_recipients: dict[str, Outcome] = field(default_factory=dict)  # recipient -> outcome of its expansion
    attempts: int = 0
    next_attempt: float = 0.0
    warned: bool = False
    reported: bool = False

    def apply(self, record: dict) -> None:
        kind = record.get("k")
        if kind == "target":
            outcome = Outcome(*record["r"], mta=record.get("mta"), time=record.get("t", 0.0),
                              dsn=bool(record.get("dsn")))
            key, rcpt = record["key"], record.get("rcpt", "")
            self.deferred.pop(key, None)
            if outcome.code < 400:
                self.done[key] = (rcpt, outcome)
                self.failed.pop(key, None)
            elif outcome.code >= 500:
                self.failed[key] = (rcpt, outcome)
            else:
                self.deferred[key] = (rcpt, outcome)
        elif kind == "recipient":
            self.final_recipients[record["rcpt"]] = Outcome(*record["r"], time=record.get("t", 0.0))
        elif kind == "attempt":
            self.attempts = int(record["n"])
            self.next_attempt = float(record["next"])
        elif kind == "warned":
            self.warned = True
        elif kind == "reported":
            self.reported = True


class Queue:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self.fsync = fsync

    def create(self) -> None:
        """Make the folders (idempotent); maildrop is writable by anyone, listable by none."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in _SUBDIRS:
            (self.root / sub).mkdir(exist_ok=True, mode=0o700)
        maildrop = self.root / "maildrop"
        maildrop.mkdir(exist_ok=True)
        os.chmod(maildrop, 0o1733)
        os.chmod(self.root, 0o711)  # others may reach maildrop/, not read the rest

    def path(self, where: str, queue_id: str) -> Path:
        return Path(self._path(where, queue_id))

    def _path(self, where: str, queue_id: str) -> str:
        """`path` as a string: the per-message calls (a few per message) skip pathlib."""
        if not queue_id or "/" in queue_id or queue_id.startswith("."):
            raise QueueError(f"bad queue id {queue_id!r}")
        return f"{self._root}/{where}/{queue_id}"

    # -- writing ----------------------------------------------------------------------

    def enqueue(self, meta: Meta, data: bytes) -> str:
        """Commit a message: on return it is on disk and will be delivered (or bounced)."""
        os.close(self.enqueue_locked(meta, data))
        return meta.id

    def enqueue_locked(self, meta: Meta, data: bytes) -> int:
        """`enqueue`, returning an fd that holds the queue file's lock (as `lock` gives).

        The lock is taken before the file appears in active/, so no other runner
        (another worker's scan) can start on it: the caller may deliver at once,
        knowing there is no log to replay and no copy delivered before."""
        tmp = f"{self._root}/tmp/{meta.id}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, meta.to_json().encode("ascii") + b"\n")
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh inode: nobody else can hold it
            os.rename(tmp, self._path("active", meta.id))
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        try:
            if self.fsync:
                fsync_dir(f"{self._root}/active")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def log(self, queue_id: str, record: dict, sync: bool = False) -> None:
        """Append one record; `sync` when forgetting it would deliver something twice."""
        self.log_many(queue_id, [record], sync)

    def log_many(self, queue_id: str, records: list[dict], sync: bool = False) -> None:
        """Append records in one write (in order); `sync` as for `log`."""
        line = b"".join(json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
                        for record in records)
        fd = os.open(self._path("log", queue_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_all(fd, line)
            if sync and self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, queue_id: str, logged: bool = True) -> None:
        """Done with it: the log goes first, so a crash in between means a retry, never a loss.

        `logged=False`: the caller knows no log was written (one unlink less)."""
        if logged:
            _unlink(self._path("log", queue_id))
        for where in ("active", "hold"):
            _unlink(self._path(where, queue_id))

    # -- reading ----------------------------------------------------------------------

    def ids(self, where: str = "active") -> list[str]:
        try:
            return sorted(name for name in os.listdir(self.root / where) if not name.startswith("."))
        except FileNotFoundError:
            return []

    def where(self, queue_id: str) -> str | None:
        for where in ("active", "hold", "corrupt"):
            if self.path(where, queue_id).exists():
                return where
        return None

    def read(self, queue_id: str, where: str = "active", with_data: bool = True) -> tuple[Meta, bytes]:
        path = self.path(where, queue_id)
        with open(path, "rb") as f:
            line = f.readline()
            meta = Meta.from_json(line)
            data = f.read() if with_data else b""
        if meta.id != queue_id:
            raise QueueError(f"{path}: envelope names {meta.id!r}")
        return meta, data

    def state(self, queue_id: str) -> State:
        state = State()
        try:
            with open(self.path("log", queue_id), "rb") as f:
                for line in f:
                    try:
                        state.apply(json.loads(line))
                    except (ValueError, KeyError, TypeError, IndexError):
                        continue  # a torn last line after a crash: that record never happened
        except FileNotFoundError:
            pass
        return state

    def lock(self, queue_id: str) -> int | None:
        """An fd holding an exclusive lock on the queue file, or None when another
        process is working on it (or it is gone). Close the fd to unlock."""
        try:
            fd = os.open(self._path("active", queue_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    # -- admin --------------------------------------------------------------------------

    def move(self, queue_id: str, src: str, dst: str) -> bool:
        try:
            os.rename(self.path(src, queue_id), self.path(dst, queue_id))
        except FileNotFoundError:
            return False
        return True

    def corrupt(self, queue_id: str, where: str = "active") -> None:
        self.move(queue_id, where, "corrupt")

    def sweep_tmp(self, older_than: float = 3600.0) -> int:
        """Drop what crashed writers left in tmp/ (never confirmed to anyone)."""
        removed = 0
        now = time.time()
        for name in self.ids("tmp"):
            if name.endswith(".pickup"):
                continue  # a sendmail drop being taken: maildrop.return_stale_claims
            path = self.root / "tmp" / name
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def entries(self) -> Iterator[tuple[str, str]]:
        for where in ("active", "hold"):
            for queue_id in self.ids(where):
                yield where, queue_id


def new_meta(sender: str, recipients: list[QueuedRecipient], **kw) -> Meta:  # type: ignore[no-untyped-def]
    return Meta(id=kw.pop("id", None) or new_queue_id(), sender=sender, recipients=tuple(recipients),
                arrival=kw.pop("arrival", None) or time.time(), **kw)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
