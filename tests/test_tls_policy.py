"""TLS policy (1.2+, ECDHE+AEAD, server order), SNI, certificate reload, and `retrieval check` on certificates.

The policy is checked from outside with Debian's testssl.sh, and from Python's ssl module."""

from __future__ import annotations

import datetime
import imaplib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import tomllib
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from conftest import Server, Site, run_cli
from retrieval.config import config_from_dict, load_config
from retrieval.net.certs import issue, write_chain, write_key

POLICY_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}
NOW = datetime.datetime.now(datetime.timezone.utc)


class CA:
    """A private root and an intermediate, issuing leaf certificates as a public CA would."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = issue("retrieval test root", ca=True, path_length=None)
        self.intermediate = issue("retrieval test intermediate", issuer=self.root, ca=True)
        write_chain(base / "root.pem", self.root[0])

    def leaf(self, name: str, *dns: str, **validity) -> tuple[x509.Certificate, object]:  # type: ignore[no-untyped-def]
        alt = [x509.DNSName(n) for n in (dns or (name,))]
        return issue(name, alt, self.intermediate, **validity)

    def pair(self, stem: str, name: str, *dns: str, **validity) -> tuple[Path, Path, x509.Certificate]:  # type: ignore[no-untyped-def]
        """stem.pem (leaf + intermediate, as certbot's fullchain.pem) and stem.key."""
        cert, key = self.leaf(name, *dns, **validity)
        write_chain(self.base / f"{stem}.pem", cert, self.intermediate[0])
        write_key(self.base / f"{stem}.key", key)
        return self.base / f"{stem}.pem", self.base / f"{stem}.key", cert

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.base / "root.pem"))


def served(port: int, ctx: ssl.SSLContext, server_name: str | None) -> x509.Certificate:
    """The certificate the server presents for `server_name` (None: no SNI) on an implicit-TLS port."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def no_verify() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def sni_server(tmp_path: Path, protocols=("imap",)) -> tuple[Site, Server, CA, dict[str, x509.Certificate]]:  # type: ignore[no-untyped-def]
    """A server whose default certificate is for localhost, with SNI certificates for
    mail.example.test (exact) and *.other.test (wildcard)."""
    site = Site(tmp_path)
    site.add_user("alice")
    ca = CA(tmp_path / "pki")
    # Server() keeps an existing certs/server.pem: make the default one ours, CA-signed
    default_cert, default_key, default = ca.pair("default", "localhost")
    (tmp_path / "certs").mkdir()
    shutil.copy(default_cert, tmp_path / "certs" / "server.pem")
    shutil.copy(default_key, tmp_path / "certs" / "server.key")
    mail_cert, mail_key, mail = ca.pair("mail", "mail.example.test")
    wild_cert, wild_key, wild = ca.pair("wild", "*.other.test")
    extra = f"""
[tls.sni."mail.example.test"]
cert = "{mail_cert}"
key = "{mail_key}"

