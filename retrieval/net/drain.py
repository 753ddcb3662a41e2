"""Graceful stop: stop accepting, let every session finish what it is doing, then go.

Each protocol adapter registers itself in `SESSIONS` while connected and has a
`drain()` method: say goodbye at once when quiet (IMAP `* BYE`, POP3 `-ERR`,
SMTP `421`), or right after the command it is running. What is still open when
`[server] shutdown_timeout` runs out is cut. POP3 never commits deletions on a
server stop (RFC 1939: only QUIT in the TRANSACTION state does).
"""

from __future__ import annotations

from typing import Protocol as Typing

from twisted.internet import defer
from twisted.logger import Logger

log = Logger(namespace="retrieval.drain")


class Drainable(Typing):
    transport: object

    def drain(self) -> None: ...


class Sessions:
    """The open connections of this process."""

    def __init__(self) -> None:
        self.live: set[Drainable] = set()
        self.draining = False
        self._waiters: list[defer.Deferred] = []

    def add(self, session: Drainable) -> None:
        self.live.add(session)
        if self.draining:  # accepted just before the port closed
            session.drain()

    def remove(self, session: Drainable) -> None:
        self.live.discard(session)
        if not self.live:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _all_gone(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if not self.live:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def drain(self, reactor, ports: list, timeout: float) -> defer.Deferred:  # type: ignore[no-untyped-def]
        """Stop listening, ask every session to finish; fires when all are gone or cut."""
        self.draining = True
        for port in ports:
            port.stopListening()
        count = len(self.live)
        if count:
            log.info("stopping: {n} open session(s), up to {t:g} s to finish", n=count, t=timeout)
        for session in list(self.live):
            session.drain()
        done = self._all_gone()

        def cut() -> None:
            if self.live:
                log.warn("stopping: cutting {n} session(s) still busy after {t:g} s", n=len(self.live), t=timeout)
            for session in list(self.live):
                transport = session.transport
                abort = getattr(transport, "abortConnection", None) or transport.loseConnection  # type: ignore[attr-defined]
                abort()
            # an aborted connection reports its loss on the next turn of the reactor
            reactor.callLater(1.0, give_up)

        def give_up() -> None:
            if not done.called:
                if done in self._waiters:
                    self._waiters.remove(done)
                done.callback(None)

        timer = reactor.callLater(timeout, cut)
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return done


SESSIONS = Sessions()
