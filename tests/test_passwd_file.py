"""The passwd-file: parsing as Dovecot does, reload on change, verification, atomic rewrites."""

from __future__ import annotations

import json
import os
import stat
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from retrieval.auth.passwd import (
    NoSuchUserError,
    PasswdError,
    PasswdFile,
    UserExistsError,
    UserRecord,
    add_user,
    delete_user,
    set_password,
)
from retrieval.auth.schemes import hash_password, verify_password

ROOT = Path(__file__).resolve().parent.parent

# Cheap hashes where the test is not about cost.
SECRET_SSHA = hash_password("secret", "SSHA512")
SECRET_BCRYPT5 = "{BLF-CRYPT}$2y$05$S/CUAvxbhkd72FN1wXyKOePvFTcnlxtdEbPTQ6gOkvUFVneeRhcbO"  # doveadm, "secret"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


# --------------------------------------------------------------------------- parsing


def test_parses_dovecot_lines(tmp_path: Path) -> None:
    f = write(tmp_path / "users", textwrap.dedent(f"""\
        # comment line
            # indented comment

        full@example.org:{SECRET_SSHA}:1000:1001:Full Name:/home/full:/bin/sh:userdb_mail=maildir:~/Mail allow_nets=10.0.0.0/8,::1 nodelay
        minimal:{{PLAIN}}pw
        empties:{{PLAIN}}pw::::::
        homeonly:{{PLAIN}}pw::::/srv/mail/homeonly
        crlf:{{PLAIN}}pw:5:6\r
        bare:$2y$05$ldtyMW/qnYeL.HL.2MDf.O8QvB.qUCY34MLwRMFiMIj2D.xCq68U2
        last:{{PLAIN}}no-newline"""))
    pf = PasswdFile(f)
    names = [u.name for u in pf.users()]
    assert names == ["full@example.org", "minimal", "empties", "homeonly", "crlf", "bare", "last"]
    full = pf.lookup("full@example.org")
    assert full is not None
    assert (full.uid, full.gid, full.gecos, full.home, full.shell) == (1000, 1001, "Full Name", "/home/full", "/bin/sh")
    assert dict(full.extra) == {"userdb_mail": "maildir:~/Mail", "allow_nets": "10.0.0.0/8,::1", "nodelay": ""}
    assert full.userdb_fields == {"mail": "maildir:~/Mail"}
    assert full.scheme == "SSHA512"
    assert full.line == 4
    minimal = pf.lookup("minimal")
    assert minimal == UserRecord("minimal", "{PLAIN}pw")
    assert (minimal.uid, minimal.home, dict(minimal.extra)) == (None, "", {})
    assert pf.lookup("homeonly").home == "/srv/mail/homeonly"  # type: ignore[union-attr]
    crlf = pf.lookup("crlf")
    assert crlf is not None and (crlf.password, crlf.uid, crlf.gid) == ("{PLAIN}pw", 5, 6)
    assert pf.lookup("bare").scheme == "CRYPT"  # type: ignore[union-attr]
    assert pf.lookup("last").password == "{PLAIN}no-newline"  # type: ignore[union-attr]
    assert pf.lookup("nobody") is None
    assert pf.lookup("full") is None  # no domain guessing
    assert pf.problems() == []


def test_uid_and_gid_may_be_system_names(tmp_path: Path) -> None:
    import grp
    import pwd

    user = next((p for p in pwd.getpwall() if p.pw_uid > 0), None)
    group = next((g for g in grp.getgrall() if g.gr_gid > 0), None)
    if user is None or group is None:
        pytest.skip("no non-root system user or group to name")
    f = write(tmp_path / "users", f"a:{{PLAIN}}x:{user.pw_name}:{group.gr_name}\n")
    record = PasswdFile(f).lookup("a")
    assert record is not None and (record.uid, record.gid) == (user.pw_uid, group.gr_gid)


def test_records_are_frozen_and_hashable(tmp_path: Path) -> None:
    record = UserRecord("a", "{PLAIN}x", extra={"k": "v"})
    assert hash(record) == hash(UserRecord("a", "{PLAIN}x", extra={"k": "v"}))
    assert record == UserRecord("a", "{PLAIN}x", extra={"k": "v"})
    with pytest.raises(TypeError):
        record.extra["k"] = "w"  # type: ignore[index]
    with pytest.raises(AttributeError):
        record.name = "b"  # type: ignore[misc]


