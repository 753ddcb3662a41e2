#!/usr/bin/env python3
"""Our IMAP server against Debian's Dovecot IMAP on copies of the same Maildirs, in one run.

    python bench/imap.py --quick       # 5 000 messages, 200 IDLE sessions (about 3 minutes)
    python bench/imap.py               # 20 000 and 100 000 messages, 2 000 IDLE sessions
    python bench/imap.py --only idle --idle-sessions 2000 --inotify-instances 4096
    python bench/imap.py --quick --profile     # + py-spy hot spots of our server

See bench/README.md ("bench/imap.py") for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the private-Dovecot launcher lives beside the interop test
sys.path.insert(0, str(HERE))

from store import TextPool, generate_maildir  # noqa: E402  the same messages as bench/store.py

PASSWORD = "benchpw"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SIDES = ("dovecot", "ours")
IDLE_USER = "idler"
STEPS = ("sync", "resync", "search", "fetch", "concurrent", "idle")

# Thunderbird's first download of a folder's headers (its default header list)
TB_FIELDS = ("From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
             "In-Reply-To Content-Type Reply-To")
FIRST_SYNC = f"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_FIELDS})])".encode()

# On top of the launcher's config: room for every session at once. Dovecot's defaults
# (default_process_limit 100, default_client_limit 1000, mail_max_userip_connections 10)
# would refuse or queue most of 2 000 sessions; the log, anvil, auth and stats services
# each take one connection per process, hence the client limits.
DOVECOT_LIMITS = """\
default_process_limit = {procs}
default_client_limit = {clients}
mail_max_userip_connections = {userip}
service imap-login {{
  process_limit = {procs}
  client_limit = {clients}
}}
service imap {{
  process_limit = {procs}
}}
"""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the servers we start inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- /proc: memory and CPU of a server's processes ---------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Live members of a process group (both servers run in their own session: pgid = pid)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(entry))
    return out


def proc_mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes; PSS shares each page among the processes mapping it."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss = pss = int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return rss, pss


def group_mem(pgid: int) -> dict:
    rss = pss = 0
    names: Counter = Counter()
    pids = group_pids(pgid)
    for pid in pids:
        r, p = proc_mem(pid)
        rss += r
        pss += p
        try:
            with open(f"/proc/{pid}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass
    return {"rss": rss, "pss": pss, "procs": len(pids), "names": names}


def group_cpu(pgid: int) -> float:
    """CPU seconds of a process group: every member, plus the leader's reaped children
    (Dovecot's imap and imap-login processes end up in the master's cutime/cstime)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) != pgid:
            continue
        total += int(fields[11]) + int(fields[12])
        if int(entry) == pgid:
            total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


# -- a raw-socket IMAP client -----------------------------------------------------------------


class ImapError(RuntimeError):
    pass


class Reply:
    __slots__ = ("tagged", "fetches", "literal_bytes", "lines", "seconds")

    def __init__(self) -> None:
        self.tagged = b""
        self.fetches = 0
        self.literal_bytes = 0
        self.lines: list[bytes] = []
        self.seconds = 0.0


