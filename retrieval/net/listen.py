"""Listening sockets: from config addresses, or inherited from systemd by name."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from retrieval.config import parse_listen


BACKLOG = 1024


@dataclass
class Listener:
    """One kind of listening socket a service wants (e.g. "imaps": implicit TLS)."""

    name: str
    factory: Factory
    addresses: tuple[str, ...]
    tls: object | None = None  # options for implicit TLS; None for plain (STARTTLS is the protocol's)


def listen(reactor, address: str, factory: Factory, tls=None) -> IListeningPort:  # type: ignore[no-untyped-def]
    """Bind `address` ("host:port", "[v6]:port", "*:port"); implicit TLS when `tls` is given."""
    host, port = parse_listen(address)
    # Twisted's default backlog (50) overflows when hundreds of clients connect at once:
    # the kernel then drops handshaked connections silently and clients wait forever.
    if tls is not None:
        return reactor.listenSSL(port, factory, tls, backlog=BACKLOG, interface=host)
    return reactor.listenTCP(port, factory, backlog=BACKLOG, interface=host)


def bind(reactor, listener: Listener, inherited: dict[str, list[int]]) -> list[IListeningPort]:  # type: ignore[no-untyped-def]
    """systemd's sockets of that name if there are any, else the configured addresses."""
    from retrieval.net.activation import adopt_listening

    fds = inherited.get(listener.name)
    if fds:
        return [adopt_listening(reactor, fd, listener.factory, listener.tls) for fd in fds]
    return [listen(reactor, address, listener.factory, listener.tls) for address in listener.addresses]


def bind_socket(address: str) -> socket.socket:
    """A listening socket for `address`, bound as `listen` would, for worker processes to share.

    Same choices as Twisted's listenTCP: SO_REUSEADDR, IPv6 only for a v6 literal (then
    dual-stack as the kernel's default), the same backlog."""
    host, port = parse_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
