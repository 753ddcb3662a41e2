"""DNS blocklists (zen.spamhaus.org style): is the client's IP listed?

The question for 192.0.2.99 in zone Z is the A record of `99.2.0.192.Z`
(IPv6: the 32 nibbles in reverse, as in ip6.arpa). An answer in 127.0.0.0/8
means listed; NXDOMAIN means not. Spamhaus answers 127.255.255.x when it
refuses the query (an open resolver, over quota): that is not a listing, and
neither is any answer outside 127/8 (a resolver that rewrites NXDOMAIN).
A failure or a timeout counts as not listed: a broken list must not stop mail.

Lookups start when the client connects and are done by the time it reaches
RCPT; results are cached per IP for the record's TTL (within bounds), so a
client that sends ten messages costs one query per zone.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error

log = Logger(namespace="retrieval.smtp.dnsbl")

TIMEOUTS = (2, 3)  # seconds per try (twisted.names retries with each in turn)
NEGATIVE_TTL = 300.0
MIN_TTL, MAX_TTL = 60.0, 3600.0
CACHE_SIZE = 10000


@dataclass(frozen=True)
class Listing:
    """The client is on a list."""

    zone: str
    answer: str  # the A record, e.g. "127.0.0.2" (for Spamhaus it says which sublist)


def query_name(ip: str, zone: str) -> str | None:
    """`1.0.0.127.zone` / IPv6 nibbles; None when `ip` is no IP address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    pointer = address.reverse_pointer
    suffix = ".in-addr.arpa" if address.version == 4 else ".ip6.arpa"
    return pointer[: -len(suffix)] + "." + zone.strip(".")


def listing_in(answers: list, zone: str) -> tuple[Listing | None, float]:
    """Read an A answer: the listing (if any) and how long to believe it."""
    found = None
    ttl = MAX_TTL
    for record in answers:
        if record.type != dns.A:
            continue
        ttl = min(ttl, float(record.ttl))
        address = ipaddress.ip_address(record.payload.dottedQuad())
        if address in ipaddress.ip_network("127.255.255.0/24"):
            log.warn("dnsbl {zone} refused our query ({answer}): treated as not listed", zone=zone, answer=str(address))
            return None, MIN_TTL
        if address in ipaddress.ip_network("127.0.0.0/8") and found is None:
            found = Listing(zone, str(address))
    return found, max(MIN_TTL, min(MAX_TTL, ttl))


class DnsblChecker:
    """Looks an IP up in every zone at once; keeps each zone's answer for its TTL (failures: not at all)."""

    def __init__(self, zones: tuple[str, ...] | list[str], resolver, clock=None) -> None:  # type: ignore[no-untyped-def]
        if clock is None:
            from twisted.internet import reactor as clock
        self.zones = tuple(zones)
        self.resolver = resolver
        self.clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, Listing | None]] = OrderedDict()
        self._running: dict[tuple[str, str], defer.Deferred] = {}

    def cached(self, ip: str, zone: str) -> tuple[bool, Listing | None]:
        hit = self._cache.get((ip, zone))
        if hit is None or hit[0] < self.clock.seconds():
            return False, None
        return True, hit[1]

    def check(self, ip: str) -> defer.Deferred:
        """Deferred[Listing | None]: the first zone (in configured order) that lists `ip`. Never fails."""
        d = defer.gatherResults([self._zone(ip, zone) for zone in self.zones])
        d.addCallback(lambda listings: next((found for found in listings if found is not None), None))
        return d

    def _zone(self, ip: str, zone: str) -> defer.Deferred:
        known, listing = self.cached(ip, zone)
        if known:
            return defer.succeed(listing)
        key = (ip, zone)
        running = self._running.get(key)
        if running is None:  # one query per IP and zone, however many connections ask at once
            running = self._query(ip, zone)
            if not running.called:
                self._running[key] = running
        d: defer.Deferred = defer.Deferred()
        running.addBoth(lambda listing: (d.callback(listing), listing)[1])
        return d

    def _query(self, ip: str, zone: str) -> defer.Deferred:
        """Deferred[Listing | None], cached when the answer is an answer (not a failure)."""
        key = (ip, zone)
        name = query_name(ip, zone)
        if name is None:
            return defer.succeed(None)
        d = self.resolver.lookupAddress(name, timeout=TIMEOUTS)

        def keep(listing: Listing | None, ttl: float) -> Listing | None:
            self._cache[key] = (self.clock.seconds() + ttl, listing)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            if listing is not None:
                log.info("dnsbl: {ip} is listed in {zone} ({answer})", ip=ip, zone=zone, answer=listing.answer)
            return listing

        def answered(result):  # type: ignore[no-untyped-def]
            listing, ttl = listing_in(result[0], zone)
            return keep(listing, ttl)

        def failed(failure):  # type: ignore[no-untyped-def]
            if failure.check(error.DNSNameError):
                return keep(None, NEGATIVE_TTL)
            log.warn("dnsbl {zone}: lookup of {name} failed ({why}): treated as not listed", zone=zone, name=name,
                     why=failure.getErrorMessage() or failure.type.__name__)
            return None

        def finished(listing):  # type: ignore[no-untyped-def]
            self._running.pop(key, None)
            return listing

        d.addCallbacks(answered, failed)
        d.addErrback(lambda failure: None)
        d.addBoth(finished)
        return d