class Client:
    """Blocking IMAP client, one command at a time. Literals are skipped by count (never
    searched for a tag), nothing is decoded: the client shares 2 cores with the server."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.n = 0
        greeting = self.line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting!r}")

    def _fill(self) -> None:
        if self.pos > (1 << 20):
            del self.buf[: self.pos]
            self.pos = 0
        data = self.sock.recv(1 << 20)
        if not data:
            raise ImapError("the server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                out = bytes(self.buf[self.pos : i])
                self.pos = i + 2
                return out
            self._fill()

    def skip(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            n -= len(self.buf) - self.pos
            self.pos = len(self.buf)
            self._fill()
        self.pos += n

    def cmd(self, command: bytes, keep: bool = False, ok: bool = True) -> Reply:
        self.n += 1
        tag = b"T%d" % self.n
        r = Reply()
        t0 = time.perf_counter()
        self.sock.sendall(tag + b" " + command + b"\r\n")
        tagp = tag + b" "
        while True:
            line = self.line()
            while line.endswith(b"}") and b"{" in line:
                size = int(line[line.rfind(b"{") + 1 : -1].rstrip(b"+"))
                self.skip(size)
                r.literal_bytes += size
                line = line + b"<literal>" + self.line()
            if line.startswith(tagp):
                r.seconds = time.perf_counter() - t0
                r.tagged = line
                if ok and not line.startswith(tagp + b"OK"):
                    raise ImapError(f"{command[:60]!r}: {line.decode(errors='replace')}")
                return r
            if line.startswith(b"* ") and b" FETCH (" in line:
                r.fetches += 1
            if keep:
                r.lines.append(line)

    def login(self, user: str) -> None:
        self.cmd(b"LOGIN " + user.encode() + b" " + PASSWORD.encode())

    def select(self, mailbox: str = "INBOX", condstore: bool = False) -> dict:
        r = self.cmd(b"SELECT " + mailbox.encode() + (b" (CONDSTORE)" if condstore else b""), keep=True)
        out = {"seconds": r.seconds}
        for line in r.lines:
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                out["exists"] = int(m.group(1))
            m = re.search(rb"\[(UIDNEXT|HIGHESTMODSEQ|UIDVALIDITY) (\d+)\]", line)
            if m:
                out[m.group(1).decode().lower()] = int(m.group(2))
        return out

    def logout(self) -> None:
        try:
            self.cmd(b"LOGOUT", ok=False)
        except (OSError, ImapError):
            pass
        self.sock.close()


def session(port: int, user: str, timeout: float) -> Client:
    c = Client(port, timeout)
    c.login(user)
    return c


# -- asyncio sessions: many at once --------------------------------------------------------------


class AConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.n = 0

    @classmethod
    async def open(cls, port: int, stats: Counter | None = None, greeting_timeout: float = 10.0,
                   attempts: int = 4) -> AConn:
        """Connect and read the greeting. A connection the server's full accept queue dropped
        looks established to us but never greets (the server speaks first, so the client never
        sends anything that would draw a reset): after `greeting_timeout` the client gives up on
        it and connects again, as a mail client's connect timeout would; `stats` counts those."""
        for attempt in range(attempts):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            c = cls(reader, writer)
            try:
                greeting = await asyncio.wait_for(c.line(), greeting_timeout)
            except asyncio.TimeoutError:
                writer.close()
                if stats is not None:
                    stats["no greeting"] += 1
                if attempt == attempts - 1:
                    raise ImapError(f"no greeting within {greeting_timeout:g}s, {attempts} times") from None
                continue
            if not greeting.startswith(b"* OK"):
                raise ImapError(f"greeting: {greeting!r}")
            return c
        raise AssertionError("unreachable")

    async def line(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        while line.endswith(b"}\r\n") and b"{" in line:
            size = int(line[line.rfind(b"{") + 1 : -3].rstrip(b"+"))
            await self.reader.readexactly(size)
            line = line[:-2] + b"<literal>" + await self.reader.readuntil(b"\r\n")
        return line[:-2]

    async def cmd(self, command: bytes) -> list[bytes]:
        self.n += 1
        tag = b"A%d " % self.n
        self.writer.write(tag + command + b"\r\n")
        lines = []
        while True:
            line = await self.line()
            if line.startswith(tag):
                if not line.startswith(tag + b"OK"):
                    raise ImapError(f"{command[:40]!r}: {line.decode(errors='replace')}")
                return lines
            lines.append(line)

    def close(self) -> None:
        self.writer.close()


async def one_short_session(port: int, user: str, start: float, timeout: float, stats: Counter,
                            greeting_timeout: float) -> dict:
    """LOGIN, SELECT, FETCH 1:50 (FLAGS ENVELOPE), NOOP, LOGOUT; times relative to `start`."""
    out: dict = {"user": user}
    conn = None

    async def run() -> None:
        nonlocal conn
        conn = await AConn.open(port, stats, greeting_timeout)
        await conn.cmd(b"LOGIN " + user.encode() + b" " + PASSWORD.encode())
        await conn.cmd(b"SELECT INBOX")
        lines = await conn.cmd(b"FETCH 1:50 (FLAGS ENVELOPE)")
        out["fetched"] = sum(1 for line in lines if b" FETCH (" in line)
        await conn.cmd(b"NOOP")
        await conn.cmd(b"LOGOUT")

    try:
        await asyncio.wait_for(run(), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ImapError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip()
    finally:
        if conn is not None:
            conn.close()
    out["done"] = time.perf_counter() - start
    return out


def concurrent_sessions(port: int, users: list[str], timeout: float, greeting_timeout: float = 10.0) -> dict:
    async def main() -> tuple[float, list[dict]]:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_short_session(port, u, start, timeout, stats, greeting_timeout) for u in users))
        return time.perf_counter() - start, results

    stats: Counter = Counter()
    cpu0 = time.process_time()
    wall, results = asyncio.run(main())
    ok = [r for r in results if "error" not in r]
    done = sorted(r["done"] for r in ok)
    return {
        "wall": wall,
        "ok": len(ok),
        "errors": [f"{r['user']}: {r['error']}" for r in results if "error" in r],
        "fetched": sum(r["fetched"] for r in ok),
        "p50": done[len(done) // 2] if done else 0.0,
        "p95": done[min(len(done) - 1, int(len(done) * 0.95))] if done else 0.0,
        "client_cpu": time.process_time() - cpu0,
        "no_greeting": stats["no greeting"],
    }


class IdleCrowd:
    """N sessions of one user, each LOGIN, SELECT INBOX, IDLE; they note when `* n EXISTS` comes."""

    def __init__(self, port: int, user: str, count: int, timeout: float, parallel: int = 64,
                 greeting_timeout: float = 10.0) -> None:
        self.port, self.user, self.count, self.timeout, self.parallel = port, user, count, timeout, parallel
        self.greeting_timeout = greeting_timeout
        self.conns: list[AConn] = []
        self.errors: list[str] = []
        self.seen: list[float | None] = []
        self.tasks: list[asyncio.Task] = []
        self.woken = 0
        self.all_woken: asyncio.Event | None = None
        self.stats: Counter = Counter()

    async def _one(self, i: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            conn = await AConn.open(self.port, self.stats, self.greeting_timeout)
            await conn.cmd(b"LOGIN " + self.user.encode() + b" " + PASSWORD.encode())
            await conn.cmd(b"SELECT INBOX")
            conn.n += 1
            conn.writer.write(b"I IDLE\r\n")
            while True:
                line = await conn.line()
                if line.startswith(b"+"):
                    break
                if line.startswith(b"I "):
                    raise ImapError(f"IDLE: {line.decode(errors='replace')}")
        self.conns[i] = conn

    async def connect(self) -> float:
        self.conns = [None] * self.count  # type: ignore[list-item]
        sem = asyncio.Semaphore(self.parallel)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(asyncio.wait_for(self._one(i, sem), self.timeout)
                                         for i in range(self.count)), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                self.errors.append(f"{type(res).__name__}: {res}".strip())
        self.conns = [c for c in self.conns if c is not None]
        self.seen = [None] * len(self.conns)
        self.all_woken = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._watch(i, c)) for i, c in enumerate(self.conns)]
        return time.perf_counter() - t0

    async def _watch(self, i: int, conn: AConn) -> None:
        try:
            while True:
                line = await conn.line()
                if line.endswith(b" EXISTS") and self.seen[i] is None:
                    self.seen[i] = time.perf_counter()
                    self.woken += 1
                    if self.woken == len(self.conns) and self.all_woken is not None:
                        self.all_woken.set()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass

    async def wake(self, deliver, wait: float) -> dict:
        """Call deliver() (returns the perf_counter of the delivery) and wait for every EXISTS."""
        assert self.all_woken is not None
        self.seen = [None] * len(self.conns)
        self.woken = 0
        self.all_woken.clear()
        t0 = deliver()
        try:
            await asyncio.wait_for(self.all_woken.wait(), wait)
        except asyncio.TimeoutError:
            pass
        times = sorted(t - t0 for t in self.seen if t is not None)
        return {"woken": len(times), "sessions": len(self.conns), "times": times}

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for conn in self.conns:
            try:
                conn.writer.write(b"DONE\r\nZ LOGOUT\r\n")
            except OSError:
                pass
        await asyncio.sleep(0.5)
        for conn in self.conns:
            conn.close()
        await asyncio.sleep(0.2)


# -- the two servers ---------------------------------------------------------------------------


class OurServer:
    """`python -m retrieval serve` with [imap] listen on a free loopback port, PLAIN passwords."""

    def __init__(self, base: Path, per_user_ip: int) -> None:
        self.base = base
        self.passwd = base / "passwd"
        self.state = base / "state"
        self.config = base / "retrieval.toml"
        self.log = base / "server.log"
        self.per_user_ip = per_user_ip
        self.port = 0
        self.proc: subprocess.Popen | None = None
        base.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def home(self, user: str) -> Path:
        return self.base / "home" / user

    def add_users(self, users: list[str]) -> None:
        """One passwd-file write for all (add_user rewrites the whole file each time)."""
        from retrieval.auth.passwd import add_user

        tmp = self.base / "passwd.one"
        lines = []
        for user in users:
            self.home(user).mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                tmp.unlink()
            add_user(tmp, user, PASSWORD, scheme="PLAIN", home=str(self.home(user)))
            lines.append(tmp.read_text())
        with open(self.passwd, "a") as f:
            f.write("".join(lines))
        tmp.unlink(missing_ok=True)

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

