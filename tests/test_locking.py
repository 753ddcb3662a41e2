"""Tests for retrieval.store.locking: dotlock + fcntl as Postfix, procmail
and Dovecot take them, including interop with Debian's ``lockfile`` and
``procmail`` binaries (skipped when they are not installed)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from retrieval.store import locking
from retrieval.store.locking import (
    DotLock,
    LockLost,
    LockTimeout,
    MboxLock,
    fcntl_lock,
    fcntl_unlock,
)
from retrieval.store.mboxfile import client_message, scan

REPO = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def mbox(tmp_path: Path) -> Path:
    p = tmp_path / "inbox"
    p.write_bytes(b"")
    return p


# --------------------------------------------------------------------------
# mutual exclusion between processes

WORKER = r"""
import os, sys, time
from retrieval.store.locking import DotLock, MboxLock, fcntl_lock, fcntl_unlock

mode, path, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def bump(fd):
    # read-modify-write in several system calls with a yield in between:
    # without mutual exclusion numbers repeat or lines interleave
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 32, max(0, size - 32))
    last = int(tail.splitlines()[-1]) if tail else 0
    os.sched_yield()
    digits = b"%d" % (last + 1)
    os.pwrite(fd, digits, size)
    os.sched_yield()
    os.pwrite(fd, b"\n", size + len(digits))

deadline = time.monotonic() + 20
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never started")
    time.sleep(0.001)

for _ in range(n):
    if mode == "dot":
        with DotLock(path, timeout=30):
            fd = os.open(path, os.O_RDWR)
            try:
                bump(fd)
            finally:
                os.close(fd)
    elif mode == "fcntl":
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl_lock(fd, timeout=30)
            bump(fd)
            fcntl_unlock(fd)
        finally:
            os.close(fd)
    else:
        with MboxLock(path, timeout=30) as lock:
            bump(lock.fd)
"""


@pytest.mark.parametrize("mode", ["dot", "fcntl", "mbox"])
def test_two_processes_exclude_each_other(mode: str, mbox: Path, tmp_path: Path) -> None:
    n = 500
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, str(mbox), str(n), str(go)],
            env=child_env(),
        )
        for _ in range(2)
    ]
    go.touch()
    for p in procs:
        assert p.wait(timeout=60) == 0
    assert mbox.read_bytes() == b"".join(b"%d\n" % i for i in range(1, 2 * n + 1))
    assert sorted(os.listdir(tmp_path)) == ["go", "inbox"]  # no lock or temp file left


# --------------------------------------------------------------------------
# dotlock


def test_dotlock_creates_and_removes(mbox: Path) -> None:
    lock = DotLock(mbox)
    with lock:
        assert lock.held
        st = os.stat(str(mbox) + ".lock")
        assert st.st_nlink == 1
        content = Path(str(mbox) + ".lock").read_bytes()
        assert content.startswith(b"%d:" % os.getpid())
        assert sorted(os.listdir(mbox.parent)) == ["inbox", "inbox.lock"]
    assert not lock.held
    assert not os.path.exists(str(mbox) + ".lock")


def test_dotlock_timeout(mbox: Path) -> None:
    Path(str(mbox) + ".lock").write_bytes(b"0")
    start = time.monotonic()
    with pytest.raises(LockTimeout) as info:
        DotLock(mbox, timeout=0.3).acquire()
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 3
    assert info.value.kind == "dot"
    assert isinstance(info.value, TimeoutError)
    assert Path(str(mbox) + ".lock").read_bytes() == b"0"  # not ours: untouched
    assert sorted(os.listdir(mbox.parent)) == ["inbox", "inbox.lock"]


def test_stale_dotlock_is_removed(mbox: Path) -> None:
    lockpath = Path(str(mbox) + ".lock")
    lockpath.write_bytes(b"12345:elsewhere\n")
    old = time.time() - 1000
    os.utime(lockpath, (old, old))
    with DotLock(mbox, timeout=2, stale_after=300) as lock:
        assert lock.held
        assert lockpath.read_bytes().startswith(b"%d:" % os.getpid())
    assert not lockpath.exists()


def test_stale_after_none_never_breaks_locks(mbox: Path) -> None:
    lockpath = Path(str(mbox) + ".lock")
    lockpath.write_bytes(b"")
    os.utime(lockpath, (0, 0))
    with pytest.raises(LockTimeout):
        DotLock(mbox, timeout=0.1, stale_after=None).acquire()


def test_release_only_removes_our_lock(mbox: Path) -> None:
    lockpath = Path(str(mbox) + ".lock")
    lock = DotLock(mbox)
    lock.acquire()
    # someone judged us stale and took the lock over
    lockpath.unlink()
    lockpath.write_bytes(b"999:other\n")
    with pytest.raises(LockLost):
        lock.touch()
    lock.release()
    assert lockpath.read_bytes() == b"999:other\n"


def test_touch_refreshes_mtime(mbox: Path) -> None:
    lockpath = Path(str(mbox) + ".lock")
    with DotLock(mbox) as lock:
        os.utime(lockpath, (1000, 1000))
        lock.touch()
        assert time.time() - lockpath.stat().st_mtime < 5


def test_dotlock_falls_back_to_o_excl(mbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(locking.os, "link", no_links)
    lock = DotLock(mbox)
    with lock:
        assert os.path.exists(str(mbox) + ".lock")
        with pytest.raises(LockTimeout):
            DotLock(mbox, timeout=0.1).acquire()
    assert sorted(os.listdir(mbox.parent)) == ["inbox"]


def test_dotlock_link_reply_lost(mbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS: link() succeeded on the server but the reply was lost; the link
    count of the temporary file shows that we hold the lock."""
    real_link = os.link

    def lossy_link(src: str, dst: str) -> None:
        real_link(src, dst)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(locking.os, "link", lossy_link)
    with DotLock(mbox, timeout=0.5) as lock:
        assert lock.held
    assert sorted(os.listdir(mbox.parent)) == ["inbox"]