[tls.sni."*.other.test"]
cert = "{wild_cert}"
key = "{wild_key}"
"""
    server = Server(site, protocols=protocols, extra=extra)
    return site, server, ca, {"default": default, "mail": mail, "wild": wild}


# --- testssl.sh ------------------------------------------------------------------------------


def _testssl() -> str | None:
    return shutil.which("testssl") or shutil.which("testssl.sh")


def test_testssl_sees_only_tls12_tls13_and_strong_ciphers_in_server_order(tmp_path):
    """Implicit TLS (IMAPS: protocols, cipher categories, server order) and STARTTLS on IMAP,
    POP3 and SMTP submission (protocols), all four scans at once to keep it short."""
    testssl = _testssl()
    if testssl is None:
        pytest.skip("testssl.sh is not installed (apt-get install testssl.sh; tests/run.sh does)")
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, protocols=("imap", "pop3", "smtp")).start()
    ports = server.ports
    scans = {
        "imaps": ["-p", "-s", "-P", f"127.0.0.1:{ports['imaps']}"],
        "imap": ["-p", "-t", "imap", f"127.0.0.1:{ports['imap']}"],
        "pop3": ["-p", "-t", "pop3", f"127.0.0.1:{ports['pop3']}"],
        "submission": ["-p", "-t", "smtp", f"127.0.0.1:{ports['submission']}"],
    }
    procs = {}
    try:
        for name, args in scans.items():
            procs[name] = subprocess.Popen(
                [testssl, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
                 "--connect-timeout", "10", "--openssl-timeout", "10",
                 "--jsonfile", str(tmp_path / f"{name}.json"), *args],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        outputs = {name: proc.communicate(timeout=600)[0].decode(errors="replace") for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        server.stop()

    for name in scans:
        found = {item["id"]: item for item in json.loads((tmp_path / f"{name}.json").read_text())}
        where = f"{name} (port {ports[name]}):\n{outputs[name]}"
        assert procs[name].returncode == 0, where
        for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            assert found[old]["finding"].startswith("not offered"), where
        for current in ("TLS1_2", "TLS1_3"):
            assert found[current]["finding"].startswith("offered"), where
        bad = [item for item in found.values() if item["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL", "FATAL")]
        assert not bad, where

    imaps = {item["id"]: item["finding"] for item in json.loads((tmp_path / "imaps.json").read_text())}
    for weak in ("NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE"):  # AVERAGE: the obsolete CBC suites
        assert imaps[f"cipherlist_{weak}"] == "not offered", weak
    assert imaps["cipherlist_STRONG"] == "offered"
    assert imaps["cipher_order"] == "server"
    assert set(imaps["cipherorder_TLSv1_2"].split()) <= POLICY_TLS12
    assert imaps["cipherorder_TLSv1_2"].split()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"  # our certificate is ECDSA
    assert set(imaps["cipherorder_TLSv1_3"].split()) == {
        "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


# --- the policy, from Python's ssl ------------------------------------------------------------


def test_policy_from_a_python_client(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, protocols=("imap",)).start()
    port = server.ports["imaps"]
    try:
        # a client that stops at TLS 1.1 gets nothing
        old = no_verify()
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # else this OpenSSL would not even offer TLS 1.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
            served(port, old, None)

        # a TLS 1.2 client offering only CBC suites gets nothing
        cbc = no_verify()
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA")
        with pytest.raises(ssl.SSLError):
            served(port, cbc, None)

        # the server's order wins over the client's
        chacha_first = no_verify()
        chacha_first.maximum_version = ssl.TLSVersion.TLSv1_2
        chacha_first.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            with chacha_first.wrap_socket(sock) as tls:
                assert tls.version() == "TLSv1.2"
                assert tls.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
                assert tls.compression() is None
                assert not tls.session.has_ticket  # no session tickets: a per-process cache resumes

        # a default client gets TLS 1.3
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            with no_verify().wrap_socket(sock) as tls:
                assert tls.version() == "TLSv1.3"

        # STARTTLS uses the same policy
        m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=20)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            m.starttls(ssl_context=old)
    finally:
        server.stop()


def test_renegotiation_is_refused(tmp_path):
    """A client-initiated renegotiation (openssl s_client's `R`) is answered with a no_renegotiation alert."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, protocols=("imap",)).start()
    try:
        result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.ports['imaps']}", "-tls1_2"],
                                input=b"R\n", capture_output=True, timeout=60)
        out = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        assert "retrieval ready" in out and "RENEGOTIATING" in out, out
        assert "no renegotiation" in out, out  # the server's no_renegotiation alert
    finally:
        server.stop()


# --- SNI --------------------------------------------------------------------------------------


