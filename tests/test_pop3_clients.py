"""Real POP3 clients against `retrieval serve`: fetchmail, getmail6, curl, openssl s_client.

Every test runs over a Maildir and over an mbox INBOX (the `pop_server`
fixture).  The messages are the awkward ones: lines that are only a dot or
begin with one, ``From `` lines, an 8-bit UTF-8 body, no final newline,
bare LF, CRLF, and a ~5 MB base64 attachment.

What the clients do, as observed here (Debian 12: fetchmail 6.4.37,
getmail 6.18.11, curl 7.88.1, OpenSSL 3.0):

* fetchmail checks the certificate name against the poll name and does not
  match IP SANs, so it polls ``localhost``; it reads the password from
  ``$HOME/.netrc``.  It logs in with CRAM-MD5 when offered (the passwd-file
  holds PLAIN passwords), uses ``TOP n 99999999`` instead of RETR with
  ``--keep``, prepends a ``Received:`` header, hands the MDA LF line ends,
  and its ``--sslfingerprint`` is the MD5 of the certificate's DER bytes.
* getmail6 verifies against ``ca_certs`` and matches the host name itself
  (IP SANs work).  Its Maildir destination refuses to deliver as root, so as
  root the Maildir belongs to ``nobody`` and the destination has ``user =``.
  It moves ``Return-Path:`` to the top and prepends ``Delivered-To:`` and
  ``Received:``.  Its delivery child is forked before the SIGCHLD handler is
  installed (getmail's race, not ours): a child that exits at once can leave
  getmail waiting for the retriever's ``timeout``, so that is 30 s here.
* POP3 cannot carry "no final newline": every client gets one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import poplib
import pwd
import random
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import Server
from retrieval.net.certs import make_self_signed

TIMEOUT = 90  # seconds, for any one client run

DOTS = b"Subject: dots\n\n.\n..\n.leading dot\n...\nFrom the start\n>From quoted\nFrom\nend\n"
EIGHT_BIT = (
    "Subject: 8bit\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n\nGrüße, ça va? 日本語\n.ünïcödé after a dot\n"
).encode()
NO_NEWLINE = b"Subject: no final newline\n\nfirst\nlast line without newline"
BARE_LF = b"Subject: bare lf\nX-Folded: one\n two\n\nline one\n\nline three\n\n"
CRLF_MSG = b"Subject: crlf\r\n\r\nline one\r\n.\r\n.. two dots\r\nFrom here\r\n"


def _big() -> bytes:
    payload = base64.encodebytes(random.Random(5).randbytes(3_800_000))  # 76-column lines
    return (
        b"Subject: big attachment\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b0undary"\n\n'
        b"--b0undary\nContent-Type: text/plain\n\nsee the attachment\n.\n"
        b"--b0undary\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        b'Content-Disposition: attachment; filename="blob.bin"\n\n' + payload + b"--b0undary--\n"
    )


BIG = _big()  # ~5.1 MB
SMALL = [DOTS, EIGHT_BIT, NO_NEWLINE, BARE_LF, CRLF_MSG]
ALL = SMALL + [BIG]

# Headers a client or an MDA puts in front of the message as delivered.
TRACE_HEADERS = {b"received", b"return-path", b"delivered-to"}


# -- helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def server_log_clean(pop_server):
    """Whatever the clients did, the server logged no traceback."""
    yield
    log = pop_server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Unhandled" not in log, log[-4000:]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package: see tests/run.sh)")
    return path


def run(
    cmd: list[str], *, env: dict | None = None, input: bytes | None = None, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=TIMEOUT, env=env)
    if proc.returncode not in ok:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {proc.returncode}\n--- stdout\n"
            + proc.stdout.decode(errors="replace")[-4000:]
            + "\n--- stderr\n"
            + proc.stderr.decode(errors="replace")[-4000:]
        )
    return proc


def deliver(server: Server, messages: list[bytes]) -> None:
    for data in messages:
        server.site.deliver("alice", data)


def subject(data: bytes) -> bytes:
    m = re.search(rb"^Subject: ([^\r\n]*)", data, re.M)
    assert m, data[:200]
    return m.group(1)


def expected_lf(data: bytes) -> bytes:
    """The message as a client hands it on with LF line ends (POP3 always ends it with a newline)."""
    text = data.replace(b"\r\n", b"\n")
    return text if text.endswith(b"\n") else text + b"\n"


def split_trace(got: bytes) -> tuple[list[bytes], bytes]:
    """(trace header names in front, the rest) of a retrieved message, LF line ends."""
    text = got.replace(b"\r\n", b"\n")
    names: list[bytes] = []
    pos = 0
    while True:
        end = text.find(b"\n", pos)
        if end < 0:
            break
        line = text[pos:end]
        if names and line[:1] in (b" ", b"\t"):
            pos = end + 1
            continue
        name = line.split(b":", 1)[0].lower()
        if b":" not in line or name not in TRACE_HEADERS:
            break
        names.append(name)
        pos = end + 1
    return names, text[pos:]


def check_retrieved(files: list[Path], delivered: list[bytes], client_header: bytes) -> None:
    """Each delivered message arrived exactly once, byte for byte after the trace headers."""
    by_subject = {subject(data): data for data in delivered}
    seen: list[bytes] = []
    for path in files:
        got = path.read_bytes()
        names, rest = split_trace(got)
        key = subject(rest)
        assert key in by_subject, (path, got[:300])
        seen.append(key)
        # our MDA's headers came through, and the client added its own
        assert b"return-path" in names and b"delivered-to" in names, (key, names)
        assert client_header in names, (key, names)
        assert rest == expected_lf(by_subject[key]), f"{key!r} differs ({path})"
    assert sorted(seen) == sorted(by_subject)


def pop_login(server: Server) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    p.user("alice")
    p.pass_("secret")
    return p


def server_stat(server: Server) -> tuple[int, int]:
    p = pop_login(server)
    try:
        return p.stat()
    finally:
        p.quit()


def retr_wire_lines(server: Server) -> dict[int, list[bytes]]:
    """Every message as poplib's RETR returns it (lines, dots unstuffed)."""
    p = pop_login(server)
    try:
        count, _ = p.stat()
        return {n: p.retr(n)[1] for n in range(1, count + 1)}
    finally:
        p.quit()


