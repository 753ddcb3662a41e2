"""Turn SASL credentials into a user record, off the reactor, with the same answer for
every failure (unknown user, wrong password, network not allowed)."""

from __future__ import annotations

from twisted.internet import threads
from twisted.internet.defer import Deferred

from retrieval.auth.passwd import PasswdFile, UserRecord
from retrieval.auth.sasl import CramCredentials, Credentials, PasswordCredentials
from retrieval.auth.schemes import cram_md5_context, cram_md5_verify


def verify(passwd: PasswdFile, credentials: Credentials, remote_ip: str | None = None) -> UserRecord | None:
    """BLOCKING (password hashing is slow by design): run it in a thread."""
    if isinstance(credentials, PasswordCredentials):
        record = passwd.verify(credentials.authcid, credentials.password)
    elif isinstance(credentials, CramCredentials):
        record = passwd.lookup(credentials.authcid)
        if record is not None and not cram_md5_verify(record.password, credentials.challenge, credentials.response_hex):
            record = None
    else:
        return None
    if record is not None and not record.allows_ip(remote_ip):
        return None
    return record


def verify_deferred(passwd: PasswdFile, credentials: Credentials, remote_ip: str | None = None) -> Deferred:
    return threads.deferToThread(verify, passwd, credentials, remote_ip)


_CRAM_CACHE: dict[int, tuple[float, bool]] = {}
_CRAM_TTL = 5.0


def cram_md5_possible(passwd: PasswdFile) -> bool:
    """Offer CRAM-MD5 only when some stored hash can answer it (CRAM-MD5 or PLAIN).

    Asked at every connection: remembered a few seconds (the answer needs an MD5
    computation per PLAIN user)."""
    import time

    now = time.monotonic()
    cached = _CRAM_CACHE.get(id(passwd))
    if cached is not None and now - cached[0] < _CRAM_TTL:
        return cached[1]
    value = any(r.password and cram_md5_context(r.password) is not None for r in passwd.users())
    _CRAM_CACHE[id(passwd)] = (now, value)
    return value