def test_dotlock_link_failure_is_not_success(mbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_link(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(locking.os, "link", failing_link)
    with pytest.raises(LockTimeout):
        DotLock(mbox, timeout=0.2).acquire()
    assert sorted(os.listdir(mbox.parent)) == ["inbox"]


def test_dotlock_missing_directory_is_an_error_not_a_timeout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DotLock(tmp_path / "missing-dir" / "mbox", timeout=0.1).acquire()


# --------------------------------------------------------------------------
# fcntl

HOLDER = r"""
import fcntl, os, sys, time
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
# classic POSIX record lock, as Postfix and procmail take it
fcntl.lockf(fd, fcntl.LOCK_EX if mode == "ex" else fcntl.LOCK_SH)
print("locked", flush=True)
sys.stdin.read()
"""


def hold_classic_lock(path: Path, mode: str = "ex") -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert p.stdout is not None and p.stdout.readline() == "locked\n"
    return p


def release_holder(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(timeout=10) == 0


def test_fcntl_conflicts_with_classic_posix_locks(mbox: Path) -> None:
    holder = hold_classic_lock(mbox)
    fd = os.open(mbox, os.O_RDWR)
    try:
        start = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            fcntl_lock(fd, timeout=0.3)
        assert info.value.kind == "fcntl"
        assert time.monotonic() - start >= 0.3
        with pytest.raises(LockTimeout):
            fcntl_lock(fd, exclusive=False, timeout=0.1)
        release_holder(holder)
        fcntl_lock(fd, timeout=2)
        # and the other way round: a classic F_SETLK now fails
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR)\n"
                "try: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                "except OSError: sys.exit(3)",
                str(mbox),
            ],
            env=child_env(),
            timeout=10,
        )
        assert probe.returncode == 3
        fcntl_unlock(fd)
    finally:
        os.close(fd)


