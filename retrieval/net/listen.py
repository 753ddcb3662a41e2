"""Listening sockets from config strings: plain TCP or implicit TLS."""

from __future__ import annotations

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from retrieval.config import parse_listen


def listen(reactor, address: str, factory: Factory, tls=None) -> IListeningPort:  # type: ignore[no-untyped-def]
    """Bind `address` ("host:port", "[v6]:port", "*:port"); implicit TLS when `tls` is given."""
    host, port = parse_listen(address)
    if tls is not None:
        return reactor.listenSSL(port, factory, tls, interface=host)
    return reactor.listenTCP(port, factory, interface=host)
