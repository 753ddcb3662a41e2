"""POP3 over Twisted: a thin adapter between sockets and `Pop3Session`.

The adapter moves bytes, starts TLS, keeps the idle timer, and runs the
slow parts (password hashing, opening the store, reading a message,
committing deletions) in the reactor's thread pool so that one slow
session never stalls the others.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from retrieval.auth.checker import cram_md5_possible, verify_deferred
from retrieval.config import Config
from retrieval.logline import SessionLog
from retrieval.net.drain import SESSIONS
from retrieval.net.listen import Listener
from retrieval.net.tls import options_from_config
from retrieval.pop3 import session as S
from retrieval.store import MessageGone, StoreError, open_user_store
from retrieval.store import flags as F

log = Logger(namespace="retrieval.pop3")
INLINE_READ = 128 * 1024  # messages up to this size are read on the reactor thread


class MaildropLocks:
    """RFC 1939: one POP3 session per maildrop. fcntl locks keep other processes out;
    they are per process, so sessions of this process are counted here too."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[int, str] = {}
        self._mutex = threading.Lock()

    def acquire(self, user: str) -> int | None:
        with self._mutex:
            if user in self._held.values():
                return None
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            safe = user.replace("/", "_")
            fd = os.open(self.directory / f"{safe}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            self._held[fd] = user
            return fd

    def release(self, fd: int) -> None:
        with self._mutex:
            self._held.pop(fd, None)
            os.close(fd)  # closing drops the fcntl lock


class Maildrop:
    """What a logged-in session holds: the lock, the store, the INBOX view."""

    def __init__(self, config: Config, locks: MaildropLocks, record) -> None:  # type: ignore[no-untyped-def]
        self.locks = locks
        self.lock_fd: int | None = locks.acquire(record.name)
        if self.lock_fd is None:
            raise MaildropBusy()
        try:
            self.store = open_user_store(config, record)
            self.box = self.store.open("INBOX")
        except BaseException:
            locks.release(self.lock_fd)
            self.lock_fd = None
            raise

    def listing(self) -> tuple[int, list[tuple[int, int]]]:
        return self.box.uidvalidity, [(row.uid, row.size) for row in self.box.messages()]

    def commit(self, delete: tuple[int, ...], seen: tuple[int, ...]) -> None:
        if seen:
            self.box.store_flags(seen, [F.SEEN], "add")
        if delete:
            self.box.store_flags(delete, [F.DELETED], "add")
            self.box.expunge(delete)

    def close(self) -> None:
        try:
            self.box.close()
            self.store.close()
        finally:
            if self.lock_fd is not None:
                self.locks.release(self.lock_fd)
                self.lock_fd = None


class MaildropBusy(Exception):
    pass


class Pop3Protocol(Protocol, TimeoutMixin):
    def __init__(self, factory: Pop3Factory, tls_active: bool) -> None:
        self.factory = factory
        self.tls_active = tls_active
        self.maildrop: Maildrop | None = None
        self.closed = False
        self.draining = False

    def connectionMade(self) -> None:
        f = self.factory
        policy = S.Policy(
            hostname=f.config.server.hostname,
            tls_active=self.tls_active,
            tls_available=f.tls is not None,
            allow_plaintext=f.config.auth.allow_plaintext,
            cram_md5=cram_md5_possible(f.passwd),
            uidl_format=f.config.pop3.uidl_format,
            max_bad_commands=f.config.pop3.max_bad_commands,
        )
        self.session = S.Pop3Session(policy)
        self.slog = SessionLog("pop3", log, self.transport)
        self.slog.connect(self.tls_active)
        self.fetched = 0
        self.deleted = 0
        self.setTimeout(f.config.pop3.idle_timeout)
        self._handle(self.session.greeting())
        SESSIONS.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.slog.bytes_in += len(data)
        if self.closed:
            return
        self._handle(self.session.feed(data))

    def timeoutConnection(self) -> None:
        self.slog.reason = "idle-timeout"
        self.transport.write(b"-ERR Disconnected for inactivity.\r\n")
        self.transport.loseConnection()

    def drain(self) -> None:
        """Server stop: answer the command being carried out, then say so and close.

        Deletions are committed only by QUIT (RFC 1939 UPDATE state): closing here
        releases the maildrop with every message still in it."""
        self.draining = True
        self._bye_if_quiet()

    def _bye_if_quiet(self) -> None:
        if self.draining and not self.closed and not self.session.waiting and self.session.state != "closed":
            self.slog.reason = "shutdown"
            self.closed = True
            self.transport.write(b"-ERR [SYS/TEMP] Server shutting down; no message was deleted.\r\n")
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
        SESSIONS.remove(self)
        self.closed = True
        self.setTimeout(None)
        self.slog.disconnect(reason, fetched=self.fetched, deleted=self.deleted)
        if self.maildrop is not None:
            maildrop, self.maildrop = self.maildrop, None
            threads.deferToThread(maildrop.close).addErrback(lambda f: log.failure("closing maildrop", f))

    # -- events -------------------------------------------------------------

    def _handle(self, events: list[S.Event]) -> None:
        for event in events:
            if self.closed:
                return
            if isinstance(event, S.Send):
                self.slog.bytes_out += len(event.data)
                self.transport.write(event.data)
            elif isinstance(event, S.Close):
                self.slog.reason = self.slog.reason or "closed"
                self.transport.loseConnection()
            elif isinstance(event, S.StartTLS):
                self.slog.starttls()
                self.transport.startTLS(self.factory.tls)
                self.tls_active = True
                self.session.tls_started()
            elif isinstance(event, S.Authenticate):
                self._authenticate(event)
            elif isinstance(event, S.OpenMaildrop):
                self._open(event)
            elif isinstance(event, S.Retrieve):
                self._retrieve(event)
            elif isinstance(event, S.Commit):
                self._commit(event)

    def _later(self, call):  # type: ignore[no-untyped-def]
        """Deliver a thread's answer only if the client is still there."""

        def deliver(result):  # type: ignore[no-untyped-def]
            if not self.closed:
                self._handle(call(result))
                self._bye_if_quiet()

        return deliver

    def _authenticate(self, event: S.Authenticate) -> None:
        peer = self.transport.getPeer()
        d = verify_deferred(self.factory.passwd, event.credentials, getattr(peer, "host", None))

        def done(record):  # type: ignore[no-untyped-def]
            if record is None:
                self.slog.auth_failed(event.credentials)
                from twisted.internet import reactor

                reactor.callLater(self.factory.config.auth.failure_delay, self._later(self.session.auth_done), None)
            else:
                if not self.closed:
                    self.slog.login(record.name, event.credentials)
                self._later(self.session.auth_done)(record)

        d.addCallback(done)
        d.addErrback(self._internal_error)

    def _open(self, event: S.OpenMaildrop) -> None:
        d = threads.deferToThread(Maildrop, self.factory.config, self.factory.locks, event.user)

        def opened(maildrop: Maildrop) -> None:
            if self.closed:
                threads.deferToThread(maildrop.close)
                return
            self.maildrop = maildrop
            d2 = threads.deferToThread(maildrop.listing)
            d2.addCallback(lambda listing: self._later(lambda l: self.session.open_done(*l))(listing))
            d2.addErrback(failed)

        def failed(failure) -> None:  # type: ignore[no-untyped-def]
            if failure.check(MaildropBusy):
                self._later(lambda _: self.session.open_failed("IN-USE", "Mailbox is locked by another POP3 session."))(None)
                return
            log.failure("opening maildrop", failure)
            self._later(lambda _: self.session.open_failed("SYS/TEMP", "Cannot open the mailbox; try again later."))(None)

        d.addCallbacks(opened, failed)

    def _retrieve(self, event: S.Retrieve) -> None:
        assert self.maildrop is not None
        self.fetched += 1
        box = self.maildrop.box
        if event.uid in box and box.info(event.uid).size <= INLINE_READ:
            # A small read from the page cache costs less than the hop to a thread and back.
            try:
                data = box.read_crlf(event.uid)
            except MessageGone:
                self._handle(self.session.retrieve_failed("Message was expunged by another session."))
                return
            self._handle(self.session.retrieve_done(data))
            return
        d = threads.deferToThread(box.read_crlf, event.uid)
        d.addCallback(self._later(self.session.retrieve_done))

        def failed(failure) -> None:  # type: ignore[no-untyped-def]
            if failure.check(MessageGone):
                self._later(self.session.retrieve_failed)("Message was expunged by another session.")
            else:
                log.failure("reading a message", failure)
                self._later(self.session.retrieve_failed)("Cannot read the message.")

        d.addErrback(failed)

    def _commit(self, event: S.Commit) -> None:
        assert self.maildrop is not None
        maildrop, self.maildrop = self.maildrop, None

        def commit_and_close() -> None:
            try:
                maildrop.commit(event.delete, event.seen)
            finally:
                maildrop.close()

        d = threads.deferToThread(commit_and_close)
        def committed(_) -> None:  # type: ignore[no-untyped-def]
            self.deleted = len(event.delete)
            if not self.closed:
                self._handle(self.session.commit_done(True))

        d.addCallback(committed)

        def failed(failure) -> None:  # type: ignore[no-untyped-def]
            log.failure("committing POP3 changes", failure)
            if not self.closed:
                text = failure.getErrorMessage() if failure.check(StoreError) else "internal error"
                self._handle(self.session.commit_done(False, text))

        d.addErrback(failed)

    def _internal_error(self, failure) -> None:  # type: ignore[no-untyped-def]
        log.failure("pop3 session", failure)
        if not self.closed:
            self.transport.write(b"-ERR [SYS/TEMP] Internal error.\r\n")
            self.transport.loseConnection()


class Pop3Factory(Factory):
    noisy = False

    def __init__(self, config: Config, passwd, tls, implicit_tls: bool) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.passwd = passwd
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.locks = MaildropLocks(config.server.state_dir / "pop3-locks")

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return Pop3Protocol(self, self.implicit_tls)


def listeners(config: Config, passwd, reactor) -> list[Listener]:  # type: ignore[no-untyped-def]
    """pop3 (STLS) and pop3s (implicit TLS)."""
    tls = options_from_config(config)
    return [
        Listener("pop3", Pop3Factory(config, passwd, tls, implicit_tls=False), config.pop3.listen),
        Listener("pop3s", Pop3Factory(config, passwd, tls, implicit_tls=True), config.pop3.listen_tls, tls),
    ]
