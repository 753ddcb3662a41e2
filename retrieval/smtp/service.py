"""SMTP over Twisted: a thin adapter between sockets and `SmtpSession`.

The adapter moves bytes, starts TLS, keeps the idle timer, answers the
session's requests (passwords and deliveries in the reactor's thread pool,
recipient decisions from `RecipientPolicy`), and stops reading from a client
while a request is out, so a client cannot fill our memory while we wait.

Three kinds of listener, as Postfix's master.cf has them:
  listen       port 25 style: mail for local domains from anyone, relaying only
               for authenticated clients and `mynetworks`; STARTTLS and AUTH offered
  submission   port 587 style: STARTTLS, AUTH required before MAIL
  submissions  port 465 style: implicit TLS, AUTH required before MAIL

Before a MAIL or RCPT verdict the adapter waits for what it started at
connect: the client's DNSBL lookups and, when the access table has host-name
keys, its confirmed reverse DNS name; and it rereads the access table (in a
thread) when the file changed. On `listen`, `[smtp] greet_pause` holds the
banner back: a client that talks first is a bot that does not wait for it.
"""

from __future__ import annotations

import socket
from collections import deque

from twisted.internet import defer, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from retrieval.auth.checker import cram_md5_possible, verify_deferred
from retrieval.config import Config
from retrieval.logline import SessionLog
from retrieval.net.drain import SESSIONS
from retrieval.net.listen import Listener
from retrieval.net.tls import options_from_config
from retrieval.smtp import session as S
from retrieval.smtp.delivery import accept_locked, runner_for
from retrieval.smtp.dns import resolver_for
from retrieval.smtp.dnsbl import DnsblChecker, Listing
from retrieval.smtp.local import Client
from retrieval.smtp.policy import Peer, RecipientPolicy
from retrieval.smtp.targets import DiscardTarget

log = Logger(namespace="retrieval.smtp")


def confirmed_name(ip: str) -> str:
    """BLOCKING: the reverse DNS name of `ip` if it resolves back to `ip` (FCrDNS), else "unknown"."""
    try:
        name = socket.gethostbyaddr(ip)[0]
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return "unknown"
    return name if ip in addresses else "unknown"


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


class Checks:
    """What the three listeners share: the recipient policy (with the access table) and the DNSBL cache."""

    def __init__(self, config: Config, passwd) -> None:  # type: ignore[no-untyped-def]
        self.recipients = RecipientPolicy.from_config(config, passwd)
        zones = config.smtp.dnsbl
        self.dnsbl = DnsblChecker(zones, resolver_for(config)) if zones else None
        self._reloading: list[defer.Deferred] | None = None
        if self.recipients.access is not None:
            self._report(self.recipients.access.problems)

    @staticmethod
    def _report(problems) -> None:  # type: ignore[no-untyped-def]
        for problem in problems:
            log.warn("smtp access table: {problem}", problem=str(problem))

    def fresh_access(self) -> defer.Deferred:
        """Fires once the access table matches its file (at once when the file did not change)."""
        table = self.recipients.access
        if table is None or (self._reloading is None and not table.changed()):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        if self._reloading is not None:
            self._reloading.append(d)
            return d
        self._reloading = [d]

        def done(result):  # type: ignore[no-untyped-def]
            waiting, self._reloading = self._reloading or [], None
            if isinstance(result, list):
                log.info("smtp access table {path} reloaded: {n} entries", path=str(table.path), n=len(table))
                self._report(result)
            else:
                log.failure("smtp access table reload", result)
            for w in waiting:
                w.callback(None)

        threads.deferToThread(table.reload).addBoth(done)
        return d


