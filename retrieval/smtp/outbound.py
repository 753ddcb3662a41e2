"""Remote delivery: one message to the recipients of one domain, by MX or through the relayhost.

The queue runner calls `Outbound.deliver()` and gets one `Attempt` per
recipient: delivered (2xx), try again later (4xx), or bounce (5xx). Hosts are
tried best MX first; a host that cannot take the mail now (refused, down,
421, no TLS handshake, timeout) passes the undecided recipients on to the
next one, as RFC 5321 section 5.1 asks. A recipient the host answered stays
answered: a 5xx is final, a 4xx waits for the queue's next run.

Also a command for admins and tests:

    python -m retrieval.smtp.outbound --config retrieval.toml --from a@x --to b@y < message
prints the per-recipient outcome as JSON.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from twisted.internet import defer

from retrieval.config import Config, parse_listen, parse_relayhost
from retrieval.smtp.client import OutRecipient, SmtpClient, Transaction, send_transaction
from retrieval.smtp.mx import Host, RouteError, addresses_of, mx_hosts
from retrieval.smtp.session import Reply, split_address

__all__ = ["Attempt", "OutRecipient", "Outbound"]

MAX_ADDRESSES = 10  # addresses tried per delivery (Postfix: smtp_mx_address_limit, 5)


@dataclass(frozen=True)
class Attempt:
    """What became of one recipient."""

    reply: Reply  # the remote server's reply, or ours when no server answered for it
    remote_mta: str | None = None  # the host's name ("mx1.example.org", "[192.0.2.1]"); None: DNS decided
    remote_address: str | None = None  # the IP we talked to
    dsn: bool = False  # the host offered DSN, so NOTIFY went on with the mail: it reports from now on

    @property
    def ok(self) -> bool:
        return self.reply.ok

    @property
    def permanent(self) -> bool:
        """Bounce now (5xx); otherwise the queue keeps the message for another try."""
        return self.reply.code >= 500


def _temporary(reply: Reply) -> Reply:
    """A host-level failure never bounces by itself: the next host, or the next queue run, may do better."""
    if reply.code < 500:
        return reply
    status = "4" + reply.status[1:] if reply.status else "4.4.0"
    return Reply(451, status, f"{reply.code} {reply.text}")


def _own_addresses(config: Config) -> set[str]:
    """Addresses where this server takes mail on the remote port: an MX there is us."""
    found = set()
    for address in config.smtp.listen:
        host, port = parse_listen(address)
        if port == config.smtp.remote_port:
            found.update({host} if host not in ("", "localhost") else {"127.0.0.1", "::1"})
    return found


class Outbound:
    def __init__(self, config: Config, reactor=None, resolver=None) -> None:  # type: ignore[no-untyped-def]
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if resolver is None:
            from retrieval.smtp.dns import resolver_for

            resolver = resolver_for(config, reactor)
        self.config = config
        self.reactor = reactor
        self.resolver = resolver
        self._limits: dict[str, defer.DeferredSemaphore] = {}
        smtp = config.smtp
        self.relayhost = parse_relayhost(smtp.relayhost) if smtp.relayhost else None
        self._auth_error: Reply | None = None
        self._auth: tuple[str, str] | None = None
        if smtp.relayhost_user is not None and smtp.relayhost_password_file is not None:
            try:
                password = smtp.relayhost_password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                self._auth_error = Reply(451, "4.7.0", f"cannot read smtp.relayhost_password_file: {exc.strerror}")
            else:
                self._auth = (smtp.relayhost_user, password)

    # -- the API ------------------------------------------------------------------

    def deliver(self, sender: str, recipients: list[OutRecipient], message: bytes, *,
                envid: str | None = None, ret: str | None = None, smtputf8: bool = False) -> defer.Deferred:
        """Send `message` to `recipients` (one domain, unless a relayhost takes everything).

        A Deferred[dict[address, Attempt]] with an entry for every recipient; it fails only
        for a caller's mistake (recipients of several domains without a relayhost)."""
        if not recipients:
            return defer.succeed({})
        domains = {split_address(r.address)[1].lower().rstrip(".") for r in recipients}
        if self.relayhost is None and len(domains) != 1:
            return defer.fail(ValueError(f"deliver() takes one domain at a time, got {sorted(domains)}"))
        key = "relayhost" if self.relayhost else domains.pop()
        txn = Transaction(sender, tuple(recipients), message, envid=envid, ret=ret, smtputf8=smtputf8)
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = defer.DeferredSemaphore(self.config.smtp.max_per_domain)

        def release(result):  # type: ignore[no-untyped-def]
            if limit.tokens + 1 >= limit.limit and not limit.waiting:
                self._limits.pop(key, None)
            limit.release()
            return result

        d = limit.acquire()
        d.addCallback(lambda _: self._deliver(key, txn))
        d.addBoth(release)
        return d

    # -- the work -------------------------------------------------------------------

    def _route(self, domain: str) -> defer.Deferred:
        if self.relayhost is not None:
            return self._relay_route().addErrback(self._relayhost_unknown)
        return mx_hosts(self.resolver, domain, own_names=(self.config.server.hostname,),
                        own_addresses=_own_addresses(self.config))

    def _relay_route(self) -> defer.Deferred:
        assert self.relayhost is not None
        host, _port, mx = self.relayhost
        if mx:
            return mx_hosts(self.resolver, host)
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            d = addresses_of(self.resolver, host)
            d.addCallback(lambda addresses: [Host(0, host, addresses)] if addresses else self._no_address(host))
            return d
        return defer.succeed([Host(0, f"[{ip}]", (ip,))])

    @staticmethod
    def _no_address(host: str) -> list[Host]:
        raise RouteError(Reply(451, "4.4.3", f"relayhost {host} has no address"))

    @staticmethod
    def _relayhost_unknown(failure):  # type: ignore[no-untyped-def]
        """The relayhost not resolving is the site's problem, not the recipients': keep the mail."""
        failure.trap(RouteError)
        reply = failure.value.reply
        raise RouteError(_temporary(Reply(reply.code, reply.status, f"relayhost: {reply.text}")))

    @property
    def _port(self) -> int:
        if self.relayhost is not None and self.relayhost[1] is not None:
            return self.relayhost[1]
        return self.config.smtp.remote_port

    @defer.inlineCallbacks
    def _deliver(self, domain: str, txn: Transaction):  # type: ignore[no-untyped-def]
        if self.relayhost is not None and self._auth_error is not None:
            return {r.address: Attempt(self._auth_error) for r in txn.recipients}
        try:
            hosts = yield self._route(domain)
        except RouteError as exc:
            return {r.address: Attempt(exc.reply) for r in txn.recipients}
        smtp = self.config.smtp
        results: dict[str, Attempt] = {}
        pending = list(txn.recipients)
        last: Attempt | None = None
        tried: set[str] = set()
        for host in hosts:
            for address in host.addresses:
                if len(tried) >= MAX_ADDRESSES or address in tried:
                    continue
                tried.add(address)
                core = SmtpClient(Transaction(txn.sender, tuple(pending), txn.message, txn.envid, txn.ret, txn.smtputf8),
                                  helo=self.config.server.hostname, auth=self._auth if self.relayhost else None)
                finished = yield send_transaction(self.reactor, address, self._port, core,
                                                  connect_timeout=smtp.connect_timeout,
                                                  command_timeout=smtp.command_timeout)
                offered_dsn = "DSN" in core.s.extensions
                for rcpt, reply in finished.results.items():
                    results[rcpt] = Attempt(reply, host.name, address, offered_dsn)
                pending = [r for r in pending if r.address not in results]
                if not pending:
                    return results
                failure = finished.host_failure or Reply(451, "4.4.0", "remote server left recipients unanswered")
                last = Attempt(_temporary(failure), host.name, address)
        for r in pending:
            results[r.address] = last or Attempt(Reply(451, "4.4.4", f"no host to deliver to for {domain}"))
        return results


