"""`retrieval passwd ...` run as a real process, as an admin would run it."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.auth.passwd import PasswdFile
from retrieval.auth.schemes import verify_password

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ADMIN = [sys.executable, "-m", "retrieval.auth.admin"]


def passwd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADMIN, "passwd", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=ENV)


def test_add_set_del_list_round_trip(tmp_path: Path) -> None:
    f = str(tmp_path / "users")
    out = passwd("add", "alice@example.org", "--file", f, "--password-stdin", "--scheme", "ssha512",
                 "--home", "/home/alice", "--uid", "1000", "--gid", "1000",
                 "--extra", "userdb_mail=maildir:~/Mail", stdin="first secret\n")
    assert out.returncode == 0, out.stderr
    out = passwd("add", "bob", "--file", f, "--password-stdin", "--rounds", "4", stdin="bob's\n")
    assert out.returncode == 0, out.stderr

    pf = PasswdFile(f)
    alice = pf.verify("alice@example.org", "first secret")
    assert alice is not None
    assert (alice.uid, alice.gid, alice.home, alice.extra["userdb_mail"]) == (1000, 1000, "/home/alice", "maildir:~/Mail")
    bob = pf.verify("bob", "bob's")
    assert bob is not None and bob.password.startswith("{BLF-CRYPT}$2y$04$")  # the default scheme

    out = passwd("list", "--file", f)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "alice@example.org\tSSHA512\nbob\tBLF-CRYPT\n"
    assert "{" not in out.stdout and "$" not in out.stdout  # never a hash

    out = passwd("set", "alice@example.org", "--file", f, "--password-stdin", "-s", "SHA512-CRYPT",
                 "-r", "5000", stdin="second secret\r\n")
    assert out.returncode == 0, out.stderr
    assert pf.verify("alice@example.org", "second secret") is not None
    assert pf.verify("alice@example.org", "first secret") is None
    assert pf.lookup("alice@example.org").home == "/home/alice"  # type: ignore[union-attr]

    out = passwd("del", "bob", "--file", f)
    assert out.returncode == 0, out.stderr
    out = passwd("list", "--file", f)
    assert out.stdout == "alice@example.org\tSHA512-CRYPT\n"
    out = passwd("check", "--file", f)
    assert out.returncode == 0 and out.stderr == ""


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    f = str(tmp_path / "users")
    assert passwd("add", "alice", "--file", f, "--password-stdin", "-s", "PLAIN", stdin="x\n").returncode == 0
    before = Path(f).read_bytes()
    cases = [
        (("add", "alice", "--file", f, "--password-stdin", "-s", "PLAIN"), "x\n", "already exists"),
        (("set", "nobody", "--file", f, "--password-stdin"), "x\n", "does not exist"),
        (("del", "nobody", "--file", f), None, "does not exist"),
        (("add", "bob", "--file", f, "--password-stdin", "--scheme", "ROT13"), "x\n", "unknown password scheme 'ROT13'"),
        (("add", "bob", "--file", f, "--password-stdin"), "\n", "empty password"),
        (("add", "bob", "--file", f, "--password-stdin", "--uid", "5"), "x\n", "--uid and --gid together"),
        (("add", "b:b", "--file", f, "--password-stdin", "-s", "PLAIN"), "x\n", "invalid user name"),
        (("list", "--file", str(tmp_path / "absent")), None, "cannot read"),
        (("set", "alice", "--file", str(tmp_path / "absent"), "--password-stdin"), "x\n", "does not exist"),
    ]
    for args, stdin, message in cases:
        out = passwd(*args, stdin=stdin)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert Path(f).read_bytes() == before
    assert not (tmp_path / "absent").exists()


def test_check_reports_problems(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text("ok:{PLAIN}x\nbroken:{NOPE}x\nok:{PLAIN}y\n")
    out = passwd("check", "--file", str(f))
    assert out.returncode == 1
    assert "line 2" in out.stderr and "line 3" in out.stderr and "fix:" in out.stderr
    out = passwd("list", "--file", str(f))
    assert out.returncode == 0
    assert out.stdout == "ok\tPLAIN\nbroken\tNOPE\n"
    assert "warning:" in out.stderr


def test_hash_prints_the_stored_form_like_doveadm_pw() -> None:
    out = passwd("hash", "--scheme", "ssha256", stdin="secret\n")
    assert out.returncode == 0, out.stderr
    stored = out.stdout.strip()
    assert stored.startswith("{SSHA256}") and verify_password("secret", stored)
    out = passwd("hash", "-r", "4", stdin="secret\n")
    assert out.stdout.startswith("{BLF-CRYPT}$2y$04$")
    doveadm = shutil.which("doveadm")
    if doveadm is not None:
        check = subprocess.run([doveadm, "pw", "-t", out.stdout.strip(), "-p", "secret"],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def _read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _run_on_terminal(args: list[str], answers: list[str]) -> tuple[int, bytes]:
    """Run the command on a pseudo-terminal, typing each answer after its prompt (as getpass wants)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: becomes the command, with the pty as its controlling terminal
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "retrieval.auth.admin", *args], ENV)
        finally:
            os._exit(127)
    output = b""
    try:
        for answer in answers:
            output += _read_until(fd, b"password: ")
            os.write(fd, answer.encode() + b"\n")
        output += _read_until(fd, b"\x00never", timeout=30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output


def test_password_from_the_terminal_asked_twice(tmp_path: Path) -> None:
    f = str(tmp_path / "users")
    code, output = _run_on_terminal(["passwd", "add", "alice", "--file", f, "-s", "SSHA"], ["typed", "typed"])
    assert code == 0, output
    assert b"typed" not in output  # no echo
    assert PasswdFile(f).verify("alice", "typed") is not None
    code, output = _run_on_terminal(["passwd", "set", "alice", "--file", f, "-s", "SSHA"], ["one", "two"])
    assert code == 1
    assert b"do not match" in output
    assert PasswdFile(f).verify("alice", "typed") is not None


def test_registered_in_the_retrieval_command(tmp_path: Path) -> None:
    """Through `python -m retrieval` once the top-level CLI can be imported."""
    probe = subprocess.run([sys.executable, "-c", "import retrieval.cli as c; c.build_parser()"],
                           capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"retrieval.cli cannot build its parser yet: {probe.stderr.strip().splitlines()[-1:]}")
    f = str(tmp_path / "users")
    out = subprocess.run([sys.executable, "-m", "retrieval", "passwd", "add", "carol", "--file", f,
                          "--password-stdin", "-s", "PLAIN"], input="pw\n", capture_output=True,
                         text=True, cwd=ROOT, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "retrieval", "passwd", "list", "--file", f],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert out.stdout == "carol\tPLAIN\n"
