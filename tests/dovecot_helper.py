"""A private Debian Dovecot for interop tests and benchmarks (tests and bench/ both use this).

    with PrivateDovecot() as dv:            # a fresh dir under /tmp, a free port
        home = dv.add_user("alice", "secret")
        dv.start()
        imap = dv.imap("alice", "secret")   # imaplib.IMAP4, logged in
        ...
        dv.doveadm("fetch", "-u", "alice", "uid flags", "mailbox", "INBOX", "all")
    # stopped and removed, whatever happened

    PrivateDovecot(protocols="pop3")        # POP3 only, on dv.pop3_port (dv.pop3() logs in)
    PrivateDovecot(protocols="imap pop3")   # both: dv.port is IMAP, dv.pop3_port is POP3

Everything lives in one directory: the config (no `!include` of /etc/dovecot),
`base_dir` (sockets), `state_dir`, the log and the passwd-file. Dovecot runs in
the foreground (`dovecot -F`) as our child, so stopping it is a signal to a pid
we own, with a deadline.

Dovecot will not give mail access to root (passwd-file refuses UID 0 and the
mail processes refuse to run as root whatever `first_valid_uid` says). So, run
as root, the mail user is `nobody` and homes are chowned to it; `chown_tree()`
hands files we wrote as root back to it before Dovecot looks at them. Run as
anyone else, the mail user is the current user and Dovecot's internal and
login users are that user too.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import poplib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def unavailable_reason() -> str | None:
    """Why a private Dovecot cannot run here, or None if it can."""
    if not os.path.exists(DOVECOT):
        return f"{DOVECOT} is absent (apt-get install dovecot-imapd)"
    if not os.path.exists(DOVEADM):
        return f"{DOVEADM} is absent (it comes with dovecot-core)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            return "run as root, but there is no 'nobody' user to be the mail user"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mail_ids() -> tuple[int, int, str, str]:
    """(uid, gid, user name, group name) Dovecot's mail processes will run as."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam("nobody")
    else:
        pw = pwd.getpwuid(os.geteuid())
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    return pw.pw_uid, pw.pw_gid, pw.pw_name, group


class DovecotError(RuntimeError):
    pass