# -- the command ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    from retrieval.config import load_config
    from retrieval.problems import ProblemsError

    parser = argparse.ArgumentParser(prog="python -m retrieval.smtp.outbound",
                                     description="Send a message (stdin) to remote recipients as the relay would; print JSON.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--from", dest="sender", default="", help="envelope sender (default: <>)")
    parser.add_argument("--to", action="append", required=True, help="a recipient (repeat for more)")
    parser.add_argument("--notify", help="DSN NOTIFY for every recipient, e.g. FAILURE,DELAY")
    parser.add_argument("--envid")
    parser.add_argument("--ret", choices=("FULL", "HDRS"))
    parser.add_argument("--smtputf8", action="store_true")
    parser.add_argument("--copies", type=int, default=1, help="send this many copies at once (concurrency checks)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ProblemsError as exc:
        print(exc, file=sys.stderr)
        return 78
    message = sys.stdin.buffer.read()
    notify = tuple(args.notify.upper().split(",")) if args.notify else None
    outcome: dict[str, dict] = {}

    def run(reactor):  # type: ignore[no-untyped-def]
        outbound = Outbound(config, reactor)
        groups: dict[str, list[OutRecipient]] = {}
        for address in args.to:
            key = "" if outbound.relayhost else split_address(address)[1].lower().rstrip(".")
            groups.setdefault(key, []).append(OutRecipient(address, notify))
        calls = [outbound.deliver(args.sender, group, message, envid=args.envid, ret=args.ret, smtputf8=args.smtputf8)
                 for group in groups.values() for _ in range(args.copies)]

        def collect(results):  # type: ignore[no-untyped-def]
            for attempts in results:
                for address, a in attempts.items():
                    outcome.setdefault(address, {"code": a.reply.code, "status": a.reply.status, "text": a.reply.text,
                                                 "remote_mta": a.remote_mta, "remote_address": a.remote_address,
                                                 "ok": a.ok, "permanent": a.permanent})

        return defer.gatherResults(calls, consumeErrors=True).addCallback(collect)

    from twisted.internet import reactor as r

    failures = []

    def start() -> None:
        d = run(r)
        d.addErrback(lambda f: failures.append(f))
        d.addBoth(lambda _: r.stop())

    r.callWhenRunning(start)
    r.run()
    if failures:
        print(failures[0].getTraceback(), file=sys.stderr)
        return 70
    json.dump(outcome, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    if any(not v["ok"] and not v["permanent"] for v in outcome.values()):
        return 75  # EX_TEMPFAIL
    if any(v["permanent"] for v in outcome.values()):
        return 69  # EX_UNAVAILABLE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