def test_allow_nets() -> None:
    anyone = UserRecord("a", "x")
    assert anyone.allows_ip("192.0.2.1") and anyone.allows_ip(None)
    some = UserRecord("a", "x", extra={"allow_nets": "10.0.0.0/8,2001:db8::/32 local"})
    assert some.allows_ip("10.1.2.3")
    assert some.allows_ip("::ffff:10.1.2.3")
    assert some.allows_ip("2001:db8::5")
    assert some.allows_ip(None)
    assert not some.allows_ip("192.0.2.1")
    assert not some.allows_ip("not an ip")
    nobody = UserRecord("a", "x", extra={"allow_nets": ""})
    assert not nobody.allows_ip("10.1.2.3")


def test_problems_name_the_line_and_a_fix(tmp_path: Path) -> None:
    f = write(tmp_path / "users", textwrap.dedent("""\
        # fine
        good:{PLAIN}pw
        nocolon
        baduid:{PLAIN}pw:no-such-user-here:100
        badgid:{PLAIN}pw:100:-5
        unknown:{NOPE}pw
        malformed:{SHA256}abc
        good:{PLAIN}second
        empty:
        :{PLAIN}noname
        both:{PLAIN}pw::::::nopassword
        extra:{PLAIN}pw::::::=novalue
        rootuid:{PLAIN}pw:0:100
        rootgid:{PLAIN}pw:100:0
        named:{PLAIN}pw:root:100
        """))
    pf = PasswdFile(f)
    by_line = {p.where: p for p in pf.problems()}
    assert set(by_line) == {f"line {n}" for n in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)}
    for problem in by_line.values():
        assert problem.file == str(f)
        assert problem.fix
    assert "no ':'" in by_line["line 3"].message
    assert "uid 'no-such-user-here' is neither a number nor a system user" in by_line["line 4"].message
    assert "gid '-5' is neither a number nor a system group" in by_line["line 5"].message
    assert "unknown password scheme 'NOPE'" in by_line["line 6"].message
    assert "malformed" in by_line["line 7"].message or "not valid" in by_line["line 7"].message
    assert "already defined on line 2" in by_line["line 8"].message
    assert "empty" in by_line["line 9"].message
    assert "user name is empty" in by_line["line 10"].message
    assert "nopassword" in by_line["line 11"].message
    assert "'=novalue'" in by_line["line 12"].message
    assert "uid 0 (root) is refused" in by_line["line 13"].message
    assert "gid 0 (root) is refused" in by_line["line 14"].message
    assert "uid 0 (root) is refused" in by_line["line 15"].message  # names resolve, as in Dovecot
    # the first definition wins; lines with a bad uid/gid define nobody
    assert pf.lookup("good").password == "{PLAIN}pw"  # type: ignore[union-attr]
    assert pf.lookup("baduid") is None and pf.lookup("badgid") is None
    assert pf.lookup("rootuid") is None and pf.lookup("named") is None
    assert "line 3" in str(by_line["line 3"])


def test_unreadable_file_is_a_problem_and_has_no_users(tmp_path: Path) -> None:
    pf = PasswdFile(tmp_path / "missing")
    assert pf.users() == [] and pf.lookup("x") is None
    assert pf.verify("x", "y") is None
    (problem,) = pf.problems()
    assert problem.where == "file" and "cannot read" in problem.message and problem.fix
    write(tmp_path / "missing", "x:{PLAIN}y\n")  # appears later: picked up
    assert pf.verify("x", "y") is not None
    assert pf.problems() == []
    os.unlink(tmp_path / "missing")  # disappears: fail closed
    assert pf.lookup("x") is None


def test_unknown_default_scheme_fails_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NOPE"):
        PasswdFile(tmp_path / "users", default_scheme="NOPE")


# ---------------------------------------------------------------------------- reload


def test_reload_when_the_file_changes(tmp_path: Path) -> None:
    f = write(tmp_path / "users", "a:{PLAIN}one\n")
    pf = PasswdFile(f)
    assert pf.verify("a", "one") is not None
    # appended by hand (same inode, bigger)
    with open(f, "a") as fh:
        fh.write("b:{PLAIN}two\n")
    assert pf.lookup("b") is not None
    # edited in place with the same size: mtime/ctime tell
    time.sleep(0.05)
    with open(f, "r+b") as fh:
        fh.write(b"a:{PLAIN}ONE\n")
    assert pf.verify("a", "ONE") is not None and pf.verify("a", "one") is None
    # replaced by rename (what our writers and most editors do)
    add_user(f, "c", "three", scheme="PLAIN")
    assert pf.verify("c", "three") is not None
    before = pf.users()
    assert pf.users() == before  # unchanged file: same view


# ---------------------------------------------------------------------- verification


