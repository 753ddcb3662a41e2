"""Certificates: make them (demo, tests, first start) and find what is wrong with a configured pair."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

EXPIRY_WARNING_DAYS = 14


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _alt_names(hostname: str) -> list[x509.GeneralName]:
    """hostname, localhost and the loopback addresses: what tests and the demo connect to."""
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt.append(x509.DNSName("localhost"))
    return alt + [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]


def issue(
    common_name: str,
    alt_names: list[x509.GeneralName] | None = None,
    issuer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
    *,
    ca: bool = False,
    path_length: int | None = 0,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    days: int = 825,
    key: CertificateIssuerPrivateKeyTypes | None = None,
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """An ECDSA P-256 certificate (or one for `key`, e.g. RSA) (self-signed unless `issuer` is given); the validity window
    is settable so tests can make expired and not-yet-valid ones. A CA with `path_length` 0
    issues leaves only; None lets it sign an intermediate."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    not_before = not_before or now - datetime.timedelta(minutes=5)
    not_after = not_after or now + datetime.timedelta(days=days)
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    elif issuer:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                        critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def write_key(path: Path, key) -> None:  # type: ignore[no-untyped-def]
    """PKCS#8 PEM, created 0600 (never world-readable, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def write_chain(path: Path, *certs: x509.Certificate) -> None:
    """A full-chain PEM: the leaf first, then each issuer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def make_self_signed(cert_path: Path, key_path: Path, hostname: str, days: int = 825) -> None:
    """An ECDSA P-256 certificate for `hostname` (+ localhost, 127.0.0.1, ::1)."""
    cert, key = issue(hostname, _alt_names(hostname), days=days)
    write_key(key_path, key)
    write_chain(cert_path, cert)


def make_ca_signed(out: Path, hostname: str, days: int = 825) -> None:
    """out/ca.pem (+ ca.key) and out/server.pem + server.key signed by it, for tests and demos."""
    ca = issue(f"retrieval test CA for {hostname}", ca=True, days=days)
    cert, key = issue(hostname, _alt_names(hostname), ca, days=days)
    write_key(out / "ca.key", ca[1])
    write_key(out / "server.key", key)
    write_chain(out / "ca.pem", ca[0])
    write_chain(out / "server.pem", cert)


# --- checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a certificate setup; `warning`: works today, but act soon."""

    message: str
    fix: str
    warning: bool = False


