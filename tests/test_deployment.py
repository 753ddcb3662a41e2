"""Deployment paths: certificates, systemd units and socket activation, sd_notify, inetd."""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, Server, Site, free_port, process_uids, run_cli, tls_serial


def retrieval_command() -> list[str]:
    return [sys.executable, "-m", "retrieval"]


def test_cert_selfsigned_makes_a_ca_and_a_server_cert(tmp_path):
    result = run_cli("cert", "selfsigned", "--host", "mail.example.test", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "server.pem")],
                            capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0 and "OK" in verify.stdout
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "server.pem")],
                          capture_output=True, text=True, timeout=30).stdout
    assert "DNS:mail.example.test" in text and "IP Address:127.0.0.1" in text


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is absent (apt-get install systemd)")
    exe = shutil.which("retrieval") or str(Path(sys.executable).parent / "retrieval")
    for unit in (ROOT / "systemd").glob("retrieval*"):
        text = unit.read_text().replace("/usr/local/bin/retrieval", exe)
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p.name) for p in tmp_path.glob("retrieval*"))
    result = subprocess.run([analyze, "verify", *units], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    service = (tmp_path / "retrieval.service").read_text()
    for option in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n"):
        assert option in service
    names = {line.split("=", 1)[1] for p in tmp_path.glob("*.socket") for line in p.read_text().splitlines()
             if line.startswith("FileDescriptorName=")}
    assert names == {"imap", "imaps", "pop3", "pop3s", "smtp", "submission", "submissions", "autoconfig"}
    from retrieval.serve import LISTENER_SECTION

    assert names <= set(LISTENER_SECTION)  # every socket's name is one `serve` takes over


def _site_with_tls(tmp_path: Path) -> tuple[Site, Server]:
    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, protocols=("imap", "pop3"))  # writes the config and a certificate; not started
    return site, server