def test_verify_right_wrong_unknown(tmp_path: Path) -> None:
    f = write(tmp_path / "users", textwrap.dedent(f"""\
        alice:{SECRET_BCRYPT5}:1000:1000::/home/alice
        open:::::::nopassword
        locked:
        broken:{{SHA256}}short
        odd:{{NOPE}}secret
        """))
    pf = PasswdFile(f)
    record = pf.verify("alice", "secret")
    assert record is not None and record.home == "/home/alice"
    assert pf.verify("alice", "Secret") is None
    assert pf.verify("alice", "") is None
    assert pf.verify("mallory", "secret") is None
    assert pf.verify("open", "anything") is not None  # Dovecot's nopassword
    assert pf.verify("locked", "") is None
    assert pf.verify("broken", "secret") is None
    assert pf.verify("odd", "secret") is None
    assert pf.verify("alice", b"secret") is not None


def test_unknown_user_is_checked_against_a_dummy_of_the_same_cost(tmp_path: Path) -> None:
    f = write(tmp_path / "users", f"alice:{SECRET_BCRYPT5}\n")
    pf = PasswdFile(f)
    dummy = pf.dummy_hash()
    assert dummy.startswith("{BLF-CRYPT}$2y$05$")  # the cost doveadm used, not passlib's 12
    assert not verify_password("secret", dummy)
    empty = PasswdFile(write(tmp_path / "empty", "# nobody yet\n"))
    assert empty.dummy_hash().startswith("{BLF-CRYPT}$2y$12$")
    argon = PasswdFile(write(tmp_path / "argon", ""), default_scheme="argon2id")
    assert argon.dummy_hash().startswith("{ARGON2ID}$argon2id$")


def _median_seconds(func, *args) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_unknown_user_and_wrong_password_take_about_as_long(tmp_path: Path) -> None:
    f = tmp_path / "users"
    add_user(f, "alice", "secret", scheme="BLF-CRYPT", rounds=10)  # ~70 ms: well above noise
    pf = PasswdFile(f)
    assert pf.dummy_hash().startswith("{BLF-CRYPT}$2y$10$")  # made once, outside the timing (cached)
    wrong = _median_seconds(pf.verify, "alice", "wrong")
    unknown = _median_seconds(pf.verify, "mallory", "wrong")
    assert wrong > 0.01  # real bcrypt work happened
    assert 1 / 3 < unknown / wrong < 3, (unknown, wrong)


