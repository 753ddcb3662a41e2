"""Events every sans-IO protocol session (IMAP, POP3, SMTP) hands its Twisted adapter.

Each session module adds its own requests for slow work (open a maildrop, run a
job, deliver a message); these four mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.auth import sasl


@dataclass(frozen=True)
class Send:
    """Bytes for the client, in order."""

    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Start TLS now: the protocol's go-ahead went out in the Send just before."""


@dataclass(frozen=True)
class Close:
    """Close the connection once what was sent is written."""


@dataclass(frozen=True)
class Authenticate:
    """Verify these credentials off the reactor; answer with the session's auth_done()."""

    credentials: sasl.Credentials