def _notification(sock: socket.socket) -> tuple[bytes, int]:
    """One sd_notify datagram and the pid that sent it (SCM_CREDENTIALS, as systemd reads it)."""
    import struct

    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return data, struct.unpack("iII", payload[:12])[0]
    raise AssertionError("no credentials")


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_and_sd_notify(tmp_path, workers):
    """With workers, systemd's sockets go to the supervisor (MAINPID), which passes them on."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is absent (apt-get install systemd)")
    site, server = _site_with_tls(tmp_path)
    site.config.write_text(site.config.read_text().replace("workers = 1", f"workers = {workers}"))
    # the config's own addresses must not be used: systemd's sockets replace them
    imap_port, imaps_port = free_port(), free_port()
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    proc = subprocess.Popen(
        [activate, "-l", f"127.0.0.1:{imap_port}", "-l", f"127.0.0.1:{imaps_port}", "--fdname=imap:imaps",
         "-E", f"NOTIFY_SOCKET={notify_path}",
         *retrieval_command(), "serve", "--config", str(site.config)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "activated.log", "wb"),
    )
    try:
        # systemd-socket-activate binds, then starts the server when the first connection arrives
        deadline = time.monotonic() + 20
        while (tmp_path / "activated.log").read_text().count("Listening on") < 2:
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.05)
        m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
        ready, pid = _notification(notify)
        assert ready.startswith(b"READY=1") and pid == proc.pid  # NotifyAccess=main: from MAINPID only
        m.starttls(ssl_context=server.ssl_context())
        m.login("alice", "secret")
        m.logout()
        s = imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=server.ssl_context(), timeout=30)
        s.login("alice", "secret")
        s.logout()
        log = (tmp_path / "activated.log").read_text()
        assert "socket-activated: imap, imaps" in log
        # the configured POP3 addresses were bound as usual; IMAP's were not
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=2).close()
        socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=5).close()
        proc.terminate()
        stopping, pid = _notification(notify)
        assert stopping.startswith(b"STOPPING=1") and pid == proc.pid
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        notify.close()


class InetdSpawner:
    """What inetd does: accept, then run the server with the connection as fd 0 and 1."""

    def __init__(self, service: str, config: Path) -> None:
        self.service = service
        self.config = config
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(5)
        self.port = self.listener.getsockname()[1]
        self.children: list[subprocess.Popen] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            child = subprocess.Popen([*retrieval_command(), "inetd", self.service, "--config", str(self.config)],
                                     stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.DEVNULL)
            conn.close()
            self.children.append(child)

    def close(self) -> None:
        self.listener.close()
        for child in self.children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


@pytest.mark.parametrize("service", ["imap", "imaps", "pop3", "pop3s"])
def test_inetd_mode(tmp_path, service):
    site, server = _site_with_tls(tmp_path)
    site.deliver("alice", b"Subject: via inetd\n\nhello\n")
    spawner = InetdSpawner(service, site.config)
    ctx = server.ssl_context()
    try:
        if service == "imap":
            m = imaplib.IMAP4("127.0.0.1", spawner.port, timeout=30)
            m.starttls(ssl_context=ctx)  # TLS on an adopted fd: what StandardIO could not do
            m.login("alice", "secret")
            assert m.select("INBOX")[1] == [b"1"]
            m.logout()
        elif service == "imaps":
            m = imaplib.IMAP4_SSL("127.0.0.1", spawner.port, ssl_context=ctx, timeout=30)
            m.login("alice", "secret")
            assert m.select("INBOX")[1] == [b"1"]
            m.logout()
        elif service == "pop3":
            p = poplib.POP3("127.0.0.1", spawner.port, timeout=30)
            p.stls(context=ctx)
            p.user("alice")
            p.pass_("secret")
            assert p.stat()[0] == 1
            p.quit()
        else:
            p = poplib.POP3_SSL("127.0.0.1", spawner.port, context=ctx, timeout=30)
            p.user("alice")
            p.pass_("secret")
            assert p.stat()[0] == 1
            p.quit()
        # the child exits when its one connection ends
        deadline = time.monotonic() + 20
        while any(c.poll() is None for c in spawner.children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(c.poll() == 0 for c in spawner.children)
    finally:
        spawner.close()


def test_serve_refuses_to_run_on_a_bad_config(tmp_path):
    (tmp_path / "bad.toml").write_text("[imap]\nlisten = 5\n")
    result = run_cli("serve", "--config", str(tmp_path / "bad.toml"))
    assert result.returncode != 0 and b"key imap.listen" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_swaps_the_certificate_and_keeps_sessions(tmp_path, workers):
    """With workers, the supervisor checks the config and passes SIGHUP on to each."""
    import signal

    from retrieval.net.certs import make_ca_signed

    site = Site(tmp_path)
    site.add_user("alice")
    server = Server(site, protocols=("imap",))
    certs = tmp_path / "ca"
    make_ca_signed(certs, "localhost")
    text = site.config.read_text().replace(str(server.cert), str(certs / "server.pem")).replace(
        str(server.key), str(certs / "server.key")).replace("workers = 1", f"workers = {workers}")
    site.config.write_text(text)
    server.start()
    deadline = time.monotonic() + 30
    while workers > 1 and server.log.read_text().count("serving: pid") < workers:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    try:
        before = tls_serial(server.ports["imaps"], certs / "ca.pem")
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        sessions = []
        for _ in range(20):
            m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx, timeout=30)
            m.login("alice", "secret")
            m.select("INBOX")
            m.send(b"I IDLE\r\n")
            assert m.readline().startswith(b"+")
            sessions.append(m)
        # certbot renews: new files, same paths (same CA here so the client can check it)
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        import datetime

        ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
        new_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        new_cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")]))
                    .issuer_name(ca_cert.subject).public_key(new_key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
                    .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                    .sign(ca_key, hashes.SHA256()))
        (certs / "server.key").write_bytes(new_key.private_bytes(serialization.Encoding.PEM,
                                                                  serialization.PrivateFormat.PKCS8,
                                                                  serialization.NoEncryption()))
        (certs / "server.pem").write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while server.log.read_text().count("reloaded: certificates re-read") < workers:
            assert time.monotonic() < deadline, "the new certificate never showed"
            time.sleep(0.2)
        assert before != new_cert.serial_number
        for _ in range(4 * workers):  # whichever worker answers
            assert tls_serial(server.ports["imaps"], certs / "ca.pem") == new_cert.serial_number
        # every idling session is still there and still hears of new mail
        site.deliver("alice", b"Subject: after reload\n\n")
        for m in sessions:
            assert m.readline() == b"* 1 EXISTS\r\n"
            m.send(b"DONE\r\n")
            while not m.readline().startswith(b"I OK"):
                pass
            m.logout()
        # a broken config on reload: logged, and the server goes on with the old one
        site.config.write_text(site.config.read_text() + "\n[bogus]\n")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert server.proc.poll() is None
        assert tls_serial(server.ports["imaps"], certs / "ca.pem") == new_cert.serial_number
        assert "reload refused" in server.log.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_privilege_drop_after_binding(workers):
    """Started as root with [server] user: binds, then serves as that user.

    With workers, the supervisor stays root (it reads no network input) so that a
    worker it restarts reads the root-only key and drops privileges as the first did."""
    from test_workers import children, wait_for
    import pwd
    import tempfile

    if os.getuid() != 0:
        pytest.skip("needs root (CI and the dev machines run as root)")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="retrieval-drop-"))
    try:
        os.chmod(base, 0o755)
        site = Site(base)
        site.add_user("alice")
        server = Server(site, protocols=("imap",))
        site.config.write_text(site.config.read_text().replace('hostname = "mail.example.test"',
                                                               'hostname = "mail.example.test"\nuser = "nobody"')
                                .replace("workers = 1", f"workers = {workers}"))
        site.deliver("alice", b"Subject: hi\n\n")
        for path in [base, *base.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(site.passwd, 0o640)
        os.chown(server.key, 0, 0)  # the key stays root's: it is read before the drop
        server.start()
        try:
            deadline = time.monotonic() + 20
            while server.log.read_text().count("running as user nobody") < workers:
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.05)
            if workers == 1:
                assert process_uids(server.proc.pid) == [str(nobody.pw_uid)] * 4
            else:
                pids = children(server.proc.pid)
                assert len(pids) == workers and all(process_uids(pid) == [str(nobody.pw_uid)] * 4 for pid in pids)
                victim = min(pids)
                os.kill(victim, 9)
                wait_for(lambda: server.log.read_text().count("running as user nobody") > workers, "a new worker")
                new = children(server.proc.pid) - pids
                assert len(new) == 1 and process_uids(new.pop()) == [str(nobody.pw_uid)] * 4
            m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(), timeout=30)
            m.login("alice", "secret")
            assert m.select("INBOX")[1] == [b"1"]
            assert m.append("INBOX", None, None, b"Subject: as nobody\r\n\r\n")[0] == "OK"
            m.logout()
            new_files = list((site.home("alice") / "Maildir" / "cur").iterdir())
            assert new_files and all(p.stat().st_uid == nobody.pw_uid for p in new_files)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
