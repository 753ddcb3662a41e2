"""A tiny authoritative DNS server on loopback for tests (run as a subprocess).

    python3 dnsbl_server.py RECORDS.json QUERY_LOG

RECORDS.json maps names to A addresses ({"1.0.0.127.zen.test": "127.0.0.2"});
names under a zone listed in "servfail" get SERVFAIL, everything else
NXDOMAIN. Every question is appended to QUERY_LOG. UDP and TCP on one free
port of 127.0.0.1, printed on stdout ("port N") once it listens.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, reactor
from twisted.names import dns, error, server


class Records:
    def __init__(self, records: dict[str, str], servfail: list[str], log_path: str) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.servfail = [z.lower().rstrip(".") for z in servfail]
        self.log_path = log_path

    def query(self, query, timeout=None):  # type: ignore[no-untyped-def]
        name = query.name.name.decode("ascii", "replace").lower().rstrip(".")
        with open(self.log_path, "a") as log:
            log.write(f"{name} {dns.QUERY_TYPES.get(query.type, query.type)}\n")
        if any(name == z or name.endswith("." + z) for z in self.servfail):
            return defer.fail(RuntimeError("told to fail"))
        address = self.records.get(name)
        if address is None or query.type != dns.A:
            return defer.fail(error.AuthoritativeDomainError(name))
        record = dns.RRHeader(name=name, type=dns.A, ttl=300, payload=dns.Record_A(address, ttl=300), auth=True)
        return defer.succeed(([record], [], []))


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    resolver = Records(spec.get("records", {}), spec.get("servfail", []), sys.argv[2])
    factory = server.DNSServerFactory(authorities=[resolver])
    factory.noisy = False
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            reactor.listenTCP(port, factory, interface="127.0.0.1")
        except Exception:
            udp.stopListening()
            continue
        break
    else:
        raise SystemExit("no free port")
    print(f"port {port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