def _describe(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={names[0].value}" if names else cert.subject.rfc4514_string() or "(empty subject)"


def _spki(public_key) -> bytes:  # type: ignore[no-untyped-def]
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltName DNS names (what clients check; the CN is ignored)."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def covers(cert: x509.Certificate, server_name: str) -> bool:
    """Does a client connecting to `server_name` accept this certificate's names?
    A wildcard server name ("*.example.org") needs the same wildcard in the certificate."""
    from retrieval.net.tls import name_matches, normalize_name

    server_name = normalize_name(server_name)
    if server_name.startswith("*."):
        return server_name in dns_names(cert)
    return any(name_matches(pattern, server_name) for pattern in dns_names(cert))


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_aia_issuer(cert: x509.Certificate) -> bool:
    """Public CAs name where their intermediate can be fetched; a private test CA usually does not.
    So a lone leaf with this extension is a `cert.pem` where `fullchain.pem` was meant."""
    try:
        aia = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except x509.ExtensionNotFound:
        return False
    return any(d.access_method == AuthorityInformationAccessOID.CA_ISSUERS for d in aia)


def check_pair(cert_path: Path, key_path: Path, names: tuple[str, ...] = (),
               key_groups: tuple[int, ...] = (), now: datetime.datetime | None = None) -> list[Finding]:
    """What is wrong with a full-chain certificate file and its key, in words an admin can act on.

    `names`: server names this pair must serve (SNI); `key_groups`: gids that may read the key
    (the server's group), any other group or everyone being able to read it is a warning."""
    found: list[Finding] = []
    try:
        cert_data = cert_path.read_bytes()
    except OSError as exc:
        return [Finding(f"certificate {cert_path} cannot be read: {exc.strerror}",
                        "check the path and that the server's user may read it")]
    try:
        key_data = key_path.read_bytes()
    except OSError as exc:
        return [Finding(f"key {key_path} cannot be read: {exc.strerror}",
                        "check the path and that the server's user may read it")]
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        return [Finding(f"{cert_path} holds no PEM certificate", "point cert at a PEM file (-----BEGIN CERTIFICATE-----)")]
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        return [Finding(f"{key_path} is encrypted with a passphrase", "store it unencrypted with mode 0600 "
                        "(openssl pkey -in KEY -out KEY.new), the server cannot ask for a passphrase")]
    except (ValueError, UnsupportedAlgorithm):
        return [Finding(f"{key_path} holds no PEM private key", "point key at the private key file (privkey.pem)")]

    where = _key_position(certs, key)
    if where is None:
        found.append(Finding(f"{key_path} does not belong to the certificate in {cert_path}",
                             "use the key made together with this certificate (certbot: privkey.pem of the same live/ folder)"))
    elif where > 0:
        found.append(Finding(f"{cert_path}: the server certificate ({_describe(certs[where])}) is certificate "
                             f"{where + 1} of {len(certs)}, not the first",
                             "order the file leaf first, then its issuer, and so on (certbot's fullchain.pem is)"))
    else:
        found.extend(_chain_order(cert_path, certs))

    found.extend(_validity(cert_path, certs, now or _now()))

    leaf = certs[0] if where in (0, None) else certs[where]
    for name in names:
        if not covers(leaf, name):
            listed = ", ".join(dns_names(leaf)) or "none"
            found.append(Finding(f"{cert_path} does not cover the server name {name} (its DNS names: {listed})",
                                 f"get a certificate that names {name}, or remove that SNI entry"))

    found.extend(_key_permissions(key_path, key_groups))
    return found


def _key_position(certs: list[x509.Certificate], key) -> int | None:  # type: ignore[no-untyped-def]
    mine = _spki(key.public_key())
    for i, cert in enumerate(certs):
        if _spki(cert.public_key()) == mine:
            return i
    return None


def _chain_order(cert_path: Path, certs: list[x509.Certificate]) -> list[Finding]:
    for i in range(len(certs) - 1):
        if not _issued_by(certs[i], certs[i + 1]):
            return [Finding(f"{cert_path}: the chain is out of order: certificate {i + 2} ({_describe(certs[i + 1])}) "
                            f"did not issue certificate {i + 1} ({_describe(certs[i])})",
                            "order the file leaf first, then its issuer, and so on (certbot's fullchain.pem is)")]
    leaf = certs[0]
    if len(certs) == 1 and leaf.issuer != leaf.subject and _names_aia_issuer(leaf):
        return [Finding(f"{cert_path} holds only the server certificate, not its issuer "
                        f"({leaf.issuer.rfc4514_string()}); clients that lack it fail",
                        "point cert at the full chain (certbot: fullchain.pem, not cert.pem)", warning=True)]
    return []


def _validity(cert_path: Path, certs: list[x509.Certificate], now: datetime.datetime) -> list[Finding]:
    found = []
    renew = "renew it (certbot renew), then `systemctl reload retrieval`"
    for i, cert in enumerate(certs):
        what = f"certificate {cert_path}" if i == 0 else f"certificate {i + 1} in {cert_path} ({_describe(cert)})"
        if cert.not_valid_after_utc < now:
            found.append(Finding(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", renew))
        elif cert.not_valid_before_utc > now:
            found.append(Finding(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                                 "check the machine's clock, or the certificate's dates"))
        elif cert.not_valid_after_utc - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            days = (cert.not_valid_after_utc - now).days
            found.append(Finding(f"{what} expires in {days} day(s), on {cert.not_valid_after_utc:%Y-%m-%d} UTC",
                                 renew, warning=True))
    return found


def _key_permissions(key_path: Path, key_groups: tuple[int, ...]) -> list[Finding]:
    try:
        st = key_path.stat()
    except OSError:
        return []
    if st.st_mode & stat.S_IROTH:
        return [Finding(f"key {key_path} is readable by every local user (mode {stat.S_IMODE(st.st_mode):04o})",
                        f"chmod 600 {key_path}", warning=True)]
    if st.st_mode & stat.S_IRGRP and st.st_gid not in key_groups:
        import grp

        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return [Finding(f"key {key_path} is readable by group {group}, not the server's "
                        f"(mode {stat.S_IMODE(st.st_mode):04o})",
                        f"chmod 600 {key_path}, or give it to the server's group ([server] group)", warning=True)]
    return []