class PrivateDovecot:
    """One private Dovecot instance: config, passwd-file, homes, process."""

    def __init__(
        self,
        base: Path | None = None,
        mail_location: str = "maildir:~/Maildir",
        protocols: str = "imap",
        extra_config: str = "",
        cleanup: bool = True,
    ) -> None:
        # A short path under /tmp: socket paths must stay under 108 bytes, and the mail
        # user (nobody, when we are root) must be able to traverse every parent.
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="dvc-", dir="/tmp"))
            self._owns_base = cleanup
        else:
            base.mkdir(parents=True, exist_ok=True)
            self._owns_base = False
        os.chmod(base, 0o755)
        self.base = base
        self.mail_location = mail_location
        self.protocols = protocols
        self.extra_config = extra_config
        self.uid, self.gid, self.user_name, self.group_name = mail_ids()
        self.port = 0  # IMAP (picked even when imap is not in `protocols`; then nothing listens on it)
        self.pop3_port = 0  # POP3, when "pop3" is in `protocols`
        self.conf = base / "dovecot.conf"
        self.passwd = base / "passwd"
        self.log = base / "dovecot.log"
        self.run_dir = base / "run"
        self.state_dir = base / "state"
        self.proc: subprocess.Popen | None = None
        self.users: dict[str, tuple[str, Path, str]] = {}
        self.passwd.touch()

    # -- setup ------------------------------------------------------------------

    def add_user(self, name: str, password: str, home: Path | None = None, extra: str = "") -> Path:
        """Add a passwd-file user ({PLAIN}); create the home, owned by the mail user.

        `extra`: the passwd-file's extra fields, e.g. `userdb_mail=mbox:~/mail:INBOX=~/inbox`.
        """
        home = home or self.base / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        for parent in home.parents:  # the mail user must reach its home
            if parent == self.base or self.base not in parent.parents:
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o755)
        self.chown_tree(home)
        self.users[name] = (password, home, extra)
        self.passwd.write_text(
            "".join(
                f"{user}:{{PLAIN}}{pw}:{self.uid}:{self.gid}::{h}::{x}\n" for user, (pw, h, x) in self.users.items()
            )
        )
        return home

    def chown_tree(self, path: Path) -> None:
        """Give files (written by us as root) to the mail user, as a real deployment would have them."""
        if os.geteuid() != 0:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), self.uid, self.gid)

    def config_text(self) -> str:
        privileged = os.geteuid() == 0
        lines = [
            f"base_dir = {self.run_dir}",
            f"state_dir = {self.state_dir}",
            f"instance_name = {self.base.name}",
            f"log_path = {self.log}",
            "ssl = no",
            "auth_mechanisms = plain",
            "disable_plaintext_auth = no",
            f"protocols = {self.protocols}",
            "listen = 127.0.0.1",
            f"mail_location = {self.mail_location}",
            f"first_valid_uid = {min(self.uid, 500)}",
            f"first_valid_gid = {min(self.gid, 1)}",
            # nothing in a test waits for a penalty or a slow log-out
            "auth_failure_delay = 0",
            "login_trusted_networks = 127.0.0.0/8",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {self.passwd}",
            "}",
            "userdb {",
            "  driver = passwd-file",
            f"  args = {self.passwd}",
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            "    port = 0",
            "  }",
        ]
        if not privileged:
            lines.append("  chroot =")
        lines.append("}")
        if self.wants("pop3"):
            lines += [
                "service pop3-login {",
                "  inet_listener pop3 {",
                f"    port = {self.pop3_port}",
                "  }",
                "  inet_listener pop3s {",
                "    port = 0",
                "  }",
            ]
            if not privileged:
                lines.append("  chroot =")
            lines.append("}")
        if not privileged:
            me = self.user_name
            lines += [
                f"default_login_user = {me}",
                f"default_internal_user = {me}",
                f"default_internal_group = {self.group_name}",
                "service anvil {",
                "  chroot =",
                "}",
            ]
        lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def wants(self, protocol: str) -> bool:
        return protocol in self.protocols.split()

    def write_config(self) -> None:
        for d in (self.run_dir, self.state_dir):
            d.mkdir(exist_ok=True)
        self.conf.write_text(self.config_text())

    # -- process ----------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start `dovecot -F` on free ports; return once IMAP (and POP3, if enabled) greet."""
        if self.proc is not None:
            raise DovecotError("already running")
        last_error = ""
        for _attempt in range(3):  # another process may take our free port meanwhile
            self.port = free_port()
            if self.wants("pop3"):
                self.pop3_port = free_port()
            self.write_config()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [DOVECOT, "-F", "-c", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            try:
                self._wait_ready(timeout)
                return
            except DovecotError as exc:
                last_error = str(exc)
                self.stop()
                if "in use" not in last_error:
                    break
        raise DovecotError(last_error)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waits = []
        if self.wants("imap") or not self.wants("pop3"):
            waits.append((self.port, b"* OK"))
        if self.wants("pop3"):
            waits.append((self.pop3_port, b"+OK"))
        for port, greeting in waits:
            self._wait_greeting(port, greeting, deadline, timeout)

    def _wait_greeting(self, port: int, greeting: bytes, deadline: float, timeout: float) -> None:
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DovecotError(f"dovecot exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    if s.recv(100).startswith(greeting):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise DovecotError(f"dovecot did not answer on port {port} within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the master (it stops its children), SIGKILL its group after the deadline."""
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
        # children notice the master's death; give them a moment to let go of files
        self._wait_children_gone(proc.pid, timeout)

    @staticmethod
    def _wait_children_gone(pgid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = False
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != b"Z":  # state ppid pgrp ...; zombies hold nothing
                    alive = True
                    break
            if not alive:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def errors(self) -> list[str]:
        """Error and Fatal lines of the log (Dovecot's verdict on what it found)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if ": Error: " in line or ": Fatal: " in line or ": Panic: " in line]

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._owns_base:
                shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivateDovecot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients ----------------------------------------------------------------

    def imap(self, user: str, password: str | None = None, timeout: float = 10.0) -> imaplib.IMAP4:
        if self.proc is None:
            raise DovecotError("not running")
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=timeout)
        client.login(user, password if password is not None else self.users[user][0])
        return client

    def pop3(self, user: str, password: str | None = None, timeout: float = 10.0) -> poplib.POP3:
        """A poplib.POP3 logged in with USER/PASS (needs "pop3" in `protocols`)."""
        if self.proc is None:
            raise DovecotError("not running")
        if not self.wants("pop3"):
            raise DovecotError("pop3 is not in protocols")
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=timeout)
        client.user(user)
        client.pass_(password if password is not None else self.users[user][0])
        return client

    def doveadm(self, *args: str, input: bytes | None = None, timeout: float = 600.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run `doveadm -c CONF ARGS...` (needs the instance running: user lookups go through it)."""
        result = subprocess.run(
            [DOVEADM, "-c", str(self.conf), *args],
            input=input,
            capture_output=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} exited with {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result