# -- fetchmail -------------------------------------------------------------------


class Fetchmail:
    """fetchmail from the command line only: HOME is a temp dir holding .netrc, no rcfile."""

    def __init__(self, server: Server, base: Path) -> None:
        self.binary = need("fetchmail")
        self.server = server
        self.home = base / "fm-home"
        self.home.mkdir()
        netrc = self.home / ".netrc"
        netrc.write_text("machine localhost\nlogin alice\npassword secret\n")
        netrc.chmod(0o600)
        self.mda = base / "fm-mda.py"
        self.mda.write_text(
            "import os, sys\n"
            "out, data, n = sys.argv[1], sys.stdin.buffer.read(), 1\n"
            "while True:\n"
            "    try:\n"
            "        fd = os.open(os.path.join(out, '%04d.eml' % n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n"
            "        break\n"
            "    except FileExistsError:\n"
            "        n += 1\n"
            "os.write(fd, data)\n"
            "os.close(fd)\n"
        )
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "FETCHMAILHOME": str(self.home),
            # as root, fetchmail runs the MDA as this user
            "FETCHMAILUSER": pwd.getpwuid(os.getuid()).pw_name,
        }

    def run(self, out: Path, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        out.mkdir(exist_ok=True)
        mda = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.mda))} {shlex.quote(str(out))}"
        cmd = [
            self.binary, "--nodetach", "--nosyslog", "-v",
            "--protocol", "POP3", "--username", "alice",
            "--sslcertck", "--sslcertfile", str(self.server.cert),
            "--mda", mda,
            *args,
            "localhost",
        ]  # fmt: skip
        return run(cmd, env=self.env, ok=ok)


