"""IMAP over Twisted: a thin adapter between sockets and `ImapSession`.

Bytes in, events out; Jobs (store work) run in the reactor's thread pool,
one at a time per session; password checks run off the reactor too.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from retrieval.auth.checker import cram_md5_possible, verify_deferred
from retrieval.config import Config
from retrieval.imap import ast
from retrieval.imap import session as S
from retrieval.imap.notify import Watcher
from retrieval.logline import SessionLog
from retrieval.net.drain import SESSIONS
from retrieval.net.listen import Listener
from retrieval.net.tls import options_from_config
from retrieval.store import open_user_store

log = Logger(namespace="retrieval.imap")
IDLE_POLL = 30.0  # seconds: a safety net under inotify


class ImapProtocol(Protocol, TimeoutMixin):
    def __init__(self, factory: ImapFactory, tls_active: bool) -> None:
        self.factory = factory
        self.tls_active = tls_active
        self.closed = False
        self.counted: tuple[str, str] | None = None
        self._poll = None
        self._inflight = 0  # store jobs and password checks out (a command being carried out)
        self.draining = False

    def connectionMade(self) -> None:
        f = self.factory
        c = f.config
        policy = S.Policy(
            hostname=c.server.hostname,
            tls_active=self.tls_active,
            tls_available=f.tls is not None,
            allow_plaintext=c.auth.allow_plaintext,
            cram_md5=cram_md5_possible(f.passwd),
            limits=ast.Limits(max_line=c.imap.max_line, max_literal=c.imap.max_literal),
            special_use=c.imap.special_use,
        )
        self.session = S.ImapSession(policy, lambda record: open_user_store(c, record))
        self.slog = SessionLog("imap", log, self.transport)
        self.slog.connect(self.tls_active)
        self.setTimeout(c.imap.idle_timeout)
        self._handle(self.session.greeting())
        SESSIONS.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.slog.bytes_in += len(data)
        if not self.closed:
            self._handle(self.session.feed(data))
            self._bye_if_quiet()

    def timeoutConnection(self) -> None:
        self.slog.reason = "idle-timeout"
        self.transport.write(b"* BYE Disconnected for inactivity.\r\n")
        self.transport.loseConnection()

    def drain(self) -> None:
        """Server stop: `* BYE` now if quiet (IDLE counts as quiet), else after the command."""
        self.draining = True
        self._bye_if_quiet()

    def _bye_if_quiet(self) -> None:
        if self.draining and not self.closed and self._inflight == 0 and not self.session.reader.mid_command:
            self.slog.reason = "shutdown"
            self.closed = True  # no further command is read
            self.transport.write(b"* BYE Server shutting down.\r\n")
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
        SESSIONS.remove(self)
        self.closed = True
        self.setTimeout(None)
        self._stop_idle()
        if self.counted is not None:
            self.factory.per_user[self.counted] -= 1
            self.counted = None
        cleanup = self.session.connection_lost()
        self.slog.disconnect(reason)
        threads.deferToThread(cleanup).addErrback(lambda f: log.failure("closing an IMAP session", f))

    # -- events --------------------------------------------------------------------

    def _handle(self, events: list) -> None:
        for event in events:
            if self.closed:
                return
            if isinstance(event, S.Send):
                self.slog.bytes_out += len(event.data)
                self.transport.write(event.data)
            elif isinstance(event, S.Close):
                self.slog.reason = self.slog.reason or "closed"
                self.closed = True  # LOGOUT's or the error's BYE is said: no other
                self.transport.loseConnection()
            elif isinstance(event, S.StartTLS):
                self.slog.starttls()
                self.transport.startTLS(self.factory.tls)
                self.tls_active = True
                self._handle(self.session.tls_started())
            elif isinstance(event, S.Job):
                self._run(event)
            elif isinstance(event, S.Authenticate):
                self._authenticate(event)
            elif isinstance(event, S.IdleStart):
                self._start_idle(event)
            elif isinstance(event, S.IdleStop):
                self._stop_idle()

    def _run(self, job: S.Job) -> None:
        self._inflight += 1
        d = threads.deferToThread(job.run)

        def done(events: list) -> None:
            self._inflight -= 1
            if self.closed:
                return
            self._handle(events)
            if self.draining:  # the command is answered: no next one
                self._bye_if_quiet()
            elif not self.closed:
                self._handle(self.session.job_done())

        def failed(failure) -> None:  # type: ignore[no-untyped-def]
            self._inflight -= 1
            log.failure("IMAP command", failure)
            if not self.closed:
                self.transport.write(b"* BYE Internal error; please reconnect.\r\n")
                self.transport.loseConnection()

        d.addCallbacks(done, failed)

    def _authenticate(self, event: S.Authenticate) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "")
        self._inflight += 1
        d = verify_deferred(self.factory.passwd, event.credentials, host)

        def verified(record) -> None:  # type: ignore[no-untyped-def]
            if record is None:
                self.slog.auth_failed(event.credentials)  # also when the client has gone: fail2ban counts it
                if self.closed:
                    self._inflight -= 1
                    return
                from twisted.internet import reactor

                reactor.callLater(self.factory.config.auth.failure_delay, self._deliver_auth, None)
                return
            if self.closed:
                self._inflight -= 1
                return
            key = (record.name, host)
            limit = self.factory.config.imap.max_connections_per_user_ip
            if self.factory.per_user[key] >= limit:
                self.slog.refused(record.name, "max-connections-per-user-ip")
                self._inflight -= 1
                self.transport.write(b"* BYE [LIMIT] Too many connections from your IP address.\r\n")
                self.transport.loseConnection()
                return
            self.factory.per_user[key] += 1
            self.counted = key
            self.slog.login(record.name, event.credentials)
            self._deliver_auth(record)

        def broken(failure) -> None:  # type: ignore[no-untyped-def]
            self._inflight -= 1
            log.failure("verifying credentials", failure)
            self._bye_if_quiet()

        d.addCallbacks(verified, broken)
        d.addErrback(lambda f: log.failure("after verifying credentials", f))

    def _deliver_auth(self, record) -> None:  # type: ignore[no-untyped-def]
        self._inflight -= 1
        if not self.closed:
            self._handle(self.session.auth_done(record))
            self._bye_if_quiet()

    def _start_idle(self, event: S.IdleStart) -> None:
        from twisted.internet import reactor

        self.factory.watcher.add(event.paths, self._wakeup)
        self._poll = reactor.callLater(IDLE_POLL, self._poll_fired)

    def _poll_fired(self) -> None:
        from twisted.internet import reactor

        self._wakeup()
        self._poll = reactor.callLater(IDLE_POLL, self._poll_fired)

    def _wakeup(self) -> None:
        if not self.closed:
            self._handle(self.session.idle_wakeup())

    def _stop_idle(self) -> None:
        self.factory.watcher.remove(self._wakeup)
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None


class ImapFactory(Factory):
    noisy = False

    def __init__(self, config: Config, passwd, tls, implicit_tls: bool, watcher: Watcher) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.passwd = passwd
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.watcher = watcher
        self.per_user: Counter[tuple[str, str]] = Counter()

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return ImapProtocol(self, self.implicit_tls)


def listeners(config: Config, passwd, reactor) -> list[Listener]:  # type: ignore[no-untyped-def]
    """imap (STARTTLS) and imaps (implicit TLS), sharing one inotify watcher and one
    connection count per user+IP."""
    tls = options_from_config(config)
    watcher = Watcher(reactor)
    plain = ImapFactory(config, passwd, tls, False, watcher)
    secure = ImapFactory(config, passwd, tls, True, watcher)
    secure.per_user = plain.per_user
    return [
        Listener("imap", plain, config.imap.listen),
        Listener("imaps", secure, config.imap.listen_tls, tls),
    ]
