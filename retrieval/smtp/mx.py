"""Where mail for a domain goes: MX lookup as RFC 5321 section 5.1 and RFC 7505 say.

`mx_hosts()` turns a domain (or an address literal) into the hosts to try, best
first, with their addresses. Everything that means "this mail cannot be
routed" comes back as a `RouteError` carrying the `Reply` the queue records:
permanent when DNS says so (no such domain, null MX, a loop back to us),
temporary when DNS could not answer.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass

from twisted.internet import defer
from twisted.names import dns, error

from retrieval.smtp.session import Reply

# twisted.names retries a silent server after these many seconds; 15 s in all is
# plenty for a resolver on the same network and keeps a dead one from holding a
# delivery for the library's default of a minute.
DNS_TIMEOUT = (1, 3, 11)


@dataclass(frozen=True)
class Host:
    preference: int
    name: str  # the MX host's name, or "[192.0.2.1]" for an address literal
    addresses: tuple[str, ...]


class RouteError(Exception):
    """The domain cannot be routed now (4xx reply) or ever (5xx reply)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.status} {reply.text}")
        self.reply = reply


def _fail(code: int, status: str, text: str) -> RouteError:
    return RouteError(Reply(code, status, text))


def address_literal(domain: str) -> str | None:
    """`[192.0.2.1]` / `[IPv6:2001:db8::1]` -> the IP; None for a domain name.

    Raise RouteError for a literal that is not an IP address."""
    if not domain.startswith("["):
        return None
    inner = domain[1:-1] if domain.endswith("]") else domain[1:]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
        version = 6
    else:
        version = 4
    try:
        ip = ipaddress.ip_address(inner)
    except ValueError:
        raise _fail(550, "5.1.2", f"Bad address literal {domain}") from None
    if ip.version != version:
        raise _fail(550, "5.1.2", f"Bad address literal {domain} (IPv6 needs the IPv6: tag)")
    return str(ip)


def _by_preference(hosts: list[Host]) -> list[Host]:
    """Best (lowest) preference first; equal preferences in random order (RFC 5321 5.1)."""
    shuffled = hosts[:]
    random.shuffle(shuffled)
    return sorted(shuffled, key=lambda h: h.preference)  # sort is stable: the shuffle survives among equals


def _idna(domain: str) -> bytes:
    try:
        return domain.encode("idna")
    except UnicodeError:
        raise _fail(550, "5.1.2", f"Bad domain name {domain}") from None


def _dns_error(exc: BaseException, domain: str) -> RouteError:
    """A resolver failure -> RouteError (NXDOMAIN is permanent, all else temporary)."""
    if isinstance(exc, RouteError):
        return exc
    if isinstance(exc, error.DNSNameError):
        return _fail(550, "5.1.2", f"Host or domain name not found. Name service error for name={domain}: NXDOMAIN")
    why = "timeout" if isinstance(exc, defer.TimeoutError) else type(exc).__name__
    return _fail(451, "4.4.3", f"Host or domain name not found. Name service error for name={domain}: {why}")


@defer.inlineCallbacks
def addresses_of(resolver, name: str):  # type: ignore[no-untyped-def]
    """A and AAAA of `name` (IPv4 first), as a Deferred[tuple[str, ...]].

    Fails like `mx_hosts` when neither lookup answers; one family missing is normal."""
    qname = _idna(name)
    results = yield defer.DeferredList(
        [resolver.lookupAddress(qname, timeout=DNS_TIMEOUT), resolver.lookupIPV6Address(qname, timeout=DNS_TIMEOUT)],
        consumeErrors=True,
    )
    found: list[str] = []
    failures = []
    for ok, value in results:
        if not ok:
            failures.append(value)
            continue
        for rr in value[0]:
            if rr.type == dns.A:
                found.append(rr.payload.dottedQuad())
            elif rr.type == dns.AAAA:
                found.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
    if not found and failures:
        # NXDOMAIN on either means the name does not exist; else report the first error
        nx = [f for f in failures if f.check(error.DNSNameError)]
        raise _dns_error((nx[0] if nx else failures[0]).value, name)
    return tuple(dict.fromkeys(found))


@defer.inlineCallbacks
def mx_hosts(resolver, domain: str, *, own_names=(), own_addresses=()):  # type: ignore[no-untyped-def]
    """The hosts to try for `domain`, best first, as a Deferred[list[Host]].

    `resolver`: a twisted.names resolver (`retrieval.smtp.dns.resolver_for(config)`).
    `own_names` / `own_addresses`: this server's names and addresses; an MX list
    naming us drops every host not better than us (RFC 5321 5.1), and if that
    leaves nothing the mail would loop: 5.4.6.
    Fails with RouteError: 5.1.2 NXDOMAIN, 5.1.10 null MX, 5.4.6 loop, 5.4.4
    no usable host, 4.4.3 DNS failure.
    """
    domain = domain.rstrip(".")
    literal = address_literal(domain)
    own_names = {n.lower().rstrip(".") for n in own_names}
    own_addresses = set(own_addresses)
    if literal is not None:
        if literal in own_addresses:
            raise _fail(550, "5.4.6", f"mail for {domain} loops back to myself")
        return [Host(0, f"[{literal}]", (literal,))]
    qname = _idna(domain)
    try:
        answers, _authority, _additional = yield resolver.lookupMailExchange(qname, timeout=DNS_TIMEOUT)
    except Exception as exc:
        raise _dns_error(exc, domain) from None
    records = [rr.payload for rr in answers if rr.type == dns.MX]
    if not records:
        # RFC 5321 5.1: no MX, the domain itself is the implicit MX of preference 0
        addresses = yield addresses_of(resolver, domain)
        if not addresses:
            raise _fail(550, "5.1.2", f"Host or domain name not found. Name service error for name={domain}: no MX, A or AAAA")
        hosts = [Host(0, domain, addresses)]
    else:
        real = [r for r in records if r.name.name not in (b"", b".")]
        if not real:
            raise _fail(556, "5.1.10", f"Domain {domain} does not accept mail (null MX, RFC 7505)")
        hosts = []
        temporary: list[RouteError] = []
        for record in real:
            name = record.name.name.decode("ascii", "replace").rstrip(".")
            try:
                addresses = yield addresses_of(resolver, name)
            except RouteError as exc:
                if exc.reply.code < 500:
                    temporary.append(exc)
                continue
            hosts.append(Host(record.preference, name, addresses))
        hosts = [h for h in hosts if h.addresses]
        if not hosts:
            if temporary:
                raise temporary[0]
            raise _fail(550, "5.4.4", f"Unable to route to {domain}: no MX host has an address")
    hosts = _by_preference(hosts)
    ours = [h for h in hosts if h.name.lower() in own_names or own_addresses.intersection(h.addresses)]
    if ours:
        best_own = min(h.preference for h in ours)
        hosts = [h for h in hosts if h.preference < best_own]
        if not hosts:
            raise _fail(550, "5.4.6", f"mail for {domain} loops back to myself")
    return hosts
