"""The server's TLS context: TLS 1.2 or newer, the configured certificate chain."""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def server_options(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """Load the pair (the cert file may carry the chain after the leaf)."""
    blocks = _PEM_CERT.findall(cert_path.read_bytes())
    if not blocks:
        raise ValueError(f"{cert_path} holds no PEM certificate")
    certs = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_path.read_bytes())
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        fixBrokenPeers=False,
    )


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """The TLS settings every listener shares; `reload()` swaps in new certificate files
    (SIGHUP after a certbot renewal): new connections get them, open ones keep theirs."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self._options = server_options(cert, key)

    def getContext(self):  # type: ignore[no-untyped-def]
        return self._options.getContext()

    def reload(self) -> None:
        """Raises (and keeps the old certificate) if the new files are unusable."""
        self._options = server_options(self.cert, self.key)


_SHARED: dict[tuple[Path, Path], ReloadableTLS] = {}


def options_from_config(config) -> ReloadableTLS | None:  # type: ignore[no-untyped-def]
    if config.tls.cert is None or config.tls.key is None:
        return None
    key = (config.tls.cert, config.tls.key)
    if key not in _SHARED:
        _SHARED[key] = ReloadableTLS(*key)
    return _SHARED[key]


def reload_all() -> list[str]:
    """Reload every certificate in use; the problems, if any (old certificates stay)."""
    problems = []
    for options in _SHARED.values():
        try:
            options.reload()
        except (OSError, ValueError, crypto.Error) as exc:
            problems.append(f"{options.cert}: {exc}")
    return problems