def test_sni_picks_the_certificate_by_server_name(tmp_path):
    site, server, ca, certs = sni_server(tmp_path)
    server.start()
    try:
        port = server.ports["imaps"]
        ctx = ca.client()
        assert served(port, ctx, "mail.example.test").serial_number == certs["mail"].serial_number
        assert served(port, ctx, "MAIL.Example.Test").serial_number == certs["mail"].serial_number
        assert served(port, ctx, "imap.other.test").serial_number == certs["wild"].serial_number
        assert served(port, ctx, "localhost").serial_number == certs["default"].serial_number
        # a wildcard covers one label only; unknown names and no name get the default
        for name in ("a.b.other.test", "other.test", "unknown.example.test", None):
            assert served(port, no_verify(), name).serial_number == certs["default"].serial_number, name

        # STARTTLS: the server name arrives the same way
        with socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=20) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"* OK")
            sock.sendall(b"a STARTTLS\r\n")
            assert reader.readline().startswith(b"a OK")
            with ctx.wrap_socket(sock, server_hostname="smtp.other.test") as tls:
                der = tls.getpeercert(binary_form=True)
                assert x509.load_der_x509_certificate(der).serial_number == certs["wild"].serial_number
                tls.sendall(b"b CAPABILITY\r\n")
                lines = tls.makefile("rb")
                while not (line := lines.readline()).startswith(b"b "):
                    assert line.startswith(b"* CAPABILITY"), line
                assert line.startswith(b"b OK")
    finally:
        server.stop()