[imap]
listen = ["127.0.0.1:{self.port}"]
max_connections_per_user_ip = {self.per_user_ip}
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
                    if s.recv(100).startswith(b"* OK"):
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
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def problems(self) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        lines = text.splitlines()
        return [line for line in lines if "Traceback" in line or "Unhandled" in line
                or ("[-] " in line and "rror" in line) or "Error" in line[:200]][:20]


# -- py-spy --------------------------------------------------------------------------------------


class Spy:
    """`py-spy record --format raw` attached to our server while a block of work runs."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
             "--nonblocking", "--gil", "-o", str(out)],
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


def spy_summary(path: Path, top: int) -> str:
    """Self time by line and inclusive time by function, from py-spy's collapsed stacks."""
    self_line: Counter = Counter()
    incl_func: Counter = Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(py-spy wrote nothing)"
    for raw in text.splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        total += n
        names = [short(f) for f in frames]
        self_line[names[-1]] += n
        seen = set()
        for f in names:
            func = f.split(":")[0] + ")" if ":" in f else f
            if func not in seen:
                seen.add(func)
                incl_func[func] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples of the thread holding the GIL"]
    lines.append(f"top {top} by self time (function (file:line)):")
    lines += [f"  {v / total:6.1%}  {k}" for k, v in self_line.most_common(top)]
    lines.append(f"top {top} by inclusive time (function (file)):")
    skip = ("<module>", "run (", "_bootstrap", "mainLoop", "doIteration", "runUntilCurrent", "_doReadOrWrite",
            "work (twisted", "inContext", "callWithContext", "_threadpool", "worker (stdlib")
    lines += [f"  {v / total:6.1%}  {k}" for k, v in incl_func.most_common(top + 40)
              if not any(s in k for s in skip)][:top]
    return "\n".join(lines)


# -- data ---------------------------------------------------------------------------------------


def pick_search_phrase(maildir: Path, seed: int, target: float = 0.01) -> tuple[str, int, int]:
    """A phrase found in about `target` of the messages (case-insensitive substring, as SEARCH
    TEXT matches). The generator's ~110 words each occur in nearly every body, so no single
    word is rare; a three-word run that the shared text pool holds a few times is, because a
    body is a ~4 KB window of that pool. Returns (phrase, messages matching, messages)."""
    pool = TextPool(random.Random(seed))  # the first thing generate_maildir draws from the seed
    counts: Counter = Counter()
    for line in pool.data.decode().lower().splitlines():
        words = line.split()
        for i in range(len(words) - 2):
            counts[" ".join(words[i : i + 3])] += 1
    by_count: dict[int, list[str]] = {}
    for phrase, k in counts.items():
        by_count.setdefault(k, []).append(phrase)
    candidates = [p for k in sorted(by_count)[-12:] for p in sorted(by_count[k])[:3]]
    bodies = []
    for sub in ("cur", "new"):
        for entry in os.scandir(maildir / sub):
            with open(entry.path, "rb") as f:
                bodies.append(f.read().lower())
    hits = {p: sum(1 for b in bodies if p.encode() in b) for p in candidates}
    n = len(bodies)
    phrase = min(candidates, key=lambda p: (abs(hits[p] / n - target), p))
    return phrase, hits[phrase], n


def delivery(i: int) -> bytes:
    return (f"From: Deliverer <d@example.test>\nTo: {IDLE_USER}@example.test\nSubject: wake up {i}\n"
            f"Message-ID: <wake.{i}.{time.time()}@bench.example.test>\n\n" + "Hello, idlers.\n" * 40).encode()


def deliver(maildir: Path, data: bytes, owner: tuple[int, int] | None) -> float:
    """What an MDA does: write in tmp/, rename into new/. Returns the time of the rename."""
    name = f"{int(time.time())}.M{random.randrange(1_000_000)}P{os.getpid()}.bench,S={len(data)}"
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    if owner is not None:
        os.chown(tmp, *owner)
    t0 = time.perf_counter()
    os.rename(tmp, maildir / "new" / name)
    return t0


