"""Shared fixtures: real folders, real config files, the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def run_cli(*args: str, input: bytes | None = None, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `retrieval ...` as a real process (the installed entry point's module)."""
    return subprocess.run(
        [sys.executable, "-m", "retrieval", *args],
        input=input,
        capture_output=True,
        check=check,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def site_for(tmp_path: Path, layout: str) -> "Site":
    """The site the store tests run twice: a Maildir, or an mbox INBOX in a spool beside ~/mail."""
    if layout == "maildir":
        return Site(tmp_path)
    (tmp_path / "spool").mkdir()
    return Site(tmp_path, f"mbox:~/mail:INBOX={tmp_path}/spool/%u")


def wait_until(predicate, what: str = "condition", timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is true and return its value: a deadline, not a timing assertion
    (mail queued after a 250 arrives a moment later)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Site:
    """A complete small installation in a temp folder: config, passwd-file, homes."""

    def __init__(self, base: Path, mail_location: str = "maildir:~/Maildir") -> None:
        self.base = base
        self.passwd = base / "passwd"
        self.state = base / "state"
        self.config = base / "retrieval.toml"
        self.mail_location = mail_location
        self.write_config()

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f"""
[server]
hostname = "mail.example.test"
state_dir = "{self.state}"
workers = 1

[auth]
passwd_file = "{self.passwd}"
allow_plaintext = true
default_scheme = "BLF-CRYPT"
failure_delay = 0.2

[store]
mail_location = "{self.mail_location}"
{extra}
"""
        )

    def home(self, user: str) -> Path:
        return self.base / "home" / user

    def add_user(self, user: str, password: str = "secret", scheme: str = "PLAIN") -> None:
        """PLAIN by default: store tests need users, not slow hashes (auth tests test those)."""
        from retrieval.auth.passwd import add_user

        home = self.home(user)
        home.mkdir(parents=True, exist_ok=True)
        add_user(self.passwd, user, password, scheme=scheme, home=str(home))

    def deliver(self, user: str, data: bytes, sender: str = "sender@example.test") -> None:
        """What an MDA does: straight into the files, no index, no server."""
        from retrieval.store.deliver import deliver_message
        from retrieval.store.location import for_user, parse_mail_location

        location = for_user(parse_mail_location(self.mail_location), user, str(self.home(user)))
        result = deliver_message(location, user, data, sender=sender)
        assert result.code == 0, result.message

    def store(self, user: str):  # type: ignore[no-untyped-def]
        from retrieval.auth.passwd import PasswdFile
        from retrieval.config import load_config
        from retrieval.store import open_user_store

        config = load_config(self.config)
        record = PasswdFile(self.passwd).lookup(user)
        assert record is not None
        return open_user_store(config, record)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.add_user("alice")
    return s


@pytest.fixture
def mbox_site(tmp_path: Path) -> Site:
    spool = tmp_path / "spool"
    spool.mkdir()
    s = Site(tmp_path, f"mbox:~/mail:INBOX={spool}/%u")
    s.add_user("alice")
    return s


def tls_serial(port: int, cafile: Path, host: str = "localhost") -> int:
    """The serial number of the certificate a new TLS connection to 127.0.0.1:port gets."""
    import socket
    import ssl

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def process_uids(pid: int) -> list[str]:
    """Real, effective, saved and filesystem uid of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`retrieval serve` as a real process on free loopback ports, with a self-signed cert."""

    # the ports of each protocol's listeners, in Server.ports
    LISTENERS = {"imap": ("imap", "imaps"), "pop3": ("pop3", "pop3s"), "smtp": ("smtp", "submission", "submissions")}

    def __init__(self, site: Site, allow_plaintext: bool = True, extra: str = "",
                 protocols: tuple[str, ...] = ("pop3",), smtp_extra: str = "") -> None:
        """`smtp_extra`: more lines for the [smtp] section (which `extra` cannot add to)."""
        from retrieval.net.certs import make_self_signed

        self.site = site
        self.protocols = protocols
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s", "smtp", "submission", "submissions")}
        self.cert = site.base / "certs" / "server.pem"
        self.key = site.base / "certs" / "server.key"
        if not self.cert.exists():
            make_self_signed(self.cert, self.key, "localhost")
        site.write_config(
            f"""
[tls]
cert = "{self.cert}"
key = "{self.key}"

{extra}
"""
            + "".join(
                f"""
[{proto}]
listen = ["127.0.0.1:{self.ports[proto]}"]
listen_tls = ["127.0.0.1:{self.ports[proto + 's']}"]
"""
                for proto in protocols
                if proto != "smtp"
            )
            + (
                f"""
[smtp]
listen = ["127.0.0.1:{self.ports['smtp']}"]
submission = ["127.0.0.1:{self.ports['submission']}"]
submissions = ["127.0.0.1:{self.ports['submissions']}"]
{smtp_extra}
"""
                if "smtp" in protocols
                else ""
            )
        )
        if not allow_plaintext:
            text = site.config.read_text().replace("allow_plaintext = true", "allow_plaintext = false")
            site.config.write_text(text)
        self.log = site.base / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        import socket
        import time

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retrieval", "serve", "--config", str(self.site.config)],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        for port in [self.ports[p] for proto in self.protocols for p in self.LISTENERS[proto]]:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited:\n" + self.log.read_text())
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("server did not listen:\n" + self.log.read_text()) from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ssl_context(self):  # type: ignore[no-untyped-def]
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx


@pytest.fixture(params=["maildir", "mbox"])
def pop_server(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running server with user alice/secret, over a Maildir or an mbox INBOX."""
    site = site_for(tmp_path, request.param)
    site.add_user("alice")
    server = Server(site).start()
    server.layout = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(params=["maildir", "mbox"])
def imap_server(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running IMAP server with user alice/secret, over Maildir or mbox."""
    site = site_for(tmp_path, request.param)
    site.add_user("alice")
    server = Server(site, protocols=("imap",)).start()
    server.layout = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()