def test_shared_locks_coexist(mbox: Path) -> None:
    holder = hold_classic_lock(mbox, "sh")
    try:
        with MboxLock(mbox, exclusive=False, timeout=1) as lock:
            assert os.fstat(lock.fd).st_ino == mbox.stat().st_ino
        with pytest.raises(LockTimeout):
            MboxLock(mbox, exclusive=True, timeout=0.2).acquire()
        assert not os.path.exists(str(mbox) + ".lock")  # dotlock given back
    finally:
        release_holder(holder)


@pytest.mark.skipif(not locking.OFD_LOCKS, reason="needs open file description locks")
def test_fcntl_excludes_other_descriptors_of_this_process(mbox: Path) -> None:
    a = os.open(mbox, os.O_RDWR)
    b = os.open(mbox, os.O_RDWR)
    try:
        fcntl_lock(a)
        with pytest.raises(LockTimeout):
            fcntl_lock(b, timeout=0.1)
        # closing an unrelated descriptor must not drop a's lock
        os.close(os.open(mbox, os.O_RDONLY))
        with pytest.raises(LockTimeout):
            fcntl_lock(b, timeout=0.1)
        fcntl_unlock(a)
        fcntl_lock(b, timeout=1)
    finally:
        os.close(a)
        os.close(b)


# --------------------------------------------------------------------------
# MboxLock


def test_mbox_lock_order_and_fd(mbox: Path) -> None:
    lockpath = str(mbox) + ".lock"
    with MboxLock(mbox) as lock:
        assert os.path.exists(lockpath)
        fd = lock.fd
        os.write(fd, b"x")
        assert os.fstat(fd).st_ino == mbox.stat().st_ino
    assert not os.path.exists(lockpath)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    with pytest.raises(RuntimeError):
        _ = lock.fd
    with MboxLock(mbox, exclusive=False) as shared:
        assert not os.path.exists(lockpath)  # readers take no dotlock
        assert os.read(shared.fd, 10) == b"x"


def test_mbox_lock_missing_mailbox(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MboxLock(tmp_path / "nope").acquire()
    assert os.listdir(tmp_path) == []  # the dotlock was given back


def test_mbox_lock_times_out_on_dotlock(mbox: Path) -> None:
    Path(str(mbox) + ".lock").write_bytes(b"")
    with pytest.raises(LockTimeout):
        MboxLock(mbox, timeout=0.2).acquire()


def test_mbox_lock_times_out_on_fcntl_and_gives_dotlock_back(mbox: Path) -> None:
    holder = hold_classic_lock(mbox)
    try:
        with pytest.raises(LockTimeout):
            MboxLock(mbox, timeout=0.2).acquire()
        assert not os.path.exists(str(mbox) + ".lock")
    finally:
        release_holder(holder)


@pytest.mark.skipif(not locking.OFD_LOCKS, reason="needs open file description locks")
def test_mbox_lock_follows_a_replaced_mailbox(mbox: Path) -> None:
    """An expunge renames a rewritten copy over the mbox while a reader
    waits: the reader must end up locking the new file, not the old one."""
    got: dict[str, int] = {}
    writer = MboxLock(mbox)
    writer.acquire()

    def reader() -> None:
        with MboxLock(mbox, exclusive=False, timeout=10) as lock:
            got["ino"] = os.fstat(lock.fd).st_ino

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.2)
    assert "ino" not in got  # blocked by the writer's fcntl lock
    new = mbox.with_name("inbox.tmp")
    new.write_bytes(b"rewritten")
    os.rename(new, mbox)
    writer.release()
    t.join(timeout=10)
    assert got["ino"] == mbox.stat().st_ino


def test_mbox_lock_touch(mbox: Path) -> None:
    lockpath = str(mbox) + ".lock"
    with MboxLock(mbox) as lock:
        os.utime(lockpath, (1000, 1000))
        lock.touch()
        assert time.time() - os.stat(lockpath).st_mtime < 5


# --------------------------------------------------------------------------
# interop with Debian's lockfile(1) and procmail(1)

needs_lockfile = pytest.mark.skipif(
    shutil.which("lockfile") is None, reason="lockfile (Debian package procmail) is not installed"
)
needs_procmail = pytest.mark.skipif(
    shutil.which("procmail") is None, reason="procmail (Debian package procmail) is not installed"
)


