"""Sockets handed to us by systemd (socket activation) or inetd, and sd_notify.

systemd passes listening sockets as fds 3.. with LISTEN_FDS/LISTEN_PID, and
their `FileDescriptorName=` in LISTEN_FDNAMES; we name them after the
listener they replace: imap, imaps, pop3, pop3s, smtp, submission,
submissions. inetd passes one accepted connection as fd 0.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

SD_LISTEN_FDS_START = 3


def inherited_sockets(environ: dict[str, str] | None = None) -> dict[str, list[int]]:
    """name -> fds, from systemd's environment (empty when not socket-activated)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") not in (None, str(os.getpid())):
        return {}
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    found: dict[str, list[int]] = {}
    for i in range(count):
        name = names[i] if i < len(names) else "unknown"
        found.setdefault(name, []).append(SD_LISTEN_FDS_START + i)
    return found


def family_of(fd: int) -> socket.AddressFamily:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.family
    finally:
        sock.close()


def tls_wrapped(factory: Factory, tls) -> Factory:  # type: ignore[no-untyped-def]
    """Implicit TLS on a socket we did not bind ourselves."""
    return TLSMemoryBIOFactory(tls, False, factory) if tls is not None else factory


def adopt_listening(reactor, fd: int, factory: Factory, tls=None):  # type: ignore[no-untyped-def]
    # systemd hands over blocking sockets; Twisted accepts in a loop until EAGAIN
    os.set_blocking(fd, False)
    port = reactor.adoptStreamPort(fd, family_of(fd), tls_wrapped(factory, tls))
    os.close(fd)  # the reactor holds its own duplicate
    return port


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Tell systemd READY=1 / RELOADING=1 / STOPPING=1 (Type=notify); no-op elsewhere."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
