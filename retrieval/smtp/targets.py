"""Where one copy of a message goes, once aliases and .forward are applied.

The relay's pieces meet here: the recipient policy says an address exists,
alias/.forward expansion turns it into these targets, and the queue runner
hands each target to the room that delivers it (the store's MDA path, a
pipe, a file, or the outbound SMTP client). Kept free of I/O so that every
piece can import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalTarget:
    """Deliver into this passwd-file user's folder (None: INBOX)."""

    user: str
    folder: str | None = None


@dataclass(frozen=True)
class RemoteTarget:
    """Relay to another host (by MX, or through the relayhost)."""

    address: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")


@dataclass(frozen=True)
class PipeTarget:
    """`|command` from an alias or .forward: the message on the command's stdin.

    `user` is whom it runs as: the mail user for aliases, the owner for .forward."""

    command: str
    user: str | None
    origin: str  # e.g. "alias lists" or "/home/alice/.forward", for logs and bounces


@dataclass(frozen=True)
class FileTarget:
    """`/path/file` from an alias or .forward: appended in mbox format."""

    path: str
    user: str | None
    origin: str


@dataclass(frozen=True)
class DiscardTarget:
    """Accepted, then dropped: an access table DISCARD matched (the client's or the
    sender's for every recipient of the message, else this recipient's). The queue
    logs it and delivers nothing; the client was told 250 like for any other."""

    address: str
    reason: str  # the access rule, e.g. "/etc/retrieval/access:7: From:spam@example.com DISCARD"


Target = LocalTarget | RemoteTarget | PipeTarget | FileTarget | DiscardTarget
