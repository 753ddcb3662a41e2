"""Delivery to `|command` and `/file` targets (Postfix local(8)'s "external" deliveries).

BLOCKING (a child process, file locks, fsync): the caller runs these in a thread.

Both get what Postfix's local(8) gives them: a `From sender date` line,
`Return-Path:`, `Delivered-To:`, then the message with LF line ends (the
message arrives with CRLF as received over SMTP).

Who they run as: the target's `user` (a passwd-file user, the owner of the
.forward the target came from), else `[smtp] default_privs` (aliases and their
include files); never root: a user with uid 0 or none is replaced by the
mail user (`[server] user`) or default_privs. Identity only changes when we
are root; otherwise everything runs as ourselves. Files are appended by a
forked child with that identity (setuid is per process, and we are one
thread of a server), through the store's mbox writer: the same dotlock +
fcntl locking as Postfix and procmail, truncated back on failure. The file's
folder must be writable by that user, for the dotlock.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from retrieval.smtp.aliases import split_extension
from retrieval.smtp.session import Reply, split_address
from retrieval.smtp.targets import FileTarget, PipeTarget
from retrieval.store.errors import StoreError, TemporaryFailure
from retrieval.store.mbox import deliver_mbox

# sysexits.h -> (enhanced status, text), as Postfix's sys_exits.c
SYSEXITS = {
    64: ("5.3.0", "command line usage error"),
    65: ("5.6.0", "data format error"),
    66: ("5.3.0", "cannot open input"),
    67: ("5.1.1", "user unknown"),
    68: ("5.1.2", "host name unknown"),
    69: ("5.3.0", "service unavailable"),
    70: ("5.3.0", "internal software error"),
    71: ("4.3.0", "system resource problem"),
    72: ("5.3.0", "critical OS file missing"),
    73: ("5.2.0", "can't create user output file"),
    74: ("5.3.0", "input/output error"),
    75: ("4.3.0", "temporary failure"),
    76: ("5.5.0", "remote protocol error"),
    77: ("5.7.0", "permission denied"),
    78: ("5.3.5", "local configuration error"),
}

PATH = "/usr/local/bin:/usr/bin:/bin"
_OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int | None  # None: stay who we are (we are not root)
    gid: int | None
    home: str
    shell: str = "/bin/sh"


def _reply(status: str, text: str) -> Reply:
    return Reply(451 if status.startswith("4") else 550, status, text)


def identity(user: str | None, config, passwd) -> Identity:  # type: ignore[no-untyped-def]
    """Whom a target runs as (see the module docstring). Raises LookupError with the reason."""
    root = os.getuid() == 0
    record = passwd.lookup(user) if user is not None else None
    if user is not None and record is None:
        raise LookupError(f"user {user} is no longer in the passwd-file")
    if record is not None and record.uid not in (None, 0):
        gid = record.gid if record.gid is not None else record.uid
        return Identity(record.name, record.uid if root else None, gid if root else None,
                        record.home, record.shell or "/bin/sh")
    account = (config.server.user if record is not None and config.server.user else None) or config.smtp.default_privs
    try:
        pw = pwd.getpwnam(account)
    except KeyError:
        raise LookupError(f"system account {account!r} ([smtp] default_privs) does not exist") from None
    if root and pw.pw_uid == 0:
        raise LookupError(f"refusing to run as root ({account})")
    home = record.home if record is not None and record.home else pw.pw_dir
    name = record.name if record is not None else account
    return Identity(name, pw.pw_uid if root else None, pw.pw_gid if root else None, home)


def prepend_envelope(message: bytes, sender: str, recipient: str, from_line: bool = True) -> tuple[bytes, str]:
    """LF line ends, Return-Path and Delivered-To (and the From_ line); returns (bytes, sender)."""
    from retrieval.store.deliver import prepare
    from retrieval.store.mboxfile import format_from_line

    data = message.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    data, sender = prepare(data, recipient, sender)
    if from_line:
        data = format_from_line(sender, time.time()) + b"\n" + data
    return data, sender


def environment(ident: Identity, sender: str, recipient: str, delimiter: str) -> dict[str, str]:
    """A clean environment with what Postfix's local(8) exports to commands."""
    local, domain = split_address(recipient)
    _, extension = split_extension(local, delimiter)
    env = {
        "PATH": PATH,
        "HOME": ident.home or "/",
        "USER": ident.name,
        "LOGNAME": ident.name,
        "SHELL": ident.shell,
        "SENDER": sender,
        "RECIPIENT": recipient,
        "ORIGINAL_RECIPIENT": recipient,
        "LOCAL": local,
        "DOMAIN": domain,
        "EXTENSION": extension or "",
        "LANG": "C.UTF-8",
    }
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def _first_line(output: bytes) -> str:
    for line in output.decode("utf-8", "replace").splitlines():
        line = "".join(c if c.isprintable() else "?" for c in line.strip())
        if line:
            return line[:200]
    return ""


