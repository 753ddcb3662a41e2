"""mbox locking that interoperates with Postfix local(8), procmail and Dovecot.

Every program that writes a Unix mbox must agree on how it is locked, or a
delivery and an expunge can interleave and corrupt the file.  The common
ground on Debian is:

* a *dotlock* ``<mbox>.lock`` created atomically next to the mailbox
  (Postfix ``mailbox_delivery_lock = fcntl, dotlock``, procmail, mutt,
  Dovecot ``mbox_write_locks = dotlock fcntl``);
* a POSIX *fcntl* record lock over the whole file (Postfix, procmail's
  "kernel-lock", Dovecot ``mbox_read_locks = fcntl``).

Writers take both, dotlock first; readers take a shared fcntl lock only.

On Linux the fcntl lock is taken as an *open file description* lock
(``F_OFD_SETLK``).  OFD locks conflict with the classic ``F_SETLK`` locks of
other programs exactly like classic locks do, but, unlike them, they are
not dropped when this process closes *another* descriptor of the same file
and they also exclude other threads of this process.  Elsewhere the module
falls back to classic ``F_SETLK`` (via ``fcntl.lockf``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import secrets
import socket
import struct
import sys
import time
from types import TracebackType
from typing import Final

__all__ = [
    "DotLock",
    "LockLost",
    "LockTimeout",
    "MboxLock",
    "OFD_LOCKS",
    "fcntl_lock",
    "fcntl_unlock",
]

DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_STALE_AFTER: Final = 300.0
_FIRST_DELAY: Final = 0.005
_MAX_DELAY: Final = 0.1
_LOCK_MODE: Final = 0o644


class LockTimeout(TimeoutError):
    """The lock was not obtained within the timeout (someone else holds it)."""

    def __init__(self, what: str, kind: str, timeout: float) -> None:
        super().__init__(f"could not {kind}-lock {what} within {timeout:g}s")
        self.what = what
        self.kind = kind
        self.timeout = timeout


class LockLost(RuntimeError):
    """Our dotlock vanished or was replaced (e.g. removed as stale by another
    program because we held it too long without :meth:`DotLock.touch`)."""


def _sleep_backoff(delay: float, deadline: float) -> float:
    """Sleep a jittered ``delay`` (never past the deadline); return the next delay.

    Jitter keeps two waiters from polling in lock step; the cap keeps the
    latency after a release short (procmail's LOCKSLEEP is 8 s, far too slow)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
    return min(delay * 1.5, _MAX_DELAY)


def _hostname() -> str:
    name = socket.gethostname() or "localhost"
    return name.replace("/", "_").replace(":", "_")


# --------------------------------------------------------------------------
# dotlock


class DotLock:
    """``<mbox>.lock`` taken the NFS-safe way procmail and Dovecot take it.

    A unique temporary file is written in the mailbox directory and hard
    linked to the lock name: ``link()`` is atomic even on NFS, and if its
    reply is lost the link count of the temporary file (2) still tells that
    it worked.  Where hard links are not permitted, ``O_CREAT|O_EXCL`` is
    used instead.  A lock file older than ``stale_after`` seconds (mtime) is
    removed, as procmail (LOCKTIMEOUT) and Dovecot do, so a crashed holder
    cannot block delivery forever; long holders call :meth:`touch`.

    The lock file holds ``<pid>:<host>``, the form Dovecot writes and that
    liblockfile can read the pid from.
    """

    def __init__(
        self,
        path_of_mbox: str | os.PathLike[str],
        timeout: float = DEFAULT_TIMEOUT,
        stale_after: float | None = DEFAULT_STALE_AFTER,
    ) -> None:
        self.mbox_path = os.fspath(path_of_mbox)
        self.path = self.mbox_path + ".lock"
        self.timeout = timeout
        self.stale_after = stale_after
        self._ident: tuple[int, int] | None = None
        self._content = f"{os.getpid()}:{_hostname()}\n".encode()
        self._use_excl = False

    # -- public API --------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._ident is not None

    def acquire(self) -> None:
        """Create the lock file, waiting up to ``timeout`` seconds.

        Raises :class:`LockTimeout` if another holder keeps it, ``OSError``
        for real errors (e.g. the directory is not writable)."""
        if self._ident is not None:
            raise RuntimeError(f"{self.path} is already held by this DotLock")
        self._content = f"{os.getpid()}:{_hostname()}\n".encode()  # after fork
        deadline = time.monotonic() + self.timeout
        delay = _FIRST_DELAY
        while True:
            if self._try_once():
                return
            self._remove_if_stale()
            if time.monotonic() >= deadline:
                raise LockTimeout(self.path, "dot", self.timeout)
            delay = _sleep_backoff(delay, deadline)

    def release(self) -> None:
        """Remove the lock file, but only if it is still ours."""
        if self._ident is None:
            return
        try:
            if self._is_ours():
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            self._ident = None

    def touch(self) -> None:
        """Refresh the lock's mtime so nobody removes it as stale."""
        if self._ident is None or not self._is_ours():
            raise LockLost(f"{self.path} is no longer ours")
        os.utime(self.path)

    def __enter__(self) -> DotLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- internals ---------------------------------------------------------

    def _is_ours(self) -> bool:
        """Same inode and same content: an inode number alone can be reused
        by a lock someone else created after removing ours as stale."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != self._ident:
            return False
        try:
            with open(self.path, "rb") as f:
                return f.read(len(self._content) + 1) == self._content
        except OSError:
            return False

    def _try_once(self) -> bool:
        if self._use_excl:
            return self._try_excl()
        directory = os.path.dirname(self.path) or "."
        tmp = os.path.join(
            directory,
            f"{os.path.basename(self.path)}.{_hostname()}.{os.getpid()}."
            f"{secrets.token_hex(6)}",
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _LOCK_MODE)
        try:
            try:
                os.write(fd, self._content)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError as e:
                if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
                    # file system without hard links (vfat, some FUSE)
                    self._use_excl = True
                    return self._try_excl()
                # other errors (EIO on NFS after a lost reply): the link
                # count below tells whether the link was made after all
            st = os.lstat(tmp)
            if st.st_nlink == 2:
                self._ident = (st.st_dev, st.st_ino)
                return True
            return False
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _try_excl(self) -> bool:
        try:
            fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _LOCK_MODE
            )
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        self._ident = (st.st_dev, st.st_ino)
        return True

    def _remove_if_stale(self) -> None:
        """Remove a lock file whose mtime is older than ``stale_after``.

        The second lstat narrows (it cannot close) the window in which two
        waiters both judge the same lock stale and the slower one removes
        the lock the faster one has just created."""
        if self.stale_after is None:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if time.time() - st.st_mtime <= self.stale_after:
            return
        try:
            st2 = os.lstat(self.path)
            if (st2.st_dev, st2.st_ino, st2.st_mtime_ns) == (
                st.st_dev,
                st.st_ino,
                st.st_mtime_ns,
            ):
                os.unlink(self.path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# fcntl record locks


def _ofd_supported() -> bool:
    return (
        sys.platform.startswith("linux")
        and hasattr(fcntl, "F_OFD_SETLK")
        and struct.calcsize("P") == 8
    )


#: True when fcntl locks are taken as Linux open-file-description locks.
OFD_LOCKS: bool = _ofd_supported()

# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (must be 0 for OFD locks), padding.
_FLOCK: Final = "hhqqi4x"


def _ofd(fd: int, lock_type: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, lock_type, os.SEEK_SET, 0, 0, 0))


def _set_lock(fd: int, exclusive: bool) -> None:
    """One non-blocking attempt on the whole file; raises BlockingIOError /
    PermissionError (EAGAIN / EACCES) when another holder conflicts."""
    global OFD_LOCKS
    if OFD_LOCKS:
        try:
            _ofd(fd, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK)
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            OFD_LOCKS = False  # old kernel: classic locks from now on
    fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)


def fcntl_lock(fd: int, exclusive: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Lock the whole file behind ``fd`` (F_WRLCK or F_RDLCK), retrying until
    ``timeout``, then :class:`LockTimeout`.

    Polls with a non-blocking F_SETLK instead of blocking in F_SETLKW so the
    wait is bounded.  ``fd`` must be open for writing for an exclusive lock
    and for reading for a shared one.  Release with :func:`fcntl_unlock` or
    by closing ``fd``."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_DELAY
    while True:
        try:
            _set_lock(fd, exclusive)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EINTR):
                raise
        if time.monotonic() >= deadline:
            raise LockTimeout(f"fd {fd}", "fcntl", timeout)
        delay = _sleep_backoff(delay, deadline)


def fcntl_unlock(fd: int) -> None:
    """Drop the lock :func:`fcntl_lock` took on ``fd``."""
    if OFD_LOCKS:
        try:
            _ofd(fd, fcntl.F_UNLCK)
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    fcntl.lockf(fd, fcntl.LOCK_UN)


# --------------------------------------------------------------------------
# the combination


class MboxLock:
    """Lock an mbox the way Dovecot's defaults do.

    Exclusive (writing): dotlock, then exclusive fcntl on an ``O_RDWR`` fd.
    Shared (reading): shared fcntl on an ``O_RDONLY`` fd only.
    Released in reverse order.  ``.fd`` is the locked descriptor, valid
    inside the ``with`` block; it is closed on release.

    If the mbox was replaced (an expunge renames a rewritten copy over it)
    while we waited, the lock is retaken on the new file, so ``.fd`` always
    refers to the file currently at ``path``.  The mbox must exist:
    creating it is the caller's job (``FileNotFoundError`` otherwise).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        exclusive: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        dotlock: bool | None = None,
        stale_after: float | None = DEFAULT_STALE_AFTER,
    ) -> None:
        self.path = os.fspath(path)
        self.exclusive = exclusive
        self.timeout = timeout
        self.use_dotlock = exclusive if dotlock is None else dotlock
        self.stale_after = stale_after
        self._dot: DotLock | None = None
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not locked")
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this MboxLock")
        deadline = time.monotonic() + self.timeout
        if self.use_dotlock:
            self._dot = DotLock(self.path, timeout=self.timeout, stale_after=self.stale_after)
            self._dot.acquire()
        try:
            self._fd = self._lock_current_file(deadline)
        except BaseException:
            if self._dot is not None:
                self._dot.release()
                self._dot = None
            raise

    def _lock_current_file(self, deadline: float) -> int:
        flags = (os.O_RDWR if self.exclusive else os.O_RDONLY) | os.O_CLOEXEC
        while True:
            fd = os.open(self.path, flags)
            try:
                fcntl_lock(fd, self.exclusive, max(0.0, deadline - time.monotonic()))
                st = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                    same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
                except FileNotFoundError:
                    same = False
                if same:
                    return fd
                fcntl_unlock(fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LockTimeout(self.path, "fcntl", self.timeout)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                try:
                    fcntl_unlock(fd)
                finally:
                    os.close(fd)
        finally:
            if self._dot is not None:
                self._dot.release()
                self._dot = None

    def touch(self) -> None:
        """Refresh the dotlock during a long operation (no-op without one)."""
        if self._dot is not None:
            self._dot.touch()

    def __enter__(self) -> MboxLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
