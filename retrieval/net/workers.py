"""Worker processes: a small supervisor that binds, then runs N `retrieval worker`s sharing
the listening sockets, so that every core serves.

Why spawned processes and not os.fork(): a forked child would share the parent's
reactor (its epoll and waker fds), inotify instance, thread pool and any open SQLite
handle, which Twisted and SQLite do not survive. A fresh interpreter has none of
that, and adopts the sockets exactly as it would adopt systemd's (one code path):
the parent passes them open (`pass_fds`) and names them in RETRIEVAL_LISTEN_FDS.
The kernel spreads the accepts over the processes waiting on a socket.

The parent reads no network input. It stays as started (root when started as root),
as the masters of Postfix, Dovecot and nginx do, so that a worker it restarts can
read a root-only TLS key and drop privileges exactly as the first one did; under
systemd (User=, sockets from .socket units) there is no root anywhere.

Signals to the parent: TERM/INT drain the workers (each stops listening, lets its
sessions finish, `[server] shutdown_timeout`) and exit 0; HUP checks the config and
passes the reload on; a worker that dies is restarted (with a growing pause when
it dies young, and the whole server fails if one dies before the first READY).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from twisted.logger import Logger

from retrieval.config import Config

log = Logger(namespace="retrieval.workers")

ENV_FDS = "RETRIEVAL_LISTEN_FDS"  # "imap:5,6;imaps:7": listener name -> inherited fds
ENV_READY = "RETRIEVAL_READY_FD"  # the worker writes one byte there once it serves
ENV_PARENT = "RETRIEVAL_PARENT_PID"  # a worker whose parent is gone stops
ENV_SLOT = "RETRIEVAL_WORKER"  # 1..N, for the logs
# what systemd gave the parent, not the worker
_SYSTEMD_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

YOUNG = 10.0  # seconds: a worker dying sooner than this is restarted after a pause
MAX_PAUSE = 30.0
STOP_GRACE = 5.0  # seconds after shutdown_timeout before SIGKILL


def worker_count(config: Config) -> int:
    return config.server.workers or os.cpu_count() or 1


# -- the worker's side ------------------------------------------------------------------


def encode_fds(fds: dict[str, list[int]]) -> str:
    return ";".join(f"{name}:{','.join(map(str, numbers))}" for name, numbers in fds.items() if numbers)


def worker_sockets(environ: dict[str, str] | None = None) -> dict[str, list[int]]:
    """name -> fds the supervisor passed (empty when not a worker)."""
    env = os.environ if environ is None else environ
    found: dict[str, list[int]] = {}
    for item in filter(None, env.get(ENV_FDS, "").split(";")):
        name, _, numbers = item.partition(":")
        found[name] = [int(n) for n in numbers.split(",") if n]
    return found


def is_worker(environ: dict[str, str] | None = None) -> bool:
    return ENV_FDS in (os.environ if environ is None else environ)


def announce_ready() -> None:
    """Tell the supervisor this worker serves (no-op outside a worker)."""
    fd = os.environ.pop(ENV_READY, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"R")
        os.close(int(fd))
    except OSError:
        pass


def die_with_parent() -> None:
    """Stop (gracefully: SIGTERM) when the supervisor dies, even by SIGKILL.

    Called after the privilege drop: changing credentials clears the setting."""
    parent = os.environ.get(ENV_PARENT)
    if parent is None:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# -- the supervisor's side ----------------------------------------------------------------


@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen
    started: float
    ready_fd: int | None
    ready: bool = False


@dataclass
class Supervisor:
    config: Config
    count: int
    fds: dict[str, list[int]]  # listener name -> listening fds, held open for restarts
    workers: dict[int, Worker] = field(default_factory=dict)  # slot -> worker
    failures: dict[int, int] = field(default_factory=dict)  # slot -> young deaths in a row
    restarts: dict[int, float] = field(default_factory=dict)  # slot -> when to start it again
    stopping: float | None = None  # the SIGKILL deadline once stopping
    announced: bool = False

    def run(self) -> int:
        from retrieval.net.activation import sd_notify

        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)  # the wake-up fd carries the number
        for slot in range(1, self.count + 1):
            self._start(slot)
        status = 0
        while self.workers or (self.stopping is None and self.restarts):
            readable = self._wait(wake_r)
            for signum in self._signals(wake_r, readable):
                if signum in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
                    self._stop()
                elif signum == signal.SIGHUP and self.stopping is None:
                    self._reload()
            for worker in list(self.workers.values()):
                if worker.ready_fd is not None and worker.ready_fd in readable:
                    self._read_ready(worker)
            failed = self._reap()
            if failed and not self.announced and self.stopping is None:
                log.error("a worker failed while starting: stopping (see its messages above)")
                status = 1
                self._stop()
            if not self.announced and self.stopping is None and all(w.ready for w in self.workers.values()):
                self.announced = True
                sd_notify(f"READY=1\nSTATUS=serving with {self.count} workers\nMAINPID={os.getpid()}")
                log.info("retrieval started: {n} workers", n=self.count)
            now = time.monotonic()
            if self.stopping is None:
                for slot, when in list(self.restarts.items()):
                    if when <= now:
                        del self.restarts[slot]
                        self._start(slot)
            elif now >= self.stopping and self.workers:
                for worker in self.workers.values():
                    log.warn("worker {slot} (pid {pid}) did not stop in time: killed", slot=worker.slot,
                             pid=worker.proc.pid)
                    worker.proc.kill()
                self.stopping = now + 3600  # kill once; the reaping goes on
        signal.set_wakeup_fd(-1)
        log.info("retrieval stopped")
        return status

    # -- steps ------------------------------------------------------------------------

    def _start(self, slot: int) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env.update({ENV_FDS: encode_fds(self.fds), ENV_READY: str(ready_w), ENV_PARENT: str(os.getpid()),
                    ENV_SLOT: str(slot)})
        passed = [fd for numbers in self.fds.values() for fd in numbers] + [ready_w]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "retrieval", "worker", "--config", str(self.config.path)],
                env=env, pass_fds=passed, stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            os.close(ready_r)
            os.close(ready_w)
            log.error("cannot start worker {slot}: {exc}", slot=slot, exc=exc)
            self._schedule(slot, young=True)
            return
        os.close(ready_w)
        self.workers[slot] = Worker(slot, proc, time.monotonic(), ready_r)
        log.info("worker {slot} started: pid {pid}", slot=slot, pid=proc.pid)

    def _read_ready(self, worker: Worker) -> None:
        assert worker.ready_fd is not None
        try:
            data = os.read(worker.ready_fd, 16)
        except OSError:
            data = b""
        os.close(worker.ready_fd)
        worker.ready_fd = None
        worker.ready = data.startswith(b"R")

    def _reap(self) -> bool:
        """Collect dead workers, schedule their restart; True if one died before it ever served."""
        failed = False
        for slot, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[slot]
            if worker.ready_fd is not None:
                self._read_ready(worker)  # it may have served a moment before dying
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            if self.stopping is not None:
                log.info("worker {slot} (pid {pid}) stopped: {how}", slot=slot, pid=worker.proc.pid, how=how)
                continue
            log.warn("worker {slot} (pid {pid}) died: {how}", slot=slot, pid=worker.proc.pid, how=how)
            if not worker.ready:
                failed = True
            self._schedule(slot, young=time.monotonic() - worker.started < YOUNG)
        return failed

    def _schedule(self, slot: int, young: bool) -> None:
        self.failures[slot] = self.failures.get(slot, 0) + 1 if young else 0
        pause = 0.0 if not young else min(MAX_PAUSE, 0.5 * 2 ** (self.failures[slot] - 1))
        if pause:
            log.info("worker {slot}: restarting in {pause:g} s", slot=slot, pause=pause)
        self.restarts[slot] = time.monotonic() + pause

    def _stop(self) -> None:
        from retrieval.net.activation import sd_notify

        sd_notify("STOPPING=1")
        timeout = self.config.server.shutdown_timeout
        log.info("stopping {n} workers (up to {t:g} s for open sessions)", n=len(self.workers), t=timeout)
        self.stopping = time.monotonic() + timeout + STOP_GRACE
        self.restarts.clear()
        # no more connections queue on a socket nobody will accept from
        for numbers in self.fds.values():
            for fd in numbers:
                os.close(fd)
        self.fds = {}
        for worker in self.workers.values():
            worker.proc.send_signal(signal.SIGTERM)

    def _reload(self) -> None:
        from retrieval.config import load_config
        from retrieval.net.activation import sd_notify
        from retrieval.problems import ProblemsError

        sd_notify("RELOADING=1")
        try:
            new = load_config(self.config.path)
        except ProblemsError as exc:
            for problem in exc.problems:
                log.error("reload refused, still running on the old config: {problem}", problem=str(problem))
        else:
            # settings the supervisor itself uses; listeners and worker count need a restart
            self.config = new
            for worker in self.workers.values():
                worker.proc.send_signal(signal.SIGHUP)
            log.info("reload: passed on to {n} workers", n=len(self.workers))
        sd_notify("READY=1")

    # -- waiting ------------------------------------------------------------------------

    def _wait(self, wake_r: int) -> set[int]:
        fds = [wake_r] + [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
        deadlines = list(self.restarts.values()) if self.stopping is None else [self.stopping]
        # a child can die between poll() and select(): look again now and then anyway
        timeout = 1.0 if not deadlines else max(0.0, min(min(deadlines) - time.monotonic(), 1.0))
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return set()
        return set(readable)

    @staticmethod
    def _signals(wake_r: int, readable: set[int]) -> list[int]:
        if wake_r not in readable:
            return []
        try:
            return list(os.read(wake_r, 512))
        except BlockingIOError:
            return []


def supervise(config: Config, count: int, fds: dict[str, list[int]]) -> int:
    return Supervisor(config, count, fds).run()