# -- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from dovecot_helper import PrivateDovecot

        self.args = args
        self.steps = set(args.only.split(",")) if args.only else set(STEPS)
        procs = max(1000, args.idle_sessions + args.concurrent + 200)
        self.per_user_ip = args.idle_sessions + 50
        self.dovecot_limits = DOVECOT_LIMITS.format(procs=procs, clients=4 * procs, userip=self.per_user_ip)
        self.dv = PrivateDovecot(protocols="imap", extra_config=self.dovecot_limits, cleanup=not args.keep)
        self.base = self.dv.base
        self.ours = OurServer(self.base / "ours", self.per_user_ip)
        self.rows: list[tuple[str, float | None, float | None, str, str, str]] = []
        self.warnings: list[str] = []
        self.profiles: list[str] = []
        self.big_users = {n: f"s{n}" for n in args.sizes}
        self.conc_users = [f"c{i:04d}" for i in range(args.concurrent)]
        self.inotify_saved: str | None = None

    # plumbing

    def port(self, side: str) -> int:
        return self.dv.port if side == "dovecot" else self.ours.port

    def pgid(self, side: str) -> int:
        assert self.dv.proc is not None
        return self.dv.proc.pid if side == "dovecot" else self.ours.pid

    def home(self, side: str, user: str) -> Path:
        return self.base / "dovecot" / user if side == "dovecot" else self.ours.home(user)

    def order(self, rep: int) -> tuple[str, ...]:
        return SIDES if rep % 2 == 0 else SIDES[::-1]

    def row(self, name: str, ours: float | None, dovecot: float | None, unit: str = "s",
            target: str = "", note: str = "") -> None:
        self.rows.append((name, ours, dovecot, unit, target, note))

    def copy(self, src: Path, home: Path, dovecot: bool) -> None:
        """A private copy of `src` as home/Maildir: hard links (both sides only rename and unlink)."""
        target = home / "Maildir"
        if target.exists():
            shutil.rmtree(target)
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(src), str(target)], check=True, timeout=600)
        if dovecot:
            self.dv.chown_tree(home)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.ours.stop()
            self.dv.close()
            self.restore_inotify()
            if self.args.keep:
                print(f"kept everything in {self.base}", file=sys.stderr)

    # setup

    def _run(self) -> int:
        args = self.args
        nofile = raise_nofile()
        need = 3 * args.idle_sessions + 500
        if nofile < need:
            self.warnings.append(f"RLIMIT_NOFILE is {nofile}; {args.idle_sessions} IDLE sessions want about {need}")
        self.raise_inotify()
        gen = self.base / "gen"
        t0 = time.perf_counter()
        sizes = {}
        for n in args.sizes if self.steps & {"sync", "resync", "search", "fetch"} else []:
            sizes[n] = generate_maildir(gen / f"m{n}", n, args.seed)
        generate_maildir(gen / "small", args.per_session, args.seed + 7)
        generate_maildir(gen / "tiny", 10, args.seed + 11)
        log("generated " + ", ".join(f"{c} messages ({b / 1e6:.0f} MB)" for c, b in sizes.values())
            + f", a {args.per_session}-message Maildir for {args.concurrent} users and a 10-message INBOX "
            f"in {time.perf_counter() - t0:.1f}s")

        users = [*self.big_users.values(), *self.conc_users, IDLE_USER]
        for u in users:
            self.dv.users[u] = (PASSWORD, self.base / "dovecot" / u, "")
        self.dv.add_user(IDLE_USER, PASSWORD, self.base / "dovecot" / IDLE_USER)  # writes the passwd-file
        self.ours.add_users(users)
        t0 = time.perf_counter()
        for n in sizes:
            for side in SIDES:
                self.copy(gen / f"m{n}", self.home(side, self.big_users[n]), side == "dovecot")
        for u in self.conc_users:
            for side in SIDES:
                self.copy(gen / "small", self.home(side, u), side == "dovecot")
        for side in SIDES:
            self.copy(gen / "tiny", self.home(side, IDLE_USER), side == "dovecot")
        log(f"hard-linked copies for both servers in {time.perf_counter() - t0:.1f}s")

        self.dv.start()
        self.ours.start()
        log(f"Dovecot IMAP on 127.0.0.1:{self.dv.port} (pid {self.dv.proc.pid}), "
            f"ours on 127.0.0.1:{self.ours.port} (pid {self.ours.pid})")

        steps = [
            ("sync", self.step_sync), ("resync", self.step_resync), ("search", self.step_search),
            ("fetch", self.step_random_fetch), ("concurrent", self.step_concurrent), ("idle", self.step_idle),
        ]
        for name, step in steps:
            if name not in self.steps:
                continue
            if name in ("sync", "resync", "search", "fetch") and not sizes:
                continue
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others
                import traceback

                self.warnings.append(f"step {name} failed: {type(exc).__name__}: {exc}")
                log(f"step {name} FAILED:\n{traceback.format_exc()}")
                if self.ours.proc is None or self.ours.proc.poll() is not None:
                    log("our server is gone; restarting it")
                    self.ours.stop()
                    self.ours.start()
        self.report(sizes)
        return 0

    def raise_inotify(self) -> None:
        """--inotify-instances K: raise fs.inotify.max_user_instances for this run (root only).
        Each Dovecot imap process in IDLE takes an inotify instance of the mail user; past the
        limit (Debian: 128) Dovecot polls every mailbox_idle_check_interval (30 s)."""
        k = self.args.inotify_instances
        path = Path("/proc/sys/fs/inotify/max_user_instances")
        if not k:
            return
        try:
            old = path.read_text().strip()
            if int(old) < k:
                path.write_text(f"{k}\n")
                self.inotify_saved = old
                log(f"fs.inotify.max_user_instances {old} -> {k} for this run")
        except OSError as exc:
            self.warnings.append(f"could not raise fs.inotify.max_user_instances: {exc}")

    def restore_inotify(self) -> None:
        if self.inotify_saved is not None:
            try:
                Path("/proc/sys/fs/inotify/max_user_instances").write_text(self.inotify_saved + "\n")
                log(f"fs.inotify.max_user_instances restored to {self.inotify_saved}")
            except OSError as exc:
                log(f"could not restore fs.inotify.max_user_instances: {exc}")
            self.inotify_saved = None

    def cpu(self, side: str) -> float:
        return group_cpu(self.pgid(side))

    # 1. first sync, cold and warm

    def first_sync(self, side: str, user: str) -> dict:
        os.sync()
        cpu0, ccpu0 = self.cpu(side), time.process_time()
        t0 = time.perf_counter()
        c = session(self.port(side), user, self.args.timeout)
        t_login = time.perf_counter()
        sel = c.select()
        r = c.cmd(FIRST_SYNC)
        t_end = time.perf_counter()
        c.logout()
        time.sleep(0.2)  # Dovecot's imap process exits and is reaped: its CPU lands in the master
        return {"login": t_login - t0, "select": sel["seconds"], "fetch": r.seconds, "sync": sel["seconds"] + r.seconds,
                "total": t_end - t0, "fetches": r.fetches, "bytes": r.literal_bytes, "exists": sel.get("exists"),
                "server_cpu": self.cpu(side) - cpu0, "client_cpu": time.process_time() - ccpu0}

    def step_sync(self) -> None:
        args = self.args
        for n, user in self.big_users.items():
            runs: dict[str, list[dict]] = {s: [] for s in SIDES}
            for rep in range(args.repeat + 1):
                for side in self.order(rep):
                    what = "cold" if rep == 0 else f"warm {rep}/{args.repeat}"
                    log(f"first sync {n}: {side}, {what}")
                    r = self.first_sync(side, user)
                    log(f"  SELECT {r['select']:.2f}s + UID FETCH {r['fetch']:.2f}s "
                        f"({r['fetches']} FETCH, {r['bytes'] / 1e6:.1f} MB of headers; server CPU {r['server_cpu']:.1f}s)")
                    runs[side].append(r)
            o, d = runs["ours"], runs["dovecot"]
            for label, idx in (("cold", slice(0, 1)), ("warm", slice(1, None))):
                om = {k: statistics.median(r[k] for r in o[idx]) for k in ("select", "fetch", "sync", "server_cpu", "client_cpu")}
                dm = {k: statistics.median(r[k] for r in d[idx]) for k in ("select", "fetch", "sync", "server_cpu", "client_cpu")}
                more = "" if label == "cold" else f", median of {args.repeat}"
                self.row(f"first sync {n // 1000}k {label}: SELECT+FETCH", om["sync"], dm["sync"], "s",
                         "1.5" if label == "warm" else "",
                         f"SELECT {om['select']:.2f}/{dm['select']:.2f}, FETCH {om['fetch']:.2f}/{dm['fetch']:.2f}; "
                         f"server CPU {om['server_cpu']:.1f}/{dm['server_cpu']:.1f}{more}")
            for side in SIDES:
                for r in runs[side]:
                    if r["fetches"] != n or r["exists"] != n:
                        self.warnings.append(f"first sync {n}, {side}: {r['exists']} EXISTS, {r['fetches']} FETCH responses")
            if o[0]["bytes"] != d[0]["bytes"]:
                self.warnings.append(f"first sync {n}: header bytes differ: ours {o[0]['bytes']}, Dovecot {d[0]['bytes']}")

    # 2. resync after 1 % changed elsewhere

    def change_flags(self, side: str, user: str, rng: random.Random, fraction: float) -> tuple[int, int]:
        """From another session: toggle \\Flagged on `fraction` of the messages. (HIGHESTMODSEQ before, count)"""
        c = session(self.port(side), user, self.args.timeout)
        sel = c.select(condstore=True)
        uids = sorted(rng.sample(range(1, sel["uidnext"]), max(1, int(fraction * sel["exists"]))))
        r = c.cmd(b"UID FETCH " + b",".join(b"%d" % u for u in uids) + b" (UID FLAGS)", keep=True)
        flagged, plain = [], []
        for line in r.lines:
            m = re.search(rb"UID (\d+)", line)
            if m:
                (flagged if b"\\Flagged" in line else plain).append(int(m.group(1)))
        for group, op in ((flagged, b"-FLAGS.SILENT"), (plain, b"+FLAGS.SILENT")):
            if group:
                c.cmd(b"UID STORE " + b",".join(b"%d" % u for u in group) + b" " + op + b" (\\Flagged)")
        c.logout()
        return sel["highestmodseq"], len(flagged) + len(plain)

    def step_resync(self) -> None:
        args = self.args
        for n, user in self.big_users.items():
            runs: dict[str, list[dict]] = {s: [] for s in SIDES}
            for rep in range(args.repeat):
                for side in self.order(rep):
                    modseq, changed = self.change_flags(side, user, random.Random(args.seed * 1000 + rep), 0.01)
                    c = session(self.port(side), user, args.timeout)
                    sel = c.select(condstore=True)
                    cpu0 = self.cpu(side)
                    full = c.cmd(b"UID FETCH 1:* (FLAGS)")
                    cpu1 = self.cpu(side)
                    since = c.cmd(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % modseq)
                    cpu2 = self.cpu(side)
                    c.logout()
                    log(f"resync {n}: {side}: SELECT {sel['seconds']:.2f}s, FETCH FLAGS {full.seconds:.3f}s "
                        f"({full.fetches}), CHANGEDSINCE {since.seconds:.3f}s ({since.fetches} of {changed} changed)")
                    runs[side].append({"select": sel["seconds"], "full": full.seconds, "since": since.seconds,
                                       "full_n": full.fetches, "since_n": since.fetches, "changed": changed,
                                       "cpu_full": cpu1 - cpu0, "cpu_since": cpu2 - cpu1})
            med = {s: {k: statistics.median(r[k] for r in runs[s]) for k in ("select", "full", "since", "cpu_full", "cpu_since")}
                   for s in SIDES}
            o, d = med["ours"], med["dovecot"]
            self.row(f"resync {n // 1000}k: UID FETCH 1:* (FLAGS)", o["full"], d["full"], "s", "1.5",
                     f"after 1% changed elsewhere; median of {args.repeat}; server CPU {o['cpu_full']:.2f}/{d['cpu_full']:.2f}")
            self.row(f"resync {n // 1000}k: ... (CHANGEDSINCE m)", o["since"], d["since"], "s", "1.5",
                     f"{runs['ours'][0]['since_n']}/{runs['dovecot'][0]['since_n']} FETCH for {runs['ours'][0]['changed']} "
                     f"changed; server CPU {o['cpu_since']:.3f}/{d['cpu_since']:.3f}")
            self.row(f"resync {n // 1000}k: SELECT (CONDSTORE), warm", o["select"], d["select"], "s", "",
                     "the SELECT before those two")
            for side in SIDES:
                for r in runs[side]:
                    if r["full_n"] != n:
                        self.warnings.append(f"resync {n}, {side}: {r['full_n']} FETCH responses for FLAGS, expected {n}")
                    if r["since_n"] != r["changed"]:
                        self.warnings.append(f"resync {n}, {side}: CHANGEDSINCE gave {r['since_n']} FETCH responses, "
                                             f"{r['changed']} messages changed")

    # 3. SEARCH TEXT

    def step_search(self) -> None:
        args = self.args
        n = min(self.big_users)
        user = self.big_users[n]
        phrase, hits, total = pick_search_phrase(self.base / "gen" / f"m{n}", args.seed)
        log(f"search phrase {phrase!r}: in {hits} of {total} messages ({hits / total:.2%})")
        cmd = b'SEARCH TEXT "' + phrase.encode() + b'"'
        runs: dict[str, list[tuple[float, int, float]]] = {s: [] for s in SIDES}
        for rep in range(args.repeat + 1):
            for side in self.order(rep):
                c = session(self.port(side), user, args.timeout)
                c.select()
                cpu0 = self.cpu(side)
                r = c.cmd(cmd, keep=True)
                cpu = self.cpu(side) - cpu0
                c.logout()
                found = sum(len(line.split()) - 2 for line in r.lines if line.startswith(b"* SEARCH"))
                log(f"SEARCH TEXT {n}: {side}: {r.seconds:.2f}s, {found} found (server CPU {cpu:.2f}s)")
                runs[side].append((r.seconds, found, cpu))
        o = statistics.median(t for t, _f, _c in runs["ours"][1:] or runs["ours"])
        d = statistics.median(t for t, _f, _c in runs["dovecot"][1:] or runs["dovecot"])
        self.row(f'SEARCH TEXT "{phrase}" {n // 1000}k', o, d, "s", "",
                 f"{runs['ours'][0][1]}/{runs['dovecot'][0][1]} found ({hits} expected, {hits / total:.1%}); "
                 f"first run {runs['ours'][0][0]:.2f}/{runs['dovecot'][0][0]:.2f}; median of the {args.repeat} after")
        for side in SIDES:
            for _t, found, _c in runs[side]:
                if found != hits:
                    self.warnings.append(f"SEARCH TEXT, {side}: {found} found, {hits} messages hold {phrase!r}")

    # 4. random BODY.PEEK[]

    def step_random_fetch(self) -> None:
        args = self.args
        n = min(self.big_users)
        user = self.big_users[n]
        rng = random.Random(args.seed)
        uids = [rng.randrange(1, n + 1) for _ in range(args.random_fetches)]
        runs: dict[str, list[dict]] = {s: [] for s in SIDES}
        reps = 1 if args.quick else 2
        for rep in range(reps):
            for side in self.order(rep):
                c = session(self.port(side), user, args.timeout)
                c.select()
                cpu0 = self.cpu(side)
                t0 = time.perf_counter()
                octets = 0
                for uid in uids:
                    octets += c.cmd(b"UID FETCH %d BODY.PEEK[]" % uid).literal_bytes
                wall = time.perf_counter() - t0
                cpu = self.cpu(side) - cpu0
                c.logout()
                log(f"{len(uids)} random UID FETCH n BODY.PEEK[] {n}: {side}: {wall:.2f}s, {octets / 1e6:.1f} MB, "
                    f"server CPU {cpu:.2f}s")
                runs[side].append({"wall": wall, "octets": octets, "cpu": cpu})
        o = min(r["wall"] for r in runs["ours"])
        d = min(r["wall"] for r in runs["dovecot"])
        self.row(f"{len(uids)} x UID FETCH n BODY.PEEK[] {n // 1000}k", o, d, "s", "",
                 f"{runs['ours'][0]['octets'] / 1e6:.1f} MB; best of {reps}; per fetch {o / len(uids) * 1e3:.2f}/"
                 f"{d / len(uids) * 1e3:.2f} ms; server CPU {min(r['cpu'] for r in runs['ours']):.2f}/"
                 f"{min(r['cpu'] for r in runs['dovecot']):.2f}")
        if runs["ours"][0]["octets"] != runs["dovecot"][0]["octets"]:
            self.warnings.append(f"random BODY.PEEK[]: ours sent {runs['ours'][0]['octets']} octets, "
                                 f"Dovecot {runs['dovecot'][0]['octets']} (UIDs name different messages?)")

    # 5. many short sessions at once

    def step_concurrent(self) -> None:
        args = self.args
        runs: dict[str, list[dict]] = {s: [] for s in SIDES}
        for rep in range(args.repeat + 1):
            for side in self.order(rep):
                what = "cold" if rep == 0 else f"warm {rep}/{args.repeat}"
                cpu0 = self.cpu(side)
                r = concurrent_sessions(self.port(side), self.conc_users, args.session_timeout, args.greeting_timeout)
                time.sleep(0.3)
                r["server_cpu"] = self.cpu(side) - cpu0
                log(f"{len(self.conc_users)} concurrent sessions, {side}, {what}: {r['wall']:.2f}s, "
                    f"{r['ok']} ok, p50 {r['p50']:.2f}s, server CPU {r['server_cpu']:.1f}s")
                runs[side].append(r)
        for label, idx in (("cold", slice(0, 1)), ("warm", slice(1, None))):
            keys = ("wall", "p50", "p95", "server_cpu", "no_greeting")
            om = {k: statistics.median(r[k] for r in runs["ours"][idx]) for k in keys}
            dm = {k: statistics.median(r[k] for r in runs["dovecot"][idx]) for k in keys}
            self.row(f"{len(self.conc_users)} sessions at once, {label}", om["wall"], dm["wall"], "s", "",
                     f"LOGIN/SELECT/FETCH 1:50 (FLAGS ENVELOPE)/NOOP/LOGOUT; session p50 {om['p50']:.2f}/{dm['p50']:.2f} "
                     f"p95 {om['p95']:.2f}/{dm['p95']:.2f}; server CPU {om['server_cpu']:.1f}/{dm['server_cpu']:.1f}; "
                     f"reconnects after no greeting in {args.greeting_timeout:g}s {om['no_greeting']:g}/{dm['no_greeting']:g}")
        for side in SIDES:
            for r in runs[side]:
                if r["errors"]:
                    self.warnings.append(f"{side}: {len(r['errors'])}/{len(self.conc_users)} concurrent sessions failed, "
                                         f"e.g. {r['errors'][:3]}")
                if r["no_greeting"]:
                    self.warnings.append(
                        f"{side}: {r['no_greeting']} of {len(self.conc_users)} simultaneous connections got no greeting "
                        f"within {args.greeting_timeout:g}s and were opened again (the listen queue overflowed: "
                        f"see TcpExtListenOverflows in nstat)")
                if r["fetched"] != 50 * r["ok"]:
                    self.warnings.append(f"{side}: concurrent sessions got {r['fetched']} FETCH responses, "
                                         f"expected {50 * r['ok']}")

    # 6. IDLE: memory per session, wake-up after a delivery

    def step_idle(self) -> None:
        args = self.args
        # a fresh process of ours: its RSS then holds nothing from the big folders above
        self.ours.stop()
        self.ours.start()
        results = {}
        for side in SIDES:
            results[side] = asyncio.run(self.idle_side(side))
        o, d = results["ours"], results["dovecot"]
        n = args.idle_sessions
        self.row(f"memory per IDLE session ({n}), RSS", o["rss_per"], d["rss_total_per"], "KiB", "<1",
                 f"ours (RSS - idle baseline)/sessions: {o['rss_base'] / 2**20:.0f} -> {o['rss'] / 2**20:.0f} MiB; "
                 f"Dovecot sum of RSS of its {d['procs']} processes / sessions ({d['rss'] / 2**20:.0f} MiB; "
                 f"{d['rss_per']:.0f} KiB minus its baseline)")
        self.row(f"memory per IDLE session ({n}), PSS", o["pss_per"], d["pss_per"], "KiB", "<1",
                 f"both minus the baseline before the sessions; Dovecot {d['pss_base'] / 2**20:.0f} -> "
                 f"{d['pss'] / 2**20:.0f} MiB")
        for label, key in (("first", 0.0), ("median", 0.5), ("90 %", 0.9), ("all", 1.0)):
            self.row(f"IDLE wake-up: {label} of {n} saw EXISTS", o["wake"][label], d["wake"][label], "s",
                     "", f"median of {args.deliveries} deliveries; woken {o['woken']}/{d['woken']}" if label == "all" else "")
        self.row(f"{n} IDLE sessions: connect+LOGIN+SELECT+IDLE", o["connect"], d["connect"], "s", "",
                 f"{args.idle_parallel} at a time; reconnects after no greeting {o['no_greeting']}/{d['no_greeting']}")
        if d["inotify_warnings"]:
            self.warnings.append(
                f"Dovecot logged 'Inotify instance limit ... exceeded' ({d['inotify_warnings']} imap processes; "
                f"fs.inotify.max_user_instances = {Path('/proc/sys/fs/inotify/max_user_instances').read_text().strip()}, "
                f"and every session runs as '{self.dv.user_name}'): {d['late']:g} of {n} sessions saw EXISTS only "
                f"after more than 5 s, when they poll (mailbox_idle_check_interval = 30 s); "
                f"--inotify-instances {2 * n + 500} raises the limit for the run (root; each imap process can hold two)")
        for side, r in (("ours", o), ("Dovecot", d)):
            if r["late"] and not (side == "Dovecot" and d["inotify_warnings"]):
                self.warnings.append(f"IDLE, {side}: {r['late']:g} of {n} sessions saw EXISTS after more than 5 s")

    async def idle_side(self, side: str) -> dict:
        args = self.args
        port, pgid = self.port(side), self.pgid(side)
        maildir = self.home(side, IDLE_USER) / "Maildir"
        owner = (self.dv.uid, self.dv.gid) if side == "dovecot" and os.geteuid() == 0 else None
        # warm up: the code paths of a session are loaded before the baseline is taken
        warm = IdleCrowd(port, IDLE_USER, 1, args.session_timeout)
        await warm.connect()
        await warm.close()
        await asyncio.sleep(1.0)
        base = group_mem(pgid)
        crowd = IdleCrowd(port, IDLE_USER, args.idle_sessions, args.session_timeout, args.idle_parallel,
                          args.greeting_timeout)
        log(f"IDLE {side}: connecting {args.idle_sessions} sessions ({args.idle_parallel} at a time)")
        connect = await crowd.connect()
        if crowd.errors:
            self.warnings.append(f"IDLE {side}: {len(crowd.errors)} sessions failed to start, e.g. {crowd.errors[:3]}")
        n = len(crowd.conns)
        await asyncio.sleep(2.0)
        mem = group_mem(pgid)
        log(f"IDLE {side}: {n} sessions idling after {connect:.1f}s; {mem['procs']} processes, "
            f"RSS {base['rss'] / 2**20:.0f} -> {mem['rss'] / 2**20:.0f} MiB, PSS {base['pss'] / 2**20:.0f} -> "
            f"{mem['pss'] / 2**20:.0f} MiB ({dict(mem['names'].most_common(5))})")
        spy = None
        if args.profile and side == "ours":
            spy = Spy(self.ours.pid, self.base / "pyspy-idle.txt", args.spy_rate)
        wakes = []
        try:
            for i in range(args.deliveries):
                w = await crowd.wake(lambda: deliver(maildir, delivery(i), owner), args.wake_timeout)
                t = w["times"]
                log(f"IDLE {side}: delivery {i + 1}: {w['woken']}/{w['sessions']} saw EXISTS; first "
                    f"{t[0] if t else float('nan'):.3f}s, median {t[len(t) // 2] if t else float('nan'):.3f}s, "
                    f"last {t[-1] if t else float('nan'):.3f}s; within 1/5/30 s: "
                    f"{sum(x <= 1 for x in t)}/{sum(x <= 5 for x in t)}/{sum(x <= 30 for x in t)}")
                wakes.append(w)
                await asyncio.sleep(1.0)
        finally:
            if spy is not None:
                spy.stop()
                self.profiles.append(f"--- py-spy, our server, {n} IDLE sessions woken by {args.deliveries} deliveries ---\n"
                                     + spy_summary(self.base / "pyspy-idle.txt", args.top))
        await crowd.close()

        def q(w: dict, frac: float) -> float:
            t = w["times"]
            if not t:
                return float("nan")
            if frac >= 1.0:
                return t[-1] if w["woken"] == w["sessions"] else float("inf")
            return t[min(len(t) - 1, int(frac * len(t)))]

        inotify_warnings = 0
        if side == "dovecot":
            # one line per IDLE that found no inotify instance; count the processes
            pids = set()
            for line in self.dv.log.read_text(errors="replace").splitlines():
                if "notify instance limit" in line.lower() or "max_user_instances" in line:
                    m = re.search(r"\)<(\d+)>", line)
                    pids.add(m.group(1) if m else line)
            inotify_warnings = len(pids)
        per = max(n, 1)
        return {
            "connect": connect, "procs": mem["procs"], "rss": mem["rss"], "pss": mem["pss"],
            "rss_base": base["rss"], "pss_base": base["pss"],
            "rss_per": (mem["rss"] - base["rss"]) / per / 1024, "pss_per": (mem["pss"] - base["pss"]) / per / 1024,
            "rss_total_per": mem["rss"] / per / 1024,
            "wake": {label: statistics.median(q(w, frac) for w in wakes)
                     for label, frac in (("first", 0.0), ("median", 0.5), ("90 %", 0.9), ("all", 1.0))},
            "woken": f"{min(w['woken'] for w in wakes)}" if wakes else "0",
            "inotify_warnings": inotify_warnings,
            "no_greeting": crowd.stats["no greeting"],
            "late": statistics.median(sum(1 for t in w["times"] if t > 5) + w["sessions"] - w["woken"] for w in wakes)
            if wakes else 0,
        }

    # profile

    def profile(self) -> None:
        """py-spy on our server while each workload runs again (after the timed runs)."""
        if shutil.which("py-spy") is None:
            self.profiles.append("py-spy not found (pip install py-spy)")
            return
        args = self.args
        port, pid = self.ours.port, self.ours.pid
        n = max(self.big_users)
        small = min(self.big_users)
        workloads = []
        if "sync" in self.steps:
            workloads.append((f"warm first sync {n}", lambda: self.first_sync("ours", self.big_users[n])))
        if "resync" in self.steps:
            def resync() -> None:
                c = session(port, self.big_users[n], args.timeout)
                c.select(condstore=True)
                for _ in range(5):
                    c.cmd(b"UID FETCH 1:* (FLAGS)")
                c.logout()
            workloads.append((f"UID FETCH 1:* (FLAGS) x5 on {n}", resync))
        if "search" in self.steps:
            phrase = pick_search_phrase(self.base / "gen" / f"m{small}", args.seed)[0]

            def search() -> None:
                c = session(port, self.big_users[small], args.timeout)
                c.select()
                c.cmd(b'SEARCH TEXT "' + phrase.encode() + b'"')
                c.logout()
            workloads.append((f"SEARCH TEXT on {small}", search))
        if "fetch" in self.steps:
            def fetch() -> None:
                rng = random.Random(args.seed)
                c = session(port, self.big_users[small], args.timeout)
                c.select()
                for _ in range(args.random_fetches):
                    c.cmd(b"UID FETCH %d BODY.PEEK[]" % rng.randrange(1, small + 1))
                c.logout()
            workloads.append((f"{args.random_fetches} random BODY.PEEK[] on {small}", fetch))
        if "concurrent" in self.steps:
            workloads.append((f"{len(self.conc_users)} sessions at once",
                              lambda: concurrent_sessions(port, self.conc_users, args.session_timeout, args.greeting_timeout)))
        # a fresh process: load the code paths first, so that imports do not show up as hot spots
        c = session(port, self.conc_users[0] if self.conc_users else self.big_users[small], args.timeout)
        c.select()
        c.cmd(b"FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[HEADER.FIELDS (From)] BODY.PEEK[])")
        c.cmd(b'SEARCH TEXT "warm up"')
        c.logout()
        for i, (label, work) in enumerate(workloads):
            path = self.base / f"pyspy-{i}.txt"
            log(f"py-spy on our server: {label}")
            spy = Spy(pid, path, args.spy_rate)
            t0 = time.perf_counter()
            try:
                work()
            finally:
                spy.stop()
            self.profiles.append(f"--- py-spy, our server, {label} ({time.perf_counter() - t0:.1f}s) ---\n"
                                 + spy_summary(path, args.top))

    # report

    def report(self, sizes: dict) -> None:
        args = self.args
        if args.profile and self.steps - {"idle"}:
            try:
                self.ours.stop()
                self.ours.start()  # the IDLE step restarted it: profile a warm index, fresh process
                self.profile()
            except Exception as exc:  # noqa: BLE001
                self.warnings.append(f"profiling failed: {type(exc).__name__}: {exc}")
        print()
        print("Maildirs: " + (", ".join(f"{c} messages ({b / 1e6:.0f} MB)" for c, b in sizes.values()) or "-")
              + f"; {len(self.conc_users)} users x {args.per_session} messages; IDLE user: 10 messages.")
        print("Each server reads its own copy (hard links, cp -al) of the same generated Maildir: neither sees the "
              "other's index or dovecot-uidlist. Passwords {PLAIN} on both sides; LOGIN over plaintext on loopback.")
        print(f"Dovecot {self.dovecot_version()} (imap-login high-security mode, one imap process per session); "
              "set: " + " ".join(line.strip() for line in self.dovecot_limits.splitlines()))
        print(f"Ours: python -m retrieval serve, one process; [imap] max_connections_per_user_ip = {self.per_user_ip}. "
              f"RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} for both.")
        print()
        print(f"{'operation':48} {'ours':>10} {'Dovecot':>10} {'unit':>4} {'ours/Dov':>9} {'target':>7}  note (ours/Dovecot)")
        for name, o, d, unit, target, note in self.rows:
            ratio = o / d if o is not None and d and d == d and o == o and d != float("inf") else None
            verdict = ""
            if target and ratio is not None:
                limit = float(target.lstrip("<"))
                verdict = "ok" if ratio <= limit else "MISSED"
                verdict = f"{'<' if target.startswith('<') else '<='}{limit:g} {verdict}"
            fmt = (lambda v: f"{v:10.0f}") if unit == "KiB" else (lambda v: f"{v:10.3f}")
            print(f"{name:48} {fmt(o) if o is not None else '-':>10} {fmt(d) if d is not None else '-':>10} {unit:>4} "
                  f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>9} {verdict:>12}  {note}")
        print("ratio = ours / Dovecot: below 1 we are faster (or smaller).")
        for w in self.warnings:
            print(f"WARNING: {w}")
        errors = self.dv.errors()
        if errors:
            print("\nDovecot logged errors:\n" + "\n".join(errors[-10:]))
        problems = self.ours.problems()
        if problems:
            print("\nOur server logged:\n" + "\n".join(problems))
        for text in self.profiles:
            print("\n" + text)

    @staticmethod
    def dovecot_version() -> str:
        try:
            return subprocess.run(["dovecot", "--version"], capture_output=True, text=True, timeout=10).stdout.split()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="5 000 messages, 200 IDLE sessions, 1 warm repeat, 2 deliveries (about 3 minutes)")
    p.add_argument("--sizes", help="comma-separated folder sizes (default 20000,100000; 5000 with --quick)")
    p.add_argument("--repeat", type=int, help="warm runs per side, alternating; the median is kept (default 3; 1 with --quick)")
    p.add_argument("--concurrent", type=int, default=200, help="sessions at once, one user each (default 200)")
    p.add_argument("--per-session", type=int, default=100, help="messages in each of those users' INBOX (default 100)")
    p.add_argument("--random-fetches", type=int, default=2000, help="random UID FETCH n BODY.PEEK[] (default 2000)")
    p.add_argument("--idle-sessions", type=int, help="IDLE sessions of one user (default 2000; 200 with --quick)")
    p.add_argument("--idle-parallel", type=int, default=64, help="IDLE sessions being set up at a time (default 64)")
    p.add_argument("--deliveries", type=int, help="deliveries into the IDLE INBOX (default 3; 2 with --quick)")
    p.add_argument("--wake-timeout", type=float, default=45.0,
                   help="wait this long for every IDLE session to see EXISTS (default 45: Dovecot polls every 30 s "
                        "where it has no inotify)")
    p.add_argument("--inotify-instances", type=int, default=0,
                   help="raise fs.inotify.max_user_instances to this for the run (root; restored afterwards)")
    p.add_argument("--only", help=f"comma-separated steps among {','.join(STEPS)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", action="store_true",
                   help="after the timed runs, each workload once more with py-spy on our server; print hot spots")
    p.add_argument("--spy-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    p.add_argument("--top", type=int, default=15, help="rows of each py-spy summary (default 15)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (under /tmp)")
    p.add_argument("--timeout", type=float, default=900.0, help="socket deadline for any one command, seconds")
    p.add_argument("--session-timeout", type=float, default=180.0,
                   help="deadline for one of the many short or IDLE sessions to get going, seconds (default 180)")
    p.add_argument("--greeting-timeout", type=float, default=10.0,
                   help="connect again when no greeting came within this (default 10 s; see README)")
    args = p.parse_args(argv)
    if args.sizes:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    else:
        args.sizes = [5000] if args.quick else [20_000, 100_000]
    defaults = {"repeat": (1, 3), "idle_sessions": (200, 2000), "deliveries": (2, 3)}
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.only and not set(args.only.split(",")) <= set(STEPS):
        p.error(f"--only takes steps among {','.join(STEPS)}")
    from dovecot_helper import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"cannot run Dovecot here: {reason}", file=sys.stderr)
        return 2
    if not os.path.exists("/usr/lib/dovecot/imap"):
        print("cannot run Dovecot IMAP here: /usr/lib/dovecot/imap is absent (apt-get install dovecot-imapd)",
              file=sys.stderr)
        return 2
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