class SmtpProtocol(Protocol, TimeoutMixin):
    def __init__(self, factory: SmtpFactory) -> None:
        self.factory = factory
        self.closed = False
        self.client_ip = ""
        self.client_name = "unknown"
        self.listing: Listing | None = None
        self._events: deque[S.Event] = deque()
        self._draining = False
        self._paused = False
        self._lookups = 0  # lookups started at connect that a verdict waits for
        self._waiting: list = []  # verdicts waiting for them
        self._greet_call = None
        self._naming: list | None = None  # verdicts waiting for the client's confirmed name (None: known)
        self.draining = False

    def connectionMade(self) -> None:
        f = self.factory
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "") or ""
        smtp = f.config.smtp
        recipients = f.checks.recipients
        trusted = recipients.trusted(self.client_ip)
        policy = S.Policy(
            hostname=f.config.server.hostname,
            tls_active=f.implicit_tls,
            tls_available=f.tls is not None,
            allow_plaintext=f.config.auth.allow_plaintext,
            auth_required=f.auth_required,
            cram_md5=f.cram_md5,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_errors=smtp.max_errors,
            check_sender=recipients.access is not None,
        )
        self.session = S.SmtpSession(policy)
        self.slog = SessionLog("smtp", log, self.transport, count_bytes=False)
        self.slog.connect(f.implicit_tls)
        self.setTimeout(smtp.idle_timeout)
        if self.client_ip:
            self._naming = []
            d = threads.deferToThread(confirmed_name, self.client_ip)
            d.addCallback(self._named)
            d.addErrback(lambda failure: None)
            d.addBoth(self._name_known)
            if f.checks.dnsbl is not None and not trusted:
                self._wait_for(f.checks.dnsbl.check(self.client_ip).addCallback(self._listed))
        pause = smtp.greet_pause if not (f.auth_required or f.implicit_tls or trusted) else 0
        if pause > 0 and recipients.access is not None:
            rule = recipients.access.client(self.client_ip)  # by IP: the name is not known yet
            if rule is not None and rule.action in ("OK", "RELAY"):
                pause = 0
        if pause > 0:
            self._greet_call = _reactor().callLater(pause, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        self._greet_call = None
        self._handle(self.session.greeting())
        SESSIONS.add(self)

    def _named(self, name: str) -> None:
        self.client_name = name

    def _name_known(self, _=None) -> None:  # type: ignore[no-untyped-def]
        waiting, self._naming = self._naming or [], None
        for call in waiting:
            call()

    def _listed(self, listing: Listing | None) -> None:
        self.listing = listing

    def _wait_for(self, d: defer.Deferred) -> None:
        self._lookups += 1

        def done(result):  # type: ignore[no-untyped-def]
            self._lookups -= 1
            if not self._lookups:
                waiting, self._waiting = self._waiting, []
                for call in waiting:
                    call()

        d.addBoth(done)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.closed:
            return
        if self._greet_call is not None:
            self._pregreet(data)
            return
        self._handle(self.session.feed(data))

    def _pregreet(self, data: bytes) -> None:
        """Talked before the banner (postscreen's PREGREET): a bot that does not wait; drop it."""
        self._greet_call.cancel()
        self._greet_call = None
        log.info("smtp reject from {ip}: talked before the greeting: {data!r}", ip=self.client_ip, data=data[:40])
        self.closed = True
        self.transport.write(S.Reply(554, "5.5.0", "Error: talked before the greeting").render())
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        if self.session.waiting:
            self.resetTimeout()  # our own slow work (a delivery) is no client idling
            return
        self._handle(self.session.timed_out())

    def drain(self) -> None:
        """Server stop: `421` now between commands; a message coming in is received
        and answered first (so the client need not send it again)."""
        self.draining = True
        self._bye_if_quiet()

    def _bye_if_quiet(self) -> None:
        if self.draining and not self.closed and not self.session.waiting and not self.session.in_message:
            self.slog.reason = "shutdown"
            self._handle(self.session.shutting_down())

    def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
        SESSIONS.remove(self)
        self.closed = True
        self.setTimeout(None)
        self.slog.disconnect(reason)
        if self._greet_call is not None:
            self._greet_call.cancel()
            self._greet_call = None

    # -- events -------------------------------------------------------------------

    def _handle(self, events: list[S.Event]) -> None:
        """Carry out events in order; answers given at once join the same queue (no recursion)."""
        self._events.extend(events)
        if self._draining:
            return
        self._draining = True
        try:
            while self._events:
                event = self._events.popleft()
                if self.closed:
                    self._events.clear()
                    break
                self._do(event)
        finally:
            self._draining = False
        self._flow()
        self._bye_if_quiet()

    def _do(self, event: S.Event) -> None:
        if isinstance(event, S.Send):
            self.transport.write(event.data)
        elif isinstance(event, S.Close):
            self.closed = True
            self.slog.reason = self.slog.reason or "closed"
            self.transport.loseConnection()
        elif isinstance(event, S.StartTLS):
            self.slog.starttls()
            self.transport.startTLS(self.factory.tls)
            self.session.tls_started()
        elif isinstance(event, S.Authenticate):
            self._authenticate(event)
        elif isinstance(event, S.CheckSender):
            self._decide_later(lambda: self._sender_verdict(event))
        elif isinstance(event, S.CheckRecipient):
            self._decide_later(lambda: self._recipient_verdict(event))
        elif isinstance(event, S.Deliver):
            self._deliver(event)

    # -- verdicts ------------------------------------------------------------------

    def _decide_later(self, decide) -> None:  # type: ignore[no-untyped-def]
        """Run `decide` once the connect-time lookups are in, the access table is fresh and, when
        the table has host name keys, the client's confirmed name is known."""

        def run(_=None) -> None:  # type: ignore[no-untyped-def]
            if self.closed:
                return
            table = self.factory.checks.recipients.access
            if table is not None and table.uses_hostnames and self._naming is not None:
                self._naming.append(run)  # host name keys: the name must be known first
                return
            try:
                decide()
            except Exception:
                from twisted.python.failure import Failure

                self._internal_error(Failure())

        def after_lookups() -> None:
            self.factory.checks.fresh_access().addCallback(run)

        if self._lookups:
            self._waiting.append(after_lookups)
        else:
            after_lookups()

    def _peer(self, authenticated: bool) -> Peer:
        return Peer(self.client_ip, self.client_name, self.session.helo, authenticated, self.listing)

    def _sender_verdict(self, event: S.CheckSender) -> None:
        reply = self.factory.checks.recipients.check_sender(event.address, self._peer(event.authenticated))
        if not reply.ok:
            log.info("smtp reject from {ip}: MAIL <{sender}>: {code} {status} {text}", ip=self.client_ip,
                     sender=event.address, code=reply.code, status=reply.status, text=reply.text)
        self._handle(self.session.sender_done(reply))

    def _recipient_verdict(self, event: S.CheckRecipient) -> None:
        peer = self._peer(event.authenticated)
        reply, target = self.factory.checks.recipients.check(event.address, self.client_ip, event.authenticated,
                                                             event.sender, peer)
        if not reply.ok:
            log.info("smtp reject from {ip}: RCPT <{rcpt}>: {code} {status} {text}", ip=self.client_ip,
                     rcpt=event.address, code=reply.code, status=reply.status, text=reply.text)
        self._handle(self.session.recipient_done(reply, target))

    def _flow(self) -> None:
        """Read from the client only while the session can take input."""
        if self.closed:
            return
        waiting = self.session.waiting
        if waiting and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not waiting and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _later(self, call):  # type: ignore[no-untyped-def]
        """Deliver a thread's answer only if the client is still there."""

        def deliver(result):  # type: ignore[no-untyped-def]
            if not self.closed:
                self._handle(call(result))

        return deliver

    def _authenticate(self, event: S.Authenticate) -> None:
        d = verify_deferred(self.factory.passwd, event.credentials, self.client_ip or None)

        def done(record):  # type: ignore[no-untyped-def]
            if record is None:
                self.slog.auth_failed(event.credentials)
                from twisted.internet import reactor

                reactor.callLater(self.factory.config.auth.failure_delay, self._later(self.session.auth_done), None)
            else:
                if not self.closed:
                    self.slog.login(record.name, event.credentials)
                self._later(self.session.auth_done)(record.name)

        d.addCallback(done)
        d.addErrback(self._internal_error)

    def _tls_description(self) -> str | None:
        if not self.session.policy.tls_active:
            return None
        try:
            handle = self.transport.getHandle()
            version = handle.get_protocol_version_name()
            cipher = handle.get_cipher_name()
        except Exception:  # not an OpenSSL connection, or the handshake is not done
            return "TLS"
        return f"{version} with cipher {cipher}" if cipher else version

    def _deliver(self, event: S.Deliver) -> None:
        """Into the queue (fsynced) before the 250; then, in the same thread job, the runner's
        first attempt (local copies, from memory), while the reactor sends the 250."""
        f = self.factory
        client = Client(self.client_ip, self.client_name, self._tls_description())
        env = event.envelope
        reactor = _reactor()

        def job() -> None:
            """In a pool thread; it talks to the reactor only with the reply and, when remote
            targets are left, the attempt (no result to wake the reactor for otherwise)."""
            try:
                reply, meta, data, fd = accept_locked(f.config, f.runner.queue, env, event.data, client,
                                                      f.auth_required)
            except Exception:
                reactor.callFromThread(answered.errback, Failure())
                return
            reactor.callFromThread(answered.callback, (reply, meta))  # the 250 goes out now, not after delivery
            if fd is None:
                return
            assert meta is not None
            try:
                attempt = f.runner.deliver_now(meta, data, fd)
            except Exception:
                log.failure("smtp {id}: delivering a message just queued (it stays queued)", id=meta.id)
                return
            if attempt is not None:
                reactor.callFromThread(remote, attempt)

        def remote(attempt) -> None:  # type: ignore[no-untyped-def]
            d = f.runner.go_remote(attempt)
            if d is not None:
                d.addErrback(lambda failure: log.failure("smtp {id}: relaying a message just queued", failure,
                                                         id=attempt.queue_id))

        answered: defer.Deferred = defer.Deferred()
        reactor.callInThread(job)

        def done(result) -> None:  # type: ignore[no-untyped-def]
            reply, meta = result
            for r in env.recipients:
                if isinstance(r.target, DiscardTarget):
                    log.info("smtp {id}: discarded <{rcpt}>: {why}", id=meta.id if meta else "-", rcpt=r.address,
                             why=r.target.reason)
            self.slog.message(meta.id if meta else "-", env.sender, [r.address for r in env.recipients],
                              len(event.data), reply.code)
            self._later(self.session.deliver_done)(reply)

        def failed(failure) -> None:  # type: ignore[no-untyped-def]
            log.failure("smtp: queueing a message", failure)
            self._later(self.session.deliver_done)(S.Reply(451, "4.3.0", "Error: internal error, try again later"))

        answered.addCallbacks(done, failed)

    def _internal_error(self, failure) -> None:  # type: ignore[no-untyped-def]
        log.failure("smtp session", failure)
        if not self.closed:
            self.closed = True
            self.transport.write(b"421 4.3.0 Error: internal error\r\n")
            self.transport.loseConnection()


class SmtpFactory(Factory):
    noisy = False

    def __init__(self, config: Config, passwd, tls, implicit_tls: bool, auth_required: bool, runner,  # type: ignore[no-untyped-def]
                 checks: Checks | None = None) -> None:
        self.config = config
        self.runner = runner
        self.passwd = passwd
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.auth_required = auth_required
        self.checks = checks or Checks(config, passwd)
        self.recipients = self.checks.recipients
        self.cram_md5 = cram_md5_possible(passwd)

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return SmtpProtocol(self)


def listeners(config: Config, passwd, reactor) -> list[Listener]:  # type: ignore[no-untyped-def]
    """smtp (port 25 style), submission (STARTTLS, AUTH) and submissions (implicit TLS, AUTH)."""
    tls = options_from_config(config)
    runner = runner_for(config, passwd, reactor)
    checks = Checks(config, passwd)
    return [
        Listener("smtp", SmtpFactory(config, passwd, tls, False, False, runner, checks), config.smtp.listen),
        Listener("submission", SmtpFactory(config, passwd, tls, False, True, runner, checks), config.smtp.submission),
        Listener("submissions", SmtpFactory(config, passwd, tls, True, True, runner, checks), config.smtp.submissions,
                 tls),
    ]