def fingerprint(cert: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return ":".join(f"{b:02X}" for b in hashlib.md5(der).digest())


def test_fetchmail_stls_keep_uidl_then_flush(pop_server, tmp_path):
    deliver(pop_server, ALL)
    count, octets = server_stat(pop_server)
    assert count == len(ALL)
    fm = Fetchmail(pop_server, tmp_path)
    stls = ["--port", str(pop_server.ports["pop3"]), "--sslproto", "TLS1.2+"]
    ids = str(tmp_path / "fm-ids")

    # 1. --keep with UIDL tracking: everything arrives, everything stays
    kept = tmp_path / "kept"
    proc = fm.run(kept, *stls, "--keep", "--uidl", "--idfile", ids)
    log = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert "POP3> STLS" in log and "upgrade to TLS succeeded" in log, log[-3000:]
    assert f"{count} messages for alice at localhost ({octets} octets)" in log, log[-3000:]
    assert log.count("not flushed") == count
    check_retrieved(sorted(kept.iterdir()), ALL, b"received")
    assert server_stat(pop_server) == (count, octets)
    assert len(Path(ids).read_text().split("\n")) >= count

    # 2. again with the same idfile: nothing new (fetchmail exits 1, "no mail")
    again = tmp_path / "again"
    proc = fm.run(again, *stls, "--keep", "--uidl", "--idfile", ids, ok=(1,))
    log = proc.stdout.decode(errors="replace")
    assert f"{count} messages ({count} seen) for alice at localhost" in log, log[-3000:]
    assert "POP3> TOP" not in log and "POP3> RETR" not in log
    assert list(again.iterdir()) == []
    assert server_stat(pop_server) == (count, octets)

    # 3. without --keep (fresh idfile): everything again, then the maildrop is empty
    flushed = tmp_path / "flushed"
    proc = fm.run(flushed, *stls, "--idfile", str(tmp_path / "fm-ids2"))
    log = proc.stdout.decode(errors="replace")
    assert log.count(" flushed") - log.count("not flushed") == count, log[-3000:]
    assert "POP3< +OK Logging out, messages deleted." in log
    check_retrieved(sorted(flushed.iterdir()), ALL, b"received")
    assert server_stat(pop_server) == (0, 0)


def test_fetchmail_pop3s_fingerprint_and_user_pass(pop_server, tmp_path):
    deliver(pop_server, SMALL)
    fm = Fetchmail(pop_server, tmp_path)
    pop3s = ["--ssl", "--port", str(pop_server.ports["pop3s"]), "--auth", "password"]

    # a wrong fingerprint: refused before logging in, nothing fetched
    wrong = tmp_path / "wrong"
    proc = fm.run(wrong, *pop3s, "--sslfingerprint", "00:" * 15 + "00", "--keep", ok=(2,))
    assert b"fingerprints do not match" in proc.stderr + proc.stdout
    assert list(wrong.iterdir()) == []

    out = tmp_path / "out"
    proc = fm.run(out, *pop3s, "--sslfingerprint", fingerprint(pop_server.cert))
    log = proc.stdout.decode(errors="replace")
    assert "POP3> STLS" not in log and "POP3> USER alice" in log and "POP3> PASS *" in log, log[-3000:]
    assert "+OK Logged in." in log
    check_retrieved(sorted(out.iterdir()), SMALL, b"received")
    assert server_stat(pop_server) == (0, 0)


# -- getmail6 --------------------------------------------------------------------


@pytest.fixture
def maildir_dest():
    """A destination Maildir getmail's delivery child can write: owned by `nobody` when we are root."""
    base = Path(tempfile.mkdtemp(prefix="getmail-dest-"))
    user = None
    if os.geteuid() == 0:
        user = "nobody"
        record = pwd.getpwnam(user)
    made: list[Path] = []

    def make(name: str) -> tuple[Path, str | None]:
        path = base / name
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True)
        if user is not None:
            for p in [base, path, *(path / s for s in ("cur", "new", "tmp"))]:
                os.chown(p, record.pw_uid, record.pw_gid)
        made.append(path)
        return path, user

    yield make
    shutil.rmtree(base, ignore_errors=True)


def getmail(server: Server, base: Path, dest: Path, user: str | None, delete: bool) -> subprocess.CompletedProcess:
    binary = need("getmail")
    rcdir = base / f"getmail-{dest.name}"
    rcdir.mkdir()
    (rcdir / "getmailrc").write_text(
        f"""
[retriever]
type = SimplePOP3SSLRetriever
server = 127.0.0.1
port = {server.ports['pop3s']}
username = alice
password = secret
ca_certs = {server.cert}
timeout = 30

[destination]
type = Maildir
path = {dest}/
{f'user = {user}' if user else ''}

[options]
delete = {'true' if delete else 'false'}
read_all = true
verbose = 2
"""
    )
    return run([binary, "--getmaildir", str(rcdir), "--rcfile", "getmailrc"], env={**os.environ, "HOME": str(rcdir)})


def test_getmail_pop3s_keep_then_delete(pop_server, tmp_path, maildir_dest):
    deliver(pop_server, ALL)
    count, octets = server_stat(pop_server)

    kept, user = maildir_dest("kept")
    proc = getmail(pop_server, tmp_path, kept, user, delete=False)
    out = proc.stdout.decode(errors="replace")
    assert f"{count} messages ({octets} bytes) retrieved" in out, out + proc.stderr.decode(errors="replace")
    assert list((kept / "tmp").iterdir()) == [] and list((kept / "cur").iterdir()) == []
    check_retrieved(sorted((kept / "new").iterdir()), ALL, b"received")
    assert server_stat(pop_server) == (count, octets)

    deleted, user = maildir_dest("deleted")
    proc = getmail(pop_server, tmp_path, deleted, user, delete=True)
    assert f"{count} messages ({octets} bytes) retrieved" in proc.stdout.decode(errors="replace")
    check_retrieved(sorted((deleted / "new").iterdir()), ALL, b"received")
    assert server_stat(pop_server) == (0, 0)


# -- curl ------------------------------------------------------------------------