def test_verify_deferred_runs_in_a_thread_pool() -> None:
    """Run a real reactor in a child process: the result arrives, computed off the main thread."""
    script = textwrap.dedent("""
        import json, sys, tempfile, threading, os
        from twisted.internet import task
        from retrieval.auth.passwd import PasswdFile
        from retrieval.auth.schemes import hash_password

        class Recording(PasswdFile):
            def verify(self, name, password):
                seen.append(threading.current_thread() is threading.main_thread())
                return super().verify(name, password)

        seen = []
        path = os.path.join(tempfile.mkdtemp(), "users")
        with open(path, "w") as fh:
            fh.write("alice:" + hash_password("secret", "BLF-CRYPT", rounds=4) + "\\n")
        pf = Recording(path)

        def main(reactor):
            from twisted.internet.defer import Deferred, gatherResults
            good = pf.verify_deferred("alice", "secret")
            bad = pf.verify_deferred("alice", "nope")
            assert isinstance(good, Deferred)
            def done(results):
                print(json.dumps({"good": results[0].name if results[0] else None,
                                  "bad": results[1], "on_main": seen}))
            return gatherResults([good, bad]).addCallback(done)

        task.react(main)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"good": "alice", "bad": None, "on_main": [False, False]}


# --------------------------------------------------------------------------- writing

ORIGINAL = (
    "# Managed by hand. Do not reorder.\n"
    "\n"
    "alice:{PLAIN}a:1000:1000:Alice:/home/alice::userdb_mail=maildir:~/Mail\n"
    "#bob:{PLAIN}disabled\n"
    "carol:{PLAIN}c\r\n"
    "   \n"
    "dave:{PLAIN}d::::::  \n"
    "erin:{PLAIN}e"  # no final newline
)


def test_add_preserves_every_other_byte(tmp_path: Path) -> None:
    f = write(tmp_path / "users", ORIGINAL)
    os.chmod(f, 0o640)
    record = add_user(f, "frank@example.org", "pw", scheme="PLAIN", uid=5000, gid=5000,
                      home="/srv/frank", extra={"userdb_quota_rule": "*:storage=1G"})
    assert record.name == "frank@example.org"
    assert f.read_bytes() == (ORIGINAL + "\nfrank@example.org:{PLAIN}pw:5000:5000::/srv/frank::"
                              "userdb_quota_rule=*:storage=1G\n").encode()
    assert stat.S_IMODE(f.stat().st_mode) == 0o640  # existing mode kept
    assert PasswdFile(f).lookup("frank@example.org").extra["userdb_quota_rule"] == "*:storage=1G"  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]  # no temp file left
    with pytest.raises(UserExistsError):
        add_user(f, "alice", "x", scheme="PLAIN")
    add_user(f, "bob", "x", scheme="PLAIN")  # only commented out: may be added


def test_add_creates_the_file_0600(tmp_path: Path) -> None:
    f = tmp_path / "new-users"
    old = os.umask(0o022)
    try:
        add_user(f, "alice", "secret", scheme="SSHA512", home="/home/alice")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    text = f.read_text()
    assert text.startswith("alice:{SSHA512}") and text.endswith("::::/home/alice\n")
    assert PasswdFile(f).verify("alice", "secret") is not None


def test_set_password_changes_only_that_field(tmp_path: Path) -> None:
    f = write(tmp_path / "users", ORIGINAL)
    set_password(f, "alice", "new", scheme="PLAIN")
    set_password(f, "carol", "new-c", scheme="PLAIN")
    set_password(f, "erin", "new-e", scheme="PLAIN")
    expected = (ORIGINAL.replace("alice:{PLAIN}a:", "alice:{PLAIN}new:")
                .replace("carol:{PLAIN}c\r\n", "carol:{PLAIN}new-c\r\n")
                .replace("erin:{PLAIN}e", "erin:{PLAIN}new-e"))
    assert f.read_bytes() == expected.encode()
    set_password(f, "dave", stored=SECRET_BCRYPT5)
    assert PasswdFile(f).verify("dave", "secret") is not None
    with pytest.raises(NoSuchUserError):
        set_password(f, "bob", "x", scheme="PLAIN")
    with pytest.raises(NoSuchUserError):
        set_password(tmp_path / "absent", "alice", "x", scheme="PLAIN")
    assert not (tmp_path / "absent").exists()


def test_delete_removes_every_line_of_the_user(tmp_path: Path) -> None:
    f = write(tmp_path / "users", ORIGINAL + "\ncarol:{PLAIN}duplicate\n")
    delete_user(f, "carol")
    assert f.read_text() == ORIGINAL.replace("carol:{PLAIN}c\r\n", "") + "\n"
    assert PasswdFile(f).lookup("carol") is None
    with pytest.raises(NoSuchUserError):
        delete_user(f, "carol")


def test_writers_refuse_what_the_format_cannot_hold(tmp_path: Path) -> None:
    f = tmp_path / "users"
    for name in ("", "a:b", "a b", "#a", "a\nb"):
        with pytest.raises(PasswdError):
            add_user(f, name, "x", scheme="PLAIN")
    with pytest.raises(PasswdError, match="PLAIN.B64"):
        add_user(f, "a", "has:colon", scheme="PLAIN")
    add_user(f, "a", "has:colon", scheme="PLAIN.B64")  # the way out
    assert PasswdFile(f).verify("a", "has:colon") is not None
    with pytest.raises(PasswdError):
        add_user(f, "b", "x", scheme="PLAIN", home="/a:b")
    with pytest.raises(PasswdError):
        add_user(f, "b", "x", scheme="PLAIN", extra={"k": "two words"})
    with pytest.raises(PasswdError, match="unknown password scheme"):
        add_user(f, "b", "x", scheme="NOPE")
    with pytest.raises(PasswdError, match="root"):
        add_user(f, "b", "x", scheme="PLAIN", uid=0, gid=100)
    assert [u.name for u in PasswdFile(f).users()] == ["a"]


def test_symlinked_file_stays_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path / "real-users", "a:{PLAIN}x\n")
    link = tmp_path / "users"
    link.symlink_to(real)
    add_user(link, "b", "y", scheme="PLAIN")
    assert link.is_symlink()
    assert real.read_text() == "a:{PLAIN}x\nb:{PLAIN}y\n"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    f = tmp_path / "users"
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                add_user(f, f"user{n}-{i}", "pw", scheme="PLAIN")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(PasswdFile(f).users()) == 40
    assert PasswdFile(f).problems() == []


def test_passwdfile_write_methods_use_its_default_scheme(tmp_path: Path) -> None:
    pf = PasswdFile(tmp_path / "users", default_scheme="SSHA256")
    pf.add_user("a", "pw")
    assert pf.lookup("a").scheme == "SSHA256"  # type: ignore[union-attr]
    pf.set_password("a", "pw2")
    assert pf.verify("a", "pw2") is not None
    pf.delete_user("a")
    assert pf.users() == []
