#!/usr/bin/env python3
"""Our POP3 server against Debian's Dovecot POP3 on the same Maildirs, in one run.

    python bench/pop3.py                   # 5 000 messages; 200 sessions x 50 messages
    python bench/pop3.py --quick           # 1 000 messages; 50 sessions x 20 (well under 2 minutes)
    python bench/pop3.py --messages 5000 --sessions 200 --per-session 50 --profile

See bench/README.md ("bench/pop3.py") for what is measured and how to read the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the private-Dovecot launcher lives beside the interop test
sys.path.insert(0, str(HERE))

from store import generate_maildir  # noqa: E402  the same messages as bench/store.py

PASSWORD = "benchpw"
SINGLE_USER = "single"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What Dovecot gets on top of the launcher's config, so that S concurrent logins are not
# throttled by its defaults (default_process_limit = 100 and pop3-login's high-security
# mode, one process per connection, would cap it at 100 logins at once).
DOVECOT_LIMITS = """\
default_process_limit = {procs}
default_client_limit = {clients}
mail_max_userip_connections = {procs}
service pop3-login {{
  process_limit = {procs}
}}
service pop3 {{
  process_limit = {procs}
}}
service auth {{
  client_limit = {clients}
}}
service anvil {{
  client_limit = {clients}
}}
"""


PERFORMANCE_LOGIN = """\
service pop3-login {{
  service_count = 0
  process_min_avail = {cores}
}}
"""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_cpu(pgid: int) -> float:
    """CPU seconds of a process group: every live member, plus the leader's reaped children.

    Both servers run in their own session (pgid = pid). Dovecot forks a pop3-login and a
    pop3 process per session; once they exit and the master reaps them, their time shows up
    in the master's cutime/cstime.
    """
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) != pgid:  # state ppid pgrp ...
            continue
        total += int(fields[11]) + int(fields[12])  # utime stime
        if int(entry) == pgid:
            total += int(fields[13]) + int(fields[14])  # cutime cstime
    return total / CLK_TCK


# -- a raw-socket POP3 client -------------------------------------------------------------------


class Pop3Error(RuntimeError):
    pass


class Conn:
    """Blocking POP3 client, one command at a time (no pipelining), no per-line work:
    a multi-line answer is cut at CRLF.CRLF with one `find`, as a mail client's bulk
    download does. poplib splits every line into a list, which costs as much client CPU
    as a small server spends; the client shares 2 cores with the server being measured."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 18)
        if not data:
            raise Pop3Error("the server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return out
            self._fill()

    def ok(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        answer = self.line()
        if not answer.startswith(b"+OK"):
            raise Pop3Error(f"{command.split()[0].decode()}: {answer.decode(errors='replace')}")
        return answer

    def multi(self, command: bytes) -> bytes:
        """The dot-stuffed body of a multi-line answer, CRLF before the terminating dot kept."""
        self.ok(command)
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                del self.buf[:3]
                return b""
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                body = bytes(self.buf[: i + 2])
                del self.buf[: i + 5]
                return body
            start = max(0, len(self.buf) - 4)
            self._fill()

    def close(self) -> None:
        self.sock.close()


def unstuffed_len(body: bytes) -> int:
    return len(body) - body.count(b"\r\n..") - (1 if body.startswith(b"..") else 0)


def unstuff(body: bytes) -> bytes:
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


def single_session(port: int, user: str, checksum: bool, timeout: float) -> dict:
    """Log in, LIST, RETR every message (no DELE), QUIT; the parts' wall times."""
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    c = Conn(port, timeout)
    try:
        greeting = c.line()
        if not greeting.startswith(b"+OK"):
            raise Pop3Error(f"greeting: {greeting!r}")
        c.ok(b"USER " + user.encode())
        c.ok(b"PASS " + PASSWORD.encode())
        t_login = time.perf_counter()
        listing = c.multi(b"LIST")
        sizes = [int(line.split()[1]) for line in listing.split(b"\r\n") if line]
        t_list = time.perf_counter()
        total = mismatches = 0
        crc = 0
        for n, size in enumerate(sizes, 1):
            body = c.multi(b"RETR %d" % n)
            got = unstuffed_len(body)
            total += got
            if got != size:
                mismatches += 1
            if checksum:
                crc = zlib.crc32(unstuff(body), crc)
        t_retr = time.perf_counter()
        c.ok(b"QUIT")
        t_end = time.perf_counter()
    finally:
        c.close()
    return {
        "wall": t_end - t0,
        "login": t_login - t0,
        "list": t_list - t_login,
        "retr": t_retr - t_list,
        "quit": t_end - t_retr,
        "messages": len(sizes),
        "octets": total,
        "listed_octets": sum(sizes),
        "mismatches": mismatches,
        "crc": crc if checksum else None,
        "client_cpu": time.process_time() - cpu0,
    }


class AsyncConn:
    """`Conn` on asyncio streams, for many sessions in one client thread."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.reader.read(1 << 18)
        if not data:
            raise Pop3Error("the server closed the connection")
        self.buf += data

    async def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return out
            await self._fill()

    async def ok(self, command: bytes) -> bytes:
        self.writer.write(command + b"\r\n")
        answer = await self.line()
        if not answer.startswith(b"+OK"):
            raise Pop3Error(f"{command.split()[0].decode()}: {answer.decode(errors='replace')}")
        return answer

    async def multi(self, command: bytes) -> bytes:
        await self.ok(command)
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                del self.buf[:3]
                return b""
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                body = bytes(self.buf[: i + 2])
                del self.buf[: i + 5]
                return body
            start = max(0, len(self.buf) - 4)
            await self._fill()


class Knobs:
    """How the concurrent client behaves (from the command line)."""

    def __init__(self, timeout: float, greeting_timeout: float, reconnects: int, connect_window: int) -> None:
        self.timeout = timeout
        self.greeting_timeout = greeting_timeout
        self.reconnects = reconnects
        self.connect_window = connect_window


async def one_async_session(port: int, user: str, start: float, knobs: Knobs,
                            window: asyncio.Semaphore | None) -> dict:
    """Log in, LIST, RETR all, QUIT; times relative to `start` (when every session began).

    A connection that gets no greeting within `greeting_timeout` is counted as lost and made
    again (up to `reconnects` times), as a mail client gives up and retries: a server whose
    listen queue overflowed has dropped it while the client believes it is connected.
    """
    out: dict = {"user": user, "lost": 0}
    writers: list[asyncio.StreamWriter] = []

    async def connect() -> AsyncConn:
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            c = AsyncConn(reader, writer)
            try:
                greeting = await asyncio.wait_for(c.line(), knobs.greeting_timeout)
            except asyncio.TimeoutError:
                writer.close()
                out["lost"] += 1
                if out["lost"] > knobs.reconnects:
                    raise Pop3Error(f"no greeting within {knobs.greeting_timeout:g}s, {out['lost']} times") from None
                continue
            if not greeting.startswith(b"+OK"):
                raise Pop3Error(f"greeting: {greeting!r}")
            return c

    async def run() -> None:
        if window is not None:
            async with window:
                c = await connect()
        else:
            c = await connect()
        out["greeting"] = time.perf_counter() - start
        await c.ok(b"USER " + user.encode())
        await c.ok(b"PASS " + PASSWORD.encode())
        out["login"] = time.perf_counter() - start
        listing = await c.multi(b"LIST")
        sizes = [int(line.split()[1]) for line in listing.split(b"\r\n") if line]
        got = mismatches = 0
        for n, size in enumerate(sizes, 1):
            length = unstuffed_len(await c.multi(b"RETR %d" % n))
            got += length
            mismatches += length != size
        await c.ok(b"QUIT")
        out.update(messages=len(sizes), octets=got, mismatches=mismatches)

    try:
        await asyncio.wait_for(run(), knobs.timeout)
    except (OSError, asyncio.TimeoutError, Pop3Error) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip()
    finally:
        for writer in writers:
            writer.close()
    out["done"] = time.perf_counter() - start
    return out


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def concurrent_sessions(port: int, users: list[str], knobs: Knobs) -> dict:
    async def main() -> tuple[float, list[dict]]:
        window = asyncio.Semaphore(knobs.connect_window) if knobs.connect_window > 0 else None
        start = time.perf_counter()
        results = await asyncio.gather(*(one_async_session(port, u, start, knobs, window) for u in users))
        return time.perf_counter() - start, results

    cpu0 = time.process_time()
    overflows0 = listen_overflows()
    wall, results = asyncio.run(main())
    ok = [r for r in results if "error" not in r]
    done = sorted(r["done"] for r in ok)
    greet = sorted(r["greeting"] for r in ok)
    return {
        "wall": wall,
        "ok": len(ok),
        "errors": [f"{r['user']}: {r['error']}" for r in results if "error" in r],
        "lost": sum(r["lost"] for r in results),
        "overflows": listen_overflows() - overflows0,
        "messages": sum(r["messages"] for r in ok),
        "octets": sum(r["octets"] for r in ok),
        "mismatches": sum(r["mismatches"] for r in ok),
        "p50": done[len(done) // 2] if done else 0.0,
        "p95": done[min(len(done) - 1, int(len(done) * 0.95))] if done else 0.0,
        "greet_max": greet[-1] if greet else 0.0,
        "greet_p50": greet[len(greet) // 2] if greet else 0.0,
        "client_cpu": time.process_time() - cpu0,
    }


# -- the two servers ---------------------------------------------------------------------------


class OurServer:
    """`python -m retrieval serve` with [pop3] listen on a free loopback port, PLAIN passwords."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.passwd = base / "passwd"
        self.state = base / "state"
        self.config = base / "retrieval.toml"
        self.log = base / "server.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        base.mkdir(parents=True, exist_ok=True)

    def home(self, user: str) -> Path:
        return self.base / "home" / user

    def add_user(self, user: str) -> Path:
        from retrieval.auth.passwd import add_user

        home = self.home(user)
        home.mkdir(parents=True, exist_ok=True)
        add_user(self.passwd, user, PASSWORD, scheme="PLAIN", home=str(home))
        return home

    def start(self) -> None:
        self.port = free_port()
        self.config.write_text(
            f"""
[server]
hostname = "bench.example.test"
state_dir = "{self.state}"

[auth]
passwd_file = "{self.passwd}"
allow_plaintext = true
default_scheme = "PLAIN"
failure_delay = 0

[store]
mail_location = "maildir:~/Maildir"

[pop3]
listen = ["127.0.0.1:{self.port}"]
"""
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "retrieval", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("our server exited:\n" + self.log.read_text(errors="replace")[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"+OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("our server did not answer:\n" + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def problems(self) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines()
                if "Traceback" in line or "Unhandled" in line or "[-] " in line and "rror" in line][:20]


# -- py-spy -------------------------------------------------------------------------------------


class Spy:
    """`py-spy record --format raw` attached to our server while a block of work runs."""

    def __init__(self, pid: int, out: Path, rate: int, gil: bool) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
             "--nonblocking", "--subprocesses", "-o", str(out), *(["--gil"] if gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy exited: {self.proc.stderr.read().decode(errors='replace')}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def short(frame: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3"):
        i = frame.find(marker)
        if i >= 0:
            start = frame.rfind("(", 0, i) + 1
            keep = frame[i + len(marker):] if marker != "/lib/python3" else "stdlib/" + frame[i:].split("/", 4)[-1]
            return frame[:start] + keep
    return frame


HANDOFF_FILES = ("threading.py", "queue.py", "twisted/_threads/", "twisted/internet/threads.py",
                 "twisted/python/threadpool.py", "twisted/internet/_signals.py", "twisted/python/context.py")


def leaf_kind(frame: str) -> str:
    """What the sampled thread was doing, from its innermost Python frame."""
    if "(retrieval/" in frame:
        return "our code (retrieval/...)"
    if frame.startswith("EPollReactor.doPoll"):
        return "reactor in epoll_wait (woken, or waiting for the GIL)"
    if frame.startswith("untilConcludes") or any(f in frame for f in HANDOFF_FILES):
        return "thread-pool hand-off (queue, condition, waker pipe)"
    if "(twisted/" in frame:
        return "Twisted reactor and TCP"
    return "stdlib and other"


def spy_summary(path: Path, top: int) -> str:
    """Self and inclusive sample shares from py-spy's collapsed stacks."""
    self_line: Counter = Counter()
    incl_ours: Counter = Counter()
    kinds: Counter = Counter()
    threads: Counter = Counter()
    total = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        total += n
        threads["reactor" if any("mainLoop" in f for f in frames) else "pool thread"] += n
        self_line[frames[-1]] += n
        kinds[leaf_kind(frames[-1])] += n
        seen = set()
        for f in frames:
            if "(retrieval/" not in f or f.startswith(("main (", "cmd_serve (", "serve (", "<module>")):
                continue
            func = f.rsplit(":", 1)[0] + ")"  # one entry per function, whatever the line
            if func not in seen:
                seen.add(func)
                incl_ours[func] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; threads: " + ", ".join(f"{k} {v / total:.0%}" for k, v in threads.most_common())]
    lines.append("by innermost frame: " + "; ".join(f"{k} {v / total:.0%}" for k, v in kinds.most_common()))
    lines.append(f"top {top} by self time (function (file:line)):")
    lines += [f"  {v / total:6.1%}  {k}" for k, v in self_line.most_common(top)]
    lines.append(f"top {top} of our functions by inclusive time (function (file)):")
    lines += [f"  {v / total:6.1%}  {k}" for k, v in incl_ours.most_common(top)]
    return "\n".join(lines)


# -- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from dovecot_helper import PrivateDovecot

        self.args = args
        procs = max(1000, 2 * args.sessions + 50)
        self.dovecot_limits = DOVECOT_LIMITS.format(procs=procs, clients=4 * procs)
        if args.dovecot_login == "performance":
            # Dovecot's "high-performance" login mode: a few long-lived pop3-login processes,
            # each serving many connections, instead of one fresh process per connection.
            self.dovecot_limits += PERFORMANCE_LOGIN.format(cores=os.cpu_count() or 1)
        self.dv = PrivateDovecot(protocols="pop3", extra_config=self.dovecot_limits, cleanup=not args.keep)
        self.base = self.dv.base
        self.ours = OurServer(self.base / "ours")
        self.warnings: list[str] = []
        self.users = [f"c{i:04d}" for i in range(args.sessions)]
        self.knobs = Knobs(args.timeout, args.greeting_timeout, args.reconnects, args.connect_window)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.ours.stop()
            self.dv.close()
            if self.args.keep:
                print(f"kept everything in {self.base}", file=sys.stderr)

    def copy(self, src: Path, home: Path, dovecot: bool) -> None:
        """A private copy of `src` as home/Maildir: hard links (POP3 only renames and unlinks)."""
        target = home / "Maildir"
        if target.exists():
            shutil.rmtree(target)
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(src), str(target)], check=True, timeout=600)
        if dovecot:
            self.dv.chown_tree(home)

    def _run(self) -> int:
        args = self.args
        gen = self.base / "gen"
        t0 = time.perf_counter()
        count, size = generate_maildir(gen / "big", args.messages, args.seed)
        small_count, small_size = generate_maildir(gen / "small", args.per_session, args.seed + 7)
        log(f"generated {count} messages ({size / 1e6:.1f} MB) and a {small_count}-message "
            f"Maildir for {args.sessions} users in {time.perf_counter() - t0:.1f}s")

        # users: the same names and PLAIN passwords on both sides, each side its own homes
        dhomes = {u: self.dv.add_user(u, PASSWORD, self.base / "dovecot" / u) for u in [SINGLE_USER, *self.users]}
        ohomes = {u: self.ours.add_user(u) for u in [SINGLE_USER, *self.users]}
        t0 = time.perf_counter()
        self.copy(gen / "big", dhomes[SINGLE_USER], True)
        self.copy(gen / "big", ohomes[SINGLE_USER], False)
        for u in self.users:
            self.copy(gen / "small", dhomes[u], True)
            self.copy(gen / "small", ohomes[u], False)
        log(f"hard-linked copies for both servers in {time.perf_counter() - t0:.1f}s")

        self.dv.start()
        self.ours.start()
        log(f"Dovecot POP3 on 127.0.0.1:{self.dv.pop3_port} (pid {self.dv.proc.pid}), "
            f"ours on 127.0.0.1:{self.ours.port} (pid {self.ours.proc.pid})")
        sides = {"dovecot": (self.dv.pop3_port, self.dv.proc.pid), "ours": (self.ours.port, self.ours.proc.pid)}

        def measure(side: str, work):  # type: ignore[no-untyped-def]
            port, pid = sides[side]
            os.sync()
            cpu0 = group_cpu(pid)
            result = work(port)
            time.sleep(0.3)  # let Dovecot reap its session processes (their CPU lands in the master)
            result["server_cpu"] = group_cpu(pid) - cpu0
            return result

        single: dict[str, list[dict]] = {"dovecot": [], "ours": []}
        conc: dict[str, list[dict]] = {"dovecot": [], "ours": []}
        order = ["dovecot", "ours"]
        timeout = args.timeout

        # 1. one client, every message; the first run on each side is cold (no index, no uidlist)
        for rep in range(args.repeat + 1):
            for side in order if rep % 2 == 0 else order[::-1]:
                what = "cold" if rep == 0 else f"warm {rep}/{args.repeat}"
                log(f"single session, {side}, {what}")
                r = measure(side, lambda port: single_session(port, SINGLE_USER, checksum=rep == 0, timeout=timeout))
                log(f"  {r['wall']:.2f}s, {r['messages'] / r['wall']:.0f} msg/s")
                single[side].append(r)

        # 2. S sessions at once, one user each
        for rep in range(args.repeat + 1):
            for side in order if rep % 2 == 0 else order[::-1]:
                what = "cold" if rep == 0 else f"warm {rep}/{args.repeat}"
                log(f"{args.sessions} concurrent sessions x {args.per_session}, {side}, {what}")
                r = measure(side, lambda port: concurrent_sessions(port, self.users, self.knobs))
                log(f"  {r['wall']:.2f}s, {r['ok']}/{args.sessions} ok, {r['lost']} connection(s) lost, "
                    f"{r['overflows']} listen-queue overflow(s)")
                conc[side].append(r)

        profile_text = ""
        if args.profile:
            profile_text = self.profile(sides["ours"])

        self.report(count, size, small_count, single, conc, profile_text)
        return 0

    def profile(self, ours: tuple[int, int]) -> str:
        """py-spy on our server, each workload repeated for --profile-seconds, twice: sampling only
        the thread holding the GIL (where the CPU goes), then every thread that is not asleep
        (also shows threads woken but waiting for the GIL or the reactor)."""
        if shutil.which("py-spy") is None:
            return "py-spy not found (pip install py-spy)"
        port, pid = ours
        out = []
        workloads = (
            ("one session, every message (warm)", lambda: single_session(port, SINGLE_USER, False, self.args.timeout)),
            (f"{self.args.sessions} concurrent sessions (warm)",
             lambda: concurrent_sessions(port, self.users, self.knobs)),
        )
        for label, work in workloads:
            for gil in (True, False):
                path = self.base / f"pyspy-{len(out)}{'-gil' if gil else ''}.txt"
                log(f"py-spy on our server ({'GIL holder' if gil else 'active threads'}): {label}")
                spy = Spy(pid, path, self.args.spy_rate, gil)
                runs, t0 = 0, time.perf_counter()
                try:
                    while runs == 0 or time.perf_counter() - t0 < self.args.profile_seconds:
                        work()
                        runs += 1
                finally:
                    spy.stop()
                what = "thread holding the GIL" if gil else "threads not asleep"
                out.append(f"--- py-spy ({what}), our server, {label}: {runs} run(s) in "
                           f"{time.perf_counter() - t0:.1f}s; raw stacks in {path} ---\n"
                           + spy_summary(path, self.args.top))
        return "\n\n".join(out)

    def report(self, count: int, size: int, small_count: int, single: dict, conc: dict, profile_text: str) -> None:
        args = self.args
        print()
        print(f"Single user: {count} messages, {size / 1e6:.1f} MB as stored (LF); "
              f"{args.sessions} users x {small_count} messages for the concurrent run.")
        print("Each server reads its own copy (hard links, cp -al) of the same Maildir: neither sees the other's "
              "index or dovecot-uidlist.")
        print("Passwords: {PLAIN} in a passwd-file on both sides. Client: raw sockets, one command at a time "
              "(no pipelining), blocking for one session, asyncio for many.")
        print(f"Dovecot {self.dovecot_version()}, login mode '{args.dovecot_login}'; set: " + " ".join(
            line.strip() for line in self.dovecot_limits.splitlines()))

        def med(rows: list[dict], key: str) -> float:
            return statistics.median(r[key] for r in rows)

        # single session
        print(f"\nSingle session: USER/PASS, LIST, RETR 1..{count} (no DELE), QUIT. "
              f"MB = 10^6 octets as LIST counts them (CRLF).")
        print(f"{'':26} {'ours msg/s':>11} {'Dovecot':>9} {'ours MB/s':>10} {'Dovecot':>8} {'ratio':>7}  "
              f"{'ours s':>7} {'Dovecot s':>9}  server CPU s ours/Dovecot")
        for label, rows in (("cold (no index/uidlist)", {k: v[:1] for k, v in single.items()}),
                            (f"warm (median of {args.repeat})", {k: v[1:] for k, v in single.items()})):
            o_wall, d_wall = med(rows["ours"], "wall"), med(rows["dovecot"], "wall")
            o_oct, d_oct = rows["ours"][0]["listed_octets"], rows["dovecot"][0]["listed_octets"]
            o_n, d_n = rows["ours"][0]["messages"], rows["dovecot"][0]["messages"]
            ratio = (o_n / o_wall) / (d_n / d_wall)
            print(f"{label:26} {o_n / o_wall:11.0f} {d_n / d_wall:9.0f} {o_oct / o_wall / 1e6:10.1f} "
                  f"{d_oct / d_wall / 1e6:8.1f} {ratio:6.2f}x  {o_wall:7.2f} {d_wall:9.2f}  "
                  f"{med(rows['ours'], 'server_cpu'):.2f} / {med(rows['dovecot'], 'server_cpu'):.2f}")
        print("ratio = our throughput / Dovecot's (>1: we are faster); msg/s and MB/s ratios are the same number.")
        print("where the time goes (median of the warm runs, seconds):")
        for side in ("ours", "dovecot"):
            rows = single[side][1:]
            print(f"  {side:8} login {med(rows, 'login'):.3f}  LIST {med(rows, 'list'):.3f}  "
                  f"RETR loop {med(rows, 'retr'):.3f}  QUIT {med(rows, 'quit'):.3f}  "
                  f"(client CPU {med(rows, 'client_cpu'):.2f})")
            print(f"           all runs: " + " ".join(f"{r['wall']:.2f}" for r in single[side]))

        # concurrency
        how = ("all connecting at once" if args.connect_window <= 0
               else f"at most {args.connect_window} connecting (before their greeting) at a time")
        print(f"\n{args.sessions} sessions, {how}, each its own user: USER/PASS, LIST, RETR 1..{small_count}, QUIT.")
        print(f"{'':26} {'ours s':>7} {'Dovecot s':>9} {'ratio':>7}  {'session p50/p95 s o/D':>21}  "
              f"{'greeting max s o/D':>18}  {'server CPU s o/D':>16}  lost connections o/D")
        for label, rows in (("cold (no index/uidlist)", {k: v[:1] for k, v in conc.items()}),
                            (f"warm (median of {args.repeat})", {k: v[1:] for k, v in conc.items()})):
            o, d = med(rows["ours"], "wall"), med(rows["dovecot"], "wall")
            lost = f"{sum(r['lost'] for r in rows['ours'])} / {sum(r['lost'] for r in rows['dovecot'])}"
            print(f"{label:26} {o:7.2f} {d:9.2f} {d / o:6.2f}x  "
                  f"{med(rows['ours'], 'p50'):5.2f}/{med(rows['ours'], 'p95'):.2f} "
                  f"{med(rows['dovecot'], 'p50'):5.2f}/{med(rows['dovecot'], 'p95'):.2f}  "
                  f"{med(rows['ours'], 'greet_max'):8.2f} / {med(rows['dovecot'], 'greet_max'):<7.2f}  "
                  f"{med(rows['ours'], 'server_cpu'):6.2f} / {med(rows['dovecot'], 'server_cpu'):<7.2f}  {lost}")
        print("ratio = Dovecot's total time / ours (>1: we are faster). Session times count from the common start.")
        print(f"A lost connection got no greeting within {args.greeting_timeout:g}s and was made again (the total "
              "includes that wait); 'overflows' below is the kernel's ListenOverflows count during the run "
              "(system-wide).")
        for side in ("ours", "dovecot"):
            print(f"  {side:8} all runs: " + " ".join(f"{r['wall']:.2f}" for r in conc[side])
                  + "  lost: " + " ".join(str(r["lost"]) for r in conc[side])
                  + "  overflows: " + " ".join(str(r["overflows"]) for r in conc[side])
                  + f"  (client CPU median {med(conc[side], 'client_cpu'):.2f}s)")

        # sanity
        for side in ("ours", "dovecot"):
            for r in single[side]:
                if r["mismatches"]:
                    self.warnings.append(f"{side}: {r['mismatches']} RETR sizes differ from LIST (single session)")
            for r in conc[side]:
                if r["errors"]:
                    self.warnings.append(f"{side}: {len(r['errors'])}/{args.sessions} concurrent sessions failed, "
                                         f"e.g. {r['errors'][:3]}")
                if r["mismatches"]:
                    self.warnings.append(f"{side}: {r['mismatches']} RETR sizes differ from LIST (concurrent)")
                expected = args.per_session * r["ok"]
                if r["messages"] != expected:
                    self.warnings.append(f"{side}: concurrent sessions saw {r['messages']} messages, expected {expected}")
        o1, d1 = single["ours"][0], single["dovecot"][0]
        if (o1["messages"], o1["listed_octets"]) != (d1["messages"], d1["listed_octets"]):
            self.warnings.append(f"LIST differs: ours {o1['messages']} messages/{o1['listed_octets']} octets, "
                                 f"Dovecot {d1['messages']}/{d1['listed_octets']}")
        if o1["crc"] != d1["crc"]:
            self.warnings.append("the retrieved messages differ between the servers (CRC32 of all RETR bodies)")
        else:
            print(f"\nBoth servers listed {o1['messages']} messages / {o1['listed_octets']} octets and sent "
                  f"byte-identical messages (CRC32 of every RETR body, cold run).")
        for w in self.warnings:
            print(f"WARNING: {w}")
        errors = self.dv.errors()
        dv_warnings = [line for line in self.dv.log.read_text(errors="replace").splitlines() if ": Warning: " in line]
        if errors or dv_warnings:
            print("\nDovecot logged:\n" + "\n".join((errors + dv_warnings)[-10:]))
        problems = self.ours.problems()
        if problems:
            print("\nOur server logged:\n" + "\n".join(problems))
        if profile_text:
            print("\n" + profile_text)

    @staticmethod
    def dovecot_version() -> str:
        try:
            return subprocess.run(["dovecot", "--version"], capture_output=True, text=True, timeout=10).stdout.split()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, help="messages in the single user's Maildir (default 5000; 1000 with --quick)")
    p.add_argument("--sessions", type=int, help="concurrent sessions, one user each (default 200; 50 with --quick)")
    p.add_argument("--per-session", type=int, help="messages each concurrent session retrieves (default 50; 20 with --quick)")
    p.add_argument("--quick", action="store_true", help="1 000 messages, 50 sessions x 20")
    p.add_argument("--repeat", type=int, default=3, help="warm runs per side, alternating; the median is kept (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", action="store_true",
                   help="after the timed runs, one more of each with py-spy attached to our server; print hot spots")
    p.add_argument("--profile-seconds", type=float, default=5.0,
                   help="with --profile, repeat each workload under py-spy for this long (default 5)")
    p.add_argument("--spy-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--top", type=int, default=20, help="rows of the py-spy summary (default 20)")
    p.add_argument("--greeting-timeout", type=float, default=10.0,
                   help="concurrent run: a connection without a greeting after this long is lost; "
                        "reconnect (default 10 s)")
    p.add_argument("--reconnects", type=int, default=2, help="concurrent run: reconnects per session (default 2)")
    p.add_argument("--connect-window", type=int, default=0,
                   help="concurrent run: at most this many sessions connecting (before their greeting) at a time; "
                        "0 = all at once (default)")
    p.add_argument("--dovecot-login", choices=["security", "performance"], default="performance",
                   help="Dovecot's login process mode: 'performance' (default here: service_count = 0, "
                        "process_min_avail = cores, a few pop3-login processes serve every connection) or "
                        "'security' (Debian's shipped default: a fresh pop3-login process per connection, "
                        "which takes seconds to greet 200 clients arriving at once)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (under /tmp)")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline for any one session, seconds (default 600)")
    args = p.parse_args(argv)
    quick = {"messages": 1000, "sessions": 50, "per_session": 20}
    full = {"messages": 5000, "sessions": 200, "per_session": 50}
    for key in full:
        if getattr(args, key) is None:
            setattr(args, key, (quick if args.quick else full)[key])
    from dovecot_helper import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"cannot run Dovecot here: {reason}", file=sys.stderr)
        return 2
    if not os.path.exists("/usr/lib/dovecot/pop3"):
        print("cannot run Dovecot POP3 here: /usr/lib/dovecot/pop3 is absent (apt-get install dovecot-pop3d)",
              file=sys.stderr)
        return 2
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