def test_an_rsa_certificate_gets_the_ecdhe_rsa_suites(tmp_path):
    """Let's Encrypt still issues RSA by default: an RSA pair (here for one SNI name) works."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    site = Site(tmp_path)
    site.add_user("alice")
    ca = CA(tmp_path / "pki")
    rsa_cert, rsa_key = issue("rsa.example.test", [x509.DNSName("rsa.example.test")], ca.intermediate,
                              key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    write_chain(tmp_path / "pki" / "rsa.pem", rsa_cert, ca.intermediate[0])
    write_key(tmp_path / "pki" / "rsa.key", rsa_key)
    server = Server(site, protocols=("imap",),
                    extra=f'[tls.sni."rsa.example.test"]\ncert = "{tmp_path}/pki/rsa.pem"\nkey = "{tmp_path}/pki/rsa.key"\n')
    server.start()
    try:
        tls12 = ca.client()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=20) as sock:
            with tls12.wrap_socket(sock, server_hostname="rsa.example.test") as tls:
                assert tls.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"
        assert served(server.ports["imaps"], ca.client(), "rsa.example.test").serial_number == rsa_cert.serial_number
    finally:
        server.stop()


def test_sighup_reloads_sni_certificates_and_names(tmp_path):
    site, server, ca, certs = sni_server(tmp_path)
    server.start()
    try:
        port = server.ports["imaps"]
        ctx = ca.client()
        sessions = []
        for name in ("mail.example.test", "localhost"):
            sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname=name)
            assert sock.recv(4096).startswith(b"* OK")
            sessions.append(sock)

        # certbot renews mail.example.test (same paths); the admin adds a name to the config
        renewed_mail = ca.pair("mail", "mail.example.test")[2]
        new_cert, new_key, new = ca.pair("new", "new.example.test")
        with open(site.config, "a") as f:
            f.write(f'\n[tls.sni."new.example.test"]\ncert = "{new_cert}"\nkey = "{new_key}"\n')
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while served(port, ctx, "mail.example.test").serial_number != renewed_mail.serial_number:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.2)
        assert served(port, ctx, "new.example.test").serial_number == new.serial_number
        assert served(port, ctx, "imap.other.test").serial_number == certs["wild"].serial_number
        assert served(port, ctx, "localhost").serial_number == certs["default"].serial_number
        # the sessions opened before the reload go on
        for sock in sessions:
            sock.sendall(b"a NOOP\r\n")
            assert sock.recv(4096).startswith(b"a OK")

        # a renewal gone wrong (key of another pair): logged, every old certificate stays
        shutil.copy(tmp_path / "pki" / "wild.key", tmp_path / "pki" / "mail.key")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "certificate kept" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.2)
        assert "mail.key does not belong" in server.log.read_text()
        assert served(port, ctx, "mail.example.test").serial_number == renewed_mail.serial_number
        assert served(port, ctx, "new.example.test").serial_number == new.serial_number
        for sock in sessions:
            sock.sendall(b"b LOGOUT\r\n")
            sock.close()
    finally:
        server.stop()


def test_serve_refuses_an_unusable_sni_pair(tmp_path):
    site, server, ca, _ = sni_server(tmp_path)
    (tmp_path / "pki" / "wild.pem").unlink()
    result = run_cli("serve", "--config", str(site.config))
    err = result.stderr.decode()
    assert result.returncode == 1
    assert f"[tls]: {tmp_path / 'pki' / 'wild.pem'} cannot be read" in err and "retrieval check" in err, err
    assert "Traceback" not in err


def test_sni_config_errors_name_the_key(site):
    site.write_config('\n[tls]\ncert = "a.pem"\nkey = "a.key"\n[tls.sni."bad name"]\ncert = "b.pem"\nkey = "b.key"\n')
    result = run_cli("check", "--config", str(site.config))
    assert result.returncode == 1
    assert b"key tls.sni" in result.stdout and b"'bad name' is not a server name" in result.stdout
    site.write_config('\n[tls.sni."mail.example.test"]\ncert = "b.pem"\n')
    out = run_cli("check", "--config", str(site.config)).stdout
    assert b"exactly cert and key" in out
    site.write_config('\n[tls.sni."mail.example.test"]\ncert = "b.pem"\nkey = "b.key"\n')
    out = run_cli("check", "--config", str(site.config)).stdout
    assert b"need a default one" in out


def test_config_show_prints_sni_so_it_reads_back(tmp_path):
    conf = tmp_path / "retrieval.toml"
    conf.write_text('[tls]\ncert = "a.pem"\nkey = "a.key"\n[tls.sni."Mail.Example.test"]\ncert = "m.pem"\nkey = "m.key"\n'
                    '[tls.sni."*.other.test"]\ncert = "/o.pem"\nkey = "o.key"\n')
    result = run_cli("config", "show", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert f'sni = {{ "mail.example.test" = {{ cert = "{tmp_path}/m.pem", key = "{tmp_path}/m.key" }}, ' in text
    assert config_from_dict(tomllib.loads(text), tmp_path / "elsewhere" / "x.toml").tls == load_config(conf).tls


# --- retrieval check --------------------------------------------------------------------------


def check(site: Site, cert: Path, key: Path, sni: str = "") -> tuple[int, str]:
    site.write_config(f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n{sni}')
    result = run_cli("check", "--config", str(site.config))
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def test_check_passes_a_good_full_chain(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key, _ = ca.pair("good", "mail.example.test")
    mail_cert, mail_key, _ = ca.pair("mail", "imap.example.test", "imap.example.test", "*.example.net")
    code, out = check(site, cert, key, f'[tls.sni."imap.example.test"]\ncert = "{mail_cert}"\nkey = "{mail_key}"\n'
                                       f'[tls.sni."pop.example.net"]\ncert = "{mail_cert}"\nkey = "{mail_key}"\n')
    assert code == 0 and "warning" not in out and "OK" in out, out


def test_check_reports_expired_and_not_yet_valid(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key, _ = ca.pair("old", "mail.example.test", not_before=NOW - datetime.timedelta(days=90),
                           not_after=NOW - datetime.timedelta(days=1))
    code, out = check(site, cert, key)
    assert code == 1 and f"certificate {cert} expired on" in out and "section [tls]" in out, out
    cert, key, _ = ca.pair("future", "mail.example.test", not_before=NOW + datetime.timedelta(days=2))
    code, out = check(site, cert, key)
    assert code == 1 and "is not valid before" in out and "clock" in out, out


def test_check_warns_of_a_certificate_expiring_soon(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key, _ = ca.pair("soon", "mail.example.test", not_after=NOW + datetime.timedelta(days=5, hours=1))
    code, out = check(site, cert, key)
    assert code == 0, out
    assert "warning:" in out and "expires in 5 day(s)" in out and "certbot renew" in out


def test_check_reports_a_key_of_another_certificate(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, _, _ = ca.pair("one", "mail.example.test")
    _, other_key, _ = ca.pair("two", "mail.example.test")
    code, out = check(site, cert, other_key)
    assert code == 1 and f"{other_key} does not belong to the certificate in {cert}" in out, out


def test_check_reports_a_chain_in_the_wrong_order(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key, leaf = ca.pair("good", "mail.example.test")
    # the intermediate first, then the leaf
    write_chain(tmp_path / "reversed.pem", ca.intermediate[0], leaf)
    code, out = check(site, tmp_path / "reversed.pem", key)
    assert code == 1 and "is certificate 2 of 2, not the first" in out, out
    # leaf first, then a certificate that did not issue it
    write_chain(tmp_path / "wrong.pem", leaf, ca.root[0])
    code, out = check(site, tmp_path / "wrong.pem", key)
    assert code == 1 and "the chain is out of order: certificate 2 (CN=retrieval test root) did not issue" in out, out


def test_check_warns_of_a_lone_leaf_from_a_public_ca(site, tmp_path):
    """cert.pem where fullchain.pem was meant: the leaf names its issuer's URL (AIA) but the file lacks it."""
    from cryptography.hazmat.primitives import hashes

    ca = CA(tmp_path / "pki")
    leaf, key = ca.leaf("mail.example.test")
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
               .public_key(key.public_key()).serial_number(leaf.serial_number)  # type: ignore[attr-defined]
               .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc)
               .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                   x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                   x509.UniformResourceIdentifier("http://r11.i.lencr.org/"))]), critical=False))
    write_chain(tmp_path / "cert.pem", builder.sign(ca.intermediate[1], hashes.SHA256()))
    write_key(tmp_path / "privkey.pem", key)
    code, out = check(site, tmp_path / "cert.pem", tmp_path / "privkey.pem")
    assert code == 0 and "warning:" in out and "fullchain.pem, not cert.pem" in out, out


