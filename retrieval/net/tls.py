"""The server's TLS: one written-down policy, certificates chosen by server name (SNI), reload on SIGHUP.

The policy is Mozilla's "intermediate" profile (https://wiki.mozilla.org/Security/Server_Side_TLS),
narrowed to what a mail server needs:

- TLS 1.2 and 1.3 only (no SSLv2/SSLv3, TLS 1.0, 1.1: every mail client of the last ten years
  speaks 1.2);
- TLS 1.2 cipher suites: ECDHE key exchange with an AEAD cipher only (AES-GCM, ChaCha20-Poly1305),
  for ECDSA and RSA certificates; no finite-field DHE (needs dhparams, slow, Logjam), no static
  RSA key exchange (no forward secrecy), no CBC (Lucky13 and friends), nothing NULL, anonymous,
  EXPORT, RC4, 3DES, IDEA, SHA-1 MAC;
- TLS 1.3 suites: the three AEAD suites, AES-128-GCM first (as Mozilla orders them);
- the server's preference decides (OP_CIPHER_SERVER_PREFERENCE), so a client offering a weak
  suite first still gets a strong one;
- key exchange groups: OpenSSL's defaults (X25519, P-256, P-384, X448, P-521, and the hybrid
  post-quantum groups where this OpenSSL has them); never one fixed curve;
- no TLS compression (CRIME), no renegotiation (a client-initiated renegotiation is a cheap
  CPU DoS and TLS 1.3 has none), no session tickets (their key would live for the whole process
  and break forward secrecy; a per-process session cache resumes instead);
- the certificate file is a full chain (leaf first, then intermediates, as certbot's
  fullchain.pem), loaded with `use_certificate_chain_file`; the key must match it.

Twisted's `CertificateOptions` gave us TLS 1.2+, server preference, no compression and no
tickets already, but its cipher list still allowed CBC and static-RSA suites and it has no SNI:
so we build the pyOpenSSL contexts here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

MIN_VERSION = SSL.TLS1_2_VERSION

# TLS 1.2: ECDHE + AEAD, ECDSA and RSA certificates (Mozilla intermediate without the DHE suites)
CIPHERS_TLS12 = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
CIPHERS_TLS13 = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

OPTIONS = (
    SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_NO_TICKET
    | SSL.OP_SINGLE_ECDH_USE
)

# one session-ID context for every certificate, so a session resumes whichever SNI context it
# ends up on (it is not secret: it only keeps sessions of different applications apart)
SESSION_ID_CONTEXT = b"retrieval"


class CertificateError(ValueError):
    """A configured certificate or key cannot be used; the message names the file."""


def policy_context() -> SSL.Context:
    """A server context with the policy above and no certificate yet."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(MIN_VERSION)
    ctx.set_options(OPTIONS)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # thousands of IDLE sessions: no buffers while quiet
    ctx.set_cipher_list(CIPHERS_TLS12.encode())
    ctx.set_tls13_ciphersuites(CIPHERS_TLS13.encode())
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return ctx


def load_context(cert_path: Path, key_path: Path) -> SSL.Context:
    """The policy context with this full-chain certificate file and key.

    Raises CertificateError (naming the file) if the pair is unusable; the caller keeps
    whatever it had."""
    for path in (cert_path, key_path):
        if not os.access(path, os.R_OK):
            raise CertificateError(f"{path} cannot be read (missing, or no permission for uid {os.getuid()})")
    ctx = policy_context()
    try:
        ctx.use_certificate_chain_file(os.fsencode(cert_path))
    except SSL.Error as exc:
        raise CertificateError(f"{cert_path} holds no usable PEM certificate chain ({_reason(exc)})") from None
    mismatch = CertificateError(f"{key_path} does not belong to the first certificate in {cert_path}")
    try:
        ctx.use_privatekey_file(os.fsencode(key_path))
    except SSL.Error as exc:
        if "mismatch" in _reason(exc):  # OpenSSL compares the key with the certificate as it loads it
            raise mismatch from None
        raise CertificateError(f"{key_path} holds no usable unencrypted PEM key ({_reason(exc)})") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise mismatch from None
    return ctx


def _reason(exc: SSL.Error) -> str:
    try:
        return "; ".join(str(item[2]) for item in exc.args[0])
    except (IndexError, TypeError):
        return str(exc)