def test_curl_retr_list_uidl_pop3s_and_stls(pop_server, tmp_path):
    curl = need("curl")
    deliver(pop_server, ALL)
    wire = retr_wire_lines(pop_server)
    p = pop_login(pop_server)
    listing = p.list()[1]
    uidl = p.uidl()[1]
    p.quit()
    base = [curl, "--silent", "--show-error", "--cacert", str(pop_server.cert), "--user", "alice:secret"]
    pop3s = f"pop3s://127.0.0.1:{pop_server.ports['pop3s']}"

    for n, lines in wire.items():
        got = run([*base, f"{pop3s}/{n}"]).stdout
        # RETR as sent: CRLF lines, dots unstuffed, the terminator's CRLF belongs to the last line
        assert got == b"".join(line + b"\r\n" for line in lines), n
        assert got.replace(b"\r\n", b"\n").split(b"\n", 2)[2] == expected_lf(ALL[n - 1])

    # LIST and UIDL, by name (the certificate has localhost, 127.0.0.1 and ::1)
    got = run([*base, f"pop3s://localhost:{pop_server.ports['pop3s']}/"]).stdout
    assert got.split(b"\r\n")[:-1] == listing
    got = run([*base, "--request", "UIDL", f"{pop3s}/"]).stdout
    assert got.split(b"\r\n")[:-1] == uidl

    # STLS on the plain port, required
    got = run([*base, "--ssl-reqd", f"pop3://127.0.0.1:{pop_server.ports['pop3']}/1"]).stdout
    assert got == b"".join(line + b"\r\n" for line in wire[1])
    proc = run([*base, "--ssl-reqd", "--verbose", f"pop3://localhost:{pop_server.ports['pop3']}/"])
    assert b"> STLS" in proc.stderr and b"SSL certificate verify ok" in proc.stderr
    assert proc.stdout.split(b"\r\n")[:-1] == listing

    # an untrusted certificate is refused (curl 60: peer certificate cannot be authenticated)
    other = tmp_path / "other.pem"
    make_self_signed(other, tmp_path / "other.key", "localhost")
    proc = run([curl, "--silent", "--cacert", str(other), "--user", "alice:secret", f"{pop3s}/1"], ok=(60,))
    assert proc.stdout == b""
    assert server_stat(pop_server)[0] == len(ALL)  # curl's RETR only reads


# -- openssl s_client --------------------------------------------------------------


def s_client(server: Server, *extra: str, script: bytes) -> subprocess.CompletedProcess:
    binary = need("openssl")
    cmd = [
        binary, "s_client", "-starttls", "pop3", "-connect", f"127.0.0.1:{server.ports['pop3']}",
        "-CAfile", str(server.cert), "-verify_return_error", "-verify_ip", "127.0.0.1",
        "-crlf", "-nocommands", *extra,
    ]  # fmt: skip
    return run(cmd, input=script)


def stuffed(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def test_openssl_s_client_starttls_conversation(pop_server):
    deliver(pop_server, [DOTS, CRLF_MSG])
    wire = retr_wire_lines(pop_server)
    count, octets = server_stat(pop_server)
    script = b"CAPA\nUSER alice\nPASS secret\nSTAT\nRETR 1\nRETR 2\nQUIT\n"
    retr = [b"+OK %d octets\r\n" % sum(len(line) + 2 for line in wire[n]) + stuffed(wire[n]) for n in (1, 2)]

    # verbose: the handshake report, then the conversation (-ign_eof: stdin's end is not QUIT)
    proc = s_client(pop_server, "-ign_eof", script=script)
    out = proc.stdout
    assert b"Verify return code: 0 (ok)" in out and b"Verification: OK" in out, out[:3000]
    assert re.search(rb"New, TLSv1\.[23], Cipher is ", out)
    talk = out[out.index(b"+OK\r\nCAPA\r\n") :]
    capa = talk[: talk.index(b"\r\n.\r\n")].split(b"\r\n")
    assert b"USER" in capa and b"STLS" not in capa and b"PIPELINING" in capa  # no STLS once TLS is up
    assert b"+OK\r\n+OK Logged in.\r\n+OK %d %d\r\n" % (count, octets) in talk
    # the wire format: dot-stuffed, CRLF, exactly the octets announced
    assert retr[0] in talk and retr[1] in talk and b"\r\n...\r\n" in retr[0]
    assert b"+OK Logging out.\r\n" in talk

    # quiet: nothing but the conversation on stdout, the verification on stderr
    proc = s_client(pop_server, "-quiet", script=script)
    assert b"verify return:1" in proc.stderr and b"verify error" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert out.startswith(b"+OK\r\nCAPA\r\n"), out[:300]
    after_capa = out[out.index(b"\r\n.\r\n") + 5 :]
    assert after_capa == (
        b"+OK\r\n+OK Logged in.\r\n+OK %d %d\r\n" % (count, octets) + retr[0] + retr[1] + b"+OK Logging out.\r\n"
    )
    assert server_stat(pop_server) == (count, octets)
