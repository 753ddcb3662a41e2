"""Thunderbird autoconfig: the clientConfig file over HTTP and HTTPS from a running server,
fetched with curl and urllib, checked against the config's listeners."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import Server, Site, free_port, run_cli

PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")


def _wait_listening(port: int, server: Server | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if server is not None and server.proc.poll() is not None:
                raise RuntimeError(server.log.read_text()) from None
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


def _servers(xml: bytes) -> tuple[ET.Element, list[tuple[str, str, str, int, str, str, str]]]:
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    rows = []
    for element in provider:
        if element.tag in ("incomingServer", "outgoingServer"):
            rows.append((element.tag, element.get("type"), element.findtext("hostname"), int(element.findtext("port")),
                         element.findtext("socketType"), element.findtext("username"),
                         element.findtext("authentication")))
    return provider, rows


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    site = Site(tmp_path)
    site.add_user("carol")
    http, https = free_port(), free_port()
    server = Server(site, protocols=("imap", "pop3", "smtp"), extra=f"""
[autoconfig]
listen = ["127.0.0.1:{http}"]
listen_tls = ["127.0.0.1:{https}"]
domains = ["example.org", "example.net"]
display_name = "Example Mail"
""").start()
    server.http, server.https = http, https  # type: ignore[attr-defined]
    _wait_listening(http, server)
    _wait_listening(https, server)
    yield server
    server.stop()


def _expected(server: Server, username: str) -> list[tuple[str, str, str, int, str, str, str]]:
    p = server.ports
    row = lambda tag, kind, port, sock: (tag, kind, "mail.example.test", port, sock, username, "password-cleartext")  # noqa: E731
    return [
        row("incomingServer", "imap", p["imaps"], "SSL"),
        row("incomingServer", "imap", p["imap"], "STARTTLS"),
        row("incomingServer", "pop3", p["pop3s"], "SSL"),
        row("incomingServer", "pop3", p["pop3"], "STARTTLS"),
        row("outgoingServer", "smtp", p["submissions"], "SSL"),
        row("outgoingServer", "smtp", p["submission"], "STARTTLS"),
    ]


def test_both_paths_over_http_and_https_describe_the_listeners(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (tests/run.sh installs it)")
    bodies = []
    for path in PATHS:
        url = f"http://127.0.0.1:{server.http}{path}?emailaddress=carol%40example.org"
        result = subprocess.run([curl, "-sS", "-f", "-D", "-", url], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert b"content-type: text/xml" in head.lower()
        bodies.append(body)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http}{path}", timeout=30) as answer:
            assert answer.status == 200 and answer.read() == body  # the address changes nothing
    # HTTPS with [tls]'s certificate (made for "localhost")
    result = subprocess.run([curl, "-sS", "-f", "--cacert", str(server.cert),
                             f"https://localhost:{server.https}{PATHS[0]}?emailaddress=carol@example.org"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    bodies.append(result.stdout)
    ctx = ssl.create_default_context(cafile=str(server.cert))
    with urllib.request.urlopen(f"https://localhost:{server.https}{PATHS[1]}", context=ctx, timeout=30) as answer:
        bodies.append(answer.read())
    assert len(set(bodies)) == 1
    provider, rows = _servers(bodies[0])
    assert provider.get("id") == "example.org"
    assert [d.text for d in provider.findall("domain")] == ["example.org", "example.net"]
    assert provider.findtext("displayName") == "Example Mail"
    # passwd-file users are bare names: Thunderbird must log in with the local part
    assert rows == _expected(server, "%EMAILLOCALPART%")

    # users named by their full address: Thunderbird logs in with the address
    server.site.add_user("dave@example.org")
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http}{PATHS[0]}", timeout=30) as answer:
            _, rows = _servers(answer.read())
        if rows == _expected(server, "%EMAILADDRESS%"):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)

    # anything else: 404; every request one log line
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{server.http}/etc/passwd", timeout=30)
    assert caught.value.code == 404
    deadline = time.monotonic() + 20
    while "path=/etc/passwd status=404" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-3000:]
        time.sleep(0.05)
    assert "proto=http session=" in server.log.read_text()
    assert "event=request rip=127.0.0.1 method=GET path=/mail/config-v1.1.xml status=200" in server.log.read_text()


def test_defaults_and_plain_setups(tmp_path):
    """Without [autoconfig] domains: [smtp] local_domains, else [server] hostname; no [tls]: plain."""
    from retrieval.config import load_config
    from retrieval.net.autoconfig import client_config

    path = tmp_path / "retrieval.toml"
    path.write_text("""
[server]
hostname = "mx.example.com"
[auth]
allow_plaintext = true
[imap]
listen = ["127.0.0.1:1143", "[::1]:1143"]
[smtp]
listen = ["127.0.0.1:25"]
submission = ["127.0.0.1:1587"]
[autoconfig]
listen = ["127.0.0.1:8080"]
hostname = "imap.example.com"
""")
    provider, rows = _servers(client_config(load_config(path), ["alice"]))
    assert [d.text for d in provider.findall("domain")] == ["mx.example.com"]
    assert provider.findtext("displayName") == "mx.example.com"
    assert rows == [  # one row per port, port 25 left out (it is for servers)
        ("incomingServer", "imap", "imap.example.com", 1143, "plain", "%EMAILLOCALPART%", "password-cleartext"),
        ("outgoingServer", "smtp", "imap.example.com", 1587, "plain", "%EMAILLOCALPART%", "password-cleartext"),
    ]
    path.write_text(path.read_text().replace('listen = ["127.0.0.1:25"]', 'local_domains = ["example.com"]'))
    provider, _ = _servers(client_config(load_config(path), ["alice"]))
    assert [d.text for d in provider.findall("domain")] == ["example.com"]

    # HTTPS needs [tls]; a port cannot be taken twice
    bad = tmp_path / "bad.toml"
    bad.write_text('[autoconfig]\nlisten_tls = ["127.0.0.1:8443"]\nlisten = ["127.0.0.1:1143"]\n'
                   '[imap]\nlisten = ["127.0.0.1:1143"]\n')
    result = run_cli("check", "--config", str(bad))
    assert result.returncode != 0
    assert b"section [tls]" in result.stdout + result.stderr
    assert b"is also used by" in result.stdout + result.stderr


def test_socket_activated_autoconfig(tmp_path):
    """systemd hands the socket named "autoconfig" (systemd/retrieval-autoconfig.socket)."""
    import sys

    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is absent (apt-get install systemd)")
    site = Site(tmp_path)
    site.add_user("carol")
    site.write_config('[imap]\nlisten = ["127.0.0.1:%d"]\n' % free_port())  # no [autoconfig] listen in the config
    port = free_port()
    log = tmp_path / "activated.log"
    proc = subprocess.Popen([activate, "-l", f"127.0.0.1:{port}", "--fdname=autoconfig",
                             sys.executable, "-m", "retrieval", "serve", "--config", str(site.config)],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        deadline = time.monotonic() + 20
        while "Listening on" not in log.read_text():
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{PATHS[1]}", timeout=60) as answer:
            _, rows = _servers(answer.read())
        assert [(r[1], r[4]) for r in rows] == [("imap", "plain")]
        assert "socket-activated: autoconfig" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