def normalize_name(name: str) -> str:
    """Server names compare case-insensitively and without a trailing dot."""
    return name.strip().rstrip(".").lower()


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching: `*.example.org` covers exactly one label (a.example.org, not example.org
    nor a.b.example.org); anything else compares whole."""
    pattern, name = normalize_name(pattern), normalize_name(name)
    if pattern.startswith("*."):
        head, sep, rest = name.partition(".")
        return bool(sep) and bool(head) and rest == pattern[2:]
    return pattern == name


@dataclass(frozen=True)
class Contexts:
    """One generation of loaded contexts: the default and one per SNI name.

    A connection starts on `default`; the ClientHello's server name may move it to another
    context of the same generation, so a reload never mixes old and new."""

    default: SSL.Context
    exact: dict[str, SSL.Context]
    wildcard: dict[str, SSL.Context]  # "example.org" for "*.example.org"

    def for_name(self, name: str | None) -> SSL.Context:
        if not name:
            return self.default
        name = normalize_name(name)
        if name in self.exact:
            return self.exact[name]
        _, sep, parent = name.partition(".")
        if sep and parent in self.wildcard:
            return self.wildcard[parent]
        return self.default


def load_contexts(settings) -> Contexts:  # type: ignore[no-untyped-def]
    """Load [tls] cert/key and every [tls.sni] pair (a pair used by several names is loaded once)."""
    loaded: dict[tuple[Path, Path], SSL.Context] = {}

    def get(cert: Path, key: Path) -> SSL.Context:
        if (cert, key) not in loaded:
            loaded[(cert, key)] = load_context(cert, key)
        return loaded[(cert, key)]

    default = get(settings.cert, settings.key)
    exact: dict[str, SSL.Context] = {}
    wildcard: dict[str, SSL.Context] = {}
    for name, cert, key in settings.sni:
        ctx = get(cert, key)
        name = normalize_name(name)
        if name.startswith("*."):
            wildcard[name[2:]] = ctx
        else:
            exact[name] = ctx
    contexts = Contexts(default, exact, wildcard)

    def choose(connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        try:
            name = raw.decode("ascii") if raw else None
        except UnicodeDecodeError:  # IDNs arrive as A-labels; anything else is not a name of ours
            name = None
        ctx = contexts.for_name(name)
        if ctx is not default:
            connection.set_context(ctx)

    if exact or wildcard:
        default.set_tlsext_servername_callback(choose)
    return contexts


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """The TLS settings every listener shares; `reload()` swaps in new certificate files
    (SIGHUP after a certbot renewal): new connections get them, open ones keep theirs."""

    def __init__(self, settings, source: Path | None = None) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings  # a config.TLSConfig
        self.source = source  # the config file, re-read on reload for new [tls] paths and names
        self.contexts = load_contexts(settings)

    @property
    def cert(self) -> Path:
        return self.settings.cert

    def getContext(self) -> SSL.Context:
        return self.contexts.default

    def reload(self, settings=None) -> None:  # type: ignore[no-untyped-def]
        """Raises (and keeps every old certificate) if any new file is unusable."""
        settings = settings or self.settings
        self.contexts = load_contexts(settings)
        self.settings = settings


def server_options(cert_path: Path, key_path: Path) -> ReloadableTLS:
    """One pair with the policy, outside any config (test peers, tools)."""
    from retrieval.config import TLSConfig

    return ReloadableTLS(TLSConfig(cert=cert_path, key=key_path))


_SHARED: dict[Path | None, ReloadableTLS] = {}


def options_from_config(config) -> ReloadableTLS | None:  # type: ignore[no-untyped-def]
    """The process's TLS contexts for this config (one object shared by all listeners)."""
    if config.tls.cert is None or config.tls.key is None:
        return None
    shared = _SHARED.get(config.path)
    if shared is None or shared.settings != config.tls:
        shared = _SHARED[config.path] = ReloadableTLS(config.tls, config.path)
    return shared


def reload_all(config=None) -> list[str]:  # type: ignore[no-untyped-def]
    """Reload every certificate in use, with the [tls] section of `config` (default: the config
    file read again, so SNI names added or removed take effect); the problems, if any (then the
    old certificates stay)."""
    from retrieval.config import load_config
    from retrieval.problems import ProblemsError

    problems = []
    for options in _SHARED.values():
        settings = None
        if config is not None:
            settings = config.tls
        elif options.source is not None:
            try:
                settings = load_config(options.source).tls
            except ProblemsError as exc:
                problems.extend(str(p) for p in exc.problems)
                continue
        if settings is not None and (settings.cert is None or settings.key is None):
            problems.append(f"{options.source}: [tls] cert/key removed: a restart is needed to stop TLS")
            continue
        try:
            options.reload(settings)
        except (OSError, ValueError, SSL.Error) as exc:
            problems.append(f"{options.cert}: {exc}")
    return problems
