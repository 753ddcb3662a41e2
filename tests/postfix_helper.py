"""A private Debian Postfix on loopback for interop tests and benchmarks (tests and bench/ both use this).

    with PrivatePostfix() as pf:                    # a fresh dir under /tmp, a free port
        maildir = pf.add_mailbox("bob")              # bob@postfix.test -> <base>/mail/bob/Maildir/
        pf.start()
        with pf.smtp() as s:                         # smtplib.SMTP to pf.port
            s.sendmail("a@example.test", ["bob@postfix.test"], message)
        files = pf.wait_for_mail("bob", 1)           # the files in bob's Maildir/new/
    # stopped and removed, whatever happened

    PrivatePostfix(relayhost="[127.0.0.1]:2525")   # everything not for its own domain goes there
    PrivatePostfix(transports={"sink.test": "smtp:[127.0.0.2]:2526"})  # per-domain routes

Everything lives in one directory: main.cf and master.cf (nothing is read from
/etc/postfix), the queue, `data_directory` (master.lock), the mailboxes and the
log (`maillog_file`, through postlogd: no syslog needed). `postfix -c DIR
check` creates the queue's subdirectories with Postfix's own ownership rules;
then `master -c DIR -d` runs in the foreground as our child, in its own
session, so stopping it is a SIGTERM to a pid we own (the master stops its
daemons) and a SIGKILL to the process group after a deadline. No `postfix
start`: a daemonized master would outlive a test that crashed.

Local delivery is Postfix's virtual(8) agent into Maildirs under
`<base>/mail/` (`virtual_mailbox_maps` as a `texthash:` file, so no postmap),
as the mail user `nobody`: no system accounts needed, and nothing in the
machine's own /var/mail is touched. master.cf runs nothing chrooted (a chroot
would need copies of /etc files in the queue directory).

Postfix's master must run as root; unavailable_reason() says so otherwise.
Install: `echo "postfix postfix/main_mailer_type select No configuration" |
debconf-set-selections; DEBIAN_FRONTEND=noninteractive apt-get install -y
postfix` (tests/run.sh does it): with no /etc/postfix/main.cf, Debian's
system Postfix does not start on port 25.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from dovecot_helper import PrivateDovecot, free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DAEMON_DIR = Path("/usr/lib/postfix/sbin")
MASTER = DAEMON_DIR / "master"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Debian's master.cf services, none chrooted; `{listen}` becomes the smtpd line.
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
local     unix  - n n -     - local
virtual   unix  - n n -     - virtual
lmtp      unix  - - n -     - lmtp
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def unavailable_reason() -> str | None:
    """Why a private Postfix cannot run here, or None if it can."""
    if not MASTER.exists() or not os.path.exists(POSTFIX):
        return f"{MASTER} is absent (apt-get install postfix, debconf 'No configuration')"
    if os.geteuid() != 0:
        return "Postfix's master runs only as root"
    for name in ("postfix", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            return f"there is no '{name}' user (the postfix package creates 'postfix')"
    return None


class PostfixError(RuntimeError):
    pass


class PrivatePostfix:
    """One private Postfix instance: main.cf, master.cf, queue, mailboxes, process."""

    def __init__(
        self,
        base: Path | None = None,
        domain: str = "postfix.test",
        myhostname: str = "postfix.test",
        relayhost: str | None = None,
        transports: dict[str, str] | None = None,
        smtp_tls_security_level: str = "may",
        extra_main: str = "",
        cleanup: bool = True,
    ) -> None:
        """`domain`: the virtual mailbox domain it delivers locally (Maildirs from add_mailbox);
        `relayhost` ("[127.0.0.1]:2525") / `transports` ({"sink.test": "smtp:[127.0.0.2]:2526"}):
        where other mail goes (else to its MX, which on this machine means deferred);
        `extra_main`: more main.cf lines (last one wins, as in Postfix)."""
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="pfx-", dir="/tmp"))
            self._owns_base = cleanup
        else:
            base.mkdir(parents=True, exist_ok=True)
            self._owns_base = False
        os.chmod(base, 0o755)  # the mail user (nobody) must reach <base>/mail
        self.base = base
        self.domain = domain
        self.myhostname = myhostname
        self.relayhost = relayhost
        self.transports = dict(transports or {})
        self.smtp_tls_security_level = smtp_tls_security_level
        self.extra_main = extra_main
        pw = pwd.getpwnam("nobody")
        self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid
        self.port = 0
        self.queue_dir = base / "queue"
        self.data_dir = base / "data"
        self.mail_root = base / "mail"
        self.log = base / "postfix.log"
        self.mailboxes_file = base / "vmailbox"
        self.transport_file = base / "transport"
        self.proc: subprocess.Popen | None = None
        self.users: list[str] = []

    # -- setup ------------------------------------------------------------------

    def add_mailbox(self, user: str) -> Path:
        """user@domain delivers into <base>/mail/<user>/Maildir/ (made by Postfix at the first message)."""
        self.users.append(user)
        return self.maildir(user)

    def maildir(self, user: str) -> Path:
        return self.mail_root / user / "Maildir"

    def main_cf(self) -> str:
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_dir}",
            f"data_directory = {self.data_dir}",
            f"myhostname = {self.myhostname}",
            "mydomain = $myhostname",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            f"maillog_file = {self.log}",
            f"maillog_file_prefixes = {self.base}",
            "smtpd_banner = $myhostname ESMTP Postfix",
            f"virtual_mailbox_domains = {self.domain}",
            f"virtual_mailbox_base = {self.mail_root}",
            f"virtual_mailbox_maps = texthash:{self.mailboxes_file}",
            f"virtual_uid_maps = static:{self.mail_uid}",
            f"virtual_gid_maps = static:{self.mail_gid}",
            "virtual_minimum_uid = 1",
            f"smtp_tls_security_level = {self.smtp_tls_security_level}",
            # no DNS on a test machine: bracketed next hops only, host names from /etc/hosts
            "smtp_dns_support_level = disabled",
            "smtp_host_lookup = native",
        ]
        if self.relayhost:
            lines.append(f"relayhost = {self.relayhost}")
        if self.transports:
            lines.append(f"transport_maps = texthash:{self.transport_file}")
        lines.append(self.extra_main)
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        for d in (self.queue_dir, self.data_dir, self.mail_root):
            d.mkdir(exist_ok=True)
        os.chown(self.data_dir, pwd.getpwnam("postfix").pw_uid, -1)
        os.chown(self.mail_root, self.mail_uid, self.mail_gid)
        self.mailboxes_file.write_text("".join(f"{u}@{self.domain} {u}/Maildir/\n" for u in self.users))
        self.transport_file.write_text("".join(f"{d} {t}\n" for d, t in self.transports.items()))
        (self.base / "main.cf").write_text(self.main_cf())
        (self.base / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    # -- process ----------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """`postfix check` (creates the queue), then `master -d` on a free port; return once it greets."""
        if self.proc is not None:
            raise PostfixError("already running")
        last_error = ""
        for _attempt in range(3):  # another process may take our free port meanwhile
            self.port = free_port()
            self.write_config()
            check = subprocess.run([POSTFIX, "-c", str(self.base), "check"], capture_output=True, timeout=60)
            if check.returncode != 0:
                raise PostfixError(f"postfix check failed: {check.stderr.decode(errors='replace')}\n{self.log_tail()}")
            with open(self.base / "master.out", "ab") as out:
                self.proc = subprocess.Popen(
                    [str(MASTER), "-c", str(self.base), "-d"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            try:
                self._wait_ready(timeout)
                return
            except PostfixError as exc:
                last_error = str(exc)
                self.stop()
                if "in use" not in last_error:
                    break
        raise PostfixError(last_error)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostfixError(f"postfix master exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise PostfixError(f"postfix did not greet on port {self.port} within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the master (it stops its daemons), SIGKILL the process group after the deadline."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        PrivateDovecot._wait_children_gone(proc.pid, timeout)  # the daemons notice the master's exit

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._owns_base:
                shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivatePostfix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- looking at it ----------------------------------------------------------

    def smtp(self, timeout: float = 10.0) -> smtplib.SMTP:
        if self.proc is None:
            raise PostfixError("not running")
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=timeout)

    def new_messages(self, user: str) -> list[Path]:
        """The files in user's Maildir/new/ (Postfix delivers there; nothing here moves them)."""
        try:
            return sorted(p for p in (self.maildir(user) / "new").iterdir() if p.is_file())
        except FileNotFoundError:
            return []

    def wait_for_mail(self, user: str, count: int = 1, timeout: float = 30.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.new_messages(user)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise PostfixError(f"{len(found)} of {count} message(s) for {user} after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def queue_size(self) -> int:
        """Messages in the queue (not yet delivered, or deferred), counted from the queue files."""
        total = 0
        for name in QUEUES:
            for _root, _dirs, files in os.walk(self.queue_dir / name):
                total += len(files)
        return total

    def flush(self) -> None:
        """`postqueue -f`: retry deferred mail now."""
        subprocess.run([POSTQUEUE, "-c", str(self.base), "-f"], capture_output=True, timeout=30, check=True)

    def postconf(self, *names: str) -> str:
        """Values as this instance sees them (`postconf -c DIR -h NAMES`)."""
        result = subprocess.run([POSTCONF, "-c", str(self.base), "-h", *names], capture_output=True, timeout=30)
        return result.stdout.decode()

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:]) or "(no log)"

    def errors(self) -> list[str]:
        """fatal, panic and error lines of the log (warnings are in warnings())."""
        return [line for line in self.log_lines() if any(f" {w}: " in line for w in ("fatal", "panic", "error"))]

    def warnings(self) -> list[str]:
        return [line for line in self.log_lines() if " warning: " in line and "postfix-script" not in line]

    @staticmethod
    def version() -> str:
        result = subprocess.run([POSTCONF, "-d", "-h", "mail_version"], capture_output=True, timeout=30)
        return result.stdout.decode().strip() or "?"