def test_check_warns_of_a_key_others_can_read(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key, _ = ca.pair("good", "mail.example.test")
    os.chmod(key, 0o644)
    code, out = check(site, cert, key)
    assert code == 0 and f"warning: key {key} is readable by every local user (mode 0644)" in out, out
    os.chmod(key, 0o640)
    code, out = check(site, cert, key)
    assert code == 0 and f"warning: key {key} is readable by group" in out, out
    os.chmod(key, 0o600)
    code, out = check(site, cert, key)
    assert code == 0 and "warning" not in out, out


def test_check_reports_sni_names_the_certificate_does_not_cover(site, tmp_path):
    ca = CA(tmp_path / "pki")
    cert, key, _ = ca.pair("default", "mail.example.test")
    other_cert, other_key, _ = ca.pair("other", "imap.example.test", "imap.example.test", "*.example.net")
    sni = "".join(f'[tls.sni."{name}"]\ncert = "{other_cert}"\nkey = "{other_key}"\n'
                  for name in ("imap.example.test", "pop.example.test", "a.b.example.net", "*.example.org"))
    code, out = check(site, cert, key, sni)
    assert code == 1, out
    assert "does not cover the server name pop.example.test (its DNS names: imap.example.test, *.example.net)" in out
    assert "does not cover the server name a.b.example.net" in out
    assert "does not cover the server name *.example.org" in out
    assert "server name imap.example.test " not in out
    assert 'key tls.sni."imap.example.test", key tls.sni."pop.example.test"' in out  # one pair, checked once
