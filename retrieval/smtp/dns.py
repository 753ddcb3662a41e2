"""The DNS resolver the relay uses for MX, A/AAAA and DNSBL lookups.

One place decides where questions go: `[smtp] dns_servers` when set (tests
point it at a server on loopback; sites with a local unbound may too), else
the system's /etc/resolv.conf, as Postfix does.
"""

from __future__ import annotations

from twisted.names import client

from retrieval.config import Config, parse_listen


def resolver_for(config: Config, reactor=None) -> client.Resolver:  # type: ignore[no-untyped-def]
    """A twisted.names resolver (no hosts file: mail routing must not depend on /etc/hosts)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    servers = []
    for address in config.smtp.dns_servers:
        host, port = parse_listen(address)
        servers.append((host or "127.0.0.1", port))
    if servers:
        return client.Resolver(servers=servers, reactor=reactor)
    return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