def _run(argv: list[str], data: bytes, ident: Identity, env: dict[str, str], timeout: float) -> tuple[int | None, bytes]:
    """Run with the identity, stdin = data; (exit status or None on timeout, first output bytes).

    Negative status: killed by that signal. The child gets its own process
    group, so a timeout kills whatever the command started too."""
    cwd = ident.home if ident.home and os.path.isdir(ident.home) else "/"
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=output, stderr=output, env=env, cwd=cwd,
                user=ident.uid, group=ident.gid, extra_groups=[] if ident.uid is not None else None,
                start_new_session=True, close_fds=True,
            )
        except PermissionError:
            # cwd not enterable as that user: run from /
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=output, stderr=output, env=env, cwd="/",
                user=ident.uid, group=ident.gid, extra_groups=[] if ident.uid is not None else None,
                start_new_session=True, close_fds=True,
            )
        try:
            proc.communicate(data, timeout=timeout)
            status: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            status = None
        output.seek(0)
        return status, output.read(_OUTPUT_LIMIT)


def deliver_to_pipe(target: PipeTarget, message: bytes, sender: str, recipient: str,  # type: ignore[no-untyped-def]
                    config, passwd) -> Reply:
    """Pipe the message into `/bin/sh -c command`; the reply says what to tell the sender."""
    try:
        ident = identity(target.user, config, passwd)
    except LookupError as exc:
        return _reply("4.3.0", f"{target.origin}: {exc}")
    data, sender = prepend_envelope(message, sender, recipient)
    env = environment(ident, sender, recipient, config.smtp.recipient_delimiter)
    try:
        status, output = _run(["/bin/sh", "-c", target.command], data, ident, env, config.smtp.command_time_limit)
    except OSError as exc:
        return _reply("4.3.0", f'cannot run "{target.command}": {exc.strerror}')
    said = _first_line(output)
    tail = f". Command output: {said}" if said else ""
    if status is None:
        return _reply("5.3.0", f'Command time limit exceeded: "{target.command}"{tail}')
    if status == 0:
        return Reply(250, "2.0.0", f'delivered to command: {target.command}')
    if status < 0:
        return _reply("5.3.0", f'Command died with signal {-status}: "{target.command}"{tail}')
    dsn, text = SYSEXITS.get(status, ("5.3.0", "unknown mail system error"))
    return _reply(dsn, f'Command died with status {status} ({text}): "{target.command}"{tail}')


def deliver_to_file(target: FileTarget, message: bytes, sender: str, recipient: str,  # type: ignore[no-untyped-def]
                    config, passwd) -> Reply:
    """Append to an mbox file as the target's user; /dev/null takes anything."""
    path = target.path
    if not os.path.isabs(path) or path.endswith("/"):
        return _reply("5.3.5", f"{target.origin}: {path}: not an absolute file path")
    if path == "/dev/null":
        return Reply(250, "2.0.0", "delivered to /dev/null")
    try:
        ident = identity(target.user, config, passwd)
    except LookupError as exc:
        return _reply("4.3.0", f"{target.origin}: {exc}")
    data, sender = prepend_envelope(message, sender, recipient, from_line=False)
    lock_timeout, fsync = config.store.lock_timeout, config.store.fsync
    if ident.uid is None:
        code, text = append(path, sender, data, lock_timeout, fsync)
    else:
        code, text = _append_as(ident, path, sender, data, lock_timeout, fsync)
    if code == 0:
        return Reply(250, "2.0.0", f"delivered to file: {path}")
    dsn = "4.2.0" if code == 75 else "5.2.0"
    return _reply(dsn, f"{target.origin}: cannot append to {path}: {text}")


def append(path: str, sender: str, data: bytes, lock_timeout: float, fsync: bool) -> tuple[int, str]:
    """Append one message with the store's mbox writer: (sysexit, why)."""
    file = Path(path)
    if not file.parent.is_dir():
        return 73, f"no such directory: {file.parent}"
    if file.exists() and not file.is_file():
        return 73, "not a regular file"
    try:
        deliver_mbox(file, data, sender, lock_timeout=lock_timeout, fsync=fsync)
    except (TemporaryFailure, StoreError) as exc:
        return 75, str(exc)
    except OSError as exc:
        temporary = exc.errno in (errno.EAGAIN, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE)
        return (75 if temporary else 73), f"{exc.strerror}"
    return 0, "ok"


def _append_as(ident: Identity, path: str, sender: str, data: bytes, lock_timeout: float,
               fsync: bool) -> tuple[int, str]:
    """`append` in a forked child that has become the target's user.

    A fork without exec: the interpreter may not be executable by that user
    (a pyenv under /root), and the child only runs `append` (everything it
    needs is imported before the fork; CPython resets its import lock and
    glibc its malloc locks in the child) and leaves by os._exit, never
    returning into the server's code. It is killed if it outlives the lock
    timeout by far."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 75
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(ident.gid if ident.gid is not None else ident.uid)
            os.setuid(ident.uid)
            code, text = append(path, sender, data, lock_timeout, fsync)
            os.write(write_end, text.encode("utf-8", "replace")[:2000])
        except BaseException as exc:  # noqa: BLE001 - anything, as an exit status
            try:
                os.write(write_end, f"file writer failed: {exc}".encode("utf-8", "replace")[:2000])
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + max(60.0, lock_timeout * 2)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return 75, "the file writer took too long and was killed"
            time.sleep(0.01)
        text = os.read(read_end, 4000).decode("utf-8", "replace")
    finally:
        os.close(read_end)
    code = os.waitstatus_to_exitcode(status)
    return (code, text) if code >= 0 else (75, f"the file writer died with signal {-code}")