def lockfile(lockpath: str) -> int:
    return subprocess.run(["lockfile", "-r0", lockpath], timeout=10, capture_output=True).returncode


@needs_lockfile
def test_lockfile_fails_while_we_hold_the_dotlock(mbox: Path) -> None:
    lockpath = str(mbox) + ".lock"
    with DotLock(mbox):
        assert lockfile(lockpath) != 0
    assert lockfile(lockpath) == 0
    os.unlink(lockpath)


@needs_lockfile
def test_we_wait_while_lockfile_holds_the_dotlock(mbox: Path) -> None:
    lockpath = str(mbox) + ".lock"
    assert lockfile(lockpath) == 0
    with pytest.raises(LockTimeout):
        DotLock(mbox, timeout=0.2).acquire()

    acquired: list[float] = []

    def waiter() -> None:
        with DotLock(mbox, timeout=10):
            acquired.append(time.monotonic())

    start = time.monotonic()
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.5)
    assert not acquired
    os.unlink(lockpath)  # what `rm -f` after lockfile does
    t.join(timeout=10)
    assert acquired and acquired[0] - start >= 0.5
    assert not os.path.exists(lockpath)


MESSAGE = b"Subject: via procmail\nFrom: a@example.org\n\nhello\nFrom the body\n"


def start_procmail(mbox: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    rc = tmp_path / "procmailrc"
    rc.write_text("LOCKSLEEP=1\n")  # re-try the dotlock every second, not every 8
    p = subprocess.Popen(
        ["procmail", "-m", "-f", "sender@example.org", f"DEFAULT={mbox}", f"ORGMAIL={mbox}", str(rc)],
        stdin=subprocess.PIPE,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
    )
    assert p.stdin is not None
    p.stdin.write(MESSAGE)
    p.stdin.close()
    return p


def assert_delivered_once(mbox: Path) -> None:
    data = mbox.read_bytes()
    entries = scan(data)
    assert len(entries) == 1
    e = entries[0]
    assert e.sender == "sender@example.org"
    assert client_message(data[e.header_offset : e.end_offset]) == MESSAGE


@needs_procmail
@pytest.mark.parametrize("how", ["mboxlock", "fcntl-only"])
def test_procmail_waits_for_our_lock(how: str, mbox: Path, tmp_path: Path) -> None:
    """procmail takes inbox.lock, then a kernel (fcntl) lock; either of our
    locks alone must hold its delivery back until we let go."""
    if how == "mboxlock":
        lock = MboxLock(mbox)
        lock.acquire()
        release = lock.release
    else:
        fd = os.open(mbox, os.O_RDWR)
        fcntl_lock(fd)

        def release() -> None:
            fcntl_unlock(fd)
            os.close(fd)

    try:
        p = start_procmail(mbox, tmp_path)
        # unhindered, procmail writes within milliseconds (see
        # test_procmail_then_us); 1.5 s also spans one LOCKSLEEP retry
        time.sleep(1.5)
        assert p.poll() is None, "procmail finished while we held the lock"
        assert mbox.stat().st_size == 0
        if how == "fcntl-only":
            # procmail got its dotlock and now waits in F_SETLKW for ours
            assert os.path.exists(str(mbox) + ".lock")
    except BaseException:
        release()
        raise
    release()
    try:
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert_delivered_once(mbox)
    assert not os.path.exists(str(mbox) + ".lock")


@needs_procmail
def test_procmail_then_us(mbox: Path, tmp_path: Path) -> None:
    """Sanity: without contention procmail delivers and leaves no lock, and
    our lock is free right after."""
    p = start_procmail(mbox, tmp_path)
    deadline = time.monotonic() + 5
    while mbox.stat().st_size == 0 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # on an empty mbox procmail writes "F", then sleeps 1 s (for biff), so
    # seeing data while it still runs shows it was not held back
    assert mbox.stat().st_size > 0
    assert p.wait(timeout=20) == 0
    with MboxLock(mbox, timeout=1):
        assert_delivered_once(mbox)
