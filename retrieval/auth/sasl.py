"""SASL mechanisms as small state machines, shared by POP3, IMAP and SMTP.

Each mechanism takes the client's decoded responses one at a time and
answers with a challenge to send, the credentials to verify, or a failure.
Nothing here touches a socket or the password file: the protocol session
turns credentials into a verification request that runs off the reactor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class PasswordCredentials:
    """PLAIN / LOGIN: a user name and a cleartext password to verify."""

    authcid: str
    password: str
    authzid: str = ""


@dataclass(frozen=True)
class CramCredentials:
    """CRAM-MD5: verified against the stored HMAC-MD5 context or plaintext."""

    authcid: str
    challenge: bytes
    response_hex: str


@dataclass(frozen=True)
class Failure:
    reason: str


Credentials = PasswordCredentials | CramCredentials
Step = Challenge | PasswordCredentials | CramCredentials | Failure


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Mechanism:
    name = ""
    needs_cleartext_channel_protection = True

    def start(self, initial: bytes | None) -> Step:
        """Begin, with the initial response if the client sent one (SASL-IR)."""
        raise NotImplementedError

    def step(self, response: bytes) -> Step:
        raise NotImplementedError


class Plain(Mechanism):
    """RFC 4616: authzid NUL authcid NUL password."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Step:
        parts = response.split(b"\x00")
        if len(parts) != 3:
            return Failure("malformed PLAIN response")
        authzid, authcid, password = (_text(p) for p in parts)
        if authzid is None or authcid is None or password is None or not authcid:
            return Failure("malformed PLAIN response")
        if authzid and authzid != authcid:
            return Failure("authorization identity differs from authentication identity")
        return PasswordCredentials(authcid, password, authzid)


class Login(Mechanism):
    """The de-facto LOGIN mechanism (draft-murchison-sasl-login): user, then password."""

    name = "LOGIN"

    def __init__(self) -> None:
        self.user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"Username:")
        return self.step(initial)

    def step(self, response: bytes) -> Step:
        text = _text(response)
        if text is None:
            return Failure("malformed LOGIN response")
        if self.user is None:
            if not text:
                return Failure("empty user name")
            self.user = text
            return Challenge(b"Password:")
        return PasswordCredentials(self.user, text)


class CramMD5(Mechanism):
    """RFC 2195: the server sends a unique challenge, the client answers with HMAC-MD5."""

    name = "CRAM-MD5"
    needs_cleartext_channel_protection = False

    def __init__(self, hostname: str = "localhost") -> None:
        self.challenge = f"<{int.from_bytes(os.urandom(8), 'big')}.{int(time.time())}@{hostname}>".encode()

    def start(self, initial: bytes | None) -> Step:
        if initial:
            return Failure("CRAM-MD5 takes no initial response")
        return Challenge(self.challenge)

    def step(self, response: bytes) -> Step:
        text = _text(response)
        if text is None or " " not in text:
            return Failure("malformed CRAM-MD5 response")
        user, _, digest = text.rpartition(" ")
        if not user or len(digest) != 32:
            return Failure("malformed CRAM-MD5 response")
        return CramCredentials(user, self.challenge, digest.lower())


def make(name: str, hostname: str = "localhost") -> Mechanism | None:
    name = name.upper()
    if name == "PLAIN":
        return Plain()
    if name == "LOGIN":
        return Login()
    if name == "CRAM-MD5":
        return CramMD5(hostname)
    return None
