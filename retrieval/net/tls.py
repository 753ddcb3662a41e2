"""The server's TLS context: TLS 1.2 or newer, the configured certificate chain."""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import crypto
from twisted.internet import ssl

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


def options_from_config(config) -> ssl.CertificateOptions | None:  # type: ignore[no-untyped-def]
    if config.tls.cert is None or config.tls.key is None:
        return None
    return server_options(config.tls.cert, config.tls.key)
